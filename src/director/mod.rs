//! The director: watch the instances of services, derive a value from them, and publish it
//! into `<root>/environment/<KEY>` — one fenced leader per output.
//!
//! ```text
//! cache (recursive watch, O(1) per event, re-list on reconnect) ─▶ derive (pure) ─▶ publish (fenced)
//!                                                          election (ephemeral-sequential) ─┘
//! ```

pub mod cache;
pub mod config;
pub mod culprits;
pub mod derive;
pub mod election;
pub mod guards;
pub mod limbo;
pub mod preset;
pub mod publish;
pub mod run;
pub mod settle;
pub mod slots;
pub mod template;
