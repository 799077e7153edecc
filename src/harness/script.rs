//! Running one executable entry (through [`crate::command`]): directly (no shell), stdin from
//! /dev/null, in its own process group, stdout captured as the value, stderr passed through (its
//! tail kept for errors), and the whole group killed when it runs past the timeout.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;

use super::error::HarnessError;
use super::{Limits, MAX_OUTPUT};
use crate::command::{self, RunError, Sink, Spec};

/// How much of a script's stderr an error quotes.
const STDERR_TAIL: usize = 300;

/// Runs `file` with exactly `env` and returns its raw stdout.
pub async fn run(
    file: &Path,
    env: &BTreeMap<OsString, OsString>,
    limits: &Limits,
) -> Result<Vec<u8>, HarnessError> {
    let mut spec = Spec::program(file.as_os_str(), Vec::new(), env);
    spec.stdout = Sink::Keep(MAX_OUTPUT + 1);
    spec.stderr = Sink::Tail(STDERR_TAIL);
    spec.timeout = limits.script_timeout;
    spec.reaper = limits.reaper.as_deref();
    let tail = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    let finished = match command::run(spec).await {
        Ok(finished) => finished,
        Err(RunError::Spawn(source)) => return Err(HarnessError::spawn(file, source)),
        Err(RunError::TimedOut { after, stderr }) => {
            return Err(HarnessError::TimedOut {
                file: file.to_owned(),
                after,
                stderr: tail(&stderr),
            });
        }
        Err(RunError::StatusLost) => {
            return Err(HarnessError::BadOutput {
                file: file.to_owned(),
                problem: "no exit status (another process collected it)",
            });
        }
    };
    // Reading stopped at the limit, so the script may have died of SIGPIPE: the size is the news.
    if finished.stdout.len() > MAX_OUTPUT {
        return Err(HarnessError::BadOutput {
            file: file.to_owned(),
            problem: "more than 1 MiB",
        });
    }
    if let Some(signal) = finished.status.signal() {
        return Err(HarnessError::Killed {
            file: file.to_owned(),
            signal,
            stderr: tail(&finished.stderr),
        });
    }
    match finished.status.code() {
        Some(0) => Ok(finished.stdout),
        code => Err(HarnessError::Failed {
            file: file.to_owned(),
            code: code.unwrap_or(-1),
            stderr: tail(&finished.stderr),
        }),
    }
}
