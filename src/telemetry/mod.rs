//! What a long-running herald tells about itself: Prometheus metrics (`/metrics`) and a status
//! page (`/status`, `/status.json`), served on `--metrics-listen` (and by the gateway on its
//! own listener).
//!
//! ```text
//! main ─ Telemetry::new(command) ─▶ handed down like the cancellation token
//!   zk::Session (state changes) ─┐
//!   announce (registrar, checks) ├─▶ Telemetry ─▶ Metrics (counters, gauges, histograms)
//!   director (lead, publish)     │             └▶ Board (the status page's data)
//!   watch, gateway               ┘
//! serve(address) ─▶ http_server ─▶ /metrics (OpenMetrics text) · /status (HTML) · /status.json
//! ```
//!
//! One [`Telemetry`] per process, created in `main` and cloned into each component; a process
//! that is not asked to serve it still keeps it (a few atomics and a small map).

mod board;
mod metrics;
mod serve;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

pub use board::{Board, CheckView, HoldView, OutputView, RegistrationView, WatchView, now};
pub use metrics::Metrics;
pub use serve::{listen_address, routes, serve};

use metrics::{
    CheckDirection, CheckLabels, File, FileResult, Key, KeyReason, KeyResult, Method, MethodCode,
    Op, Service, ServiceReason, Source,
};

/// The process's metrics and status, shared by every component.
#[derive(Debug, Clone)]
pub struct Telemetry {
    metrics: Arc<Metrics>,
    board: Arc<Mutex<Board>>,
}

impl Telemetry {
    /// `command`: the subcommand this process runs (a label of `herald_build_info`).
    pub fn new(command: &'static str) -> Telemetry {
        Telemetry {
            metrics: Arc::new(Metrics::new(command)),
            board: Arc::new(Mutex::new(Board::new(command))),
        }
    }

    fn board(&self) -> MutexGuard<'_, Board> {
        self.board.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The exposition, with the ages computed now.
    pub fn encode(&self) -> String {
        self.refresh();
        self.metrics.encode()
    }

    /// The status page's data, now.
    pub fn snapshot(&self) -> Board {
        self.refresh();
        let mut board = self.board().clone();
        board.now = now();
        board
    }

    /// Ages are gauges of "now minus when": set at each scrape.
    fn refresh(&self) {
        let board = self.board();
        let t = now();
        let unconfirmed = match board.session.state {
            "connected" => 0.0,
            _ => (t - board.session.since).max(0.0),
        };
        self.metrics.zk_unconfirmed.set(unconfirmed);
        for (file, watch) in &board.watches {
            if let Some(at) = watch.confirmed_at {
                self.metrics
                    .value_age
                    .get_or_create(&File { file: file.clone() })
                    .set((t - at).max(0.0));
            }
        }
    }

    // The session.

    pub fn session_servers(&self, servers: &str) {
        self.board().session.servers = servers.to_owned();
    }

    /// A session is established (the first, or a new one after an expiry).
    pub fn session_established(&self, session_id: i64, server: Option<&str>) {
        self.metrics.zk_connected.set(1);
        let mut board = self.board();
        board.session.state = "connected";
        board.session.server = server.map(str::to_owned);
        board.session.session_id = Some(format!("{session_id:#x}"));
        board.session.since = now();
    }

    pub fn session_disconnected(&self) {
        self.metrics.zk_connected.set(0);
        let mut board = self.board();
        board.session.state = "disconnected";
        board.session.since = now();
    }

    /// Reconnected to `server`, the same session.
    pub fn session_reconnected(&self, server: Option<&str>) {
        self.metrics.zk_connected.set(1);
        self.metrics.zk_reconnects.inc();
        let mut board = self.board();
        board.session.state = "connected";
        board.session.server = server.map(str::to_owned);
        board.session.since = now();
        board.session.reconnects += 1;
    }

    pub fn session_expired(&self) {
        self.metrics.zk_connected.set(0);
        self.metrics.zk_expirations.inc();
        let mut board = self.board();
        board.session.state = "expired";
        board.session.since = now();
        board.session.expirations += 1;
    }

