//! What `herald run` and `herald env` share: where the /environment and /export entries are,
//! how they run, and what they produce.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use herald::harness::{self, Dir, Limits, Notes, Resolved};
use herald::layout::EnvKey;

use super::parse_duration;

/// Where the entries are and how they run; shared by `run` and `env`.
#[derive(Debug, Args)]
pub struct HarnessArgs {
    /// Directory of /environment entries (default /environment); repeatable, later ones
    /// override earlier ones. HERALD_ENV_DIR takes a ':'-separated list.
    #[arg(
        long = "env-dir",
        value_name = "DIR",
        env = "HERALD_ENV_DIR",
        value_delimiter = ':'
    )]
    pub env_dirs: Vec<PathBuf>,
    /// Directory of /export declarations (default /export): bootstrap, then each declaration.
    #[arg(long, value_name = "DIR", env = "HERALD_EXPORT_DIR")]
    pub export_dir: Option<PathBuf>,
    /// Keep variables herald already has instead of running their entries.
    #[arg(long)]
    pub keep_existing: bool,
    /// Kill an entry's script (its whole process group) after this long.
    #[arg(long, value_name = "DURATION", env = "HERALD_SCRIPT_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub script_timeout: Duration,
}

/// What the harness produced: the command's environment and the /export metadata.
pub struct Prepared {
    pub resolved: Resolved,
    pub export: BTreeMap<EnvKey, String>,
}

impl HarnessArgs {
    /// The /export directory, and whether it was given (the default may be missing).
    pub fn export_location(&self) -> (PathBuf, bool) {
        match &self.export_dir {
            Some(dir) => (dir.clone(), true),
            None => (PathBuf::from("/export"), false),
        }
    }

    pub fn limits(&self) -> Limits {
        Limits {
            script_timeout: self.script_timeout,
            reaper: None,
        }
    }

    pub async fn prepare(&self) -> anyhow::Result<Prepared> {
        let dirs: Vec<Dir> = if self.env_dirs.is_empty() {
            vec![Dir {
                path: PathBuf::from("/environment"),
                explicit: false,
            }]
        } else {
            self.env_dirs
                .iter()
                .map(|path| Dir {
                    path: path.clone(),
                    explicit: true,
                })
                .collect()
        };
        let limits = self.limits();
        let mut inherited: BTreeMap<OsString, OsString> = std::env::vars_os()
            .filter(|(name, _)| name != harness::NOTES_VAR && name != harness::STALE_VAR)
            .collect();
        // The entries' notes to each other (ZooKeeper unreachable) and to CMD (stale values);
        // none when there is no entry to run.
        let (export_dir, explicit) = self.export_location();
        let any_entry = dirs
            .iter()
            .map(|d| d.path.as_path())
            .chain([export_dir.as_path()])
            .any(|dir| std::fs::read_dir(dir).is_ok_and(|mut it| it.next().is_some()));
        let notes = any_entry
            .then(Notes::create)
            .transpose()
            .map_err(|err| tracing::warn!(error = %err, "no notes directory for the entries; each tries ZooKeeper on its own"))
            .ok()
            .flatten();
        if let Some(notes) = &notes {
            inherited.insert(harness::NOTES_VAR.into(), notes.path().into());
        }
        let mut resolved =
            harness::build(&dirs, inherited, self.keep_existing, limits.clone()).await?;
        let export = harness::declare(&export_dir, explicit, &resolved.env, limits).await?;
        resolved
            .env
            .remove(std::ffi::OsStr::new(harness::NOTES_VAR));
        if let Some(stale) = notes.as_ref().and_then(Notes::stale_var) {
            resolved
                .env
                .insert(harness::STALE_VAR.into(), stale.clone().into());
            if let Ok(key) = harness::STALE_VAR.parse::<EnvKey>() {
                resolved.vars.push((key, stale));
            }
        }
        Ok(Prepared { resolved, export })
    }
}
