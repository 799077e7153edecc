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
    /// A program whose diagnosis is worth repeating (see [`run_program`]).
    #[error("{role} exited with status {code}: {said}")]
    Said {
        role: &'static str,
        code: i32,
        said: String,
    },
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

/// The most a program run by [`run_program`] may print on each of stdout and stderr; the rest is
/// dropped.
pub const MAX_CAPTURE: usize = 256 * 1024;

/// What a program printed.
#[derive(Debug, Clone, Default)]
pub struct Captured {
    pub stdout: String,
    pub stderr: String,
}

/// Runs `program` (found on `PATH` from `env`) with `args`, no shell, stdin from /dev/null and
/// exactly `env`, in its own process group killed after `timeout`; captures at most
/// [`MAX_CAPTURE`] bytes of each output. A non-zero exit is [`CommandError::Said`] with the
/// first line of its stderr, so that a tool's own diagnosis (`pcp_attach_node: connection
/// refused`) is reported.
///
/// Cancellation safety: dropping the future kills the process group.
pub async fn run_program(
    role: &'static str,
    program: &str,
    args: &[String],
    env: &BTreeMap<OsString, OsString>,
    timeout: Duration,
) -> Result<Captured, CommandError> {
    use tokio::io::AsyncReadExt;
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .map_err(|source| CommandError::Spawn { role, source })?;
    let pgid = child.id().map(|id| id as libc::pid_t);
    let read = |pipe: Option<Box<dyn tokio::io::AsyncRead + Unpin + Send>>| async move {
        let mut buf = Vec::new();
        if let Some(pipe) = pipe {
            let _ = pipe.take(MAX_CAPTURE as u64).read_to_end(&mut buf).await;
        }
        String::from_utf8_lossy(&buf).into_owned()
    };
    let stdout = child
        .stdout
        .take()
        .map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Unpin + Send>);
    let stderr = child
        .stderr
        .take()
        .map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Unpin + Send>);
    let run = async { tokio::join!(child.wait(), read(stdout), read(stderr)) };
    let (status, stdout, stderr) = match tokio::time::timeout(timeout, run).await {
        Ok((Ok(status), stdout, stderr)) => (status, stdout, stderr),
        Ok((Err(source), _, _)) => return Err(CommandError::Spawn { role, source }),
        Err(_elapsed) => {
            if let Some(pgid) = pgid {
                // SAFETY: plain syscall; the group is the program's own (process_group(0)), and
                // it has not been reaped yet (the wait above was cancelled), so the id is ours.
                unsafe { libc::killpg(pgid, libc::SIGKILL) };
            }
            let _ = child.wait().await;
            return Err(CommandError::TimedOut {
                role,
                after: timeout,
            });
        }
    };
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(0), _) => Ok(Captured { stdout, stderr }),
        (Some(code), _) => Err(CommandError::Said {
            role,
            code,
            said: first_line(&stderr)
                .or_else(|| first_line(&stdout))
                .unwrap_or_default(),
        }),
        (None, Some(signal)) => Err(CommandError::Killed { role, signal }),
        (None, None) => Err(CommandError::Failed { role, code: -1 }),
    }
}

/// The first non-empty line, trimmed and cut to 300 characters.
fn first_line(text: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(|l| l.chars().take(300).collect())
}
