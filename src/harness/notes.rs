//! What the entries of one `herald run` tell each other and the harness, through a private
//! directory named by `HERALD_RUN_NOTES` in their environment (never in CMD's):
//!
//! - `unreachable`: an entry's `herald resolve` could not reach ZooKeeper. Later entries go
//!   straight to the last known values (or fail at once) instead of each waiting out
//!   `--connect-timeout`: N keys cost one timeout, not N.
//! - `stale.KEY` (holding seconds): `herald resolve KEY` answered from the last known values,
//!   that old. The harness hands CMD `HERALD_STALE=KEY=SECONDS,…`.
//!
//! Only the user that runs herald can write there (0700, checked by the writers), so another
//! local user cannot make a run skip ZooKeeper.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::layout::EnvKey;
use crate::local_socket;

/// The variable that names the notes directory, for the entries' scripts.
pub const NOTES_VAR: &str = "HERALD_RUN_NOTES";
/// The variable that tells CMD which values came from the last known values, and their age.
pub const STALE_VAR: &str = "HERALD_STALE";

const UNREACHABLE: &str = "unreachable";
const STALE_PREFIX: &str = "stale.";

/// The notes directory of one run, owned by the harness: removed when dropped.
#[derive(Debug)]
pub struct Notes {
    dir: PathBuf,
}

impl Notes {
    /// Creates a fresh private directory under the temporary directory.
    pub fn create() -> std::io::Result<Notes> {
        use std::os::unix::fs::DirBuilderExt;
        let base = std::env::temp_dir();
        let mut attempt = 0u32;
        loop {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .subsec_nanos();
            let dir = base.join(format!(
                "herald-run-{}-{nanos:08x}{attempt}",
                std::process::id()
            ));
            match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => return Ok(Notes { dir }),
                Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists && attempt < 100 => {
                    attempt += 1;
                }
                Err(err) => return Err(err),
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The keys answered from the last known values, with their age in seconds, by key.
    pub fn stale(&self) -> Vec<(EnvKey, u64)> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut stale: Vec<(EnvKey, u64)> = entries
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name();
                let key = name.to_str()?.strip_prefix(STALE_PREFIX)?.parse().ok()?;
                let text = std::fs::read_to_string(entry.path()).ok()?;
                Some((key, text.trim().parse().ok()?))
            })
            .collect();
        stale.sort();
        stale
    }

    /// [`Notes::stale`] as `HERALD_STALE`'s value; `None` when nothing was stale.
    pub fn stale_var(&self) -> Option<String> {
        let stale = self.stale();
        (!stale.is_empty()).then(|| {
            stale
                .iter()
                .map(|(key, secs)| format!("{key}={secs}"))
                .collect::<Vec<_>>()
                .join(",")
        })
    }
}

impl Drop for Notes {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An entry's side: the notes of the run it is part of, if any (and only if the directory is
/// private to this user).
#[derive(Debug, Clone)]
pub struct RunNotes {
    dir: PathBuf,
}

impl RunNotes {
    /// The notes named by `HERALD_RUN_NOTES`, when it names a private directory.
    pub fn from_env() -> Option<RunNotes> {
        let dir = PathBuf::from(std::env::var_os(NOTES_VAR)?);
        if !dir.is_absolute() || local_socket::check_dir(&dir).is_err() {
            tracing::debug!(dir = %dir.display(), "ignoring {NOTES_VAR}: not a private directory");
            return None;
        }
        Some(RunNotes { dir })
    }

    /// Whether an earlier entry found ZooKeeper unreachable.
    pub fn unreachable(&self) -> bool {
        self.dir.join(UNREACHABLE).exists()
    }

    /// Tells the later entries that ZooKeeper could not be reached.
    pub fn mark_unreachable(&self) {
        let _ = std::fs::write(self.dir.join(UNREACHABLE), b"");
    }

    /// Tells the harness that KEY was answered from the last known values, `age` old.
    pub fn served_stale(&self, key: &EnvKey, age: Duration) {
        let _ = std::fs::write(
            self.dir.join(format!("{STALE_PREFIX}{key}")),
            age.as_secs().to_string(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_notes_reach_the_harness_and_vanish_with_it() {
        let notes = Notes::create().unwrap();
        let writer = RunNotes {
            dir: notes.path().to_owned(),
        };
        assert!(!writer.unreachable());
        assert_eq!(notes.stale_var(), None);
        writer.mark_unreachable();
        assert!(writer.unreachable());
        writer.served_stale(&"REDIS_URL".parse().unwrap(), Duration::from_secs(7));
        writer.served_stale(
            &"DATABASE_URL".parse().unwrap(),
            Duration::from_millis(195_400),
        );
        assert_eq!(
            notes.stale_var().as_deref(),
            Some("DATABASE_URL=195,REDIS_URL=7")
        );
        let dir = notes.path().to_owned();
        drop(notes);
        assert!(!dir.exists());
    }
}
