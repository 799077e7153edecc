//! Replacing herald with the command (exec): the application becomes the process (PID 1 in a
//! container), gets signals directly, and its exit code is the container's.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::process::CommandExt;

/// Why the command could not be started; exit codes follow the shell's.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("{cmd}: command not found; check the command and PATH")]
    NotFound { cmd: String },
    #[error("{cmd}: permission denied; make it executable (chmod +x) or check its #! line")]
    NotExecutable { cmd: String },
    #[error(
        "cannot run {cmd}: it has no #! line and is not a binary for this system; start it with a line such as #!/bin/sh"
    )]
    NoInterpreter { cmd: String },
    #[error("cannot run {cmd}: {source}")]
    Other { cmd: String, source: std::io::Error },
}

impl ExecError {
    /// 127 when not found, 126 when found but not runnable, like a shell.
    pub fn exit_code(&self) -> u8 {
        match self {
            ExecError::NotFound { .. } => 127,
            ExecError::NotExecutable { .. }
            | ExecError::NoInterpreter { .. }
            | ExecError::Other { .. } => 126,
        }
    }

    /// Classifies the error from starting `cmd`.
    pub fn from_io(cmd: &OsStr, err: std::io::Error) -> ExecError {
        let cmd = cmd.to_string_lossy().into_owned();
        match err.kind() {
            std::io::ErrorKind::NotFound => ExecError::NotFound { cmd },
            std::io::ErrorKind::PermissionDenied => ExecError::NotExecutable { cmd },
            _ if err.raw_os_error() == Some(libc::ENOEXEC) => ExecError::NoInterpreter { cmd },
            _ => ExecError::Other { cmd, source: err },
        }
    }
}

/// Replaces this process with `cmd args…` and exactly `env`. Returns only on failure. A bare
/// command name is looked up in `env`'s PATH.
pub fn exec(cmd: &OsStr, args: &[OsString], env: &BTreeMap<OsString, OsString>) -> ExecError {
    let err = std::process::Command::new(cmd)
        .args(args)
        .env_clear()
        .envs(env)
        .exec();
    ExecError::from_io(cmd, err)
}
