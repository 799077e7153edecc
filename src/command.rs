//! Running a user's command (a `--check`, a `--reload`): `/bin/sh -c COMMAND` in its own process
//! group, stdin from the given bytes or /dev/null, stdout and stderr passed through, the group
//! killed after a timeout.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::process::Stdio;
use std::time::Duration;

/// Why a command did not succeed. Messages name the command's role (`--check`, `--reload`),
/// never its text (it may carry credentials).
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("{role} could not start: {source}")]
    Spawn {
        role: &'static str,
        source: std::io::Error,
    },
    #[error("{role} exited with status {code}")]
    Failed { role: &'static str, code: i32 },
    #[error("{role} was killed by signal {signal}")]
    Killed { role: &'static str, signal: i32 },
    #[error("{role} ran past {} and was killed", humantime::format_duration(*.after))]
    TimedOut { role: &'static str, after: Duration },
}

/// Runs `command` with `args` as `$1…`, `input` on stdin and exactly `env`; Ok on exit 0.
pub async fn run_command(
    role: &'static str,
    command: &str,
    args: &[&std::path::Path],
    input: Option<&[u8]>,
    env: &BTreeMap<OsString, OsString>,
    timeout: Duration,
) -> Result<(), CommandError> {
    let mut child = tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .arg("herald")
        .args(args)
        .env_clear()
        .envs(env)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| CommandError::Spawn { role, source })?;
    let pgid = child.id().map(|id| id as libc::pid_t);
    // Written while waiting, so a command that does not read its input cannot block herald.
    let feed = child
        .stdin
        .take()
        .zip(input.map(<[u8]>::to_vec))
        .map(|(mut stdin, input)| {
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let _ = stdin.write_all(&input).await;
            })
        });
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => status,
        Ok(Err(source)) => return Err(CommandError::Spawn { role, source }),
        Err(_elapsed) => {
            if let Some(pgid) = pgid {
                // SAFETY: plain syscall; the group is the command's own (process_group(0)).
                unsafe { libc::killpg(pgid, libc::SIGKILL) };
            }
            let _ = child.wait().await;
            return Err(CommandError::TimedOut {
                role,
                after: timeout,
            });
        }
    };
    if let Some(feed) = feed {
        feed.abort();
    }
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(0), _) => Ok(()),
        (Some(code), _) => Err(CommandError::Failed { role, code }),
        (None, Some(signal)) => Err(CommandError::Killed { role, signal }),
        (None, None) => Err(CommandError::Failed { role, code: -1 }),
    }
}
