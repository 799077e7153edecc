//! The last known values: a local copy of each value herald read from ZooKeeper, so that
//! `resolve`, `watch` and the gateway can still answer while ZooKeeper cannot be reached, and
//! say how old the answer is.
//!
//! ```text
//! DIR/                      0700, owned by herald's user (or root), writable by nobody else
//!   <16 hex digits>/        one per layout root (SHA-256 of the root, chroot included)
//!     KEY                   the value, byte for byte; mode 0600; its mtime is when it was
//!                           last read from (or confirmed by) ZooKeeper
//! ```
//!
//! Entries are written only from values read from ZooKeeper (never from `--default`, never from
//! another entry), atomically: a staged file beside the entry, fsynced, then renamed over it, so
//! a reader sees the old value or the new one. A key ZooKeeper says is not published is removed.
//! Reads open with `O_NOFOLLOW | O_NONBLOCK`, refuse anything but a regular file owned by
//! herald's user or root, and read at most one value's worth.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use rustix::fs::{AtFlags, Mode, OFlags, Timespec, Timestamps};
use sha2::{Digest, Sha256};

use crate::input::kind_of;
use crate::layout::{EnvKey, Layout};
use crate::local_socket::{self, SocketError};
use crate::values::MAX_VALUE_LEN;

/// Why the cache could not be used. Messages name the directory or entry.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The directory is one another user could write to or owns.
    #[error("the cache directory {}: {why}; use a directory only herald's user (or root) owns and can write, e.g. chmod 700 it", .path.display())]
    Unsafe { path: PathBuf, why: String },
    /// An entry is not a regular file herald's user or root owns.
    #[error("the cache entry {} {why}; remove it", .path.display())]
    Foreign { path: PathBuf, why: String },
    #[error("the cache {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A value from the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cached {
    pub value: Vec<u8>,
    /// When it was last read from ZooKeeper.
    pub read_at: SystemTime,
}

impl Cached {
    /// How long ago it was read from ZooKeeper (zero if the clock went back).
    pub fn age(&self) -> Duration {
        SystemTime::now()
            .duration_since(self.read_at)
            .unwrap_or_default()
    }
}

/// The cache of one layout root.
#[derive(Debug, Clone)]
pub struct LastKnown {
    /// The root's directory: for messages.
    path: PathBuf,
    /// The same, opened once: every entry is reached through it.
    dir: Arc<OwnedFd>,
}

/// Staged files get unique names within the process.
static STAGED: AtomicU64 = AtomicU64::new(0);

impl LastKnown {
    /// Opens (creating it, 0700) the cache under `base` for `layout`'s root.
    ///
    /// # Notable errors
    /// [`CacheError::Unsafe`] when `base` or the root's directory could be written or is owned
    /// by another user: whoever can write there decides what herald serves.
    pub fn open(base: &Path, layout: &Layout) -> Result<LastKnown, CacheError> {
        let digest = Sha256::digest(layout.root().as_bytes());
        let name: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        let path = base.join(name);
        for dir in [base, path.as_path()] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| CacheError::Io {
                    path: dir.to_owned(),
                    source,
                })?;
            local_socket::check_dir(dir).map_err(|err| match err {
                SocketError::Unsafe { path, why } => CacheError::Unsafe { path, why },
                SocketError::Io { path, source } => CacheError::Io { path, source },
                SocketError::InUse { path } => CacheError::Unsafe {
                    path,
                    why: "is in use".to_owned(),
                },
            })?;
        }
        let dir = rustix::fs::open(
            &path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| CacheError::Io {
            path: path.clone(),
            source: e.into(),
        })?;
        Ok(LastKnown {
            path,
            dir: Arc::new(dir),
        })
    }

    /// The directory of this root's entries.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, key: &str, source: impl Into<std::io::Error>) -> CacheError {
        CacheError::Io {
            path: self.path.join(key),
            source: source.into(),
        }
    }

    /// Records `value`, just read from ZooKeeper, as KEY's last known value.
    pub fn store(&self, key: &EnvKey, value: &[u8]) -> Result<(), CacheError> {
        let staged = format!(
            ".{key}.{}.{}",
            std::process::id(),
            STAGED.fetch_add(1, Ordering::Relaxed)
        );
        let fd = rustix::fs::openat(
            &*self.dir,
            &staged,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| self.io(&staged, e))?;
        let mut file = File::from(fd);
        let written = file
            .write_all(value)
            .and_then(|()| file.sync_data())
            .map_err(|e| self.io(&staged, e))
            .and_then(|()| {
                rustix::fs::renameat(&*self.dir, &staged, &*self.dir, key.as_str())
                    .map_err(|e| self.io(key.as_str(), e))
            });
        if written.is_err() {
            let _ = rustix::fs::unlinkat(&*self.dir, &staged, AtFlags::empty());
        }
        written
    }

    /// Marks KEY's entry as confirmed by ZooKeeper now (its value is still the one read).
    pub fn confirm(&self, key: &EnvKey) -> Result<(), CacheError> {
        let now = Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_NOW,
        };
        match rustix::fs::utimensat(
            &*self.dir,
            key.as_str(),
            &Timestamps {
                last_access: now,
                last_modification: now,
            },
            AtFlags::SYMLINK_NOFOLLOW,
        ) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(self.io(key.as_str(), e)),
        }
    }

    /// Forgets KEY: ZooKeeper says it is not published.
    pub fn forget(&self, key: &EnvKey) -> Result<(), CacheError> {
        match rustix::fs::unlinkat(&*self.dir, key.as_str(), AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(self.io(key.as_str(), e)),
        }
    }

    /// KEY's last known value, if there is one.
    ///
    /// # Notable errors
    /// [`CacheError::Foreign`] when the entry is not a regular file owned by herald's user or
    /// root (a link, a FIFO, another user's file): it is never read.
    pub fn load(&self, key: &EnvKey) -> Result<Option<Cached>, CacheError> {
        let fd = match rustix::fs::openat(
            &*self.dir,
            key.as_str(),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => return Ok(None),
            Err(rustix::io::Errno::LOOP) => {
                return Err(self.foreign(key, "is a symbolic link".to_owned()));
            }
            Err(e) => return Err(self.io(key.as_str(), e)),
        };
        let stat = rustix::fs::fstat(&fd).map_err(|e| self.io(key.as_str(), e))?;
        if let Some(kind) = kind_of(stat.st_mode) {
            return Err(self.foreign(key, format!("is {kind}")));
        }
        if !local_socket::trusted(stat.st_uid) {
            return Err(self.foreign(key, format!("is owned by uid {}", stat.st_uid)));
        }
        let mut value = Vec::new();
        File::from(fd)
            .take(MAX_VALUE_LEN as u64 + 1)
            .read_to_end(&mut value)
            .map_err(|e| self.io(key.as_str(), e))?;
        if value.len() > MAX_VALUE_LEN {
            return Err(self.foreign(key, format!("is over {MAX_VALUE_LEN} bytes")));
        }
        let read_at = SystemTime::UNIX_EPOCH
            + Duration::new(
                u64::try_from(stat.st_mtime).unwrap_or_default(),
                u32::try_from(stat.st_mtime_nsec).unwrap_or_default(),
            );
        Ok(Some(Cached { value, read_at }))
    }

    fn foreign(&self, key: &EnvKey, why: String) -> CacheError {
        CacheError::Foreign {
            path: self.path.join(key.as_str()),
            why,
        }
    }
}

