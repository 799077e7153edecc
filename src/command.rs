//! The one way herald runs another program: an /environment or /export entry, an `exec`
//! derivation, a `--check` or `--reload` command, a PCP tool, an exec health check.
//!
//! [`run`] starts it in its own process group with exactly the environment given, stdin from
//! the given bytes (written from a task, so a program that prints before it reads cannot
//! deadlock with herald) or /dev/null, and each of stdout and stderr discarded, passed through
//! or kept up to a bound ([`Sink`]). A run past its timeout, or one whose future is dropped
//! (cancellation), has its whole process group killed — the shell and everything it started —
//! as long as the leader has not been reaped (after that its id may be another's). Once the
//! program has exited its pipes are read for [`DRAIN_GRACE`] more: a background child it left
//! holding them is not waited for. Started through a [`Reaper`] when one runs (herald as PID 1
//! reaps every child, so a status must be claimed before it is reaped).

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::unix::pipe;

use crate::reaper::Reaper;

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

/// How long a finished program's pipes are still read.
pub const DRAIN_GRACE: Duration = Duration::from_millis(200);
/// How long a killed group's leader is waited for, so that it is reaped before returning.
const REAP_GRACE: Duration = Duration::from_secs(1);

/// What becomes of a program's stdout or stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    Null,
    /// herald's own.
    Inherit,
    /// The first `n` bytes are kept; then the pipe is closed (the writer gets SIGPIPE). Ask for
    /// one more than the limit to tell "too much" from "exactly the limit".
    Keep(usize),
    /// Passed through to herald's stderr, its last `n` bytes kept for a message.
    Tail(usize),
}

/// One program to run.
pub struct Spec<'a> {
    pub program: &'a OsStr,
    pub args: Vec<OsString>,
    pub env: &'a BTreeMap<OsString, OsString>,
    /// Written to stdin; `None`: stdin is /dev/null.
    pub stdin: Option<&'a [u8]>,
    pub stdout: Sink,
    pub stderr: Sink,
    pub timeout: Duration,
    /// Start it through the reaper (when herald reaps every child, as PID 1 does).
    pub reaper: Option<&'a Reaper>,
}

impl<'a> Spec<'a> {
    /// `/bin/sh -c COMMAND herald ARGS…`: `$0` is `herald`, `args` are `$1…`. An absolute path,
    /// so the environment need not have a PATH.
    pub fn shell(command: &str, args: &[&Path], env: &'a BTreeMap<OsString, OsString>) -> Spec<'a> {
        let mut all: Vec<OsString> = vec!["-c".into(), command.into(), "herald".into()];
        all.extend(args.iter().map(|a| a.as_os_str().to_owned()));
        Spec::program(OsStr::new("/bin/sh"), all, env)
    }

    /// `program` (a path, or a name looked up on `env`'s PATH) with `args`, no shell; output
    /// discarded, no input, 30s.
    pub fn program(
        program: &'a OsStr,
        args: Vec<OsString>,
        env: &'a BTreeMap<OsString, OsString>,
    ) -> Spec<'a> {
        Spec {
            program,
            args,
            env,
            stdin: None,
            stdout: Sink::Null,
            stderr: Sink::Null,
            timeout: Duration::from_secs(30),
            reaper: None,
        }
    }
}

/// A program that ran to its end.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    /// What [`Sink::Keep`] or [`Sink::Tail`] kept (empty otherwise).
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Why a program did not run to its end.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot start it: {0}")]
    Spawn(#[source] std::io::Error),
    /// Killed, with its process group, at the timeout; what stderr kept until then.
    #[error("it ran past {} and was killed", humantime::format_duration(*.after))]
    TimedOut { after: Duration, stderr: Vec<u8> },
    /// Its status was collected by someone else: nothing is known of how it ended.
    #[error("its exit status was lost")]
    StatusLost,
}

