//! Why a `--check` could not be parsed ([`CheckError`]), and why one run of a check failed
//! ([`Failure`]: the short reason that goes into the logs).

use std::time::Duration;

/// The accepted forms, quoted by every parse error.
const FORMS: &str =
    "write tcp, tcp:PORT, tcp:HOST:PORT, http://HOST:PORT/PATH [contains=TEXT] or exec:COMMAND";

/// A `--check` that is not one of the accepted forms. The text is quoted with any URL password
/// masked.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("invalid --check {text:?}: {problem}; {FORMS}")]
    Invalid { text: String, problem: String },
    #[error(
        "invalid --check {text:?}: https is not supported; check the port with tcp:HOST:PORT, or run a client with exec: (e.g. exec:curl -fsS URL)"
    )]
    Https { text: String },
}

/// Why one run of a check failed, short enough for a log line ("connection refused",
/// "status 503", "exit 1", "timed out after 1s"). Never carries a command line, output or body.
#[derive(Debug, thiserror::Error)]
pub(super) enum Failure {
    #[error("timed out after {}", humantime::format_duration(*.0))]
    TimedOut(Duration),
    #[error("{}", short_io(.0))]
    Io(std::io::Error),
    #[error("status {0}")]
    Status(u16),
    #[error("not an HTTP response")]
    NotHttp,
    #[error("the connection closed before the response headers ended")]
    Truncated,
    #[error("the body does not contain the expected text")]
    BodyMismatch,
    #[error("exit {0}")]
    Exit(i32),
    #[error("killed by signal {0}")]
    Signal(i32),
    #[error("cannot start /bin/sh: {}", short_io(.0))]
    Spawn(std::io::Error),
    #[error("the exit status was lost (reaped elsewhere)")]
    StatusLost,
}

/// An I/O error as a short lower-case phrase: "Connection refused (os error 111)" becomes
/// "connection refused".
fn short_io(err: &std::io::Error) -> String {
    let text = err.to_string();
    let text = match text.rfind(" (os error ") {
        Some(at) if text.ends_with(')') => &text[..at],
        _ => &text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_reasons_are_short() {
        let refused = std::io::Error::from_raw_os_error(libc::ECONNREFUSED);
        let table = [
            (Failure::Io(refused), "connection refused"),
            (Failure::Status(503), "status 503"),
            (Failure::Exit(1), "exit 1"),
            (Failure::Signal(9), "killed by signal 9"),
            (
                Failure::TimedOut(Duration::from_secs(1)),
                "timed out after 1s",
            ),
            (
                Failure::TimedOut(Duration::from_millis(200)),
                "timed out after 200ms",
            ),
        ];
        for (failure, want) in table {
            assert_eq!(failure.to_string(), want);
        }
    }
}
