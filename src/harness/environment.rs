//! Building the environment: each directory in turn, each entry in byte order, each seeing what
//! came before.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;

use tracing::debug;

use super::entries::{Source, scan, to_value};
use super::error::HarnessError;
use super::{Limits, script};
use crate::layout::EnvKey;

/// A directory of entries.
#[derive(Debug, Clone)]
pub struct Dir {
    pub path: PathBuf,
    /// Named by the user: missing is an error. The default directory may be missing.
    pub explicit: bool,
}

/// What the directories produced.
#[derive(Debug, Clone, Default)]
pub struct Resolved {
    /// The variables the directories set, in the order they were set, with their final values.
    pub vars: Vec<(EnvKey, String)>,
    /// The whole environment for the command: the inherited one plus `vars`.
    pub env: BTreeMap<OsString, OsString>,
}

/// The variables that carry herald's own ZooKeeper identity. Entries and /export declarations
/// see them (a script may run `herald resolve`); CMD does not, unless an entry sets one itself.
pub const IDENTITY_VARS: &[&str] = &[
    "HERALD_ZK_AUTH",
    "HERALD_ZK_AUTH_FILE",
    "HERALD_ZK_TLS_CERT",
    "HERALD_ZK_TLS_KEY",
];

impl Resolved {
    /// The environment CMD gets: [`Resolved::env`] without the inherited [`IDENTITY_VARS`].
    pub fn for_command(&self) -> BTreeMap<OsString, OsString> {
        let mut env = self.env.clone();
        for name in IDENTITY_VARS {
            if !self.vars.iter().any(|(key, _)| key.as_str() == *name) {
                env.remove(std::ffi::OsStr::new(name));
            }
        }
        env
    }
}

/// Runs every entry of `dirs` in order, on top of `inherited`.
///
/// A script's value replaces an inherited variable (the script sees the old value and may pass
/// it through); with `keep_existing`, an inherited variable wins and its entry does not run.
/// A later directory's entry replaces an earlier one's value.
pub async fn build(
    dirs: &[Dir],
    inherited: BTreeMap<OsString, OsString>,
    keep_existing: bool,
    limits: Limits,
) -> Result<Resolved, HarnessError> {
    let mut resolved = Resolved {
        vars: Vec::new(),
        env: inherited,
    };
    let inherited_names: Vec<OsString> = resolved.env.keys().cloned().collect();
    for dir in dirs {
        if !dir.path.exists() {
            if dir.explicit {
                return Err(HarnessError::DirMissing {
                    dir: dir.path.clone(),
                });
            }
            debug!(dir = %dir.path.display(), "no directory, nothing to do");
            continue;
        }
        for entry in scan(&dir.path)? {
            let name = OsString::from(entry.name.as_str());
            if keep_existing && inherited_names.contains(&name) {
                debug!(var = %entry.name, "keeping the inherited value (--keep-existing)");
                continue;
            }
            let value = produce(&entry.source, &resolved.env, &limits).await?;
            debug!(var = %entry.name, file = %entry.source.path().display(), "set");
            resolved.env.insert(name, OsString::from(&value));
            resolved.vars.retain(|(k, _)| *k != entry.name);
            resolved.vars.push((entry.name, value));
        }
    }
    Ok(resolved)
}

/// The value of one entry: a script's stdout or a literal file's content.
pub(crate) async fn produce(
    source: &Source,
    env: &BTreeMap<OsString, OsString>,
    limits: &Limits,
) -> Result<String, HarnessError> {
    let raw = match source {
        Source::Script(file) => script::run(file, env, limits).await?,
        Source::Literal(file) => read_limited(file)?,
    };
    to_value(source.path(), raw)
}

fn read_limited(file: &std::path::Path) -> Result<Vec<u8>, HarnessError> {
    use std::io::Read;
    let mut raw = Vec::new();
    std::fs::File::open(file)
        .and_then(|f| f.take(super::MAX_OUTPUT as u64 + 1).read_to_end(&mut raw))
        .map_err(|source| HarnessError::Unreadable {
            file: file.to_owned(),
            source,
        })?;
    Ok(raw)
}
