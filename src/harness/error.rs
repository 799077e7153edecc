//! Why an /environment or /export entry could not produce its value. Every message names the
//! file and says what to do.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("directory {} does not exist; create it or drop the flag that names it", .dir.display())]
    DirMissing { dir: PathBuf },
    #[error("cannot read directory {}: {source}; check its permissions", .dir.display())]
    DirUnreadable {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {name:?} is not a variable name (a letter or '_', then letters, digits or '_'); rename the file", .file.display())]
    InvalidName { file: PathBuf, name: String },
    #[error("{} starts with #! but is not executable; run: chmod +x {}", .file.display(), .file.display())]
    NotExecutable { file: PathBuf },
    #[error("{} is a symlink to a missing target; fix the link or remove it", .file.display())]
    BrokenSymlink { file: PathBuf },
    #[error("{} is not a regular file or directory; remove it", .file.display())]
    NotAFile { file: PathBuf },
    #[error("cannot read {}: {source}; check its permissions", .file.display())]
    Unreadable {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot run {}: it has no #! line and is not a binary for this system; start it with a line such as #!/bin/sh", .file.display())]
    NoInterpreter { file: PathBuf },
    #[error("cannot run {}: {source}; check its #! line and permissions", .file.display())]
    Spawn {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{} exited with status {code}{}; fix the script", .file.display(), stderr_suffix(.stderr))]
    Failed {
        file: PathBuf,
        code: i32,
        stderr: String,
    },
    #[error("{} was killed by signal {signal}{}; fix the script", .file.display(), stderr_suffix(.stderr))]
    Killed {
        file: PathBuf,
        signal: i32,
        stderr: String,
    },
    #[error(
        "{} ran longer than {} and was killed with its process group{}; fix it or raise --script-timeout",
        .file.display(), humantime::format_duration(*.after), stderr_suffix(.stderr)
    )]
    TimedOut {
        file: PathBuf,
        after: Duration,
        stderr: String,
    },
    #[error("{} printed {problem}; a value must be UTF-8 text without NUL bytes, at most 1 MiB", .file.display())]
    BadOutput {
        file: PathBuf,
        problem: &'static str,
    },
}

impl HarnessError {
    /// Why `file` could not be started: a file the kernel cannot execute (ENOEXEC, a script
    /// without `#!`) is said for what it is.
    pub fn spawn(file: &std::path::Path, source: std::io::Error) -> HarnessError {
        if source.raw_os_error() == Some(libc::ENOEXEC) {
            HarnessError::NoInterpreter {
                file: file.to_owned(),
            }
        } else {
            HarnessError::Spawn {
                file: file.to_owned(),
                source,
            }
        }
    }
}

/// The tail of a script's stderr, folded onto the error's single line.
fn stderr_suffix(stderr: &str) -> String {
    let folded = stderr.split_whitespace().collect::<Vec<_>>().join(" ");
    if folded.is_empty() {
        String::new()
    } else {
        format!(" (stderr: {folded})")
    }
}
