//! Registration: one service process as the ephemeral znode `<root>/services/<service>/<id>`,
//! present exactly while the process is alive, healthy and not drained.
//!
//! ```text
//! health::monitor ─┐
//! drain (signals,  ├─▶ wanted ─▶ registrar::maintain ─▶ node::claim / release ─▶ ZooKeeper
//!  control socket) ┘                  ▲ new session (expiry), node deleted by someone
//! ```

mod agent;
mod control;
mod document;
mod host;
mod node;
mod registrar;
pub mod relay;

use std::time::Duration;

use crate::acl::Policy;
use tokio::sync::watch;

use crate::instance::{DocumentError, Instance};
use crate::layout::Layout;
use crate::zk::ZkError;

pub use agent::{Agent, Plan};
pub use control::{
    Control, ControlError, MAX_REASON, Reply, Request, default_control_dir, matches_socket, now_ms,
    request, sockets,
};
pub use document::{Document, Drain, Switch};
pub use host::{default_address, default_id, hostname};
pub use node::Node;
pub use registrar::{Registered, Status, Wanted, Why, maintain};

/// Why an instance could not be registered.
#[derive(Debug, thiserror::Error)]
pub enum AnnounceError {
    #[error(
        "{path} is registered by another live session (0x{owner:x}); give this instance another --id, or stop the other one"
    )]
    Duplicate { path: String, owner: i64 },
    #[error(
        "a persistent node, not a registration, occupies {path}: no session owns it, so it never goes away by itself; remove it (zkCli.sh delete {path}) or give this instance another --id"
    )]
    Persistent { path: String },
    /// The host agent refused the registration (`--host-agent`).
    #[error("the host agent refused the registration: {0}")]
    Host(String),
    #[error(transparent)]
    Document(#[from] DocumentError),
    #[error(transparent)]
    Zk(#[from] ZkError),
}

impl Node {
    /// The node for `instance` under `layout`, created with the policy's instance ACL (its
    /// metadata may hold credentials: with credentials, only its owner and the granted
    /// directors may read it); see [`crate::acl`].
    pub fn of(layout: &Layout, instance: &Instance, policy: Policy) -> Result<Node, DocumentError> {
        Ok(Node::at(layout, instance, instance.to_json()?, policy))
    }

    /// The node for `instance` holding `data`, its document as already written out.
    pub fn at(layout: &Layout, instance: &Instance, data: Vec<u8>, policy: Policy) -> Node {
        let (service, id) = (&instance.service, &instance.id);
        Node {
            path: layout.instance(service, id),
            parent: layout.service(service),
            mark: layout.rewrite_mark(service, id),
            data,
            departure: layout.departure(service, id),
            departures: layout.departures_of(service),
            root: layout.root().to_owned(),
            policy,
        }
    }
}

/// How long a first registration waits for a node held by another session: a crashed
/// predecessor with the same id holds it until its session times out (counted from its last
/// heartbeat, by the server, with up to a tick of slack).
pub fn duplicate_wait(session_timeout: Duration) -> Duration {
    session_timeout.saturating_mul(2)
}

/// `true` while every input is `true`: the node is wanted while healthy and not drained.
pub fn all_of(mut inputs: Vec<watch::Receiver<bool>>) -> watch::Receiver<bool> {
    let value = |inputs: &mut Vec<watch::Receiver<bool>>| {
        inputs.iter_mut().all(|rx| *rx.borrow_and_update())
    };
    let (tx, rx) = watch::channel(value(&mut inputs));
    tokio::spawn(async move {
        loop {
            let changes = inputs.iter_mut().map(|rx| Box::pin(rx.changed()));
            let (changed, _) = crate::first::first_of(changes).await;
            if changed.is_err() {
                return;
            }
            let now = value(&mut inputs);
            tx.send_if_modified(|v| std::mem::replace(v, now) != now);
            if tx.is_closed() {
                return;
            }
        }
    });
    rx
}