    /// Times `request`, a ZooKeeper operation named `op` (`get_data`, `multi`, …): the
    /// director's reads and fenced writes, the gateway's reads, syncs and writes.
    pub async fn zk_request<T>(&self, op: &'static str, request: impl Future<Output = T>) -> T {
        let started = std::time::Instant::now();
        let result = request.await;
        self.metrics
            .zk_request
            .get_or_create(&Op { op })
            .observe(started.elapsed().as_secs_f64());
        result
    }

    // Registration.

    fn registration<'b>(board: &'b mut Board, service: &str, id: &str) -> &'b mut RegistrationView {
        board
            .registrations
            .entry(format!("{service}/{id}"))
            .or_insert_with(|| board::RegistrationView {
                service: service.to_owned(),
                id: id.to_owned(),
                since: now(),
                ..Default::default()
            })
    }

    /// The instance node now exists (`true`) or not.
    pub fn registered(&self, service: &str, id: &str, yes: bool) {
        let labels = Service {
            service: service.to_owned(),
        };
        let mut board = self.board();
        let view = Self::registration(&mut board, service, id);
        if view.registered != yes {
            view.registered = yes;
            view.since = now();
        }
        self.count_registered(&board, service);
        if yes {
            self.metrics.registrations.get_or_create(&labels).inc();
        }
    }

    /// The registration is over (a host agent's process went): off the status page.
    pub fn registration_ended(&self, service: &str, id: &str) {
        let mut board = self.board();
        board.registrations.remove(&format!("{service}/{id}"));
        self.count_registered(&board, service);
    }

    /// `herald_registered{service}`: how many of the service's instances this process holds
    /// registered (one for an agent; any number for a host agent).
    fn count_registered(&self, board: &Board, service: &str) {
        let count = board
            .registrations
            .values()
            .filter(|r| r.service == service && r.registered)
            .count();
        self.metrics
            .registered
            .get_or_create(&Service {
                service: service.to_owned(),
            })
            .set(count as i64);
    }

    /// The instance node was deleted, for `reason` (the departure record's).
    pub fn deregistered(&self, service: &str, id: &str, reason: &'static str) {
        self.metrics
            .deregistrations
            .get_or_create(&ServiceReason {
                service: service.to_owned(),
                reason,
            })
            .inc();
        let mut board = self.board();
        let view = Self::registration(&mut board, service, id);
        view.registered = false;
        view.since = now();
        view.last_departure = Some(reason);
        self.count_registered(&board, service);
    }

    /// Drained (`Some("soft" | "out")`, with the operator's reason) or serving (`None`).
    pub fn drained(&self, service: &str, id: &str, drained: Option<&str>, reason: Option<&str>) {
        self.metrics
            .drained
            .get_or_create(&Service {
                service: service.to_owned(),
            })
            .set(i64::from(drained.is_some()));
        let mut board = self.board();
        let view = Self::registration(&mut board, service, id);
        view.drained = drained.map(str::to_owned);
        view.drain_reason = reason.map(board::cut);
    }

    /// One run of `check`: its verdict, how long it took and what it said.
    pub fn check_ran(
        &self,
        (service, id): (&str, &str),
        check: &str,
        passed: bool,
        took: Duration,
        output: &str,
    ) {
        let labels = CheckLabels {
            service: service.to_owned(),
            check: check.to_owned(),
        };
        self.metrics
            .check_duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
        let mut board = self.board();
        let view = Self::registration(&mut board, service, id);
        let entry = view.checks.entry(check.to_owned()).or_default();
        entry.last_output = board::cut(output);
        entry.last_passed = Some(passed);
    }

    /// `check`'s state changed (after rise/fall).
    pub fn check_changed(&self, (service, id): (&str, &str), check: &str, passing: bool) {
        self.metrics
            .check_transitions
            .get_or_create(&CheckDirection {
                service: service.to_owned(),
                check: check.to_owned(),
                direction: if passing { "up" } else { "down" },
            })
            .inc();
        let mut board = self.board();
        let view = Self::registration(&mut board, service, id);
        let entry = view.checks.entry(check.to_owned()).or_default();
        entry.passing = passing;
        entry.since = now();
        entry.transitions += 1;
    }

    /// What the checks of the instance `service/id` report to.
    pub fn checks_of(&self, service: &str, id: &str) -> CheckReporter {
        CheckReporter {
            telemetry: self.clone(),
            service: service.to_owned(),
            id: id.to_owned(),
        }
    }

    // The director.

    fn output<'b>(board: &'b mut Board, key: &str) -> &'b mut OutputView {
        board
            .outputs
            .entry(key.to_owned())
            .or_insert_with(|| OutputView {
                since: now(),
                ..Default::default()
            })
    }

    pub fn leading(&self, key: &str, yes: bool) {
        self.metrics
            .leading
            .get_or_create(&Key {
                key: key.to_owned(),
            })
            .set(i64::from(yes));
        let mut board = self.board();
        let view = Self::output(&mut board, key);
        view.leading = yes;
        view.since = now();
    }

    /// A derivation was made of `instances`.
    pub fn derived(&self, key: &str, instances: usize) {
        self.metrics
            .instances
            .get_or_create(&Key {
                key: key.to_owned(),
            })
            .set(instances as i64);
        Self::output(&mut self.board(), key).instances = instances as u64;
    }

    /// The value (digest, size, mzxid when known) was written; `since` is when the change
    /// that led to it arrived.
    pub fn published(
        &self,
        key: &str,
        value: (&str, usize, Option<i64>),
        since: Option<tokio::time::Instant>,
    ) {
        let labels = Key {
            key: key.to_owned(),
        };
        self.publish_result(key, "published");
        self.metrics.last_publish.get_or_create(&labels).set(now());
        if let Some(since) = since {
            self.metrics
                .convergence
                .get_or_create(&labels)
                .observe(since.elapsed().as_secs_f64());
        }
        self.value_held(key, value);
        let mut board = self.board();
        let view = Self::output(&mut board, key);
        view.published_at = Some(now());
        view.publishes += 1;
    }

    /// The value this director found already holds what it derived (a hold then ends with the
    /// record the caller clears).
    pub fn unchanged(&self, key: &str, value: (&str, usize, Option<i64>)) {
        self.publish_result(key, "unchanged");
        self.value_held(key, value);
    }

    fn publish_result(&self, key: &str, result: &'static str) {
        self.metrics
            .publishes
            .get_or_create(&KeyResult {
                key: key.to_owned(),
                result,
            })
            .inc();
    }

    /// KEY now holds this value (digest, size, mzxid when known): any hold has ended.
    fn value_held(&self, key: &str, (digest, bytes, zxid): (&str, usize, Option<i64>)) {
        self.metrics
            .value_bytes
            .get_or_create(&Key {
                key: key.to_owned(),
            })
            .set(bytes as i64);
        self.hold_ended(key);
        let mut board = self.board();
        let view = Self::output(&mut board, key);
        view.digest = Some(digest.to_owned());
        view.bytes = Some(bytes as u64);
        view.mzxid = zxid.map(|z| format!("{z:#x}"));
    }

    /// Leadership of `key` went to a director the key prefers (leadership is spread).
    pub fn handed_over(&self, key: &str) {
        self.metrics
            .handovers
            .get_or_create(&Key {
                key: key.to_owned(),
            })
            .inc();
    }

    pub fn publish_failed(&self, key: &str) {
        self.publish_result(key, "failed");
    }

    /// A hold began (or its reason changed).
    pub fn hold(&self, key: &str, reason: &'static str, detail: &str) {
        self.metrics
            .holds
            .get_or_create(&KeyReason {
                key: key.to_owned(),
                reason,
            })
            .inc();
        self.metrics
            .held
            .get_or_create(&Key {
                key: key.to_owned(),
            })
            .set(1);
        let hold = HoldView {
            reason,
            detail: board::cut(detail),
            since: now(),
        };
        let mut board = self.board();
        let view = Self::output(&mut board, key);
        view.last_hold = Some(hold.clone());
        view.hold = Some(hold);
    }

    /// No hold now.
    pub fn hold_ended(&self, key: &str) {
        self.metrics
            .held
            .get_or_create(&Key {
                key: key.to_owned(),
            })
            .set(0);
        Self::output(&mut self.board(), key).hold = None;
    }

    // watch.

    pub fn watching(&self, file: &str, keys: Vec<String>) {
        self.board().watches.insert(
            file.to_owned(),
            WatchView {
                keys,
                source: "zookeeper",
                ..Default::default()
            },
        );
    }

    /// The file's values were (re)confirmed from ZooKeeper (`cache`: the last known values).
    pub fn watch_read(&self, file: &str, from_cache_at: Option<f64>) {
        let mut board = self.board();
        if let Some(view) = board.watches.get_mut(file) {
            match from_cache_at {
                None => {
                    view.confirmed_at = Some(now());
                    view.source = "zookeeper";
                }
                Some(at) => {
                    view.confirmed_at = Some(at);
                    view.source = "cache";
                }
            }
        }
    }

    /// One apply ended with `result` (`applied`, `unchanged`, `check_failed`, `reload_failed`,
    /// `rolled_back`, `retried`); `content`: the digest and size of the file now applied.
    pub fn watch_result(
        &self,
        file: &str,
        result: &'static str,
        content: Option<(&str, usize)>,
        error: Option<&str>,
    ) {
        self.metrics
            .applies
            .get_or_create(&FileResult {
                file: file.to_owned(),
                result,
            })
            .inc();
        let ok = matches!(result, "applied" | "unchanged");
        if ok {
            self.metrics
                .last_success
                .get_or_create(&File {
                    file: file.to_owned(),
                })
                .set(now());
        }
        let mut board = self.board();
        if let Some(view) = board.watches.get_mut(file) {
            view.last_result = Some(result);
            view.last_result_at = Some(now());
            view.last_error = error.map(board::cut);
            if let Some((digest, bytes)) = content {
                view.digest = Some(digest.to_owned());
                view.bytes = Some(bytes as u64);
                if result == "applied" {
                    view.applied_at = Some(now());
                }
            }
        }
    }

    // The gateway.

    /// One request; a method other than the five the gateway answers counts as `other` (a
    /// client chooses the method: the label stays bounded).
    pub fn gateway_request(&self, method: &str, code: u16, took: Duration) {
        let method = ["GET", "HEAD", "POST", "PUT", "DELETE"]
            .into_iter()
            .find(|m| *m == method)
            .unwrap_or("other");
        self.metrics
            .requests
            .get_or_create(&MethodCode {
                method: method.to_owned(),
                code,
            })
            .inc();
        self.metrics
            .request_duration
            .get_or_create(&Method {
                method: method.to_owned(),
            })
            .observe(took.as_secs_f64());
        if let Some(view) = &mut self.board().gateway {
            view.requests += 1;
        }
    }

    /// A value answered from `source` (`memory`, `zookeeper`, `cache`).
    pub fn gateway_answer(&self, source: &'static str) {
        self.metrics.answers.get_or_create(&Source { source }).inc();
    }

    pub fn gateway_state(&self, listen: &str, ready: bool, values_in_memory: usize) {
        let mut board = self.board();
        let view = board.gateway.get_or_insert_with(Default::default);
        view.listen = listen.to_owned();
        view.ready = ready;
        view.values_in_memory = values_in_memory as u64;
    }
}

/// The checks of one registration, reporting each run and each change of state.
#[derive(Debug, Clone)]
pub struct CheckReporter {
    telemetry: Telemetry,
    service: String,
    id: String,
}

impl CheckReporter {
    /// A reporter nobody reads (tests, and checks outside a registration).
    pub fn none() -> CheckReporter {
        Telemetry::new("none").checks_of("", "")
    }

    /// One run: its verdict, how long it took, and what it said (a failure's reason; never the
    /// check's output).
    pub fn ran(&self, check: &str, passed: bool, took: Duration, said: &str) {
        self.telemetry
            .check_ran((&self.service, &self.id), check, passed, took, said);
    }

    /// The check went up or down (after rise/fall).
    pub fn changed(&self, check: &str, up: bool) {
        self.telemetry
            .check_changed((&self.service, &self.id), check, up);
    }
}
