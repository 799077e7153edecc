//! The values the gateway serves, kept in memory: a GET of a key read before costs no ZooKeeper
//! round trip. One persistent recursive watch on `<root>/environment` keeps them current: an
//! event for a key drops its copy, so the next GET reads it again (one read per change, never a
//! re-read of everything).
//!
//! Consistency: a copy is served only while the watch is armed on a connected session, so a GET
//! sees every write ZooKeeper has delivered the event of (ZooKeeper sends a watch event before
//! any later read's answer). A write through this gateway drops the copy before it answers, so
//! its writer's next GET sees it; a write through another client is seen once its event arrives
//! (the event's delivery, typically a millisecond on one machine). `Cache-Control: no-cache`
//! asks for a `sync` and a read instead: it sees every write acknowledged before the request.
//!
//! A read that raced an event is not kept: a miss registers the read it starts (a ticket per
//! key); an event for that key, or any re-arming of the watch, voids the ticket, and only a
//! read whose ticket is still valid stores its answer. Events for other keys do not matter.
//!
//! While the session is disconnected the copies are served with their age (since the
//! disconnection); after a reconnect or a new session they are dropped, because events made
//! meanwhile are never sent. Copies are bounded by [`MAX_HELD`] bytes (least recently used go).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use hyper::body::Bytes;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use zookeeper_client::{AddWatchMode, EventType, SessionState};

use crate::last_known::LastKnown;
use crate::layout::{EnvKey, Layout};
use crate::zk::{Live, SessionHandle, ZkError};

/// The most bytes of values (and keys) held in memory.
pub const MAX_HELD: usize = 64 << 20;
/// The bytes an entry costs beyond its key and value.
const ENTRY_OVERHEAD: usize = 64;
/// How often the last known values on disk are marked confirmed for the keys held, while the
/// watch is armed.
const CONFIRM_EVERY: Duration = Duration::from_secs(60);

/// What memory says of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Held: the value (`None`: not published), and its age when ZooKeeper is not reachable
    /// right now.
    Held(Option<Bytes>, Option<Duration>),
    /// Not held, and the watch is armed: read it, then [`Mirror::fill`] with this ticket.
    Miss(u64),
    /// Not held, and no connected session: ZooKeeper cannot answer now.
    Offline,
}

#[derive(Debug)]
struct Entry {
    value: Option<Bytes>,
    used: u64,
}

impl Entry {
    fn cost(key: &EnvKey, value: &Option<Bytes>) -> usize {
        key.as_str().len() + value.as_ref().map_or(0, Bytes::len) + ENTRY_OVERHEAD
    }
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<EnvKey, Entry>,
    held: usize,
    /// The reads in flight, by key: the ticket of the latest one not voided by an event.
    pending: HashMap<EnvKey, u64>,
    /// The last ticket given.
    tickets: u64,
    /// The watch is armed on a connected session: the entries are current.
    live: bool,
    /// Since when the entries are not confirmed (the disconnection); `None` while live.
    stale_since: Option<SystemTime>,
    /// A clock for least-recently-used eviction.
    tick: u64,
}

/// The gateway's copies of values.
#[derive(Debug, Default)]
pub struct Mirror {
    state: Mutex<State>,
}