/// Runs `spec` as the module says.
///
/// Cancellation safety: dropping the future kills the program's process group.
pub async fn run(spec: Spec<'_>) -> Result<Finished, RunError> {
    let stdio = |sink: Sink| match sink {
        Sink::Null => Stdio::null(),
        Sink::Inherit => Stdio::inherit(),
        Sink::Keep(_) | Sink::Tail(_) => Stdio::piped(),
    };
    let mut command = std::process::Command::new(spec.program);
    command
        .args(&spec.args)
        .env_clear()
        .envs(spec.env)
        .stdin(if spec.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(stdio(spec.stdout))
        .stderr(stdio(spec.stderr))
        .process_group(0);
    let (pid, mut exit, pipes) = match spec.reaper {
        Some(reaper) => {
            let spawned = reaper.spawn(&mut command).map_err(RunError::Spawn)?;
            let child = spawned.child;
            let pipes = Pipes {
                stdin: child
                    .stdin
                    .and_then(|p| pipe::Sender::from_owned_fd(p.into()).ok())
                    .map(boxed_writer),
                stdout: child
                    .stdout
                    .and_then(|p| pipe::Receiver::from_owned_fd(p.into()).ok())
                    .map(boxed_reader),
                stderr: child
                    .stderr
                    .and_then(|p| pipe::Receiver::from_owned_fd(p.into()).ok())
                    .map(boxed_reader),
            };
            (spawned.pid, Exit::Reaped(spawned.exited), pipes)
        }
        None => {
            let mut child = tokio::process::Command::from(command)
                .kill_on_drop(true)
                .spawn()
                .map_err(RunError::Spawn)?;
            let pid = child.id().map_or(0, |id| id as libc::pid_t);
            let pipes = Pipes {
                stdin: child.stdin.take().map(boxed_writer),
                stdout: child.stdout.take().map(boxed_reader),
                stderr: child.stderr.take().map(boxed_reader),
            };
            (pid, Exit::Child(child), pipes)
        }
    };
    let mut group = Group(Some(pid).filter(|&p| p > 0));
    let feed = pipes
        .stdin
        .zip(spec.stdin.map(<[u8]>::to_vec))
        .map(|(mut pipe, input)| {
            tokio::spawn(async move {
                let _ = pipe.write_all(&input).await;
            })
        });
    let stdout = Kept::default();
    let stderr = Kept::default();
    let readers = [
        pipes
            .stdout
            .map(|p| tokio::spawn(collect(p, stdout.clone(), spec.stdout))),
        pipes
            .stderr
            .map(|p| tokio::spawn(collect(p, stderr.clone(), spec.stderr))),
    ];
    let waited = tokio::time::timeout(spec.timeout, exit.wait()).await;
    if let Some(feed) = feed {
        feed.abort();
    }
    let status = match waited {
        Ok(Some(status)) => {
            // Reaped: the group id may be reused from now on, so it must not be signalled.
            group.disarm();
            status
        }
        Ok(None) => {
            group.disarm();
            return Err(RunError::StatusLost);
        }
        Err(_elapsed) => {
            group.kill();
            let _ = tokio::time::timeout(REAP_GRACE, exit.wait()).await;
            finish(readers).await;
            return Err(RunError::TimedOut {
                after: spec.timeout,
                stderr: stderr.take(),
            });
        }
    };
    finish(readers).await;
    Ok(Finished {
        status,
        stdout: stdout.take(),
        stderr: stderr.take(),
    })
}

type Reader = Box<dyn AsyncRead + Unpin + Send>;
type Writer = Box<dyn AsyncWrite + Unpin + Send>;

fn boxed_reader(r: impl AsyncRead + Unpin + Send + 'static) -> Reader {
    Box::new(r)
}

fn boxed_writer(w: impl AsyncWrite + Unpin + Send + 'static) -> Writer {
    Box::new(w)
}

struct Pipes {
    stdin: Option<Writer>,
    stdout: Option<Reader>,
    stderr: Option<Reader>,
}

/// How the program's status arrives.
enum Exit {
    Child(tokio::process::Child),
    Reaped(tokio::sync::oneshot::Receiver<ExitStatus>),
}

impl Exit {
    /// The status, once; `None` when it is lost (or was already taken).
    async fn wait(&mut self) -> Option<ExitStatus> {
        match self {
            Exit::Child(child) => child.wait().await.ok(),
            Exit::Reaped(exited) => exited.await.ok(),
        }
    }
}

/// Bytes a pipe reader keeps; shared so that what was read survives the reader being stopped.
#[derive(Clone, Default)]
struct Kept(Arc<Mutex<Vec<u8>>>);

impl Kept {
    fn take(&self) -> Vec<u8> {
        self.0
            .lock()
            .map(|mut k| std::mem::take(&mut *k))
            .unwrap_or_default()
    }
}

/// Reads `pipe` as `sink` says, until its end (or, for [`Sink::Keep`], its bound).
async fn collect(mut pipe: Reader, into: Kept, sink: Sink) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut passthrough = tokio::io::stderr();
    loop {
        let n = match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if let Sink::Tail(_) = sink {
            // Flushed each time: tokio's stderr hands the bytes to a blocking thread, and an
            // unflushed write can still be on its way when herald exec()s CMD, and is lost.
            let _ = passthrough.write_all(&buf[..n]).await;
            let _ = passthrough.flush().await;
        }
        let Ok(mut kept) = into.0.lock() else { return };
        kept.extend_from_slice(&buf[..n]);
        match sink {
            Sink::Tail(keep) => {
                let excess = kept.len().saturating_sub(keep);
                kept.drain(..excess);
            }
            Sink::Keep(limit) if kept.len() >= limit => {
                // Enough to know; stop reading (the writer gets SIGPIPE).
                kept.truncate(limit);
                return;
            }
            _ => {}
        }
    }
}

