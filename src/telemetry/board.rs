//! What the status page shows: the state of this process's session, registrations, director
//! outputs and watched files, as plain data (served as `/status.json`, rendered by the page).
//! Values and metadata are never held here — digests, sizes and counts only; check output is
//! cut to its first [`MAX_OUTPUT`] bytes.

use std::collections::BTreeMap;

use serde::Serialize;

/// How much of a check's last output is kept.
pub const MAX_OUTPUT: usize = 200;

/// Unix time in seconds (with milliseconds).
pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[derive(Debug, Clone, Serialize)]
pub struct Board {
    pub command: &'static str,
    pub version: &'static str,
    pub pid: u32,
    pub started: f64,
    /// When the page was rendered (set at each request).
    pub now: f64,
    pub session: SessionView,
    pub registrations: BTreeMap<String, RegistrationView>,
    pub outputs: BTreeMap<String, OutputView>,
    pub watches: BTreeMap<String, WatchView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewayView>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct SessionView {
    /// `connecting`, `connected`, `disconnected`, `expired`, `closed`.
    pub state: &'static str,
    /// The connect string's hosts.
    pub servers: String,
    /// The server the session is (or was last) connected to, `tcp://host:port`.
    pub server: Option<String>,
    /// In hex, as ZooKeeper's logs write it.
    pub session_id: Option<String>,
    pub since: f64,
    pub reconnects: u64,
    pub expirations: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RegistrationView {
    pub service: String,
    pub id: String,
    pub registered: bool,
    pub since: f64,
    /// `None` while serving; else `soft` (weight 0) or `out`, with the operator's reason.
    pub drained: Option<String>,
    pub drain_reason: Option<String>,
    /// Why the node last went (`stopped`, `drained`, `unhealthy`, `exited`).
    pub last_departure: Option<&'static str>,
    pub checks: BTreeMap<String, CheckView>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckView {
    pub passing: bool,
    /// The verdict of the last run (before rise/fall).
    pub last_passed: Option<bool>,
    pub since: f64,
    pub transitions: u64,
    pub last_output: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct OutputView {
    pub leading: bool,
    pub since: f64,
    pub instances: u64,
    /// Of the value this director last published or found (a digest, as the logs show it).
    pub digest: Option<String>,
    pub bytes: Option<u64>,
    /// The value's mzxid (hex, as ZooKeeper's tools write it), when known.
    pub mzxid: Option<String>,
    pub published_at: Option<f64>,
    pub hold: Option<HoldView>,
    pub last_hold: Option<HoldView>,
    pub publishes: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct HoldView {
    pub reason: &'static str,
    pub detail: String,
    pub since: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct WatchView {
    pub keys: Vec<String>,
    pub digest: Option<String>,
    pub bytes: Option<u64>,
    pub applied_at: Option<f64>,
    /// When the values were last confirmed from ZooKeeper (or, from the cache, when they were).
    pub confirmed_at: Option<f64>,
    /// Where the applied value came from: `zookeeper` or `cache` (the last known value).
    pub source: &'static str,
    pub last_result: Option<&'static str>,
    pub last_result_at: Option<f64>,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct GatewayView {
    pub listen: String,
    pub ready: bool,
    pub values_in_memory: u64,
    pub requests: u64,
}

impl Board {
    pub fn new(command: &'static str) -> Board {
        Board {
            command,
            version: env!("CARGO_PKG_VERSION"),
            pid: std::process::id(),
            started: now(),
            now: now(),
            session: SessionView {
                state: "connecting",
                since: now(),
                ..SessionView::default()
            },
            registrations: BTreeMap::new(),
            outputs: BTreeMap::new(),
            watches: BTreeMap::new(),
            gateway: None,
        }
    }
}

/// `text` cut to [`MAX_OUTPUT`] bytes at a character boundary.
pub fn cut(text: &str) -> String {
    let mut end = text.len().min(MAX_OUTPUT);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].trim_end().to_owned()
}