impl Mirror {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the map half-changed in a way that
        // matters more than serving: take it anyway.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn lookup(&self, key: &EnvKey) -> Lookup {
        let mut state = self.state();
        state.tick += 1;
        let tick = state.tick;
        let age = state
            .stale_since
            .map(|since| SystemTime::now().duration_since(since).unwrap_or_default());
        if let Some(entry) = state.entries.get_mut(key) {
            entry.used = tick;
            return Lookup::Held(entry.value.clone(), age);
        }
        if !state.live {
            return Lookup::Offline;
        }
        // A read of a key already being read shares its ticket: either may store the answer,
        // as long as no event for the key came since the first began.
        if let Some(ticket) = state.pending.get(key) {
            return Lookup::Miss(*ticket);
        }
        state.tickets += 1;
        let ticket = state.tickets;
        state.pending.insert(key.clone(), ticket);
        Lookup::Miss(ticket)
    }

    /// Keeps what ZooKeeper answered for KEY, unless an event for it came since `ticket` was
    /// given.
    pub fn fill(&self, key: &EnvKey, ticket: u64, value: Option<Bytes>) {
        let mut state = self.state();
        if !state.live || state.pending.get(key) != Some(&ticket) {
            return;
        }
        state.pending.remove(key);
        let cost = Entry::cost(key, &value);
        if cost > MAX_HELD {
            return;
        }
        while state.held + cost > MAX_HELD {
            let Some(oldest) = state
                .entries
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some(gone) = state.entries.remove(&oldest) {
                state.held -= Entry::cost(&oldest, &gone.value);
            }
        }
        state.tick += 1;
        let used = state.tick;
        if let Some(old) = state.entries.insert(key.clone(), Entry { value, used }) {
            state.held -= Entry::cost(key, &old.value);
        }
        state.held += cost;
    }

    /// A read with `ticket` failed: it will store nothing.
    pub fn abandon(&self, key: &EnvKey, ticket: u64) {
        let mut state = self.state();
        if state.pending.get(key) == Some(&ticket) {
            state.pending.remove(key);
        }
    }

    /// Drops KEY's copy: it changed (an event, or a write through this gateway).
    pub fn invalidate(&self, key: &EnvKey) {
        let mut state = self.state();
        state.pending.remove(key);
        if let Some(gone) = state.entries.remove(key) {
            state.held -= Entry::cost(key, &gone.value);
        }
    }

    /// The watch is armed on a connected session: start afresh.
    fn arm(&self) {
        let mut state = self.state();
        state.pending.clear();
        state.entries.clear();
        state.held = 0;
        state.live = true;
        state.stale_since = None;
    }

    /// The session is disconnected: keep serving the copies, with their age.
    fn disarm(&self) {
        let mut state = self.state();
        state.pending.clear();
        if state.live {
            state.live = false;
            state.stale_since = Some(SystemTime::now());
        }
    }

    /// The session is gone: nothing held can be trusted more than the disk.
    fn forget(&self) {
        self.disarm();
        let mut state = self.state();
        state.entries.clear();
        state.held = 0;
    }

    /// The keys held with a value, for confirming their last known values.
    fn held_keys(&self) -> Vec<EnvKey> {
        let state = self.state();
        if !state.live {
            return Vec::new();
        }
        state
            .entries
            .iter()
            .filter(|(_, e)| e.value.is_some())
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Whether the watch is armed on a connected session: values are read and followed.
    pub fn is_live(&self) -> bool {
        self.state().live
    }

    /// How many bytes are held (for tests and the status).
    pub fn held(&self) -> usize {
        self.state().held
    }
}

