//! Exit codes, the one table README.md documents, and how an error maps to one.

use std::process::ExitCode;

use herald::announce::AnnounceError;
use herald::harness::{ExecError, HarnessError};
use herald::layout::LayoutError;
use herald::values::ValueError;
use herald::zk::ZkError;

/// herald's exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// Done; for `resolve`, the value (or `--default`) was printed.
    Ok = 0,
    /// Any other failure (an unexpected ZooKeeper error, an I/O error).
    Failure = 1,
    /// Bad command line or input: unknown flag, invalid key, name or root, oversized value,
    /// unreadable `--file`. Nothing was written.
    Usage = 2,
    /// The key is not published (`resolve` without `--default`, `delete` without `--missing-ok`).
    NotFound = 3,
    /// `resolve --wait --timeout` ran out of time.
    TimedOut = 4,
    /// ZooKeeper could not be reached within `--connect-timeout`, or the session was lost.
    Unreachable = 5,
    /// ZooKeeper refused this identity (ACL or credentials).
    Denied = 6,
    /// An /environment or /export entry is invalid or failed; the message names it.
    Entry = 7,
    /// The instance id is registered by another live session (herald never takes it over), or
    /// held by a persistent node.
    Duplicate = 8,
    /// ZooKeeper could not be reached and the last known value is older than `--max-stale`.
    Stale = 9,
    /// `herald run`: CMD was found but could not be executed.
    CannotExecute = 126,
    /// `herald run`: CMD was not found.
    CommandNotFound = 127,
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        ExitCode::from(exit as u8)
    }
}

/// An outcome a command reports as an error with its own exit code.
#[derive(Debug, thiserror::Error)]
pub enum Outcome {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    TimedOut(String),
    #[error("{0}")]
    Stale(String),
}

impl Exit {
    /// The exit code for an error: the first cause in its chain that herald knows decides.
    pub fn of(err: &anyhow::Error) -> Exit {
        for cause in err.chain() {
            if let Some(outcome) = cause.downcast_ref::<Outcome>() {
                return match outcome {
                    Outcome::Usage(_) => Exit::Usage,
                    Outcome::NotFound(_) => Exit::NotFound,
                    Outcome::TimedOut(_) => Exit::TimedOut,
                    Outcome::Stale(_) => Exit::Stale,
                };
            }
            if let Some(zk) = cause.downcast_ref::<ZkError>() {
                return Self::of_zk(zk);
            }
            if let Some(value) = cause.downcast_ref::<ValueError>() {
                return match value {
                    ValueError::TooLarge { .. } => Exit::Usage,
                    ValueError::Zk(zk) => Self::of_zk(zk),
                };
            }
            if let Some(announce) = cause.downcast_ref::<AnnounceError>() {
                return match announce {
                    AnnounceError::Duplicate { .. } | AnnounceError::Persistent { .. } => {
                        Exit::Duplicate
                    }
                    AnnounceError::Document(_) => Exit::Usage,
                    // Another user's host agent, or one that refuses this user.
                    AnnounceError::Host(_) => Exit::Denied,
                    AnnounceError::Zk(zk) => Self::of_zk(zk),
                };
            }
            if cause.is::<LayoutError>() {
                return Exit::Usage;
            }
            if cause.is::<HarnessError>() {
                return Exit::Entry;
            }
            if let Some(exec) = cause.downcast_ref::<ExecError>() {
                return match exec.exit_code() {
                    127 => Exit::CommandNotFound,
                    _ => Exit::CannotExecute,
                };
            }
        }
        Exit::Failure
    }

    fn of_zk(err: &ZkError) -> Exit {
        if err.is_unreachable() {
            Exit::Unreachable
        } else if err.is_denied() {
            Exit::Denied
        } else {
            Exit::Failure
        }
    }
}
