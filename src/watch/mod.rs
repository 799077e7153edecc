//! The consumer side: rendering a published value into a config file that a program (pgpool,
//! HAProxy) reads. The file is replaced atomically — staged in the same directory, fsynced,
//! checked by the user's command, then renamed over the old one — and the program is reloaded
//! once per change. A value that cannot be written or fails its check leaves the old file alone.
//! The file is reached through its directory's descriptor, never through links others could
//! plant ([`out`]).
//! For pgpool, a reload is not enough: [`pgpool`] then brings pgpool's node table to the file.
//! For HAProxy, a reload is more than needed: [`haproxy`] changes its servers through its
//! Runtime API, and reloads only what cannot be changed so.

mod embed;
mod file;
pub mod haproxy;
mod out;
pub mod pgpool;

pub use embed::Embed;
pub use file::{Applied, Applies, FileTarget, Program, WatchError};
pub use out::{OutError, OutFile};