/// Keeps `mirror` current from `session` until `cancel`.
pub async fn follow(
    mirror: Arc<Mirror>,
    session: SessionHandle,
    layout: Layout,
    cache: Option<LastKnown>,
    cancel: CancellationToken,
) {
    let mut live = session.live();
    loop {
        let round = follow_session(&mirror, &live, &layout, cache.as_ref(), &cancel).await;
        mirror.disarm();
        match round {
            Ok(true) => return,
            Ok(false) => {}
            Err(err) if err.is_unreachable() => debug!(error = %err, "mirror: connection lost"),
            Err(err) => warn!(error = %err, "following the values failed; retrying"),
        }
        if live.client.state().is_terminated() {
            mirror.forget();
            tokio::select! {
                _ = cancel.cancelled() => return,
                renewed = session.renewed(live.generation) => match renewed {
                    Ok(renewed) => live = renewed,
                    Err(_) => return,
                },
            }
        } else {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }
}

/// One session's round: `Ok(true)` when cancelled.
async fn follow_session(
    mirror: &Mirror,
    live: &Live,
    layout: &Layout,
    cache: Option<&LastKnown>,
    cancel: &CancellationToken,
) -> Result<bool, ZkError> {
    let client = &live.client;
    let root = layout.environment();
    let mut watcher = client
        .watch(&root, AddWatchMode::PersistentRecursive)
        .await
        .map_err(|err| ZkError::op("watch", &root, err))?;
    mirror.arm();
    let mut disconnected = false;
    let mut confirm = tokio::time::interval(CONFIRM_EVERY);
    loop {
        let event = tokio::select! {
            _ = cancel.cancelled() => return Ok(true),
            _ = confirm.tick() => {
                if let Some(cache) = cache {
                    for key in mirror.held_keys() {
                        let _ = cache.confirm(&key);
                    }
                }
                continue;
            }
            event = watcher.changed() => event,
        };
        match event.event_type {
            EventType::Session => match event.session_state {
                SessionState::Disconnected => {
                    disconnected = true;
                    mirror.disarm();
                }
                SessionState::SyncConnected if disconnected => {
                    disconnected = false;
                    info!("reconnected; values are read from ZooKeeper again");
                    // Events made while disconnected are never sent: add the watch on this
                    // connection, then forget every copy.
                    watcher = client
                        .watch(&root, AddWatchMode::PersistentRecursive)
                        .await
                        .map_err(|err| ZkError::op("watch", &root, err))?;
                    mirror.arm();
                }
                state if state.is_terminated() => return Ok(false),
                _ => {}
            },
            EventType::NodeCreated | EventType::NodeDataChanged | EventType::NodeDeleted => {
                if let Some(key) = event
                    .path
                    .strip_prefix(root.as_str())
                    .and_then(|rest| rest.strip_prefix('/'))
                    .and_then(|name| name.parse::<EnvKey>().ok())
                {
                    mirror.invalidate(&key);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> EnvKey {
        k.parse().unwrap()
    }

    #[test]
    fn a_read_that_raced_an_event_is_not_kept() {
        let mirror = Mirror::default();
        assert_eq!(mirror.lookup(&key("A")), Lookup::Offline);
        mirror.arm();
        let Lookup::Miss(epoch) = mirror.lookup(&key("A")) else {
            panic!("a miss")
        };
        mirror.invalidate(&key("A"));
        mirror.fill(&key("A"), epoch, Some(Bytes::from_static(b"old")));
        let Lookup::Miss(epoch) = mirror.lookup(&key("A")) else {
            panic!("still a miss")
        };
        mirror.fill(&key("A"), epoch, Some(Bytes::from_static(b"new")));
        assert_eq!(
            mirror.lookup(&key("A")),
            Lookup::Held(Some(Bytes::from_static(b"new")), None)
        );
        // Not published is held too.
        let Lookup::Miss(epoch) = mirror.lookup(&key("B")) else {
            panic!("a miss")
        };
        mirror.fill(&key("B"), epoch, None);
        assert_eq!(mirror.lookup(&key("B")), Lookup::Held(None, None));
    }

    #[test]
    fn events_for_other_keys_do_not_void_a_read() {
        let mirror = Mirror::default();
        mirror.arm();
        let Lookup::Miss(a) = mirror.lookup(&key("A")) else {
            panic!("a miss")
        };
        let Lookup::Miss(same) = mirror.lookup(&key("A")) else {
            panic!("a miss")
        };
        assert_eq!(a, same, "reads of one key share a ticket");
        mirror.invalidate(&key("B"));
        mirror.fill(&key("A"), a, Some(Bytes::from_static(b"a")));
        assert_eq!(
            mirror.lookup(&key("A")),
            Lookup::Held(Some(Bytes::from_static(b"a")), None)
        );
    }

    #[test]
    fn disconnected_copies_are_served_with_an_age_and_dropped_on_reconnect() {
        let mirror = Mirror::default();
        mirror.arm();
        let Lookup::Miss(epoch) = mirror.lookup(&key("A")) else {
            panic!("a miss")
        };
        mirror.fill(&key("A"), epoch, Some(Bytes::from_static(b"v")));
        mirror.disarm();
        match mirror.lookup(&key("A")) {
            Lookup::Held(Some(v), Some(age)) => {
                assert_eq!(v, Bytes::from_static(b"v"));
                assert!(age < Duration::from_secs(60));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(mirror.lookup(&key("B")), Lookup::Offline);
        // A fill from a read begun before the disconnection is not kept.
        mirror.fill(&key("B"), epoch, None);
        assert_eq!(mirror.lookup(&key("B")), Lookup::Offline);
        mirror.arm();
        assert!(matches!(mirror.lookup(&key("A")), Lookup::Miss(_)));
        assert_eq!(mirror.held(), 0);
    }

    #[test]
    fn memory_is_bounded_least_recently_used_first() {
        let mirror = Mirror::default();
        mirror.arm();
        let big = Bytes::from(vec![b'x'; MAX_HELD / 3]);
        for name in ["A", "B", "C"] {
            let Lookup::Miss(epoch) = mirror.lookup(&key(name)) else {
                panic!("a miss")
            };
            mirror.fill(&key(name), epoch, Some(big.clone()));
            // A is used again: B is the least recently used.
            let _ = mirror.lookup(&key("A"));
        }
        assert!(mirror.held() <= MAX_HELD);
        assert!(matches!(mirror.lookup(&key("A")), Lookup::Held(..)));
        assert!(matches!(mirror.lookup(&key("B")), Lookup::Miss(_)));
        assert!(matches!(mirror.lookup(&key("C")), Lookup::Held(..)));
    }
}
