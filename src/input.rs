//! Files that flags name (`--config`, `--zk-auth-file`, `--meta-file`, `--template`, a
//! director template), read the one way: a regular file only, opened without blocking (a FIFO
//! put there cannot hang herald with its signals unserved), and at most a limit (a link to
//! `/dev/zero` cannot eat memory).

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};

/// The most herald reads of a configuration, template or metadata file.
pub const MAX_FLAG_FILE: usize = 1024 * 1024;

/// Why a file a flag names could not be read. Messages name the flag and the file.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("cannot read {flag} {}: {source}; check the path", .path.display())]
    Io {
        flag: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{flag} {} is {kind}, not a regular file; give the path of a file", .path.display())]
    NotRegular {
        flag: &'static str,
        path: PathBuf,
        kind: &'static str,
    },
    #[error("{flag} {} is larger than {limit} bytes; give the file it should be", .path.display())]
    TooLarge {
        flag: &'static str,
        path: PathBuf,
        limit: usize,
    },
    #[error("{flag} {} is not UTF-8 text; save it as UTF-8", .path.display())]
    NotText { flag: &'static str, path: PathBuf },
}

/// What a file of `mode` (as `stat` gives it) is, for a message; `None` for a regular file.
pub fn kind_of(mode: u32) -> Option<&'static str> {
    use rustix::fs::FileType;
    Some(match FileType::from_raw_mode(mode as _) {
        FileType::RegularFile => return None,
        FileType::Directory => "a directory",
        FileType::Symlink => "a symbolic link",
        FileType::CharacterDevice | FileType::BlockDevice => "a device",
        FileType::Fifo => "a FIFO",
        FileType::Socket => "a socket",
        FileType::Unknown => "not a regular file",
    })
}

/// Reads the regular file `path` (links followed) that `flag` names, at most `limit` bytes.
pub fn read(flag: &'static str, path: &Path, limit: usize) -> Result<Vec<u8>, InputError> {
    let io = |source: std::io::Error| InputError::Io {
        flag,
        path: path.to_owned(),
        source,
    };
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer.
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
    )
    .map_err(|e| io(e.into()))?;
    let stat = rustix::fs::fstat(&fd).map_err(|e| io(e.into()))?;
    if let Some(kind) = kind_of(stat.st_mode as u32) {
        return Err(InputError::NotRegular {
            flag,
            path: path.to_owned(),
            kind,
        });
    }
    let mut content = Vec::new();
    File::from(fd)
        .take(limit as u64 + 1)
        .read_to_end(&mut content)
        .map_err(io)?;
    if content.len() > limit {
        return Err(InputError::TooLarge {
            flag,
            path: path.to_owned(),
            limit,
        });
    }
    Ok(content)
}

/// [`read`], as UTF-8 text.
pub fn read_text(flag: &'static str, path: &Path, limit: usize) -> Result<String, InputError> {
    String::from_utf8(read(flag, path, limit)?).map_err(|_| InputError::NotText {
        flag,
        path: path.to_owned(),
    })
}

/// Warns when group or others can read `path`, which holds the secret behind `flag`; `grants`
/// says what a reader could then do.
pub fn warn_if_others_can_read(path: &Path, flag: &str, grants: &str) {
    use std::os::unix::fs::PermissionsExt;
    if std::fs::metadata(path).is_ok_and(|meta| meta.permissions().mode() & 0o077 != 0) {
        tracing::warn!(
            file = %path.display(),
            "{flag} can be read by group or others, who can then {grants}; chmod 600 it"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("herald-input-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_fifo_is_refused_at_once() {
        let dir = scratch("fifo");
        let fifo = dir.join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let err = read("--config", &fifo, 10).unwrap_err().to_string();
        assert!(err.contains("--config") && err.contains("a FIFO"), "{err}");
    }

    #[test]
    fn devices_directories_and_long_files_are_refused() {
        let err = read("--meta-file", Path::new("/dev/zero"), 10)
            .unwrap_err()
            .to_string();
        assert!(err.contains("a device"), "{err}");
        let dir = scratch("long");
        let err = read("--template", &dir, 10).unwrap_err().to_string();
        assert!(err.contains("a directory"), "{err}");
        let file = dir.join("f");
        std::fs::write(&file, b"0123456789").unwrap();
        assert_eq!(read("--template", &file, 10).unwrap(), b"0123456789");
        let err = read("--template", &file, 9).unwrap_err().to_string();
        assert!(err.contains("larger than 9 bytes"), "{err}");
        std::fs::write(&file, b"\xff").unwrap();
        assert!(read_text("--template", &file, 9).is_err());
        let err = read("--config", &dir.join("missing"), 9)
            .unwrap_err()
            .to_string();
        assert_eq!(err.matches("No such file").count(), 1, "{err}");
    }
}
