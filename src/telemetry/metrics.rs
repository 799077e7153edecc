//! The metric families every long-running herald exposes, in one registry (prometheus-client,
//! encoded in the OpenMetrics text format). Names follow Prometheus conventions: a `herald_`
//! prefix, base units (seconds, bytes), counters ending in `_total` (the encoder adds it), and
//! bounded labels only — a service, a key, a check, a file, a reason; never an instance id on a
//! director, never a value.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

/// A gauge of seconds (a timestamp or an age).
pub type Seconds = Gauge<f64, AtomicU64>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Op {
    pub op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Service {
    pub service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceReason {
    pub service: String,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckLabels {
    pub service: String,
    pub check: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckDirection {
    pub service: String,
    pub check: String,
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Key {
    pub key: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyResult {
    pub key: String,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyReason {
    pub key: String,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct File {
    pub file: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FileResult {
    pub file: String,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodCode {
    pub method: String,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Method {
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Source {
    pub source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Build {
    version: &'static str,
    command: &'static str,
}

/// Latencies from 100 µs to about 52 s.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
}

/// Every family, registered once.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    // The session.
    pub zk_connected: Gauge,
    pub zk_reconnects: Counter,
    pub zk_expirations: Counter,
    pub zk_unconfirmed: Seconds,
    pub zk_request: Family<Op, Histogram, fn() -> Histogram>,
    // Registration.
    pub registered: Family<Service, Gauge>,
    pub drained: Family<Service, Gauge>,
    pub registrations: Family<Service, Counter>,
    pub deregistrations: Family<ServiceReason, Counter>,
    pub check_transitions: Family<CheckDirection, Counter>,
    pub check_duration: Family<CheckLabels, Histogram, fn() -> Histogram>,
    // The director.
    pub leading: Family<Key, Gauge>,
    pub handovers: Family<Key, Counter>,
    pub instances: Family<Key, Gauge>,
    pub publishes: Family<KeyResult, Counter>,
    pub holds: Family<KeyReason, Counter>,
    pub held: Family<Key, Gauge>,
    pub value_bytes: Family<Key, Gauge>,
    pub last_publish: Family<Key, Seconds>,
    pub convergence: Family<Key, Histogram, fn() -> Histogram>,
    // watch.
    pub applies: Family<FileResult, Counter>,
    pub value_age: Family<File, Seconds>,
    pub last_success: Family<File, Seconds>,
    // The gateway.
    pub requests: Family<MethodCode, Counter>,
    pub request_duration: Family<Method, Histogram, fn() -> Histogram>,
    pub answers: Family<Source, Counter>,
}

impl Metrics {
    pub fn new(command: &'static str) -> Metrics {
        let mut registry = Registry::default();
        let r = &mut registry;
        r.register(
            "herald_build",
            "herald's version and the command this process runs",
            Info::new(Build {
                version: env!("CARGO_PKG_VERSION"),
                command,
            }),
        );
        let zk_connected = Gauge::default();
        r.register(
            "herald_zk_connected",
            "1 while the ZooKeeper session is connected",
            zk_connected.clone(),
        );
        let zk_reconnects = Counter::default();
        r.register(
            "herald_zk_reconnects",
            "Connections regained within the same session",
            zk_reconnects.clone(),
        );
        let zk_expirations = Counter::default();
        r.register(
            "herald_zk_session_expirations",
            "Sessions that expired (a new one was established)",
            zk_expirations.clone(),
        );
        let zk_unconfirmed = Seconds::default();
        r.register_with_unit(
            "herald_zk_session_unconfirmed",
            "Time since the session was last confirmed by a server (0 while connected)",
            Unit::Seconds,
            zk_unconfirmed.clone(),
        );
        let zk_request = Family::new_with_constructor(latency as fn() -> Histogram);
        r.register_with_unit(
            "herald_zk_request_duration",
            "ZooKeeper request latency by operation",
            Unit::Seconds,
            zk_request.clone(),
        );
        let registered = Family::default();
        r.register(
            "herald_registered",
            "1 while this process's instance node exists",
            registered.clone(),
        );
        let drained = Family::default();
        r.register(
            "herald_drained",
            "1 while the instance is drained",
            drained.clone(),
        );
        let registrations = Family::default();
        r.register(
            "herald_registrations",
            "Instance nodes created",
            registrations.clone(),
        );
        let deregistrations = Family::default();
        r.register(
            "herald_deregistrations",
            "Instance nodes deleted, by the reason in the departure record",
            deregistrations.clone(),
        );
        let check_transitions = Family::default();
        r.register(
            "herald_check_transitions",
            "Health check state changes (direction up or down)",
            check_transitions.clone(),
        );
        let check_duration = Family::new_with_constructor(latency as fn() -> Histogram);
        r.register_with_unit(
            "herald_check_duration",
            "Health check run time",
            Unit::Seconds,
            check_duration.clone(),
        );
        let leading = Family::default();
        r.register(
            "herald_director_leading",
            "1 while this director leads the output",
            leading.clone(),
        );
        let handovers = Family::default();
        r.register(
            "herald_director_handovers",
            "Times this director handed the output over to a director it prefers (spread leadership)",
            handovers.clone(),
        );
        let instances = Family::default();
        r.register(
            "herald_director_instances",
            "Instances the output's last derivation was made of",
            instances.clone(),
        );
        let publishes = Family::default();
        r.register(
            "herald_director_publishes",
            "Publish attempts by result (published, unchanged, failed)",
            publishes.clone(),
        );
        let holds = Family::default();
        r.register(
            "herald_director_holds",
            "Holds begun, by reason (min_instances, empty, max_drop, check_failed, too_large)",
            holds.clone(),
        );
        let held = Family::default();
        r.register(
            "herald_director_held",
            "1 while the output's last value is held back",
            held.clone(),
        );
        let value_bytes = Family::default();
        r.register_with_unit(
            "herald_director_value",
            "Size of the published value",
            Unit::Bytes,
            value_bytes.clone(),
        );
        let last_publish = Family::default();
        r.register_with_unit(
            "herald_director_last_publish_timestamp",
            "When this director last published the output (Unix time)",
            Unit::Seconds,
            last_publish.clone(),
        );
        let convergence = Family::new_with_constructor(latency as fn() -> Histogram);
        r.register_with_unit(
            "herald_director_convergence",
            "From the change of the instances that triggered it to the value published",
            Unit::Seconds,
            convergence.clone(),
        );
        let applies = Family::default();
        r.register(
            "herald_watch_applies",
            "Values applied to the file, by result (applied, unchanged, check_failed, reload_failed, rolled_back, retried)",
            applies.clone(),
        );
        let value_age = Family::default();
        r.register_with_unit(
            "herald_watch_value_age",
            "Time since the file's value was last confirmed from ZooKeeper",
            Unit::Seconds,
            value_age.clone(),
        );
        let last_success = Family::default();
        r.register_with_unit(
            "herald_watch_last_success_timestamp",
            "When a value was last applied successfully (Unix time)",
            Unit::Seconds,
            last_success.clone(),
        );
        let requests = Family::default();
        r.register(
            "herald_gateway_requests",
            "Requests by method and status code",
            requests.clone(),
        );
        let request_duration = Family::new_with_constructor(latency as fn() -> Histogram);
        r.register_with_unit(
            "herald_gateway_request_duration",
            "Request latency by method",
            Unit::Seconds,
            request_duration.clone(),
        );
        let answers = Family::default();
        r.register(
            "herald_gateway_value_answers",
            "Values answered, by where they came from (memory, zookeeper, cache)",
            answers.clone(),
        );
        Metrics {
            registry,
            zk_connected,
            zk_reconnects,
            zk_expirations,
            zk_unconfirmed,
            zk_request,
            registered,
            drained,
            registrations,
            deregistrations,
            check_transitions,
            check_duration,
            leading,
            handovers,
            instances,
            publishes,
            holds,
            held,
            value_bytes,
            last_publish,
            convergence,
            applies,
            value_age,
            last_success,
            requests,
            request_duration,
            answers,
        }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}
