//! Running one executable entry: directly (no shell), stdin from /dev/null, in its own process
//! group, stdout captured as the value, stderr passed through (its tail kept for errors), and
//! the whole group killed when it runs past the timeout.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::MAX_OUTPUT;
use super::error::HarnessError;

/// How long to keep reading a finished script's pipes: a background child it left behind may
/// hold them open forever, and what the script itself wrote is already in the pipe.
const DRAIN_GRACE: Duration = Duration::from_millis(200);
/// How much of a script's stderr an error quotes.
const STDERR_TAIL: usize = 300;

/// Runs `file` with exactly `env` and returns its raw stdout.
pub async fn run(
    file: &Path,
    env: &BTreeMap<OsString, OsString>,
    timeout: Duration,
) -> Result<Vec<u8>, HarnessError> {
    let deadline = Instant::now() + timeout;
    let mut child = tokio::process::Command::new(file)
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| HarnessError::spawn(file, source))?;
    let pgid = child.id().map(|id| id as libc::pid_t);
    let stdout = Arc::new(Mutex::new(Vec::new()));
    let stderr_tail = Arc::new(Mutex::new(Vec::new()));
    let out_task = child
        .stdout
        .take()
        .map(|pipe| tokio::spawn(collect(pipe, stdout.clone(), MAX_OUTPUT + 1, false)));
    let err_task = child
        .stderr
        .take()
        .map(|pipe| tokio::spawn(collect(pipe, stderr_tail.clone(), STDERR_TAIL, true)));

    let waited = tokio::time::timeout_at(deadline, child.wait()).await;
    let tail = |tail: &Arc<Mutex<Vec<u8>>>| {
        let bytes = tail.lock().map(|t| t.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    let status = match waited {
        Ok(Ok(status)) => status,
        Ok(Err(source)) => return Err(HarnessError::spawn(file, source)),
        Err(_elapsed) => {
            if let Some(pgid) = pgid {
                // SAFETY: plain syscall; the group is the script's own (process_group(0)).
                unsafe { libc::killpg(pgid, libc::SIGKILL) };
            }
            let _ = child.wait().await;
            finish(out_task, err_task).await;
            return Err(HarnessError::TimedOut {
                file: file.to_owned(),
                after: timeout,
                stderr: tail(&stderr_tail),
            });
        }
    };
    finish(out_task, err_task).await;
    // Reading stopped at the limit, so the script may have died of SIGPIPE: the size is the news.
    if stdout.lock().is_ok_and(|out| out.len() > MAX_OUTPUT) {
        return Err(HarnessError::BadOutput {
            file: file.to_owned(),
            problem: "more than 1 MiB",
        });
    }
    if let Some(signal) = status.signal() {
        return Err(HarnessError::Killed {
            file: file.to_owned(),
            signal,
            stderr: tail(&stderr_tail),
        });
    }
    match status.code() {
        Some(0) => Ok(std::mem::take(&mut *stdout.lock().map_err(|_| {
            HarnessError::BadOutput {
                file: file.to_owned(),
                problem: "output that could not be collected",
            }
        })?)),
        code => Err(HarnessError::Failed {
            file: file.to_owned(),
            code: code.unwrap_or(-1),
            stderr: tail(&stderr_tail),
        }),
    }
}

/// Lets the pipe readers finish what is buffered (both within one grace period), then stops them.
async fn finish(
    out: Option<tokio::task::JoinHandle<()>>,
    err: Option<tokio::task::JoinHandle<()>>,
) {
    let deadline = Instant::now() + DRAIN_GRACE;
    for task in [out, err].into_iter().flatten() {
        let abort = task.abort_handle();
        if tokio::time::timeout_at(deadline, task).await.is_err() {
            abort.abort();
        }
    }
}

/// Reads `pipe` into `into`: the first `limit` bytes, or (`keep_tail`) the last `limit` bytes
/// while copying everything to herald's stderr.
async fn collect(
    mut pipe: impl AsyncRead + Unpin,
    into: Arc<Mutex<Vec<u8>>>,
    limit: usize,
    keep_tail: bool,
) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut passthrough = tokio::io::stderr();
    loop {
        let n = match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if keep_tail {
            let _ = passthrough.write_all(&buf[..n]).await;
        }
        let Ok(mut kept) = into.lock() else { return };
        kept.extend_from_slice(&buf[..n]);
        if keep_tail {
            let excess = kept.len().saturating_sub(limit);
            kept.drain(..excess);
        } else if kept.len() >= limit {
            // Enough to know it is too large; stop reading (the script gets SIGPIPE).
            kept.truncate(limit);
            return;
        }
    }
}
