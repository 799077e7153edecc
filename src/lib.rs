//! herald: ZooKeeper-backed service discovery for containers.
//!
//! A process finds its dependencies through `/environment` scripts that read published values,
//! and makes itself known through registration; a director derives service addresses from the
//! live instances and publishes them back. This crate is the library behind the `herald` binary.
//!
//! Map of the crate:
//! - [`layout`]: the znode layout and the validated names in it (the only place paths are built).
//! - [`zk`]: the session layer: connect strings, credentials, connecting within a deadline,
//!   rebuilding after session expiry.
//! - [`values`]: published values under `<root>/environment`: put, get, wait, delete, list.
//! - [`announce`]: registration: the ephemeral instance znode, kept while healthy and not
//!   drained, re-created after expiry or deletion, never taken from another session.
//! - [`director`]: instances → derived value → fenced publish, with leader election per output.
//! - [`last_known`]: the local copy of values read from ZooKeeper, served (with their age)
//!   while ZooKeeper cannot be reached.
//! - [`catalog`]: the registered services and their instance counts.
//! - [`departure`]: why an instance deregistered (the record beside its deleted node).
//! - [`input`]: files that flags name, read the one way: regular files only, bounded.
//! - [`instance`]: the instance document (Curator-compatible JSON) of one registered process.
//! - [`harness`]: `herald run`: /environment and /export entries, then exec or supervise CMD.
//! - [`health`]: tcp, http and exec health checks with rise/fall, combined into one healthy flag.
//! - [`gateway`]: the single-machine HTTP daemon: containers POST and GET values.
//! - [`http_server`]: the one bounded HTTP/1.1 server (accept loop, limits, listeners).
//! - [`local_socket`]: Unix sockets only this user and root may use (control, gateway).
//! - [`watch`]: the consumer side: a value rendered into a file atomically, checked, reloaded.
//! - [`command`]: running a user's shell command (check, reload) with a timeout.
//! - [`first`]: the first of several futures to finish.
//! - [`reaper`]: exit statuses of herald's children, and of every orphan when herald is PID 1.
//! - [`telemetry`]: Prometheus metrics and the status page of a long-running herald.
//! - [`report`]: an error and its causes as one line, each cause said once.

pub mod acl;
pub mod announce;
pub mod catalog;
pub mod command;
pub mod departure;
pub mod director;
pub mod first;
pub mod gateway;
pub mod harness;
pub mod health;
pub mod http_server;
pub mod input;
pub mod instance;
pub mod last_known;
pub mod layout;
pub mod local_socket;
pub mod reaper;
pub mod report;
pub mod telemetry;
pub mod values;
pub mod watch;
pub mod zk;
