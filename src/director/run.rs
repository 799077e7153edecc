//! Running the director: one instance cache for every service the outputs read, and per output a
//! task that campaigns, and while it leads, derives the value after every (debounced) change and
//! publishes it fenced when the bytes differ. Safety first: fewer instances than `min_instances`
//! keep the last value, failed derivations and checks publish nothing, and a new term or a
//! rebuilt view publishes only once the instances are quiet ([`super::settle`]).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use super::cache::{self, Instances, Snapshot, View};
use super::config::Output;
use super::culprits::{self, Excluded, Found};
use super::derive::{Derivation, DeriveError, derive_exec};
use super::election::{self, Leadership};
use super::guards::{Guards, Hold, Pass};
use super::limbo::Limbo;
use super::publish::{Beside, Fenced, publish};
use super::settle::Settle;
use super::slots::{self, Refused, SlotMapError, SlotOf, Slots};
use crate::command::run_command;
use crate::departure::Departure;
use crate::instance::Instance;
use crate::layout::{InstanceId, ServiceName};
use crate::telemetry::Telemetry;
use crate::values::Values;
use crate::zk::{SessionHandle, ZkError};

/// Everything a director process runs.
pub struct Director {
    pub outputs: Vec<Output>,
    pub values: Values,
    /// The environment exec derivations and checks run with.
    pub env: BTreeMap<OsString, OsString>,
    /// Written into election nodes, for operators: host and pid. With `spread`, it also
    /// places leadership (see [`election::score`]).
    pub identity: String,
    /// Spread leadership over the directors (rendezvous hashing) rather than leaving every
    /// output to the director that joined first.
    pub spread: bool,
    /// Full re-listing interval, the safety net under the watch.
    pub reconcile: Duration,
    /// Requests per second of the whole instance listings (start, reconnect, new session);
    /// 0: unpaced.
    pub relist_rate: u32,
    /// Requests per second of the reconcile's listings; 0: unpaced.
    pub reconcile_rate: u32,
    pub telemetry: Telemetry,
}

/// Why a director stopped before it was asked to.
#[derive(Debug, thiserror::Error)]
pub enum DirectorError {
    #[error(
        "the ZooKeeper session could not be kept (e.g. credentials refused); the director stopped"
    )]
    CacheGone,
    #[error("an output's task failed: {0}")]
    Task(String),
}

/// Runs every output until `cancel`; leaders resign on the way out. If any output stops on its
/// own, everything stops (so no election node outlives a dead task) and the error is returned.
pub async fn run(
    session: SessionHandle,
    director: Director,
    cancel: CancellationToken,
) -> Result<(), DirectorError> {
    // One view per output, woken by its own services only.
    let wanted: Vec<BTreeSet<ServiceName>> = director
        .outputs
        .iter()
        .map(|o| o.services.iter().cloned().collect())
        .collect();
    let views = cache::follow(
        session.clone(),
        director.values.layout().clone(),
        &wanted,
        cache::Listing {
            reconcile: director.reconcile,
            reconcile_rate: director.reconcile_rate,
            rate: director.relist_rate,
        },
        cancel.child_token(),
    );
    let shared = Arc::new(Shared {
        values: director.values,
        env: director.env,
        identity: director.identity,
        spread: director.spread,
        telemetry: director.telemetry,
    });
    let mut tasks = tokio::task::JoinSet::new();
    for (output, view) in director.outputs.into_iter().zip(views) {
        let span = info_span!("director", key = %output.key);
        tasks.spawn(
            lead(
                session.clone(),
                shared.clone(),
                output,
                view,
                cancel.child_token(),
            )
            .instrument(span),
        );
    }
    let mut failure = None;
    while let Some(joined) = tasks.join_next().await {
        let result = match joined {
            Ok(result) => result,
            Err(err) => Err(DirectorError::Task(err.to_string())),
        };
        // Errors after a requested stop are part of stopping.
        if let Err(err) = result
            && failure.is_none()
            && !cancel.is_cancelled()
        {
            error!("{err}");
            failure = Some(err);
            cancel.cancel();
        }
    }
    failure.map_or(Ok(()), Err)
}

struct Shared {
    values: Values,
    env: BTreeMap<OsString, OsString>,
    identity: String,
    spread: bool,
    telemetry: Telemetry,
}

/// Why leading ended.
enum Ended {
    Cancelled,
    Deposed,
    /// A director this output prefers is in line (leadership is spread): hand over to it.
    HandOver(Vec<u8>),
    /// The instance cache stopped (its session could not be kept): nothing more can be done.
    CacheGone,
    /// Leading is not possible right now (e.g. the value cannot be read): wait, then again.
    Failed,
}

