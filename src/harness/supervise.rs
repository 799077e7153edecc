//! Running the command as a supervised child, for when herald must stay alive beside it: the
//! child gets its own process group (and the terminal, when there is one), herald forwards the
//! signals a container runtime or a shell sends, reaps zombies when it is PID 1, and exits with
//! the child's code.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::future::poll_fn;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::ExitStatus;
use std::task::Poll;
use std::time::Duration;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::exec::ExecError;
use crate::reaper::Reaper;

/// The signals passed on to the child.
pub const FORWARDED: [libc::c_int; 7] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGWINCH,
];

/// herald's handlers for the forwarded signals. Installed before the child starts, so a signal
/// arriving in between is forwarded rather than ending herald.
pub struct Signals {
    streams: Vec<(libc::c_int, Signal)>,
}

impl Signals {
    pub fn install() -> std::io::Result<Signals> {
        let streams = FORWARDED
            .iter()
            .map(|&sig| Ok((sig, signal(SignalKind::from_raw(sig))?)))
            .collect::<std::io::Result<_>>()?;
        Ok(Signals { streams })
    }

    /// The next signal received, by number.
    pub async fn recv(&mut self) -> libc::c_int {
        poll_fn(|cx| {
            for (sig, stream) in &mut self.streams {
                if let Poll::Ready(Some(())) = stream.poll_recv(cx) {
                    return Poll::Ready(*sig);
                }
            }
            Poll::Pending
        })
        .await
    }
}

/// The command, running.
pub struct Child {
    pid: libc::pid_t,
    exited: oneshot::Receiver<ExitStatus>,
    /// The status, when [`Child::running`] took it from `exited`.
    ended: Option<Ended>,
}

/// Starts `cmd args…` with exactly `env`, in its own process group, which also becomes the
/// terminal's foreground group when stdin is a terminal (so an interactive CMD can read it).
///
/// CMD dies with herald: it gets SIGKILL when herald's (only) thread ends, however herald ends
/// (`PR_SET_PDEATHSIG`), so a killed sidecar never leaves an unregistered server serving. A
/// wrapper in CMD that changes user clears that signal unless it keeps it (`setpriv
/// --pdeathsig keep`).
pub fn spawn(
    reaper: &Reaper,
    cmd: &OsStr,
    args: &[OsString],
    env: &BTreeMap<OsString, OsString>,
) -> Result<Child, ExecError> {
    let mut command = std::process::Command::new(cmd);
    command.args(args).env_clear().envs(env).process_group(0);
    // SAFETY: plain syscall.
    let parent = unsafe { libc::getpid() };
    // SAFETY: only async-signal-safe calls between fork and exec. If herald died before the
    // signal was armed, the child is already an orphan: it ends itself.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                libc::_exit(137);
            }
            Ok(())
        });
    }
    // SAFETY: plain syscall, no allocation.
    if unsafe { libc::isatty(libc::STDIN_FILENO) } == 1 {
        // SAFETY: only async-signal-safe calls between fork and exec. SIGTTOU is blocked while
        // the new (background) group takes the terminal, as tini does; failures are harmless.
        unsafe {
            command.pre_exec(|| {
                let mut block: libc::sigset_t = std::mem::zeroed();
                let mut old: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut block);
                libc::sigaddset(&mut block, libc::SIGTTOU);
                libc::pthread_sigmask(libc::SIG_BLOCK, &block, &mut old);
                libc::tcsetpgrp(libc::STDIN_FILENO, libc::getpid());
                libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
                Ok(())
            })
        };
    }
    let spawned = reaper
        .spawn(&mut command)
        .map_err(|err| ExecError::from_io(cmd, err))?;
    Ok(Child {
        pid: spawned.pid,
        exited: spawned.exited,
        ended: None,
    })
}

impl Child {
    pub fn pid(&self) -> libc::pid_t {
        self.pid
    }

