//! The exec check: `/bin/sh -c COMMAND` (through [`crate::command`]) with exactly the given
//! environment, no input or output, in its own process group, started through the [`Reaper`]
//! (which owns every child's status when herald is PID 1); healthy on exit 0. A run past its
//! timeout, or one abandoned because the checks are stopping, has its whole process group
//! killed.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use super::error::Failure;
use crate::command::{self, RunError, Spec};
use crate::reaper::Reaper;

/// One run, bounded by `timeout`.
///
/// Cancellation safety: dropping the future kills the process group (the reaper still collects
/// the leader's status).
pub(super) async fn run(
    command: &str,
    env: &BTreeMap<OsString, OsString>,
    reaper: &Reaper,
    timeout: Duration,
) -> Result<(), Failure> {
    let mut spec = Spec::shell(command, &[], env);
    spec.timeout = timeout;
    spec.reaper = Some(reaper);
    let status = match command::run(spec).await {
        Ok(finished) => finished.status,
        Err(RunError::Spawn(e)) => return Err(Failure::Spawn(e)),
        Err(RunError::TimedOut { after, .. }) => return Err(Failure::TimedOut(after)),
        Err(RunError::StatusLost) => return Err(Failure::StatusLost),
    };
    match (status.code(), status.signal()) {
        (Some(0), _) => Ok(()),
        (Some(code), _) => Err(Failure::Exit(code)),
        (None, Some(signal)) => Err(Failure::Signal(signal)),
        (None, None) => Err(Failure::StatusLost),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::time::Instant;

    use super::*;
    use crate::health::tests::{eventually, is_dead, scratch_dir, test_env};

    #[tokio::test]
    async fn exit_statuses_become_reasons() {
        let reaper = Arc::new(Reaper::start().unwrap());
        let env = test_env();
        let second = Duration::from_secs(5);
        // (command, reason; "" for success)
        let table = [
            ("exit 0", ""),
            ("true", ""),
            ("exit 3", "exit 3"),
            ("kill -KILL $$", "killed by signal 9"),
            ("test -n \"$HERALD_TEST_VALUE\"", ""),
            ("test -z \"$HOME\"", ""),
        ];
        for (command, want) in table {
            let got = match run(command, &env, &reaper, second).await {
                Ok(()) => String::new(),
                Err(failure) => failure.to_string(),
            };
            assert_eq!(got, want, "{command}");
        }
    }

    #[tokio::test]
    async fn a_run_past_its_timeout_fails_and_its_whole_group_is_killed() {
        let reaper = Arc::new(Reaper::start().unwrap());
        let dir = scratch_dir("exec-timeout");
        let pidfile = dir.join("grandchild");
        // A background grandchild that would outlive its shell, then a shell that hangs.
        let command = format!(
            "sleep 30 & echo $! > {}.tmp && mv {0}.tmp {0}; sleep 30",
            pidfile.display()
        );
        let started = Instant::now();
        let result = run(&command, &test_env(), &reaper, Duration::from_millis(300)).await;
        let took = started.elapsed();
        assert!(
            matches!(result, Err(Failure::TimedOut(_))),
            "want a timeout, got {result:?}"
        );
        assert!(took < Duration::from_secs(5), "the run took {took:?}");
        let grandchild = std::fs::read_to_string(&pidfile).unwrap();
        eventually(
            "the background grandchild was killed with its group",
            || is_dead(grandchild.trim()),
        )
        .await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn an_abandoned_run_has_its_group_killed() {
        let reaper = Arc::new(Reaper::start().unwrap());
        let dir = scratch_dir("exec-abandoned");
        let pidfile = dir.join("pid");
        let command = format!(
            "echo $$ > {}.tmp && mv {0}.tmp {0}; sleep 30",
            pidfile.display()
        );
        let env = test_env();
        let run = run(&command, &env, &reaper, Duration::from_secs(60));
        tokio::select! {
            result = run => panic!("the run ended by itself: {result:?}"),
            () = eventually("the check started", || pidfile.exists()) => {}
        }
        // The run's future has been dropped.
        let pid = std::fs::read_to_string(&pidfile).unwrap();
        eventually("the abandoned check was killed", || is_dead(pid.trim())).await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}
