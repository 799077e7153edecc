//! A local copy of the instances of some services, kept current from one persistent recursive
//! watch on `<root>/services`: an event costs one read of the znode it names (never a re-read of
//! every child), instance data changes count. After a reconnect the watch is added again (the
//! server keeps watches per connection), and what changed while disconnected is listed again:
//! events made meanwhile are never sent (ZOOKEEPER-4698), but the `Disconnected` event says up
//! to which zxid every event was delivered, and a service node's `pzxid` moves with every
//! instance created or deleted below it (and every in-place rewrite by herald's agents, which
//! mark it: [`crate::layout::Layout::rewrite_mark`]). So a reconnect costs one stat per service
//! and a listing of the services that changed. Everything is listed after a new session, and
//! one service at a time on a slow timer (the safety net, which also catches an in-place
//! rewrite by a registrar that does not mark it, such as Curator's `updateService`).
//!
//! Each output sees the cache through a [`View`]: the latest snapshot, and a wakeup only when
//! one of its own services changed (or the cache became ready or unready). A change elsewhere
//! wakes nothing, so a change costs the outputs that follow its service, however many others
//! the director holds, and an output's quiet period (`wait`) is the quiet of its own services.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use zookeeper_client::{self as zk, AddWatchMode, EventType, SessionState, WatchedEvent};

use crate::catalog;
use crate::departure::Departure;
use crate::instance::Instance;
use crate::layout::{InstanceId, Layout, ServiceName};
use crate::zk::{Live, Pace, SessionHandle, ZkError, paced};

/// The instances of one service, by id.
pub type Instances = Arc<BTreeMap<InstanceId, Instance>>;

/// What the cache knows at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub services: BTreeMap<ServiceName, Instances>,
    /// False until the first full listing is done, and again from a disconnection until the
    /// listing after it is done.
    pub ready: bool,
    /// The services listed since the view was last not ready: an output whose services are
    /// all here may publish before the rest is listed (see [`Snapshot::ready_for`]).
    pub listed: BTreeSet<ServiceName>,
    /// When the view was last listed whole in a session of its own (the first listing, and the
    /// one after each new session): for a new leader, news as much as any change — what it
    /// shows may be mid-flux (everything starting at once, agents re-registering after a mass
    /// session loss). `None` before the first listing.
    pub listed_at: Option<Instant>,
    /// When each service's instances last changed: the arrival of the event or listing that
    /// changed them (for settling and latency reports). Absent: never changed.
    pub changed: BTreeMap<ServiceName, Instant>,
    /// The instances that went by deregistering (their departure record was there when their
    /// node went), when that was seen and the reason the record gives; forgotten when they come
    /// back, or after an hour.
    pub deregistered: BTreeMap<ServiceName, BTreeMap<InstanceId, (Instant, Departure)>>,
}

/// How long a deregistration is remembered (longer than any sensible removal delay).
const REMEMBER_DEREGISTERED: Duration = Duration::from_secs(3600);
/// Departure records older than this are removed by the reconciliation (ZooKeeper's mtime).
const DEPARTURE_RECORD_AGE: Duration = Duration::from_secs(600);

impl Snapshot {
    /// The instances of `services`, sorted by (service, id).
    pub fn instances_of<'a>(
        &'a self,
        services: &'a [ServiceName],
    ) -> impl Iterator<Item = &'a Instance> + 'a {
        services
            .iter()
            .filter_map(|s| self.services.get(s))
            .flat_map(|m| m.values())
    }

    /// Whether the view of `services` is current: the whole view is, or each of them was
    /// listed since the view was last not ready.
    pub fn ready_for(&self, services: &[ServiceName]) -> bool {
        self.ready || services.iter().all(|s| self.listed.contains(s))
    }

    /// The last change of any of `services`, or the last listing in a new session if later.
    pub fn last_change(&self, services: &[ServiceName]) -> Option<Instant> {
        services
            .iter()
            .filter_map(|s| self.changed.get(s))
            .chain(&self.listed_at)
            .max()
            .copied()
    }
}

