//! Files named by flags that hold a secret (`--zk-auth-file`, `--token-file`): read bounded,
//! only when they are regular files, and a warning when group or others can read them.

use std::io::Read;
use std::path::Path;

use super::Outcome;

/// Warns when group or others can read `file`, which holds the secret behind `flag`; `grants`
/// says what a reader could then do.
pub fn warn_if_readable_by_others(file: &Path, flag: &str, grants: &str) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(file)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            file = %file.display(),
            "{flag} can be read by group or others, who can then {grants}; chmod 600 it"
        );
    }
}

/// The text of `file` (named by `flag`), at most `limit` bytes: a FIFO, a device or a directory
/// is refused (reading one could block or never end), as is a longer file. Errors are usage
/// errors naming the flag and the file, never the content.
pub fn read(file: &Path, flag: &str, limit: usize) -> anyhow::Result<String> {
    let usage =
        |why: String| Outcome::Usage(format!("cannot read {flag} {}: {why}", file.display()));
    let mut opened = std::fs::File::open(file).map_err(|e| usage(e.to_string()))?;
    let meta = opened.metadata().map_err(|e| usage(e.to_string()))?;
    if !meta.is_file() {
        return Err(usage("not a regular file".to_owned()).into());
    }
    let mut raw = Vec::new();
    (&mut opened)
        .take(limit as u64 + 1)
        .read_to_end(&mut raw)
        .map_err(|e| usage(e.to_string()))?;
    if raw.len() > limit {
        return Err(usage(format!("longer than {limit} bytes")).into());
    }
    String::from_utf8(raw).map_err(|_| usage("not UTF-8 text".to_owned()).into())
}
