//! Collecting the exit status of herald's long-lived children, and — when herald is PID 1 — of
//! every orphan the kernel re-parents to it (tini's duty: otherwise they stay zombies).
//!
//! Invariant: while a `Reaper` runs in PID 1 it reaps with `waitpid(-1)`, so every child herald
//! starts in that time must be started through [`Reaper::spawn`], or its status is lost.
//! Outside PID 1 it waits only for the children it started.

use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;

type Waiters = Arc<Mutex<HashMap<libc::pid_t, oneshot::Sender<ExitStatus>>>>;

/// Reaps children on SIGCHLD. Dropping it stops reaping.
pub struct Reaper {
    waiters: Waiters,
    task: tokio::task::JoinHandle<()>,
}

/// A child started through the reaper.
pub struct Spawned {
    pub pid: libc::pid_t,
    /// Resolves with the child's status once it has been reaped.
    pub exited: oneshot::Receiver<ExitStatus>,
    /// Its pipes (never waited on: the reaper collects its status).
    pub child: std::process::Child,
}

impl Reaper {
    /// Starts reaping; reaps every orphan too when this process is PID 1. Must be called on a
    /// tokio runtime.
    pub fn start() -> std::io::Result<Reaper> {
        let reap_orphans = std::process::id() == 1;
        // Subscribed before any child starts, so no SIGCHLD is missed.
        let mut sigchld = signal(SignalKind::child())?;
        let waiters: Waiters = Arc::default();
        let task = tokio::spawn({
            let waiters = waiters.clone();
            async move {
                loop {
                    reap(&waiters, reap_orphans);
                    if sigchld.recv().await.is_none() {
                        return;
                    }
                }
            }
        });
        Ok(Reaper { waiters, task })
    }

    /// Starts `command` and registers it before SIGCHLD can be handled, so its status cannot be
    /// reaped unclaimed.
    pub fn spawn(&self, command: &mut std::process::Command) -> std::io::Result<Spawned> {
        let mut waiters = self
            .waiters
            .lock()
            .map_err(|_| std::io::Error::other("the reaper's table is poisoned"))?;
        let child = command.spawn()?;
        let pid = child.id() as libc::pid_t;
        let (tx, exited) = oneshot::channel();
        waiters.insert(pid, tx);
        Ok(Spawned { pid, exited, child })
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reaps whatever has exited, without blocking.
fn reap(waiters: &Waiters, reap_orphans: bool) {
    let Ok(mut waiters) = waiters.lock() else {
        return;
    };
    if reap_orphans {
        loop {
            let mut status = 0;
            // SAFETY: plain syscall with a valid out-pointer.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                break;
            }
            match waiters.remove(&pid) {
                Some(tx) => {
                    let _ = tx.send(ExitStatus::from_raw(status));
                }
                None => tracing::debug!(pid, "reaped an orphan"),
            }
        }
    } else {
        let pids: Vec<libc::pid_t> = waiters.keys().copied().collect();
        for pid in pids {
            let mut status = 0;
            // SAFETY: plain syscall with a valid out-pointer; `pid` is our own child.
            match unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } {
                0 => {}
                reaped if reaped == pid => {
                    if let Some(tx) = waiters.remove(&pid) {
                        let _ = tx.send(ExitStatus::from_raw(status));
                    }
                }
                // Someone else reaped it (ECHILD): its waiter learns the status is lost.
                _ => {
                    waiters.remove(&pid);
                }
            }
        }
    }
}
