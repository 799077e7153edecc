//! The harness: builds a process's environment from /environment directories, runs its /export
//! declarations, then runs the command.
//!
//! ```text
//! entries::scan(dir) ─▶ [Entry] ─▶ script::run / literal ─▶ environment::build ─▶ exec::exec(CMD)
//!                                                       │                    or supervise::spawn
//!                                                       └─▶ export::declare ─▶ metadata
//! ```

mod entries;
mod environment;
mod error;
mod exec;
mod export;
mod mask;
pub mod notes;
mod script;
mod supervise;

use std::sync::Arc;
use std::time::Duration;

use crate::reaper::Reaper;

pub use entries::{Entry, Source, scan};
pub use environment::{Dir, IDENTITY_VARS, Resolved, build};
pub use error::HarnessError;
pub use exec::{ExecError, exec};
pub use export::declare;
pub use mask::mask;
pub use notes::{NOTES_VAR, Notes, RunNotes, STALE_VAR};
pub use supervise::{Child, Ended, FORWARDED, Signals, spawn};

/// The largest value an entry may produce.
pub const MAX_OUTPUT: usize = 1024 * 1024;

/// How entries are run.
#[derive(Clone)]
pub struct Limits {
    /// A script running longer is killed with its whole process group.
    pub script_timeout: Duration,
    /// Scripts are started through it while it runs (herald as PID 1 reaps every child: a
    /// script's status must be claimed through it).
    pub reaper: Option<Arc<Reaper>>,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("script_timeout", &self.script_timeout)
            .field("reaper", &self.reaper.is_some())
            .finish()
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            script_timeout: Duration::from_secs(30),
            reaper: None,
        }
    }
}