/// Campaigns, leads until deposed, campaigns again; resigns when cancelled.
async fn lead(
    session: SessionHandle,
    shared: Arc<Shared>,
    output: Output,
    mut view: View,
    cancel: CancellationToken,
) -> Result<(), DirectorError> {
    let dir = shared.values.layout().directors(&output.key);
    // Kept across terms: a director that led, or stood by watching, remembers how many
    // instances the output had.
    let mut guards = Guards::new(output.guard_limits());
    let mut look = LastLook::default();
    loop {
        let won = {
            let me = election::Candidate {
                identity: shared.identity.as_bytes(),
                spread: shared.spread.then_some(output.key.as_str()),
            };
            let campaign = election::campaign(&session, &shared.values, &dir, me);
            tokio::pin!(campaign);
            // The output's instance count at the last look: a wakeup that changed none of
            // its services' maps (readiness) costs no pass over them.
            let mut counted: Option<usize> = None;
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    won = &mut campaign => break won,
                    // Standing by: what the leader is publishing from, for a takeover.
                    changed = view.changed() => {
                        if changed.is_err() {
                            std::future::pending::<()>().await;
                        }
                        let snapshot = view.borrow_and_update();
                        if snapshot.ready_for(&output.services) {
                            let count = match counted.filter(|_| look.unchanged(&output, &snapshot)) {
                                Some(count) => count,
                                None => {
                                    guards.left_on_purpose(look.left_on_purpose(&output, &snapshot));
                                    let count = snapshot
                                        .instances_of(&output.services)
                                        .filter(|i| output.selects(i))
                                        .count();
                                    counted = Some(count);
                                    count
                                }
                            };
                            guards.observed(count, Instant::now());
                        }
                    }
                }
            }
        };
        let leadership = match won {
            Ok(leadership) => leadership,
            Err(err) => {
                error!(error = %err, "cannot campaign; retrying in 1s");
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        shared.telemetry.leading(output.key.as_str(), true);
        let ended = serve(
            &leadership,
            &shared,
            &output,
            (&mut guards, &mut look),
            &mut view,
            &cancel,
        )
        .await;
        shared.telemetry.leading(output.key.as_str(), false);
        match ended {
            Ended::Cancelled => {
                leadership.resign().await;
                return Ok(());
            }
            Ended::CacheGone => {
                leadership.resign().await;
                return Err(DirectorError::CacheGone);
            }
            Ended::Deposed => warn!("no longer leading; campaigning again"),
            Ended::HandOver(to) => {
                info!(to = %String::from_utf8_lossy(&to), "handing over to the director this output prefers (leadership is spread)");
                shared.telemetry.handed_over(output.key.as_str());
                leadership.resign().await;
            }
            Ended::Failed => {
                tokio::select! {
                    _ = cancel.cancelled() => {
                        leadership.resign().await;
                        return Ok(());
                    }
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
}

/// While leading: derive and publish after every change.
async fn serve(
    lead: &Leadership,
    shared: &Shared,
    output: &Output,
    (guards, look): (&mut Guards, &mut LastLook),
    snapshots: &mut View,
    cancel: &CancellationToken,
) -> Ended {
    let key = &output.key;
    let value_path = shared.values.layout().value(key);
    // Writes to the value by anyone else (`herald put`, the gateway, a client by hand) are
    // noticed and undone while this director leads: the watch is set before the first read, so
    // no write falls between them.
    let mut outside = match lead
        .live
        .client
        .watch(&value_path, zookeeper_client::AddWatchMode::Persistent)
        .await
    {
        Ok(watcher) => watcher,
        Err(err) => {
            warn!(error = %ZkError::op("watch", &value_path, err), "cannot watch the value; trying again in 1s");
            return Ended::Failed;
        }
    };
    // What is published now: only different bytes are written.
    let current = read_value(&lead.live.client, &value_path);
    // What is published, and its mzxid when known (the status page shows it).
    let (mut published, mut published_zxid) =
        match shared.telemetry.zk_request("get_data", current).await {
            Ok((value, stat)) => (value, stat.map(|s| s.mzxid)),
            Err(err) => {
                warn!(error = %err, "cannot read the current value; trying again in 1s");
                return Ended::Failed;
            }
        };
    // The stable member numbers, when the output keeps them: read once, then ours to write.
    let mut slot_map: Option<StoredSlots> = None;
    if output.slots {
        let path = shared.values.layout().slots(key);
        let stored = match lead.live.client.get_data(&path).await {
            Ok((data, _)) => Some(data),
            Err(zookeeper_client::Error::NoNode) => None,
            Err(err) => {
                warn!(error = %ZkError::op("read", &path, err), "cannot read the slot map; trying again in 1s");
                return Ended::Failed;
            }
        };
        slot_map = Some((Slots::parse(stored.as_deref()), stored));
    }
    // The instances left out because every value with them failed the check, each with its
    // document then (a changed document is tried again); and the list as stored.
    let mut excluded: Vec<(Instance, Excluded)> = Vec::new();
    let mut excluded_stored: Option<Vec<u8>> = None;
    if output.check.is_some() {
        let path = shared.values.layout().excluded(key);
        excluded_stored = match lead.live.client.get_data(&path).await {
            Ok((data, _)) => Some(data),
            Err(zookeeper_client::Error::NoNode) => None,
            Err(err) => {
                warn!(error = %ZkError::op("read", &path, err), "cannot read the excluded instances; trying again in 1s");
                return Ended::Failed;
            }
        };
    }
    // The output's hold record (`<root>/holds/KEY`) as stored: `None` when there is no znode.
    // Watched (before it is read) for an operator's confirmation (`herald confirm KEY`).
    let hold_path = shared.values.layout().hold(key);
    let mut confirmations = match lead
        .live
        .client
        .watch(&hold_path, zookeeper_client::AddWatchMode::Persistent)
        .await
    {
        Ok(watcher) => watcher,
        Err(err) => {
            warn!(error = %ZkError::op("watch", &hold_path, err), "cannot watch the hold record; trying again in 1s");
            return Ended::Failed;
        }
    };
    let mut hold_stored: Option<Vec<u8>> = match lead.live.client.get_data(&hold_path).await {
        Ok((data, _)) => Some(data),
        Err(zookeeper_client::Error::NoNode) => None,
        Err(err) => {
            warn!(error = %ZkError::op("read", &hold_path, err), "cannot read the hold record; trying again in 1s");
            return Ended::Failed;
        }
    };
    // The instances of the last value that passed the check (or was published already): what
    // is new or changed since is suspect when a value fails.
    let mut last_passed: Option<Vec<Instance>> = None;
    // The refusals last logged, so each is said once.
    let mut refusals_said: Vec<Refused> = Vec::new();
    // The instances the preset cannot render, as last logged (each said once).
    let mut unrenderable_said: Vec<(Instance, String)> = Vec::new();
    let lost = lead.lost();
    tokio::pin!(lost);
    // With leadership spread: a director this output prefers has joined.
    let preferred = async {
        match shared.spread {
            true => {
                lead.preferred_elsewhere(key.as_str(), shared.identity.as_bytes())
                    .await
            }
            false => std::future::pending().await,
        }
    };
    tokio::pin!(preferred);
    let mut held: Option<&'static str> = None;
    let mut first = true;
    // A new term, or a rebuilt view, waits for the instances to be quiet.
    let mut settle = Settle::new(output.settle_quiet, output.settle_max, Instant::now());
    let mut settle_at: Option<Instant> = None;
    // When the current settle started holding a publish back (for the log).
    let mut settling_since: Option<Instant> = None;
    // While the view is not ready or settling, a retry waits too: only a change or the settle
    // timer wakes us.
    let mut waiting = false;
    // After a failed derivation, check or publish: try again later even without a change.
    let mut failures: u32 = 0;
    let mut retry_at: Option<Instant> = None;
    // The last write failed: whether it was applied is unknown until the value is read.
    let mut unsure = false;
    // The value of that write.
    let mut unsure_value: Option<Vec<u8>> = None;
    // The inputs of the last derivation: a change elsewhere in the cache costs nothing here.
    let mut last_inputs: Option<Vec<Option<Instances>>> = None;
    // Instances whose session was lost stay for --removal-delay; woken when one is due.
    let mut limbo = Limbo::new(output.removal_delay);
    let mut limbo_at: Option<Instant> = None;
    let mut limbo_due = false;
    loop {
        if !first {
            tokio::select! {
                // Stopping first: the cache ends when it is cancelled too.
                biased;
                _ = cancel.cancelled() => return Ended::Cancelled,
                _ = &mut lost => return Ended::Deposed,
                to = &mut preferred => return Ended::HandOver(to),
                _ = sleep_until(retry_at.filter(|_| !waiting)) => {}
                _ = sleep_until(settle_at) => {}
                _ = sleep_until(limbo_at) => {
                    limbo_at = None;
                    limbo_due = true;
                }
                event = outside.changed() => {
                    if matches!(event.event_type, zookeeper_client::EventType::Session) {
                        continue;
                    }
                    match shared.telemetry.zk_request("get_data", read_value(&lead.live.client, &value_path)).await {
                        Ok((now, stat)) if now == published => {
                            published_zxid = stat.map(|s| s.mzxid);
                            continue;
                        }
                        Ok((now, stat)) => {
                            published_zxid = stat.as_ref().map(|s| s.mzxid);
                            warn!(
                                mzxid = format_args!("{:#x}", stat.as_ref().map_or(0, |s| s.mzxid)),
                                version = stat.as_ref().map_or(-1, |s| s.version),
                                found = %digest(now.as_deref()),
                                derived = %digest(published.as_deref()),
                                "the value was changed by another writer (herald put, the gateway, a client); restoring the derived value"
                            );
                            published = now;
                            // Derive and publish again, even with the same instances.
                            retry_at = Some(Instant::now());
                        }
                        // Unknown now (a lost session says so next): publish the derived value
                        // again shortly, which restores it if another writer changed it.
                        Err(err) => {
                            debug!(error = %err, "cannot read the value after a change; writing the derived value again in 1s");
                            published = None;
                            retry_at = Some(Instant::now() + Duration::from_secs(1));
                        }
                    }
                }
                event = confirmations.changed() => {
                    if matches!(event.event_type, zookeeper_client::EventType::Session)
                        || held != Some("max_drop")
                    {
                        continue;
                    }
                    let Ok((Some(record), _)) = read_value(&lead.live.client, &hold_path).await else {
                        continue;
                    };
                    if confirms(&record, hold_stored.as_deref()) && guards.confirm() {
                        info!("an operator confirmed the drop (herald confirm): publishing it");
                        retry_at = Some(Instant::now());
                    }
                }
                changed = settled(snapshots, output.wait_min, output.wait_max) => {
                    if !changed {
                        return if cancel.is_cancelled() {
                            Ended::Cancelled
                        } else {
                            Ended::CacheGone
                        };
                    }
                }
            }
        }
        first = false;
        // Only this output's services are looked at (and their maps shared, not copied).
        let (ready, last_change, inputs, deregistered) = {
            let snapshot = snapshots.borrow_and_update();
            let inputs: Vec<Option<Instances>> = output
                .services
                .iter()
                .map(|s| snapshot.services.get(s).cloned())
                .collect();
            let last_change = snapshot.last_change(&output.services);
            let ready = snapshot.ready_for(&output.services);
            if ready {
                guards.left_on_purpose(look.left_on_purpose(output, &snapshot));
            }
            // Only the removal delay asks who deregistered (a copy per derivation otherwise).
            let deregistered: Departures = if output.removal_delay.is_zero() {
                Departures::new()
            } else {
                output
                    .services
                    .iter()
                    .filter_map(|s| Some((s.clone(), snapshot.deregistered.get(s)?.clone())))
                    .collect()
            };
            (ready, last_change, inputs, deregistered)
        };
        let now = Instant::now();
        if !ready {
            settle.again(now);
            settle_at = None;
            waiting = true;
            continue;
        }
        settle_at = settle.hold_until(last_change, now);
        if settle_at.is_some() {
            if settling_since.is_none() {
                debug!("the instances are changing: publishing once they are quiet");
                settling_since = Some(now);
            }
            waiting = true;
            continue;
        }
        if let Some(since) = settling_since.take() {
            info!(
                held_ms = since.elapsed().as_millis() as u64,
                "settled: the instances are quiet"
            );
        }
        waiting = false;
        let retrying = retry_at.take().is_some();
        let same_inputs = last_inputs.as_ref().is_some_and(|last| {
            last.len() == inputs.len()
                && last.iter().zip(&inputs).all(|(a, b)| match (a, b) {
                    (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                    (None, None) => true,
                    _ => false,
                })
        });
        if same_inputs && !retrying && !std::mem::take(&mut limbo_due) {
            continue;
        }
        let selected: Vec<Instance> = inputs
            .iter()
            .flatten()
            .flat_map(|m| m.values())
            .filter(|i| output.selects(i))
            .cloned()
            .collect();
        last_inputs = Some(inputs);
        let (mut instances, moves, next) = limbo.apply(
            selected,
            |service, id| {
                deregistered
                    .get(service)
                    .is_some_and(|ids| ids.contains_key(id))
            },
            now,
        );
        limbo_at = next;
        for (service, id) in &moves.held {
            warn!(service = %service, instance = %id, delay_ms = output.removal_delay.as_millis() as u64, "an instance vanished without deregistering (its session was lost): it stays in the value for the removal delay unless it comes back");
        }
        for (service, id) in &moves.returned {
            info!(service = %service, instance = %id, "an instance held after losing its session is back");
        }
        for (service, id) in &moves.expired {
            info!(service = %service, instance = %id, "an instance held after losing its session did not come back: removed");
        }
        // An excluded instance is tried again once its registration changes (or it left).
        excluded.retain(|(was, x)| {
            let same = instances.contains(was);
            if !same {
                info!(service = %x.service, instance = %x.id, "an excluded instance changed or left: it is tried again");
            }
            same
        });
        instances.retain(|i| !excluded.iter().any(|(was, _)| was == i));
        // One instance the preset cannot render (a quote in its address) is left out, not
        // allowed to freeze the value for everyone.
        if let Derivation::Preset(preset) = &output.derivation {
            let mut unrenderable = Vec::new();
            instances.retain(|i| match preset.refuses(i) {
                Some(why) => {
                    unrenderable.push((i.clone(), why.to_string()));
                    false
                }
                None => true,
            });
            if unrenderable != unrenderable_said {
                for (i, why) in &unrenderable {
                    if !unrenderable_said.contains(&(i.clone(), why.clone())) {
                        warn!(service = %i.service, instance = %i.id, "{why}; it is left out of the value until its registration changes");
                    }
                }
                unrenderable_said = unrenderable;
            }
        }
        // Stable numbers: who keeps what, who is new, who cannot have one (left out).
        let assigned = match &slot_map {
            None => None,
            Some((Err(err), _)) => {
                failures += 1;
                let delay = backoff(failures);
                error!(error = %err, znode = %shared.values.layout().slots(key), retry_in_s = delay.as_secs(), "nothing published");
                retry_at = Some(Instant::now() + delay);
                continue;
            }
            Some((Ok(previous), _)) => {
                let refs: Vec<&Instance> = instances.iter().collect();
                let assigned = slots::assign(previous, &refs, now_ms());
                if assigned.refused != refusals_said {
                    for refused in &assigned.refused {
                        error!("{refused}; it is left out of the value");
                    }
                    refusals_said = assigned.refused.clone();
                }
                instances.retain(|i| assigned.of.contains_key(&(i.service.clone(), i.id.clone())));
                Some(assigned)
            }
        };
        // Each hold is said once, when it begins or its reason changes, and recorded at
        // <root>/holds/KEY for `herald ls`.
        let mut hold = |why: Hold| -> Option<Vec<u8>> {
            if held == Some(why.reason()) {
                return None;
            }
            warn!(
                instances = instances.len(),
                reason = %why.reason(),
                value = %digest(published.as_deref()),
                "{why}: keeping the last value"
            );
            held = Some(why.reason());
            Some(hold_record(why.reason(), &why.to_string(), instances.len()))
        };
        if let Err(why) = guards.enough(instances.len()) {
            if let Some(record) = hold(why)
                && let Some(ended) = record_hold(lead, shared, key, record, &mut hold_stored).await
            {
                return ended;
            }
            continue;
        }
        let derived = match &output.derivation {
            Derivation::Exec { command, timeout } => {
                derive_exec(
                    command,
                    *timeout,
                    &shared.env,
                    &instances,
                    assigned.as_ref().map(|a| &a.of),
                )
                .await
            }
            derivation => derivation.derive(&instances, assigned.as_ref().map(|a| &a.of)),
        };
        // The output's own limit, under what a znode takes.
        let derived = derived.and_then(|value| match value.len() {
            len if len > output.max_value => Err(DeriveError::TooLarge {
                len,
                limit: output.max_value,
            }),
            _ => Ok(value),
        });
        let value = match derived {
            Ok(value) => value,
            // The same instances give the same size: no retry, the next change tries again.
            Err(err @ (DeriveError::TooLarge { .. } | DeriveError::OutputTooLarge)) => {
                error!(error = %err, instances = instances.len(), value = %digest(published.as_deref()), "nothing published: keeping the last value until the instances change");
                held = Some("too_large");
                let record = hold_record("too_large", &err.to_string(), instances.len());
                if let Some(ended) = record_hold(lead, shared, key, record, &mut hold_stored).await
                {
                    return ended;
                }
                continue;
            }
            Err(err) => {
                failures += 1;
                let delay = backoff(failures);
                error!(error = %err, retry_in_s = delay.as_secs(), "the derivation failed; nothing published");
                retry_at = Some(Instant::now() + delay);
                continue;
            }
        };
        shared.telemetry.derived(key.as_str(), instances.len());
        // Never empty by accident (every remaining instance has weight 0), never a cliff.
        match guards.admit(instances.len(), value.is_empty(), Instant::now()) {
            Err(why) => {
                if let Hold::Cliff { until, .. } = &why {
                    // Published then if the drop lasts; a change before re-derives anyway.
                    retry_at = Some(*until);
                }
                if let Some(record) = hold(why)
                    && let Some(ended) =
                        record_hold(lead, shared, key, record, &mut hold_stored).await
                {
                    return ended;
                }
                continue;
            }
            Ok(Pass::Confirmed) => {
                held = None;
                warn!(
                    instances = instances.len(),
                    "the drop is confirmed (it lasted drop_confirm, or herald confirm): publishing it"
                );
            }
            Ok(Pass::Clear) => {
                // A guard's hold ends here; a failed check or an oversized value ends with the
                // next value published.
                if let Some(reason) =
                    held.filter(|r| ["min_instances", "empty", "max_drop"].contains(r))
                {
                    held = None;
                    info!(
                        instances = instances.len(),
                        reason, "no longer held: the instances are back"
                    );
                }
            }
        }
        let slot_bytes = assigned.as_ref().map(|a| a.slots.to_bytes());
        let slots_same = match (&slot_bytes, &slot_map) {
            (Some(new), Some((_, stored))) => stored.as_deref() == Some(new.as_slice()),
            _ => true,
        };
        let excluded_bytes = output.check.as_ref().map(|_| {
            let list: Vec<Excluded> = excluded.iter().map(|(_, x)| x.clone()).collect();
            culprits::to_bytes(&list)
        });
        // An empty list that was never stored needs no znode.
        let excluded_same = match &excluded_bytes {
            None => true,
            Some(bytes) => match &excluded_stored {
                Some(stored) => stored == bytes,
                None => excluded.is_empty(),
            },
        };
        // A failed write may have been applied all the same (its reply lost to a connection
        // loss): what is published is read again before writing, or the same bytes would be
        // written twice (a new version, a change for every watcher).
        if unsure {
            match shared
                .telemetry
                .zk_request("get_data", read_value(&lead.live.client, &value_path))
                .await
            {
                Ok((now, stat)) => {
                    published_zxid = stat.map(|s| s.mzxid);
                    if let Some(applied) = now
                        .as_deref()
                        .filter(|n| Some(*n) == unsure_value.as_deref())
                    {
                        // Applied after all: logged (and counted) as the publish it was.
                        shared.telemetry.published(
                            key.as_str(),
                            (&digest(Some(applied)), applied.len(), published_zxid),
                            last_change,
                        );
                        info!(
                            old = %digest(published.as_deref()),
                            new = %digest(now.as_deref()),
                            instances = instances.len(),
                            excluded = excluded.len(),
                            reply_lost = true,
                            "published"
                        );
                    }
                    published = now;
                    unsure = false;
                    unsure_value = None;
                }
                Err(err) => {
                    failures += 1;
                    let delay = backoff(failures);
                    warn!(error = %err, retry_in_s = delay.as_secs(), "cannot read the value after a failed write; retrying");
                    retry_at = Some(Instant::now() + delay);
                    continue;
                }
            }
        }
        if published.as_deref() == Some(value.as_slice()) && slots_same && excluded_same {
            debug!(instances = instances.len(), "the value is unchanged");
            shared.telemetry.unchanged(
                key.as_str(),
                (&digest(Some(&value)), value.len(), published_zxid),
            );
            guards.published(instances.len(), Instant::now());
            held = None;
            if let Some(ended) =
                record_hold(lead, shared, key, NO_HOLD.to_vec(), &mut hold_stored).await
            {
                return ended;
            }
            last_passed = Some(instances.clone());
            failures = 0;
            continue;
        }
        if let Some(check) = &output.check {
            if let Err(err) = run_check(check, &shared.env, &value).await {
                let found = find_culprits(
                    output,
                    shared,
                    &instances,
                    assigned.as_ref().map(|a| &a.of),
                    last_passed.as_deref(),
                )
                .await;
                match found {
                    Found::Culprits(bad) => {
                        for &n in &bad {
                            let i = &instances[n];
                            error!(
                                service = %i.service,
                                instance = %i.id,
                                address = %i.address,
                                error = %err,
                                "every value with this instance fails the check (its output is above): it is left out of the value, and tried again when its registration changes"
                            );
                            excluded.push((
                                i.clone(),
                                Excluded {
                                    service: i.service.to_string(),
                                    id: i.id.to_string(),
                                    reason: err.to_string(),
                                },
                            ));
                        }
                        // Derive again without them, at once.
                        retry_at = Some(Instant::now());
                    }
                    Found::Nobody(why) => {
                        failures += 1;
                        let delay = backoff(failures);
                        error!(error = %err, value = %digest(Some(&value)), retry_in_s = delay.as_secs(), "the new value failed its check ({why}); nothing published");
                        retry_at = Some(Instant::now() + delay);
                        held = Some("check_failed");
                        let message = format!("the new value failed its check ({why}): {err}");
                        let record = hold_record("check_failed", &message, instances.len());
                        if let Some(ended) =
                            record_hold(lead, shared, key, record, &mut hold_stored).await
                        {
                            return ended;
                        }
                    }
                }
                continue;
            }
            last_passed = Some(instances.clone());
        }
        let mut beside = Vec::new();
        if let (Some(bytes), Some((_, stored))) = (slot_bytes.as_deref(), slot_map.as_ref()) {
            beside.push(Beside::Slots(bytes, stored.is_some()));
        }
        if let Some(bytes) = excluded_bytes.as_deref()
            && !excluded_same
        {
            beside.push(Beside::Excluded(bytes, excluded_stored.is_some()));
        }
        // A hold ends with this value: its record says so in the same write.
        let clears_hold = hold_stored.as_deref().is_some_and(|h| h != NO_HOLD);
        if clears_hold {
            beside.push(Beside::Hold(NO_HOLD, true));
        }
        let written = publish(
            lead,
            &shared.values,
            key,
            Some(&value),
            published.is_some(),
            &beside,
        );
        match shared.telemetry.zk_request("multi", written).await {
            Ok(Fenced::Published { zxid }) => {
                published_zxid = zxid;
                if let Some(assigned) = assigned {
                    for reused in &assigned.reused {
                        warn!(slot = reused.slot, instance = %reused.instance, was = %reused.was, "every slot is used: a retired slot went to a new address, which a running pgpool applies only when it restarts");
                    }
                    slot_map = Some((Ok(assigned.slots), slot_bytes));
                }
                if !excluded_same {
                    excluded_stored = excluded_bytes;
                }
                if clears_hold {
                    hold_stored = Some(NO_HOLD.to_vec());
                }
                held = None;
                info!(
                    old = %digest(published.as_deref()),
                    new = %digest(Some(&value)),
                    instances = instances.len(),
                    excluded = excluded.len(),
                    latency_ms = last_change.map_or(0.0, |at| at.elapsed().as_secs_f64() * 1000.0),
                    "published"
                );
                shared.telemetry.published(
                    key.as_str(),
                    (&digest(Some(&value)), value.len(), zxid),
                    last_change,
                );
                published = Some(value);
                guards.published(instances.len(), Instant::now());
                failures = 0;
            }
            Ok(Fenced::Deposed) => return Ended::Deposed,
            Err(err) => {
                failures += 1;
                let delay = backoff(failures);
                error!(error = %err, retry_in_s = delay.as_secs(), "cannot publish; retrying");
                shared.telemetry.publish_failed(key.as_str());
                retry_at = Some(Instant::now() + delay);
                unsure = true;
                unsure_value = Some(value);
            }
        }
    }
}

/// Whether `record` (as read) is `stored` (the hold this leader recorded) marked confirmed: a
/// confirmation of an earlier hold does not count.
fn confirms(record: &[u8], stored: Option<&[u8]>) -> bool {
    let parse = |bytes: &[u8]| serde_json::from_slice::<serde_json::Value>(bytes).ok();
    let (Some(mut record), Some(stored)) = (parse(record), stored.and_then(parse)) else {
        return false;
    };
    let confirmed = record
        .as_object_mut()
        .and_then(|r| r.remove("confirmed"))
        .is_some_and(|c| c == true);
    confirmed && record == stored
}

/// The hold record when nothing is held.
const NO_HOLD: &[u8] = b"{}";

/// Every reason a hold record gives (a bounded label of `herald_director_holds_total`).
const HOLD_REASONS: [&str; 5] = [
    "min_instances",
    "empty",
    "max_drop",
    "too_large",
    "check_failed",
];

/// The departures the cache remembers, per service: when, and the reason in the record.
type Departures = BTreeMap<ServiceName, BTreeMap<InstanceId, (Instant, Departure)>>;

/// What the cliff guard needs to tell a drop from intent: the output's instances at the last
/// look, and the newest departure already looked at. Kept across terms, so a takeover counts
/// what left while it stood by.
#[derive(Default)]
struct LastLook {
    inputs: Vec<Option<Instances>>,
    seen_until: Option<Instant>,
}

impl LastLook {
    /// Whether the output's services hold the very maps of the last look (nothing of theirs
    /// changed, and so no departure of theirs was noted since).
    fn unchanged(&self, output: &Output, snapshot: &Snapshot) -> bool {
        self.inputs.len() == output.services.len()
            && output.services.iter().zip(&self.inputs).all(|(s, last)| {
                match (snapshot.services.get(s), last) {
                    (Some(now), Some(last)) => Arc::ptr_eq(now, last),
                    (None, None) => true,
                    _ => false,
                }
            })
    }

    /// How many of the output's instances at the last look have since left on purpose
    /// (stopped or drained, by their departure records); `snapshot` is the last look from now.
    /// Costs one pass over the departures remembered, never one over the instances.
    fn left_on_purpose(&mut self, output: &Output, snapshot: &Snapshot) -> usize {
        let mut gone = 0;
        let mut newest = self.seen_until;
        for (n, service) in output.services.iter().enumerate() {
            let Some(left) = snapshot.deregistered.get(service) else {
                continue;
            };
            let before = self.inputs.get(n).and_then(Option::as_ref);
            for (id, (at, why)) in left {
                if self.seen_until.is_some_and(|seen| *at <= seen) {
                    continue;
                }
                newest = newest.max(Some(*at));
                if why.intended()
                    && before
                        .and_then(|m| m.get(id))
                        .is_some_and(|i| output.selects(i))
                {
                    gone += 1;
                }
            }
        }
        if gone > 0 {
            debug!(
                instances = gone,
                "left on purpose (stopped or drained): not counted as a drop"
            );
        }
        self.seen_until = newest;
        self.inputs = output
            .services
            .iter()
            .map(|s| snapshot.services.get(s).cloned())
            .collect();
        gone
    }
}

/// What `<root>/holds/KEY` says of a hold: its reason (`min_instances`, `empty`, `max_drop`,
/// `too_large`, `check_failed`), its words, since when, and how many instances the candidate
/// had.
fn hold_record(reason: &str, message: &str, instances: usize) -> Vec<u8> {
    serde_json::json!({
        "reason": reason,
        "message": message,
        "since": now_ms(),
        "instances": instances,
    })
    .to_string()
    .into_bytes()
}

/// Writes the hold record (fenced) when it differs from what is stored; `Some` when this
/// director no longer leads. A failed write is only said: the record is for people.
async fn record_hold(
    lead: &Leadership,
    shared: &Shared,
    key: &crate::layout::EnvKey,
    record: Vec<u8>,
    stored: &mut Option<Vec<u8>>,
) -> Option<Ended> {
    // No znode and nothing held, or the same hold said again: nothing to write.
    let said = |bytes: &[u8]| {
        serde_json::from_slice::<serde_json::Value>(bytes)
            .ok()
            .map(|v| (v["reason"].clone(), v["message"].clone()))
    };
    match said(&record) {
        Some((reason, message)) if record != NO_HOLD => {
            if stored.as_deref().and_then(said) != Some((reason.clone(), message.clone())) {
                let reason = HOLD_REASONS
                    .into_iter()
                    .find(|r| reason == *r)
                    .unwrap_or("other");
                shared
                    .telemetry
                    .hold(key.as_str(), reason, message.as_str().unwrap_or_default());
            }
        }
        _ => shared.telemetry.hold_ended(key.as_str()),
    }
    if (stored.is_none() && record == NO_HOLD)
        || stored
            .as_deref()
            .is_some_and(|s| s == record.as_slice() || said(s) == said(&record))
    {
        return None;
    }
    let beside = [Beside::Hold(&record, stored.is_some())];
    let written = publish(lead, &shared.values, key, None, false, &beside);
    match shared.telemetry.zk_request("multi", written).await {
        Ok(Fenced::Published { .. }) => {
            *stored = Some(record);
            None
        }
        Ok(Fenced::Deposed) => Some(Ended::Deposed),
        Err(err) => {
            warn!(error = %err, "cannot record the hold at <root>/holds; it is only logged");
            None
        }
    }
}

/// The value at `path` and its stat (`None`: no znode).
async fn read_value(
    client: &zookeeper_client::Client,
    path: &str,
) -> Result<(Option<Vec<u8>>, Option<zookeeper_client::Stat>), ZkError> {
    match client.get_data(path).await {
        Ok((data, stat)) => Ok((Some(data), Some(stat))),
        Err(zookeeper_client::Error::NoNode) => Ok((None, None)),
        Err(err) => Err(ZkError::op("read", path, err)),
    }
}

/// An output's slot map as last read or written: parsed, and the stored bytes (`None`: no znode).
type StoredSlots = (Result<Slots, SlotMapError>, Option<Vec<u8>>);

/// Milliseconds since the Unix epoch, for the slot map.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// 1s, 2s, 4s, … up to a minute.
fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.saturating_sub(1).min(6)).min(Duration::from_secs(60))
}

/// Bound on an output's `check` program.
const CHECK_TIMEOUT: Duration = Duration::from_secs(30);

/// Most check runs spent looking for the instances that make a value fail.
const MAX_CULPRIT_CHECKS: usize = 64;

/// Runs the output's check on a candidate value (on its stdin).
async fn run_check(
    check: &str,
    env: &BTreeMap<OsString, OsString>,
    value: &[u8],
) -> Result<(), crate::command::CommandError> {
    run_command("check", check, &[], Some(value), env, CHECK_TIMEOUT).await
}

/// Which of `instances` make the output's check fail: the suspects are those not in
/// `last_passed` (all, without one), bisected on top of the others (see [`culprits`]).
async fn find_culprits(
    output: &Output,
    shared: &Shared,
    instances: &[Instance],
    slots: Option<&SlotOf>,
    last_passed: Option<&[Instance]>,
) -> Found {
    let Some(check) = &output.check else {
        return Found::Nobody("there is no check");
    };
    let (base, suspects): (Vec<usize>, Vec<usize>) = (0..instances.len())
        .partition(|&n| last_passed.is_some_and(|passed| passed.contains(&instances[n])));
    culprits::culprits(&base, &suspects, MAX_CULPRIT_CHECKS, |set| async move {
        let subset: Vec<Instance> = set.iter().map(|&n| instances[n].clone()).collect();
        let derived = match &output.derivation {
            Derivation::Exec { command, timeout } => {
                derive_exec(command, *timeout, &shared.env, &subset, slots).await
            }
            derivation => derivation.derive(&subset, slots),
        };
        match derived {
            Ok(value) => run_check(check, &shared.env, &value).await.is_ok(),
            Err(_) => false,
        }
    })
    .await
}

/// Waits for a change, then for quiet: `wait_min` without another change, but no longer than
/// `wait_max` after the first (consul-template's `wait`). `false` when the cache is gone.
async fn settled(snapshots: &mut View, wait_min: Duration, wait_max: Duration) -> bool {
    if snapshots.changed().await.is_err() {
        return false;
    }
    if wait_min.is_zero() {
        return true;
    }
    let deadline = Instant::now() + wait_max.max(wait_min);
    loop {
        let quiet = (Instant::now() + wait_min).min(deadline);
        tokio::select! {
            changed = snapshots.changed() => {
                if changed.is_err() {
                    return false;
                }
                if Instant::now() >= deadline {
                    return true;
                }
            }
            _ = tokio::time::sleep_until(quiet) => return true,
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A short, safe name for a value in logs: the first 12 hex digits of its SHA-256
/// (`herald resolve KEY | sha256sum` gives the same), or `none`.
pub fn digest(value: Option<&[u8]>) -> String {
    match value {
        None => "none".to_owned(),
        Some(value) => Sha256::digest(value)
            .iter()
            .take(6)
            .map(|b| format!("{b:02x}"))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_sha256_prefixes() {
        assert_eq!(digest(None), "none");
        // printf '' | sha256sum → e3b0c44298fc…
        assert_eq!(digest(Some(b"")), "e3b0c44298fc");
    }
}
