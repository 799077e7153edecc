//! The flags of the last known values (`--cache`, `--no-cache`, `--max-stale`) and the answer
//! from them that `resolve` and `watch` give while ZooKeeper cannot be reached.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use herald::harness::RunNotes;
use herald::last_known::{Cached, LastKnown};
use herald::layout::{EnvKey, Layout};

use super::{Outcome, parse_duration};

/// Where the last known values are kept, and how old one may be served.
#[derive(Debug, Args, Clone)]
#[command(next_help_heading = "Last known values")]
pub struct CacheArgs {
    /// Keep a copy of each value read from ZooKeeper here (mode 0600 files in a 0700 directory)
    /// and answer from it, saying its age, while ZooKeeper cannot be reached.
    #[arg(long, env = "HERALD_CACHE", value_name = "DIR")]
    pub cache: Option<PathBuf>,
    /// Neither read nor write the last known values.
    #[arg(long)]
    pub no_cache: bool,
    /// Refuse a last known value read from ZooKeeper longer ago than this (exit 9).
    #[arg(long, env = "HERALD_MAX_STALE", value_name = "DURATION", default_value = "24h", value_parser = parse_duration)]
    pub max_stale: Duration,
}

impl CacheArgs {
    /// The cache to use: `--cache`/`HERALD_CACHE`, else (when `default` is true, for the
    /// long-running commands) the default directory. An explicit directory that cannot be used
    /// is a usage error; the default one is given up with a warning.
    pub fn open(&self, layout: &Layout, default: bool) -> anyhow::Result<Option<LastKnown>> {
        if self.no_cache {
            return Ok(None);
        }
        if let Some(dir) = &self.cache {
            return LastKnown::open(dir, layout)
                .map(Some)
                .map_err(|err| Outcome::Usage(format!("--cache/HERALD_CACHE: {err}")).into());
        }
        if !default {
            return Ok(None);
        }
        let Some(dir) = herald::last_known::default_dir() else {
            return Ok(None);
        };
        match LastKnown::open(&dir, layout) {
            Ok(cache) => Ok(Some(cache)),
            Err(err) => {
                tracing::warn!(
                    "no last known values: {err}; give --cache DIR, or --no-cache to say so"
                );
                Ok(None)
            }
        }
    }
}

/// KEY's last known value, when ZooKeeper could not be reached (`why`): served with a warning
/// that says its age, refused (exit 9) past `--max-stale`. `None`: there is none.
pub fn fallback(
    cache: Option<&LastKnown>,
    max_stale: Duration,
    key: &EnvKey,
    why: &str,
) -> anyhow::Result<Option<Cached>> {
    let Some(cache) = cache else {
        return Ok(None);
    };
    let cached = match cache.load(key) {
        Ok(Some(cached)) => cached,
        Ok(None) => return Ok(None),
        Err(err) => {
            tracing::warn!("{err}");
            return Ok(None);
        }
    };
    let age = cached.age();
    let said = humantime::format_duration(Duration::from_secs(age.as_secs()));
    if age > max_stale {
        return Err(Outcome::Stale(format!(
            "{why}, and the last known value of {key} was read {said} ago, longer than --max-stale {}; bring ZooKeeper back, or raise --max-stale",
            humantime::format_duration(max_stale)
        ))
        .into());
    }
    tracing::warn!(
        key = %key,
        age_s = age.as_secs(),
        "{why}: answering {key} with its last known value, read from ZooKeeper {said} ago"
    );
    if let Some(notes) = RunNotes::from_env() {
        notes.served_stale(key, age);
    }
    Ok(Some(cached))
}

/// Records what ZooKeeper said of KEY: its value, or that it is not published. A cache that
/// cannot be written is said once per process and otherwise ignored: the answer still stands.
pub fn record(cache: Option<&LastKnown>, key: &EnvKey, value: Option<&[u8]>) {
    let Some(cache) = cache else {
        return;
    };
    let done = match value {
        Some(value) => cache.store(key, value),
        None => cache.forget(key),
    };
    if let Err(err) = done {
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| {
            tracing::warn!("cannot keep the last known values: {err}");
        });
    }
}