    /// Not reaped yet (its status has not arrived), so its pid is still its own.
    fn running(&mut self) -> bool {
        if self.ended.is_some() {
            return false;
        }
        match self.exited.try_recv() {
            Err(oneshot::error::TryRecvError::Empty) => true,
            Ok(status) => {
                self.ended = Some(Ended::from(status));
                false
            }
            Err(oneshot::error::TryRecvError::Closed) => {
                self.ended = Some(Ended::Lost);
                false
            }
        }
    }

    /// Forwards every signal in `signals` to the child until it exits, and returns its status.
    /// The first SIGTERM or SIGINT runs `before_stop` (e.g. deregistration) before it is
    /// forwarded; one arriving `kill_timeout` or more after the first kills the child's whole
    /// process group instead. `after_forward` hears of every signal passed on (herald's own
    /// part of it, e.g. SIGHUP declaring the metadata again).
    pub async fn wait(
        mut self,
        signals: &mut Signals,
        kill_timeout: Duration,
        before_stop: impl Future<Output = ()>,
        mut after_forward: impl FnMut(libc::c_int),
    ) -> Ended {
        let mut before_stop = Some(before_stop);
        let mut first_stop: Option<Instant> = None;
        loop {
            if let Some(ended) = self.ended {
                return ended;
            }
            tokio::select! {
                // The exit first: a signal must never go to a pid that was already reaped (it
                // may belong to someone else by now).
                biased;
                status = &mut self.exited => {
                    return match status {
                        Ok(status) => Ended::from(status),
                        Err(_) => Ended::Lost,
                    };
                }
                sig = signals.recv() => {
                    if sig == libc::SIGTERM || sig == libc::SIGINT {
                        match first_stop {
                            None => {
                                first_stop = Some(Instant::now());
                                if let Some(before_stop) = before_stop.take() {
                                    before_stop.await;
                                }
                            }
                            Some(first) if first.elapsed() >= kill_timeout => {
                                tracing::warn!(
                                    pid = self.pid,
                                    "the command is still running {} after the first stop signal; killing its process group",
                                    humantime::format_duration(kill_timeout)
                                );
                                if self.running() {
                                    // SAFETY: plain syscall; the group is the child's own.
                                    unsafe { libc::killpg(self.pid, libc::SIGKILL) };
                                }
                                continue;
                            }
                            Some(_) => {}
                        }
                    }
                    if self.running() {
                        tracing::debug!(pid = self.pid, signal = sig, "forwarding a signal");
                        // SAFETY: plain syscall. The pid is still ours: it is not reaped yet.
                        unsafe { libc::kill(self.pid, sig) };
                    }
                    after_forward(sig);
                }
            }
        }
    }
}

/// How the command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// It exited with this code.
    Exited(i32),
    /// It died of this signal.
    Signaled(i32),
    /// Its status could not be collected (something else reaped it).
    Lost,
}

impl From<ExitStatus> for Ended {
    fn from(status: ExitStatus) -> Ended {
        match (status.code(), status.signal()) {
            (Some(code), _) => Ended::Exited(code),
            (None, Some(sig)) => Ended::Signaled(sig),
            (None, None) => Ended::Lost,
        }
    }
}

impl Ended {
    /// The exit code a shell would report: the code, or 128+N for signal N.
    pub fn exit_code(self) -> u8 {
        match self {
            Ended::Exited(code) => (code & 0xff) as u8,
            Ended::Signaled(sig) => (128 + sig).clamp(0, 255) as u8,
            Ended::Lost => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_shell() {
        assert_eq!(Ended::Exited(0).exit_code(), 0);
        assert_eq!(Ended::Exited(42).exit_code(), 42);
        assert_eq!(Ended::Signaled(libc::SIGTERM).exit_code(), 143);
        assert_eq!(Ended::Signaled(libc::SIGKILL).exit_code(), 137);
        assert_eq!(Ended::from(ExitStatus::from_raw(3 << 8)), Ended::Exited(3));
        assert_eq!(
            Ended::from(ExitStatus::from_raw(libc::SIGINT)),
            Ended::Signaled(libc::SIGINT)
        );
    }
}