/// Lets the pipe readers finish what is buffered (within one grace period), then stops them.
async fn finish(readers: [Option<tokio::task::JoinHandle<()>>; 2]) {
    let deadline = tokio::time::Instant::now() + DRAIN_GRACE;
    for task in readers.into_iter().flatten() {
        let abort = task.abort_handle();
        if tokio::time::timeout_at(deadline, task).await.is_err() {
            abort.abort();
        }
    }
}

/// A running program's process group: killed when dropped (cancellation) or on timeout, unless
/// disarmed once its leader has been reaped.
struct Group(Option<libc::pid_t>);

impl Group {
    fn kill(&mut self) {
        if let Some(pgid) = self.0.take() {
            // SAFETY: plain syscall; the group is the program's own (process_group(0)) and its
            // leader has not been reaped, so the id cannot have been reused.
            unsafe { libc::killpg(pgid, libc::SIGKILL) };
        }
    }

    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `command` with `args` as `$1…`, `input` on stdin and exactly `env`, its output passed
/// through; Ok on exit 0.
pub async fn run_command(
    role: &'static str,
    command: &str,
    args: &[&Path],
    input: Option<&[u8]>,
    env: &BTreeMap<OsString, OsString>,
    timeout: Duration,
) -> Result<(), CommandError> {
    let mut spec = Spec::shell(command, args, env);
    spec.stdin = input;
    spec.stdout = Sink::Inherit;
    spec.stderr = Sink::Inherit;
    spec.timeout = timeout;
    let finished = run(spec).await.map_err(|e| CommandError::of(role, e))?;
    match (finished.status.code(), finished.status.signal()) {
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

/// Runs `program` (found on `PATH` from `env`) with `args`, no shell, no input and exactly
/// `env`, killed with its group after `timeout`; captures at most [`MAX_CAPTURE`] bytes of
/// each output. A non-zero exit is [`CommandError::Said`] with the first line of its stderr, so
/// that a tool's own diagnosis (`pcp_attach_node: connection refused`) is reported.
///
/// Cancellation safety: dropping the future kills the process group.
pub async fn run_program(
    role: &'static str,
    program: &str,
    args: &[String],
    env: &BTreeMap<OsString, OsString>,
    timeout: Duration,
) -> Result<Captured, CommandError> {
    let mut spec = Spec::program(
        OsStr::new(program),
        args.iter().map(OsString::from).collect(),
        env,
    );
    spec.stdout = Sink::Keep(MAX_CAPTURE);
    spec.stderr = Sink::Keep(MAX_CAPTURE);
    spec.timeout = timeout;
    let finished = run(spec).await.map_err(|e| CommandError::of(role, e))?;
    let stdout = String::from_utf8_lossy(&finished.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&finished.stderr).into_owned();
    match (finished.status.code(), finished.status.signal()) {
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

impl CommandError {
    fn of(role: &'static str, err: RunError) -> CommandError {
        match err {
            RunError::Spawn(source) => CommandError::Spawn { role, source },
            RunError::TimedOut { after, .. } => CommandError::TimedOut { role, after },
            RunError::StatusLost => CommandError::Failed { role, code: -1 },
        }
    }
}

/// The first non-empty line, trimmed and cut to 300 characters.
fn first_line(text: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(|l| l.chars().take(300).collect())
}