/// How the cache lists: the reconcile interval (one service at a time, spread over it) and the
/// reconcile's requests per second, and the requests per second of the whole listings (at start,
/// after a reconnect or a new session); 0: unpaced.
#[derive(Debug, Clone, Copy)]
pub struct Listing {
    pub reconcile: Duration,
    pub reconcile_rate: u32,
    pub rate: u32,
}

/// The cache as one output sees it.
pub struct View {
    snapshots: watch::Receiver<Snapshot>,
    /// Sent to after the snapshot changed one of the output's services, or its readiness.
    wake: watch::Receiver<()>,
}

impl View {
    /// Waits for a change of this view's services (or of the cache's readiness) not yet
    /// looked at; an error when the cache is gone.
    pub async fn changed(&mut self) -> Result<(), watch::error::RecvError> {
        self.wake.changed().await
    }

    /// The latest snapshot, every change so far counted as looked at.
    pub fn borrow_and_update(&mut self) -> watch::Ref<'_, Snapshot> {
        self.wake.mark_unchanged();
        self.snapshots.borrow()
    }
}

/// Who is woken by a change of each service, and by a change of readiness (everyone).
#[derive(Default)]
struct Wakes {
    by_service: BTreeMap<ServiceName, Vec<watch::Sender<()>>>,
    all: Vec<watch::Sender<()>>,
}

impl Wakes {
    fn services<'a>(&self, changed: impl IntoIterator<Item = &'a ServiceName>) {
        for service in changed {
            for wake in self.by_service.get(service).into_iter().flatten() {
                wake.send_replace(());
            }
        }
    }

    fn everyone(&self) {
        for wake in &self.all {
            wake.send_replace(());
        }
    }
}

/// Starts following the services of every view asked for (each a set of services, one per
/// output); returns the views in the same order.
pub fn follow(
    session: SessionHandle,
    layout: Layout,
    views: &[BTreeSet<ServiceName>],
    listing: Listing,
    cancel: CancellationToken,
) -> Vec<View> {
    let services: BTreeSet<ServiceName> = views.iter().flatten().cloned().collect();
    let mut wakes = Wakes::default();
    let mut wake_receivers = Vec::with_capacity(views.len());
    for wanted in views {
        let (wake, rx) = watch::channel(());
        for service in wanted {
            wakes
                .by_service
                .entry(service.clone())
                .or_default()
                .push(wake.clone());
        }
        wakes.all.push(wake);
        wake_receivers.push(rx);
    }
    let (tx, rx) = watch::channel(Snapshot {
        services: services
            .iter()
            .map(|s| (s.clone(), Instances::default()))
            .collect(),
        ready: false,
        listed: BTreeSet::new(),
        listed_at: None,
        changed: BTreeMap::new(),
        deregistered: BTreeMap::new(),
    });
    tokio::spawn(async move {
        let mut cache = Follower {
            session,
            wakes,
            listed_in: None,
            layout,
            services,
            tx,
            reconcile: listing.reconcile,
            pace: Pace::per_second(listing.rate).map(Arc::new),
            reconcile_pace: Pace::per_second(listing.reconcile_rate).map(Arc::new),
        };
        cache.run(cancel).await;
    });
    wake_receivers
        .into_iter()
        .map(|wake| View {
            snapshots: rx.clone(),
            wake,
        })
        .collect()
}

struct Follower {
    session: SessionHandle,
    /// The views to wake after a change (after the snapshot is sent: they read it then).
    wakes: Wakes,
    /// The session generation whose first whole listing is done.
    listed_in: Option<u64>,
    layout: Layout,
    services: BTreeSet<ServiceName>,
    tx: watch::Sender<Snapshot>,
    reconcile: Duration,
    /// The rate of the listings' requests (`--relist-rate`), shared by every listing.
    pace: Option<Arc<Pace>>,
    /// The rate of the reconcile's requests (`--reconcile-rate`).
    reconcile_pace: Option<Arc<Pace>>,
}

/// Why a session's round ended.
enum Ended {
    Cancelled,
    /// The session expired or closed: wait for the next one.
    SessionGone,
}

