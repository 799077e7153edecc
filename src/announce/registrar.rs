//! Keeping one instance registered exactly while it should be: on every change of "wanted"
//! (health, drain), of the session (expiry → a new session → register again at once), or of the
//! node itself (deleted or rewritten by someone → restore it), converge the node to the wanted
//! state. Reconnects within a session change nothing.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use zookeeper_client as zk;

use super::AnnounceError;
use super::document::Document;
use super::node::{Claim, Node, Owned};
use crate::departure::Departure;
use crate::telemetry::Telemetry;
use crate::zk::{Live, Pace, SessionHandle, ZkError, paced, state_error};

/// Whether the node exists, for drain feedback and status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registered {
    No,
    Yes,
}

/// What the registrar last converged to: the node's state, and the wanted state it is acting on
/// (said before its round starts, so a caller that changed "wanted" knows when its change has
/// been carried out, never mistaking an earlier round's state for it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    pub registered: Registered,
    pub wanted: bool,
    /// The generation of the document the node holds (0: none confirmed).
    pub document: u64,
    /// Why our node last went, when we deleted it (`None`: not deleted by us — never
    /// registered, or gone with a session).
    pub left: Option<Departure>,
}

/// Why the node goes, asked at each deregistration: `true` when the registration ends (the
/// agent stops), `false` when it is no longer wanted (drained out, unhealthy). Written into the
/// departure record.
pub type Why = Arc<dyn Fn(bool) -> Departure + Send + Sync>;

/// Whether the node should exist, and why not when it should not; with `pace`, each
/// registration (a create, or recognising the node as ours) waits for its slot, shared with
/// every registration of the same pace (a host agent's, after its session was renewed).
pub struct Wanted {
    pub now: watch::Receiver<bool>,
    pub why: Why,
    pub pace: Option<Arc<Pace>>,
}

/// How long to wait before retrying after a connection loss (the client reconnects meanwhile).
const RETRY: Duration = Duration::from_millis(100);