/// The default cache directory of the long-running commands: `/var/cache/herald` for root,
/// else `$XDG_CACHE_HOME/herald` or `$HOME/.cache/herald`; `None` when there is no home.
pub fn default_dir() -> Option<PathBuf> {
    if local_socket::euid() == 0 {
        return Some(PathBuf::from("/var/cache/herald"));
    }
    let absolute = |var: &str| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    absolute("XDG_CACHE_HOME")
        .or_else(|| absolute("HOME").map(|home| home.join(".cache")))
        .map(|dir| dir.join("herald"))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("herald-cache-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn layout(root: &str) -> Layout {
        Layout::new(None, root).unwrap()
    }

    fn key(k: &str) -> EnvKey {
        k.parse().unwrap()
    }

    #[test]
    fn a_stored_value_loads_back_exactly_private_and_fresh() {
        let base = scratch("roundtrip");
        let cache = LastKnown::open(&base, &layout("/herald")).unwrap();
        let value = b"postgres://app:s3cret@db:5432/app\n\0binary".to_vec();
        cache.store(&key("DATABASE_URL"), &value).unwrap();
        let got = cache.load(&key("DATABASE_URL")).unwrap().unwrap();
        assert_eq!(got.value, value);
        assert!(got.age() < Duration::from_secs(60));
        let meta = std::fs::metadata(cache.path().join("DATABASE_URL")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(
            std::fs::metadata(&base).unwrap().permissions().mode() & 0o777,
            0o700
        );
        // Nothing staged is left behind.
        let names: Vec<_> = std::fs::read_dir(cache.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec!["DATABASE_URL"]);
        cache.forget(&key("DATABASE_URL")).unwrap();
        assert_eq!(cache.load(&key("DATABASE_URL")).unwrap(), None);
        cache.forget(&key("DATABASE_URL")).unwrap();
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn roots_do_not_share_entries() {
        let base = scratch("roots");
        let a = LastKnown::open(&base, &layout("/a")).unwrap();
        let b = LastKnown::open(&base, &layout("/b")).unwrap();
        a.store(&key("K"), b"from a").unwrap();
        assert_eq!(b.load(&key("K")).unwrap(), None);
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn confirming_makes_an_entry_young_again() {
        let base = scratch("confirm");
        let cache = LastKnown::open(&base, &layout("/herald")).unwrap();
        cache.store(&key("K"), b"v").unwrap();
        let old = SystemTime::now() - Duration::from_secs(3600);
        File::options()
            .write(true)
            .open(cache.path().join("K"))
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert!(cache.load(&key("K")).unwrap().unwrap().age() >= Duration::from_secs(3599));
        cache.confirm(&key("K")).unwrap();
        assert!(cache.load(&key("K")).unwrap().unwrap().age() < Duration::from_secs(60));
        cache.confirm(&key("MISSING")).unwrap();
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn links_fifos_and_shared_directories_are_refused() {
        let base = scratch("hostile");
        let cache = LastKnown::open(&base, &layout("/herald")).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", cache.path().join("LINK")).unwrap();
        let err = cache.load(&key("LINK")).unwrap_err().to_string();
        assert!(
            err.contains("symbolic link") && err.contains("LINK"),
            "{err}"
        );
        rustix::fs::mknodat(
            rustix::fs::CWD,
            cache.path().join("FIFO"),
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let err = cache.load(&key("FIFO")).unwrap_err().to_string();
        assert!(err.contains("a FIFO"), "{err}");
        // A store over a planted link replaces the link, never writes through it.
        cache.store(&key("LINK"), b"mine").unwrap();
        assert_eq!(cache.load(&key("LINK")).unwrap().unwrap().value, b"mine");
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = LastKnown::open(&base, &layout("/herald"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("writable by group or others"), "{err}");
        assert_eq!(
            std::fs::metadata(&base).unwrap().uid(),
            local_socket::euid()
        );
        std::fs::remove_dir_all(&base).unwrap();
    }
}