impl Follower {
    /// The view may be stale until the next full listing: leaders must not publish from it.
    fn unready(&self) {
        if self.tx.send_if_modified(|s| {
            s.listed.clear();
            std::mem::replace(&mut s.ready, false)
        }) {
            self.wakes.everyone();
        }
    }

    async fn run(&mut self, cancel: CancellationToken) {
        let mut live = self.session.live();
        // Whether the last round failed, its listing perhaps cut short (said when listing again).
        let mut again = false;
        loop {
            let round = self.follow_session(&live, again, &cancel).await;
            again = round.is_err();
            if !matches!(round, Ok(Ended::Cancelled)) {
                self.unready();
            }
            match round {
                Ok(Ended::Cancelled) => return,
                Ok(Ended::SessionGone) => {}
                Err(err) if err.is_unreachable() => {
                    debug!(error = %err, "following instances: connection lost");
                }
                Err(err) => {
                    warn!(error = %err, "following instances failed; retrying");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                    continue;
                }
            }
            if live.client.state().is_terminated() {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    renewed = self.session.renewed(live.generation) => match renewed {
                        Ok(renewed) => live = renewed,
                        Err(err) => {
                            warn!(error = %err, "no new ZooKeeper session; instances are no longer followed");
                            return;
                        }
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

    /// Follows on one client until its session ends, or an operation fails.
    async fn follow_session(
        &mut self,
        live: &Live,
        again: bool,
        cancel: &CancellationToken,
    ) -> Result<Ended, ZkError> {
        let client = &live.client;
        let root = self.layout.services();
        let mut watcher = client
            .watch(&root, AddWatchMode::PersistentRecursive)
            .await
            .map_err(|err| ZkError::op("watch", &root, err))?;
        if again {
            // The previous round failed (e.g. a connection loss during its re-list).
            info!("connected again; listing the instances again");
        }
        // The first whole listing in a session is news for a new leader (see `listed_at`).
        let first = self.listed_in != Some(live.generation);
        self.relist_all(client, Instant::now(), first).await?;
        self.listed_in = Some(live.generation);
        // While disconnected: the last zxid the session had seen when the connection broke
        // (every event up to it was delivered); `None` when connected.
        let mut disconnected: Option<i64> = None;
        // The safety net re-lists one service per tick, spread over the interval, beside the
        // event loop (a large service's listing never holds events back), one at a time and at
        // the reconcile rate: a pass takes the interval, or longer when the instances are many.
        let services: Vec<ServiceName> = self.services.iter().cloned().collect();
        let period = (self.reconcile / services.len().max(1) as u32).max(Duration::from_millis(10));
        let mut reconcile = tokio::time::interval_at(Instant::now() + period, period);
        reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_service = 0;
        let mut reconciling: Option<Reconciling> = None;
        loop {
            let event = tokio::select! {
                _ = cancel.cancelled() => return Ok(Ended::Cancelled),
                _ = reconcile.tick(), if reconciling.is_none() => {
                    if let Some(service) = services.get(next_service % services.len().max(1)) {
                        debug!(service = %service, "reconciling the instance cache");
                        reconciling = Some(self.list_beside(client, service));
                    }
                    next_service += 1;
                    continue;
                }
                listed = async {
                    match reconciling.as_mut() {
                        Some(r) => (&mut r.listing).await,
                        None => std::future::pending().await,
                    }
                } => {
                    let Some(done) = reconciling.take() else { continue };
                    let found = match listed {
                        Ok(found) => found?,
                        // The listing task panicked: try this service again next pass.
                        Err(_) => continue,
                    };
                    // Merged once, brought up to date first: the leaders never see the older
                    // listing's view of what changed meanwhile.
                    if let Some(found) = self.catch_up(client, &done.service, found, done.raced).await? {
                        self.merge(client, &done.service, found, Instant::now()).await;
                    }
                    self.sweep_departures(client, &done.service).await;
                    continue;
                }
                event = watcher.changed() => event,
            };
            if let Some(r) = reconciling.as_mut()
                && matches!(
                    event.event_type,
                    EventType::NodeCreated | EventType::NodeDataChanged | EventType::NodeDeleted
                )
                && self.service_of(&event.path) == Some(&r.service)
            {
                r.raced.push(event.path.clone());
            }
            let at = Instant::now();
            match event.event_type {
                EventType::Session => match event.session_state {
                    SessionState::Disconnected => {
                        disconnected = Some(event.zxid);
                        // Everything is listed again on reconnecting.
                        if let Some(r) = reconciling.take() {
                            r.listing.abort();
                        }
                        self.unready();
                    }
                    SessionState::SyncConnected if disconnected.is_some() => {
                        let seen = disconnected.take().unwrap_or(WatchedEvent::NO_ZXID);
                        info!(
                            "reconnected; listing the instances again where they changed while disconnected"
                        );
                        // The server keeps watches per connection: add ours again on this one
                        // (the client re-sends it too; adding twice is harmless), then list.
                        // The old watcher is dropped only after, so the server's watch never
                        // lapses.
                        watcher = client
                            .watch(&root, AddWatchMode::PersistentRecursive)
                            .await
                            .map_err(|err| ZkError::op("watch", &root, err))?;
                        self.relist_changed(client, at, seen).await?;
                    }
                    state if state.is_terminated() => return Ok(Ended::SessionGone),
                    _ => {}
                },
                EventType::NodeCreated | EventType::NodeDataChanged | EventType::NodeDeleted => {
                    self.apply(client, &event.path, event.event_type, at)
                        .await?;
                }
                _ => {}
            }
        }
    }

    /// Applies one node event: one read at most.
    async fn apply(
        &mut self,
        client: &zk::Client,
        path: &str,
        kind: EventType,
        at: Instant,
    ) -> Result<(), ZkError> {
        let Some(rest) = path
            .strip_prefix(&self.layout.services())
            .and_then(|r| r.strip_prefix('/'))
        else {
            return Ok(());
        };
        let (service, id) = match rest.split_once('/') {
            Some((service, id)) if !id.contains('/') => (service, Some(id)),
            Some(_) => return Ok(()),
            None => (rest, None),
        };
        let Ok(service) = service.parse::<ServiceName>() else {
            return Ok(());
        };
        if !self.services.contains(&service) {
            return Ok(());
        }
        let Some(id) = id else {
            // The service node itself was created or deleted: list it.
            return self.relist(client, &service, at).await;
        };
        let Ok(id) = id.parse::<InstanceId>() else {
            debug!(path, "skipping a child whose name is not an instance id");
            return Ok(());
        };
        let deregistered = if kind == EventType::NodeDeleted {
            self.departure(client, &service, &id).await
        } else {
            None
        };
        let instance = if kind == EventType::NodeDeleted {
            None
        } else {
            self.read_instance(client, path, &service, &id).await?
        };
        let changed = self.tx.send_if_modified(|snapshot| {
            let instances = snapshot.services.entry(service.clone()).or_default();
            let changed = match &instance {
                Some(new) => instances.get(&id) != Some(new),
                None => instances.contains_key(&id),
            };
            if changed {
                let map = Arc::make_mut(instances);
                let present = instance.is_some();
                match instance {
                    Some(new) => map.insert(id.clone(), new),
                    None => map.remove(&id),
                };
                note_departures(snapshot, &service, [(id, present, deregistered)], at);
                snapshot.changed.insert(service.clone(), at);
            }
            changed
        });
        if changed {
            self.wakes.services([&service]);
        }
        Ok(())
    }

    /// The instance at `path` as it is now (`None`: gone, unreadable, or not an instance).
    async fn read_instance(
        &self,
        client: &zk::Client,
        path: &str,
        service: &ServiceName,
        id: &InstanceId,
    ) -> Result<Option<Instance>, ZkError> {
        let read = client.get_data(path);
        match self.session.telemetry().zk_request("get_data", read).await {
            Ok((data, stat)) => Ok(catalog::admit(path, service, id.clone(), &data, &stat)),
            Err(zk::Error::NoNode) => Ok(None),
            Err(zk::Error::NoAuth) => {
                warn!(
                    path,
                    "skipping an instance this identity may not read (its ACL)"
                );
                Ok(None)
            }
            Err(err) => Err(ZkError::op("read", path, err)),
        }
    }

    /// `found`, a listing of `service` made beside the event loop, brought up to date with
    /// what changed while it listed: each instance an event named meanwhile is read again now
    /// (those events were applied already; the listing may have missed them, or hold an older
    /// document). `None` when the service node itself came or went meanwhile: it was listed
    /// again then, more recently than this.
    async fn catch_up(
        &self,
        client: &zk::Client,
        service: &ServiceName,
        found: Vec<Instance>,
        raced: Vec<String>,
    ) -> Result<Option<Vec<Instance>>, ZkError> {
        let mut found: BTreeMap<InstanceId, Instance> =
            found.into_iter().map(|i| (i.id.clone(), i)).collect();
        let parent = self.layout.service(service);
        let mut named = BTreeSet::new();
        for path in &raced {
            match path.strip_prefix(&parent).and_then(|r| r.strip_prefix('/')) {
                Some(id) if !id.contains('/') => {
                    if let Ok(id) = id.parse::<InstanceId>() {
                        named.insert((path.as_str(), id));
                    }
                }
                Some(_) => {}
                None => return Ok(None),
            }
        }
        for (path, id) in named {
            match self.read_instance(client, path, service, &id).await? {
                Some(instance) => found.insert(id, instance),
                None => found.remove(&id),
            };
        }
        Ok(Some(found.into_values().collect()))
    }

    /// The departure record beside the instance's vanished node (a deregistration, and why),
    /// or `None`: it went with its session. Unknown (an error) counts as `None`; a record this
    /// identity may not read is a deregistration of unknown reason.
    async fn departure(
        &self,
        client: &zk::Client,
        service: &ServiceName,
        id: &InstanceId,
    ) -> Option<Departure> {
        let path = self.layout.departure(service, id);
        let read = client.get_data(&path);
        match self.session.telemetry().zk_request("get_data", read).await {
            Ok((record, _)) => Some(Departure::parse(&record)),
            Err(zk::Error::NoNode) => None,
            Err(zk::Error::NoAuth) => Some(Departure::Unknown),
            Err(err) => {
                debug!(path, error = %err, "cannot read the departure record");
                None
            }
        }
    }

    /// For the instances that vanished from `service` between `old` and `fresh`: whether each
    /// deregistered.
    async fn departures(
        &self,
        client: &zk::Client,
        service: &ServiceName,
        old: Option<&Instances>,
        fresh: &BTreeMap<InstanceId, Instance>,
    ) -> Vec<(InstanceId, bool, Option<Departure>)> {
        let mut out = Vec::new();
        for id in old.iter().flat_map(|m| m.keys()) {
            if !fresh.contains_key(id) {
                let left = self.departure(client, service, id).await;
                out.push((id.clone(), false, left));
            }
        }
        out.extend(fresh.keys().map(|id| (id.clone(), true, None)));
        out
    }

    /// Removes the departure records of `service` older than [`DEPARTURE_RECORD_AGE`] (best
    /// effort: an identity without the right to delete them leaves them).
    async fn sweep_departures(&self, client: &zk::Client, service: &ServiceName) {
        let dir = self.layout.departures_of(service);
        let Ok(names) = client.list_children(&dir).await else {
            return;
        };
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        for name in names {
            let path = format!("{dir}/{name}");
            if let Ok(Some(stat)) = client.check_stat(&path).await
                && now_ms - stat.mtime > DEPARTURE_RECORD_AGE.as_millis() as i64
            {
                match client.delete(&path, Some(stat.version)).await {
                    Ok(()) => debug!(path, "removed an old departure record"),
                    Err(err) => debug!(path, error = %err, "cannot remove an old departure record"),
                }
            }
        }
    }

    /// After a reconnect in the same session: lists again the services under which something
    /// changed after `seen`, the last zxid whose events were all delivered before the
    /// connection broke. One stat of each service node tells (its `pzxid`, or the node itself
    /// is new or gone); every service when `seen` is unknown.
    async fn relist_changed(
        &mut self,
        client: &zk::Client,
        at: Instant,
        seen: i64,
    ) -> Result<(), ZkError> {
        if seen <= 0 {
            return self.relist_all(client, at, false).await;
        }
        let started = Instant::now();
        // Every stat at once (paced at the listing rate).
        let mut stats = tokio::task::JoinSet::new();
        for service in &self.services {
            let (client, path, service) = (
                client.clone(),
                self.layout.service(service),
                service.clone(),
            );
            let telemetry = self.session.telemetry().clone();
            let pace = self.pace.clone();
            stats.spawn(async move {
                paced(pace.as_deref()).await;
                let stat = telemetry.zk_request("stat_service", client.check_stat(&path));
                (
                    service,
                    stat.await.map_err(|err| ZkError::op("stat", &path, err)),
                )
            });
        }
        let mut changed = BTreeSet::new();
        while let Some(joined) = stats.join_next().await {
            let Ok((service, stat)) = joined else {
                continue;
            };
            let moved = match stat {
                Ok(Some(stat)) => stat.pzxid.max(stat.czxid) > seen,
                Ok(None) => true,
                // Not allowed to look: list it (and be told why there).
                Err(err) if err.is_denied() => true,
                Err(err) => return Err(err),
            };
            if moved {
                changed.insert(service);
            }
        }
        info!(
            services = changed.len(),
            of = self.services.len(),
            took_ms = started.elapsed().as_millis() as u64,
            "looked for what changed while disconnected"
        );
        // What did not change is current again: its outputs need not wait for the listings.
        let unchanged: Vec<ServiceName> = self.services.difference(&changed).cloned().collect();
        self.tx.send_if_modified(|snapshot| {
            snapshot.listed.extend(unchanged.iter().cloned());
            !unchanged.is_empty()
        });
        self.wakes.services(&unchanged);
        self.relist_services(client, at, (false, true), &changed)
            .await
    }

    /// Lists every service; `whole` marks the listing as the view's new start (`listed_at`).
    async fn relist_all(
        &mut self,
        client: &zk::Client,
        at: Instant,
        whole: bool,
    ) -> Result<(), ZkError> {
        let every = self.services.clone();
        self.relist_services(client, at, (whole, false), &every)
            .await
    }

    /// Lists `services` and makes the view ready; `whole`: see [`Self::relist_all`];
    /// `only_changed`: these are the services that changed while disconnected (for the log).
    async fn relist_services(
        &mut self,
        client: &zk::Client,
        at: Instant,
        (whole, only_changed): (bool, bool),
        services: &BTreeSet<ServiceName>,
    ) -> Result<(), ZkError> {
        // Every service is listed at once (each listing is itself pipelined).
        let started = Instant::now();
        let mut listings = tokio::task::JoinSet::new();
        for service in services {
            let (client, layout, service) = (client.clone(), self.layout.clone(), service.clone());
            let telemetry = self.session.telemetry().clone();
            let pace = self.pace.clone();
            listings.spawn(async move {
                let listing = catalog::instances(&client, &layout, &service, pace.as_deref());
                let found = telemetry.zk_request("list_service", listing).await;
                (service, found)
            });
        }
        // Each service is taken as its listing arrives: its outputs need not wait for the
        // rest (a large service, or a paced listing of many).
        let (mut listed, mut instances) = (0, 0);
        while let Some(joined) = listings.join_next().await {
            let Ok((service, found)) = joined else {
                continue;
            };
            let found = match found {
                Ok(found) => found,
                // One unreadable service must not keep every output from publishing.
                Err(err) if err.is_denied() => {
                    warn!(service = %service, error = %err, "cannot list this service's instances");
                    continue;
                }
                Err(err) => return Err(err),
            };
            listed += 1;
            instances += found.len();
            self.merge(client, &service, found, at).await;
        }
        if !only_changed {
            info!(
                services = listed,
                instances,
                took_ms = started.elapsed().as_millis() as u64,
                paced = self.pace.is_some(),
                "listed every instance"
            );
        } else {
            info!(
                services = listed,
                instances,
                took_ms = started.elapsed().as_millis() as u64,
                paced = self.pace.is_some(),
                "listed the instances of the services that changed"
            );
        }
        // Becoming ready is news to every output (leaders wait for it), and so is a new start
        // of the view (`listed_at`).
        if self.tx.send_if_modified(|snapshot| {
            let news = !snapshot.ready || whole;
            snapshot.ready = true;
            snapshot.listed.clear();
            if whole {
                snapshot.listed_at = Some(at);
            }
            news
        }) {
            self.wakes.everyone();
        }
        Ok(())
    }

    async fn relist(
        &mut self,
        client: &zk::Client,
        service: &ServiceName,
        at: Instant,
    ) -> Result<(), ZkError> {
        let listing = catalog::instances(client, &self.layout, service, self.pace.as_deref());
        let found = self
            .session
            .telemetry()
            .zk_request("list_service", listing)
            .await?;
        self.merge(client, service, found, at).await;
        self.sweep_departures(client, service).await;
        Ok(())
    }

    /// Starts listing `service` beside the event loop, at the reconcile rate.
    fn list_beside(&self, client: &zk::Client, service: &ServiceName) -> Reconciling {
        let (client, layout, name) = (client.clone(), self.layout.clone(), service.clone());
        let (telemetry, pace) = (
            self.session.telemetry().clone(),
            self.reconcile_pace.clone(),
        );
        let listing = tokio::spawn(async move {
            let listing = catalog::instances(&client, &layout, &name, pace.as_deref());
            telemetry.zk_request("list_service", listing).await
        });
        Reconciling {
            service: service.clone(),
            listing,
            raced: Vec::new(),
        }
    }

    /// The service an event's path is under (`<root>/services/S/…`), if it is one followed.
    fn service_of(&self, path: &str) -> Option<&ServiceName> {
        let rest = path
            .strip_prefix(&self.layout.services())?
            .strip_prefix('/')?;
        let name = rest.split('/').next()?;
        self.services.iter().find(|s| s.as_str() == name)
    }

    /// Takes `found` as `service`'s instances now (noting which of the instances that went
    /// deregistered), and tells the leaders if that changed anything.
    async fn merge(
        &mut self,
        client: &zk::Client,
        service: &ServiceName,
        found: Vec<Instance>,
        at: Instant,
    ) {
        let fresh: BTreeMap<_, _> = found.into_iter().map(|i| (i.id.clone(), i)).collect();
        let old = self.tx.borrow().services.get(service).cloned();
        let moved = self.departures(client, service, old.as_ref(), &fresh).await;
        let news = self.tx.send_if_modified(|snapshot| {
            // While the view is being rebuilt, a service listed is news to its outputs even
            // when unchanged: they need not wait for the rest.
            let listed = !snapshot.ready && snapshot.listed.insert(service.clone());
            let slot = snapshot.services.entry(service.clone()).or_default();
            if **slot == fresh {
                return listed;
            }
            *slot = Arc::new(fresh);
            note_departures(snapshot, service, moved, at);
            snapshot.changed.insert(service.clone(), at);
            true
        });
        if news {
            self.wakes.services([service]);
        }
    }
}

/// A reconcile listing of one service, running beside the event loop.
struct Reconciling {
    service: ServiceName,
    listing: tokio::task::JoinHandle<Result<Vec<Instance>, ZkError>>,
    /// The znodes of this service that events named while it listed, read again after it.
    raced: Vec<String>,
}

/// Records in `snapshot` which of `service`'s instances went by deregistering: each
/// `(id, present now, its departure record)`. A present instance is forgotten; old entries
/// expire.
fn note_departures(
    snapshot: &mut Snapshot,
    service: &ServiceName,
    moved: impl IntoIterator<Item = (InstanceId, bool, Option<Departure>)>,
    at: Instant,
) {
    let seen = snapshot.deregistered.entry(service.clone()).or_default();
    for (id, present, departure) in moved {
        match departure.filter(|_| !present) {
            Some(why) => {
                seen.insert(id, (at, why));
            }
            None => {
                seen.remove(&id);
            }
        }
    }
    seen.retain(|_, (when, _)| at.saturating_duration_since(*when) < REMEMBER_DEREGISTERED);
    if seen.is_empty() {
        snapshot.deregistered.remove(service);
    }
}
