//! Keeping one instance registered exactly while it should be: on every change of "wanted"
//! (health, drain), of the session (expiry → a new session → register again at once), or of the
//! node itself (deleted or rewritten by someone → restore it), converge the node to the wanted
//! state. Reconnects within a session change nothing.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use zookeeper_client as zk;

use super::AnnounceError;
use super::node::{Claim, Node};
use crate::zk::{Live, SessionHandle, ZkError, state_error};

/// Whether the node exists, for drain feedback and status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registered {
    No,
    Yes,
}

/// How long to wait before retrying after a connection loss (the client reconnects meanwhile).
const RETRY: Duration = Duration::from_millis(100);

/// Keeps `node` registered while `want` is true, until `cancel`; then deletes it (if ours) and
/// returns. `registered` follows the node's state.
///
/// At the first registration a node held by another session is waited for up to
/// `duplicate_wait` (a crashed predecessor's session expires by then), then refused as a
/// duplicate; `None` waits as long as it takes, as does every later registration: herald never
/// takes the node over.
///
/// # Notable errors
/// [`AnnounceError::Duplicate`]; [`AnnounceError::Zk`] when the session cannot be regained
/// (credentials refused) or ZooKeeper refuses the write (ACL).
pub async fn maintain(
    session: &SessionHandle,
    node: &Node,
    mut want: watch::Receiver<bool>,
    registered: watch::Sender<Registered>,
    duplicate_wait: Option<Duration>,
    cancel: CancellationToken,
) -> Result<(), AnnounceError> {
    let mut live = session.live();
    // Our node's version while it is registered in `live`'s session.
    let mut ours: Option<i32> = None;
    let mut ever_registered = false;
    let mut duplicate_deadline: Option<Instant> = None;
    let set = |state: Registered| {
        registered.send_if_modified(|s| std::mem::replace(s, state) != state);
    };
    loop {
        let wanted = *want.borrow_and_update();
        // What to wait for after this round besides cancel, want and a new session.
        let mut watcher: Option<zk::OneshotWatcher> = None;
        let mut retry_at: Option<Instant> = None;
        let outcome: Result<(), zk::Error> = async {
            if !wanted {
                if let Some(version) = ours.take() {
                    release(node, &live, version).await;
                    set(Registered::No);
                }
                return Ok(());
            }
            match node.claim(&live.client).await? {
                Claim::Ours { version } => {
                    let (stat, w) = live.client.check_and_watch_stat(&node.path).await?;
                    match stat {
                        Some(stat) if stat.ephemeral_owner == live.client.session_id().0 => {
                            if ours.is_none() {
                                info!(path = %node.path, session = %live.client.session_id(), "registered");
                            }
                            ours = Some(stat.version.max(version));
                            ever_registered = true;
                            duplicate_deadline = None;
                            set(Registered::Yes);
                            watcher = Some(w);
                        }
                        // Deleted or taken over just now: go round again.
                        _ => retry_at = Some(Instant::now()),
                    }
                }
                Claim::Foreign { owner } => {
                    ours = None;
                    set(Registered::No);
                    let deadline = duplicate_wait
                        .filter(|_| !ever_registered)
                        .map(|wait| *duplicate_deadline.get_or_insert_with(|| Instant::now() + wait));
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Err(zk::Error::NodeExists);
                    }
                    warn!(path = %node.path, owner = format_args!("{owner:#x}"), "the instance id is registered by another session; waiting for it to go away");
                    let (stat, w) = live.client.check_and_watch_stat(&node.path).await?;
                    if stat.is_none() {
                        retry_at = Some(Instant::now());
                    } else {
                        watcher = Some(w);
                        retry_at = deadline;
                    }
                }
                Claim::Gone => retry_at = Some(Instant::now()),
            }
            Ok(())
        }
        .await;
        match outcome {
            Ok(()) => {}
            Err(zk::Error::NodeExists) => {
                let owner = match live.client.check_stat(&node.path).await {
                    Ok(Some(stat)) => stat.ephemeral_owner,
                    _ => 0,
                };
                return Err(AnnounceError::Duplicate {
                    path: node.path.clone(),
                    owner,
                });
            }
            Err(zk::Error::SessionExpired | zk::Error::ClientClosed) => {
                ours = None;
                set(Registered::No);
            }
            Err(zk::Error::ConnectionLoss | zk::Error::Timeout | zk::Error::SessionMoved) => {
                debug!(path = %node.path, "connection lost; retrying");
                retry_at = Some(Instant::now() + RETRY);
            }
            Err(err) => return Err(ZkError::op("register", &node.path, err).into()),
        }

        let generation = live.generation;
        tokio::select! {
            _ = cancel.cancelled() => {
                if let Some(version) = ours.take() {
                    release(node, &live, version).await;
                    set(Registered::No);
                }
                return Ok(());
            }
            changed = want.changed() => {
                // Nobody decides any more: stop as if cancelled.
                if changed.is_err() {
                    if let Some(version) = ours.take() {
                        release(node, &live, version).await;
                        set(Registered::No);
                    }
                    return Ok(());
                }
            }
            renewed = session.renewed(generation) => {
                live = renewed?;
                if ours.take().is_some() {
                    set(Registered::No);
                }
                debug!(generation = live.generation, "new session; registering again");
            }
            event = wait_event(watcher) => {
                if let Some(event) = event {
                    if event.event_type == zk::EventType::Session {
                        if matches!(state_error(event.session_state), zk::Error::SessionExpired | zk::Error::ClientClosed) {
                            ours = None;
                            set(Registered::No);
                        }
                    } else {
                        debug!(path = %node.path, event = ?event.event_type, "our node changed");
                    }
                }
            }
            _ = sleep_until(retry_at) => {}
        }
    }
}

/// Deletes our node; failures are logged (the session's end removes it anyway).
async fn release(node: &Node, live: &Live, version: i32) {
    match node.release(&live.client, version).await {
        Ok(()) => info!(path = %node.path, "deregistered"),
        Err(err) => {
            warn!(error = %err, "could not delete the instance node; it goes when the session ends")
        }
    }
}

async fn wait_event(watcher: Option<zk::OneshotWatcher>) -> Option<zk::WatchedEvent> {
    match watcher {
        Some(w) => Some(w.changed().await),
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