/// Keeps `node` registered while `wanted` says so, holding the latest `document` (rewritten in
/// place when it changes), until `cancel`; then deletes it (if ours) and returns. `status`
/// follows what was carried out.
///
/// At the first registration a node held by another session is waited for up to
/// `duplicate_wait` of connected time (a crashed predecessor's session expires by then; the
/// wait starts over after a disconnection, as ZooKeeper renews every session's timeout when a
/// server restarts or a new leader takes over), then refused as a duplicate; `None` waits as long as it takes, as does every later registration: herald never
/// takes the node over.
///
/// # Notable errors
/// [`AnnounceError::Duplicate`]; [`AnnounceError::Zk`] when the session cannot be regained
/// (credentials refused) or ZooKeeper refuses the write (ACL).
pub async fn maintain(
    session: &SessionHandle,
    node: &Node,
    wanted: Wanted,
    mut document: watch::Receiver<Document>,
    status: watch::Sender<Status>,
    duplicate_wait: Option<Duration>,
    cancel: CancellationToken,
) -> Result<(), AnnounceError> {
    let Wanted {
        now: mut want,
        why,
        pace,
    } = wanted;
    let mut live = session.live();
    let mut states = live.client.state_watcher();
    let mut reg = Registrar {
        node: node.clone(),
        ours: None,
        maybe: false,
        ever_registered: false,
        duplicate_deadline: None,
        duplicate_wait,
        why,
        left: None,
        telemetry: session.telemetry().clone(),
        pace,
    };
    loop {
        let wanted = *want.borrow_and_update();
        let generation = {
            let doc = document.borrow_and_update();
            if *reg.node.data != *doc.bytes {
                reg.node.data = doc.bytes.to_vec();
            }
            doc.generation
        };
        // Said before acting on it: a status left from an earlier round (drained, not
        // registered) must not pass for this change carried out while the round still runs
        // (`herald drain` right after an undrain would return with the node still there).
        status.send_if_modified(|s| std::mem::replace(&mut s.wanted, wanted) != wanted);
        let mut next = Next::default();
        match reg.round(&live, wanted, &mut next).await {
            Ok(()) => {}
            Err(zk::Error::NodeExists) => {
                let owner = match live.client.check_stat(&reg.node.path).await {
                    Ok(Some(stat)) if stat.ephemeral_owner == 0 => {
                        return Err(AnnounceError::Persistent {
                            path: reg.node.path.clone(),
                        });
                    }
                    Ok(Some(stat)) => stat.ephemeral_owner,
                    _ => 0,
                };
                return Err(AnnounceError::Duplicate {
                    path: reg.node.path.clone(),
                    owner,
                });
            }
            Err(zk::Error::SessionExpired | zk::Error::ClientClosed) => reg.session_ended(),
            Err(zk::Error::ConnectionLoss | zk::Error::Timeout | zk::Error::SessionMoved) => {
                debug!(path = %reg.node.path, "connection lost; retrying");
                next.retry_at = Some(Instant::now() + RETRY);
            }
            Err(err) => return Err(ZkError::op("register", &reg.node.path, err).into()),
        }
        let now = Status {
            registered: if reg.ours.is_some() {
                Registered::Yes
            } else {
                Registered::No
            },
            wanted,
            document: if reg.ours.is_some() { generation } else { 0 },
            left: reg.left,
        };
        status.send_if_modified(|s| std::mem::replace(s, now) != now);

        let session_generation = live.generation;
        tokio::select! {
            _ = cancel.cancelled() => {
                reg.release_before_exit(&live).await;
                return Ok(());
            }
            changed = want.changed() => {
                // Nobody decides any more: stop as if cancelled.
                if changed.is_err() {
                    reg.release_before_exit(&live).await;
                    return Ok(());
                }
            }
            changed = document.changed() => {
                if changed.is_err() {
                    reg.release_before_exit(&live).await;
                    return Ok(());
                }
            }
            renewed = session.renewed(session_generation) => {
                live = renewed?;
                states = live.client.state_watcher();
                reg.session_ended();
                went_with_the_session(&status);
                debug!(generation = live.generation, "new session; registering again");
            }
            event = wait_event(next.watcher) => {
                if let Some(event) = event {
                    if event.event_type == zk::EventType::Session {
                        if matches!(state_error(event.session_state), zk::Error::SessionExpired | zk::Error::ClientClosed) {
                            reg.session_ended();
                            went_with_the_session(&status);
                            // Nothing more can be done in this session: wait for the next one
                            // (a round in this one would fail, and spend a slot of the pace).
                            tokio::select! {
                                _ = cancel.cancelled() => {
                                    reg.release_before_exit(&live).await;
                                    return Ok(());
                                }
                                renewed = session.renewed(session_generation) => {
                                    live = renewed?;
                                    states = live.client.state_watcher();
                                    debug!(generation = live.generation, "new session; registering again");
                                }
                            }
                        }
                    } else {
                        debug!(path = %reg.node.path, event = ?event.event_type, "our node changed");
                    }
                }
            }
            // A restarted server, or a new ensemble leader, gives every session a fresh
            // timeout, the other holder's too: the wait for it starts over once connected.
            _ = states.changed(), if reg.duplicate_deadline.is_some() => {
                reg.duplicate_deadline = None;
            }
            _ = sleep_until(next.retry_at) => {}
        }
    }
}

/// The node went with its session: said at once, since the next round may wait for the pace
/// (or the next session) and would only say "registered" again, before anyone heard it was not.
fn went_with_the_session(status: &watch::Sender<Status>) {
    status.send_if_modified(|s| {
        let was = s.registered;
        s.registered = Registered::No;
        s.document = 0;
        was != Registered::No
    });
}

/// What to wait for after a round, besides cancel, "wanted" and a new session.
#[derive(Default)]
struct Next {
    watcher: Option<zk::OneshotWatcher>,
    retry_at: Option<Instant>,
}

struct Registrar {
    /// Its data is the latest document.
    node: Node,
    /// Our node, confirmed, in the current session.
    ours: Option<Owned>,
    /// A create was sent whose outcome is unknown (its reply was lost): the node may be ours.
    maybe: bool,
    ever_registered: bool,
    duplicate_deadline: Option<Instant>,
    duplicate_wait: Option<Duration>,
    why: Why,
    /// Why we last deleted our node (cleared when a session loses it or it is registered).
    left: Option<Departure>,
    telemetry: Telemetry,
    pace: Option<Arc<Pace>>,
}

