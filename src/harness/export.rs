//! /export: `bootstrap` first, then every other declaration in byte order, with the resolved
//! environment. A declaration's non-empty output becomes registration metadata of its name.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;

use tracing::debug;

use super::Limits;
use super::entries::scan;
use super::environment::produce;
use super::error::HarnessError;
use crate::layout::EnvKey;

/// The name of the entry that runs before every declaration.
pub const BOOTSTRAP: &str = "bootstrap";

/// Runs the declarations of `dir` (missing and not `explicit`: nothing to do) and returns the
/// metadata they printed.
pub async fn declare(
    dir: &Path,
    explicit: bool,
    env: &BTreeMap<OsString, OsString>,
    limits: Limits,
) -> Result<BTreeMap<EnvKey, String>, HarnessError> {
    let mut meta = BTreeMap::new();
    if !dir.exists() {
        if explicit {
            return Err(HarnessError::DirMissing {
                dir: dir.to_owned(),
            });
        }
        return Ok(meta);
    }
    let mut entries = scan(dir)?;
    // bootstrap first; the rest keep their byte order.
    entries.sort_by_key(|e| e.name.as_str() != BOOTSTRAP);
    for entry in entries {
        let value = produce(&entry.source, env, &limits).await?;
        if entry.name.as_str() == BOOTSTRAP {
            debug!(file = %entry.source.path().display(), "bootstrap ran");
        } else if !value.is_empty() {
            meta.insert(entry.name, value);
        }
    }
    Ok(meta)
}
