//! Scanning an /environment or /export directory into entries: which files count, in which
//! order, and whether each is a script or a literal value.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tracing::debug;

use super::error::HarnessError;
use crate::layout::EnvKey;

/// What produces an entry's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// An executable: its stdout is the value.
    Script(PathBuf),
    /// A non-executable regular file: its content is the value.
    Literal(PathBuf),
}

impl Source {
    pub fn path(&self) -> &Path {
        match self {
            Source::Script(p) | Source::Literal(p) => p,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: EnvKey,
    pub source: Source,
}

/// Names that are never entries: dot-files and editor leftovers.
fn is_ignored(name: &str) -> bool {
    name.starts_with('.')
        || name.ends_with('~')
        || [".swp", ".orig", ".bak"]
            .iter()
            .any(|suffix| name.ends_with(suffix))
}

/// The entries of `dir` in byte order of their names. Symlinks are followed; subdirectories
/// are skipped. Any entry that cannot be used is an error naming it: nothing runs then.
pub fn scan(dir: &Path) -> Result<Vec<Entry>, HarnessError> {
    let unreadable = |source| HarnessError::DirUnreadable {
        dir: dir.to_owned(),
        source,
    };
    let mut names = Vec::new();
    for item in std::fs::read_dir(dir).map_err(unreadable)? {
        names.push(item.map_err(unreadable)?.file_name());
    }
    names.sort();
    let mut entries = Vec::with_capacity(names.len());
    for os_name in names {
        let file = dir.join(&os_name);
        let name = os_name.to_string_lossy();
        if is_ignored(&name) {
            debug!(file = %file.display(), "skipping a dot-file or editor leftover");
            continue;
        }
        let meta = match std::fs::metadata(&file) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(HarnessError::BrokenSymlink { file });
            }
            Err(source) => return Err(HarnessError::Unreadable { file, source }),
        };
        if meta.is_dir() {
            debug!(dir = %file.display(), "skipping a subdirectory");
            continue;
        }
        let Some(key) = os_name.to_str().and_then(|n| n.parse::<EnvKey>().ok()) else {
            return Err(HarnessError::InvalidName {
                file,
                name: name.into_owned(),
            });
        };
        if !meta.is_file() {
            return Err(HarnessError::NotAFile { file });
        }
        let source = if meta.permissions().mode() & 0o111 != 0 {
            Source::Script(file)
        } else {
            if starts_with_shebang(&file)? {
                return Err(HarnessError::NotExecutable { file });
            }
            Source::Literal(file)
        };
        entries.push(Entry { name: key, source });
    }
    Ok(entries)
}

fn starts_with_shebang(file: &Path) -> Result<bool, HarnessError> {
    let mut head = [0u8; 2];
    let mut f = std::fs::File::open(file).map_err(|source| HarnessError::Unreadable {
        file: file.to_owned(),
        source,
    })?;
    let n = f
        .read(&mut head)
        .map_err(|source| HarnessError::Unreadable {
            file: file.to_owned(),
            source,
        })?;
    Ok(n == 2 && head == *b"#!")
}

/// Turns raw output into a value: at most [`super::MAX_OUTPUT`] bytes of UTF-8 without NUL,
/// with exactly one trailing newline removed.
pub(crate) fn to_value(file: &Path, mut raw: Vec<u8>) -> Result<String, HarnessError> {
    let bad = |problem| HarnessError::BadOutput {
        file: file.to_owned(),
        problem,
    };
    if raw.len() > super::MAX_OUTPUT {
        return Err(bad("more than 1 MiB"));
    }
    if raw.contains(&0) {
        return Err(bad("a NUL byte"));
    }
    if raw.last() == Some(&b'\n') {
        raw.pop();
    }
    String::from_utf8(raw).map_err(|_| bad("bytes that are not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ignored_names() {
        for (name, ignored) in [
            (".hidden", true),
            ("DATABASE_URL~", true),
            ("DATABASE_URL.swp", true),
            ("X.orig", true),
            ("X.bak", true),
            ("DATABASE_URL", false),
            ("bootstrap", false),
        ] {
            assert_eq!(is_ignored(name), ignored, "{name}");
        }
    }

    #[test]
    fn values_lose_exactly_one_trailing_newline() {
        let f = Path::new("/environment/X");
        let table: &[(&[u8], Option<&str>)] = &[
            (b"v\n", Some("v")),
            (b"v\n\n", Some("v\n")),
            (b"a\nb", Some("a\nb")),
            (b"", Some("")),
            (b"\n", Some("")),
            (b"a\0b", None),
            (b"\xff\xfe", None),
        ];
        for (raw, want) in table {
            assert_eq!(to_value(f, raw.to_vec()).ok().as_deref(), *want, "{raw:?}");
        }
        assert!(to_value(f, vec![b'a'; super::super::MAX_OUTPUT + 1]).is_err());
    }
}