impl Registrar {
    /// One step towards `wanted`.
    async fn round(&mut self, live: &Live, wanted: bool, next: &mut Next) -> Result<(), zk::Error> {
        let client = &live.client;
        let path = &self.node.path;
        if !wanted {
            if self.ours.is_some() || self.maybe {
                let why = (self.why)(false);
                let release = self.node.release(client, self.ours.map(|o| o.czxid), why);
                self.telemetry.zk_request("deregister", release).await?;
                if self.ours.take().is_some() {
                    info!(path = %path, reason = %why, "deregistered");
                    self.left = Some(why);
                }
                self.maybe = false;
            }
            return Ok(());
        }
        // A slot of the pace is for a request that can go out: not while disconnected (it
        // would fail, and a storm would register at a fraction of the rate).
        if !matches!(
            client.state(),
            zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly
        ) {
            return Err(zk::Error::ConnectionLoss);
        }
        paced(self.pace.as_deref()).await;
        self.maybe = true;
        match self
            .telemetry
            .zk_request("register", self.node.claim(client))
            .await?
        {
            Claim::Ours(claimed) => {
                let (stat, watcher) = client.check_and_watch_stat(path).await?;
                match stat {
                    Some(stat)
                        if stat.ephemeral_owner == client.session_id().0
                            && stat.czxid == claimed.czxid =>
                    {
                        match self.ours {
                            None => {
                                self.left = None;
                                info!(path = %path, session = %client.session_id(), "registered")
                            }
                            Some(before) if before.version != claimed.version => {
                                info!(path = %path, "rewrote the instance document in place")
                            }
                            Some(_) => {}
                        }
                        // Rewritten by someone between the claim and the watch: claim again.
                        if stat.version != claimed.version {
                            next.retry_at = Some(Instant::now());
                        }
                        self.ours = Some(Owned {
                            czxid: stat.czxid,
                            version: stat.version,
                        });
                        self.ever_registered = true;
                        self.duplicate_deadline = None;
                        next.watcher = Some(watcher);
                    }
                    // Deleted or taken over just now: go round again.
                    _ => {
                        self.ours = None;
                        self.maybe = false;
                        next.retry_at = Some(Instant::now());
                    }
                }
            }
            // A persistent node: no session ends it, so there is nothing to wait for.
            Claim::Foreign { owner: 0 } => return Err(zk::Error::NodeExists),
            Claim::Foreign { owner } => {
                self.ours = None;
                self.maybe = false;
                let deadline = self
                    .duplicate_wait
                    .filter(|_| !self.ever_registered)
                    .map(|wait| {
                        *self
                            .duplicate_deadline
                            .get_or_insert_with(|| Instant::now() + wait)
                    });
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Err(zk::Error::NodeExists);
                }
                warn!(path = %path, owner = format_args!("{owner:#x}"), "the instance id is registered by another session; waiting for it to go away");
                let (stat, watcher) = client.check_and_watch_stat(path).await?;
                if stat.is_none() {
                    next.retry_at = Some(Instant::now());
                } else {
                    next.watcher = Some(watcher);
                    next.retry_at = deadline;
                }
            }
            Claim::Gone => {
                self.ours = None;
                self.maybe = false;
                next.retry_at = Some(Instant::now());
            }
        }
        Ok(())
    }

    /// The session's ephemeral nodes went with it.
    fn session_ended(&mut self) {
        if self.ours.is_some() {
            self.left = None;
        }
        self.ours = None;
        self.maybe = false;
    }

    /// Deletes our node before stopping, retrying through connection losses (the caller bounds
    /// the whole stop with a grace period; the session's close removes the node anyway).
    async fn release_before_exit(&mut self, live: &Live) {
        if self.ours.is_none() && !self.maybe {
            return;
        }
        let why = (self.why)(true);
        loop {
            let release = self
                .node
                .release(&live.client, self.ours.map(|o| o.czxid), why);
            match self.telemetry.zk_request("deregister", release).await {
                Ok(()) => {
                    if self.ours.take().is_some() {
                        info!(path = %self.node.path, reason = %why, "deregistered");
                    }
                    self.maybe = false;
                    return;
                }
                Err(zk::Error::ConnectionLoss | zk::Error::Timeout | zk::Error::SessionMoved) => {
                    tokio::time::sleep(RETRY).await;
                }
                Err(err) => {
                    warn!(error = %err, "could not delete the instance node; it goes when the session ends");
                    return;
                }
            }
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
