//! Health checks for a sidecar that registers a service instance only while all of its checks
//! pass: tcp, http and exec checks, each on its own task, each with rise and fall.
//!
//! ```text
//! check 1 ─every interval, within timeout─▶ run ─ok?─▶ rise/fall ─up/down─┐
//! check 2 ─ …                                                              ├─▶ all up? ─▶ watch<bool>
//! check N ─ …                                                              ┘
//! ```
//!
//! Invariants: a slow or hanging check never delays another (one task each, and every run is
//! bounded); an exec check is started through the [`Reaper`] and its whole process group is
//! killed when it times out or is abandoned; logs name a check by its `Display`, which never
//! shows an exec command's arguments or an HTTP query string, and never quote output or bodies.

mod check;
mod error;
mod exec;
mod http;
mod hysteresis;
mod tcp;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span};

pub use check::Check;
pub use error::CheckError;

use error::Failure;
use hysteresis::Hysteresis;

use crate::reaper::Reaper;
use crate::telemetry::CheckReporter;

/// How often and how patiently the checks run, and how many results in a row change a check's
/// state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// From the start of one run to the start of the next (a run longer than this is followed
    /// by the next at once).
    pub interval: Duration,
    /// A run taking longer is a failure (an exec check's process group is killed).
    pub timeout: Duration,
    /// Consecutive successes that bring a check up (0 counts as 1).
    pub rise: u32,
    /// Consecutive failures that bring a check down (0 counts as 1).
    pub fall: u32,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 2,
        }
    }
}

/// Where `tcp` and `tcp:PORT` checks connect: the instance's registered address and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub address: String,
    pub port: u16,
}

/// Starts running `checks` and returns whether the instance is healthy: `true` exactly while
/// every check is up. Each check starts down, so with checks the value starts `false`; with
/// none it is `true` and never changes. A new value is sent only when it changes.
///
/// Exec checks run `/bin/sh -c COMMAND` with exactly `env`, through `reaper`.
///
/// Everything stops when `cancel` is cancelled (or once every receiver is dropped); the sender
/// is then dropped, so `changed()` returns an error. Must be called on a tokio runtime.
pub fn monitor(
    checks: Vec<Check>,
    target: Target,
    policy: Policy,
    env: Arc<BTreeMap<OsString, OsString>>,
    reaper: Arc<Reaper>,
    reporter: CheckReporter,
    cancel: CancellationToken,
) -> watch::Receiver<bool> {
    let (healthy, rx) = watch::channel(checks.is_empty());
    let stop = cancel.child_token();
    let (report, mut reports) = mpsc::channel(checks.len().max(1));
    let mut up = vec![false; checks.len()];
    for (index, check) in checks.into_iter().enumerate() {
        let span = info_span!("check", check = %check);
        let runner = Runner {
            check,
            target: target.clone(),
            policy,
            env: env.clone(),
            reaper: reaper.clone(),
            reporter: reporter.clone(),
        };
        tokio::spawn(
            runner
                .watch(index, report.clone(), stop.clone())
                .instrument(span),
        );
    }
    drop(report);
    tokio::spawn(
        async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = healthy.closed() => {
                        stop.cancel();
                        return;
                    }
                    // Disabled without checks: the value then stays `true` (and the sender alive).
                    change = reports.recv(), if !up.is_empty() => {
                        let Some((index, check_up)) = change else { return };
                        up[index] = check_up;
                        let now = up.iter().all(|&u| u);
                        if healthy.send_if_modified(|h| std::mem::replace(h, now) != now) {
                            debug!(healthy = now, "health changed");
                        }
                    }
                }
            }
        }
        .instrument(tracing::Span::current()),
    );
    rx
}

/// One check and what running it needs.
struct Runner {
    check: Check,
    target: Target,
    policy: Policy,
    env: Arc<BTreeMap<OsString, OsString>>,
    reaper: Arc<Reaper>,
    reporter: CheckReporter,
}

impl Runner {
    /// Runs the check every interval until `stop`, reporting each change of its state as
    /// `(index, up)`.
    async fn watch(
        self,
        index: usize,
        report: mpsc::Sender<(usize, bool)>,
        stop: CancellationToken,
    ) {
        let (rise, fall) = (self.policy.rise.max(1), self.policy.fall.max(1));
        let mut state = Hysteresis::new(rise, fall);
        let mut first = true;
        let mut next = Instant::now();
        let name = self.check.to_string();
        loop {
            let started = Instant::now();
            let Some(result) = stop.run_until_cancelled(self.run_once()).await else {
                return;
            };
            let said = match &result {
                Ok(()) => String::from("passed"),
                Err(reason) => reason.to_string(),
            };
            self.reporter
                .ran(&name, result.is_ok(), started.elapsed(), &said);
            let change = state.observe(result.is_ok());
            if let Some(up) = change {
                self.reporter.changed(&name, up);
            }
            match (&result, change) {
                (Ok(()), Some(_)) => info!("check passed {rise} time(s) in a row: up"),
                (Err(reason), Some(_)) => {
                    info!(%reason, "check failed {fall} time(s) in a row: down");
                }
                // Said once at info, so that a check that never passes is not silent.
                (Err(reason), None) if first => {
                    info!(%reason, "check failed: down until it passes {rise} time(s) in a row");
                }
                (Err(reason), None) => debug!(%reason, up = state.is_up(), "check failed"),
                (Ok(()), None) => {}
            }
            first = false;
            if let Some(up) = change
                && report.send((index, up)).await.is_err()
            {
                return;
            }
            next += self.policy.interval;
            next = next.max(Instant::now());
            if stop
                .run_until_cancelled(tokio::time::sleep_until(next))
                .await
                .is_none()
            {
                return;
            }
        }
    }

    /// One run, bounded by the policy's timeout.
    async fn run_once(&self) -> Result<(), Failure> {
        let timeout = self.policy.timeout;
        match &self.check {
            Check::Tcp { host, port } => {
                let host = host.as_deref().unwrap_or(&self.target.address);
                let port = port.unwrap_or(self.target.port);
                bounded(timeout, tcp::probe(host, port)).await
            }
            Check::Http {
                host,
                port,
                path,
                contains,
            } => bounded(timeout, http::probe(host, *port, path, contains.as_deref())).await,
            // Bounded by itself: on timeout it kills the process group.
            Check::Exec { command } => exec::run(command, &self.env, &self.reaper, timeout).await,
        }
    }
}

async fn bounded(
    timeout: Duration,
    probe: impl Future<Output = Result<(), Failure>>,
) -> Result<(), Failure> {
    tokio::time::timeout(timeout, probe)
        .await
        .unwrap_or(Err(Failure::TimedOut(timeout)))
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// Long enough for any expected change on a loaded 2-core machine.
    const DEADLINE: Duration = Duration::from_secs(10);

    /// Short, so that tests are quick: rise and fall stay at 2, so one run is never enough.
    fn policy() -> Policy {
        Policy {
            interval: Duration::from_millis(50),
            timeout: Duration::from_millis(500),
            rise: 2,
            fall: 2,
        }
    }

    /// The environment exec checks get in tests: a PATH (for `sleep`) and one marker variable.
    pub(super) fn test_env() -> BTreeMap<OsString, OsString> {
        let mut env = BTreeMap::new();
        if let Some(path) = std::env::var_os("PATH") {
            env.insert("PATH".into(), path);
        }
        env.insert("HERALD_TEST_VALUE".into(), "1".into());
        env
    }

    /// An empty directory of the test's own.
    pub(super) fn scratch_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("herald-health-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Whether process `pid` is gone (a zombie counts: it runs no more).
    pub(super) fn is_dead(pid: &str) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            // The state follows the parenthesised command name.
            Ok(stat) => stat
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
        }
    }

    /// Polls `condition` until it holds, failing the test with `what` after the deadline.
    pub(super) async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + DEADLINE;
        while !condition() {
            assert!(Instant::now() < deadline, "not within {DEADLINE:?}: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn checks(texts: &[&str]) -> Vec<Check> {
        texts.iter().map(|t| t.parse().unwrap()).collect()
    }

    fn local(port: u16) -> Target {
        Target {
            address: "127.0.0.1".into(),
            port,
        }
    }

    struct Monitored {
        healthy: watch::Receiver<bool>,
        cancel: CancellationToken,
    }

    fn start(checks: Vec<Check>, target: Target, policy: Policy) -> Monitored {
        let reaper = Arc::new(Reaper::start().unwrap());
        let cancel = CancellationToken::new();
        let healthy = monitor(
            checks,
            target,
            policy,
            Arc::new(test_env()),
            reaper,
            CheckReporter::none(),
            cancel.clone(),
        );
        Monitored { healthy, cancel }
    }

    impl Monitored {
        /// Waits for the health to become `want`.
        async fn expect(&mut self, want: bool, after: &str) {
            let waited = tokio::time::timeout(DEADLINE, self.healthy.wait_for(|h| *h == want))
                .await
                .map(|got| got.map(drop));
            match waited {
                Ok(Ok(())) => {}
                Ok(Err(_)) => panic!("{after}: the monitor stopped before healthy = {want}"),
                Err(_) => panic!(
                    "{after}: want healthy = {want}, still {} after {DEADLINE:?}",
                    *self.healthy.borrow()
                ),
            }
        }
    }

    /// Accepts connections (and closes them) until dropped; counts them.
    fn accept_all(
        listener: TcpListener,
        accepted: Arc<AtomicUsize>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            while listener.accept().await.is_ok() {
                accepted.fetch_add(1, Ordering::SeqCst);
            }
        })
    }

    /// A tiny HTTP server answering every request with the current status and body.
    struct HttpServer {
        port: u16,
        status: Arc<AtomicU16>,
        body: Arc<Mutex<String>>,
        /// The heads of the requests received.
        requests: Arc<Mutex<Vec<String>>>,
    }

    impl HttpServer {
        async fn start(status: u16, body: &str) -> HttpServer {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let server = HttpServer {
                port: listener.local_addr().unwrap().port(),
                status: Arc::new(AtomicU16::new(status)),
                body: Arc::new(Mutex::new(body.to_owned())),
                requests: Arc::default(),
            };
            let (status, body, requests) = (
                server.status.clone(),
                server.body.clone(),
                server.requests.clone(),
            );
            tokio::spawn(async move {
                while let Ok((mut conn, _)) = listener.accept().await {
                    let (status, body, requests) = (status.clone(), body.clone(), requests.clone());
                    tokio::spawn(async move {
                        let mut head = Vec::new();
                        let mut buf = [0u8; 1024];
                        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                            match conn.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => head.extend_from_slice(&buf[..n]),
                            }
                        }
                        requests
                            .lock()
                            .unwrap()
                            .push(String::from_utf8_lossy(&head).into_owned());
                        let body = body.lock().unwrap().clone();
                        let response = format!(
                            "HTTP/1.1 {} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            status.load(Ordering::SeqCst),
                            body.len()
                        );
                        let _ = conn.write_all(response.as_bytes()).await;
                    });
                }
            });
            server
        }

        fn set(&self, status: u16, body: &str) {
            self.status.store(status, Ordering::SeqCst);
            *self.body.lock().unwrap() = body.to_owned();
        }
    }

    #[tokio::test]
    async fn without_checks_healthy_at_once_until_cancelled() {
        let mut m = start(vec![], local(1), policy());
        assert!(*m.healthy.borrow_and_update());
        // The sender stays alive (a combinator over it would otherwise stop at once).
        tokio::task::yield_now().await;
        assert_eq!(m.healthy.has_changed().ok(), Some(false));
        m.cancel.cancel();
        let closed = tokio::time::timeout(DEADLINE, m.healthy.changed()).await;
        assert!(matches!(closed, Ok(Err(_))), "the sender outlived cancel");
    }

    #[tokio::test]
    async fn tcp_checks_follow_a_listener() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = accept_all(listener, Arc::default());
        // `tcp` connects to the target, `tcp:PORT` to the target's address.
        let tcp_port = format!("tcp:{port}");
        let tcp_host_port = format!("tcp:127.0.0.1:{port}");
        let mut m = start(
            checks(&["tcp", &tcp_port, &tcp_host_port]),
            local(port),
            policy(),
        );
        assert!(!*m.healthy.borrow(), "checks start down");
        m.expect(true, "listening").await;
        server.abort();
        m.expect(false, "the listener closed").await;
    }

    #[tokio::test]
    async fn tcp_check_uses_its_own_port_over_the_target() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let _server = accept_all(listener, Arc::default());
        // The target's port 1 has no listener: only the check's own port can make it healthy.
        let mut m = start(checks(&[&format!("tcp:{port}")]), local(1), policy());
        m.expect(true, "listening on the check's port").await;
    }

    #[tokio::test]
    async fn http_check_follows_status_and_body() {
        let server = HttpServer::start(200, "status: ok").await;
        let check = format!(
            "http://127.0.0.1:{}/health?verbose=1 contains=ok",
            server.port
        );
        let mut m = start(checks(&[&check]), local(1), policy());
        m.expect(true, "200 with ok in the body").await;

        server.set(503, "status: ok");
        m.expect(false, "503").await;
        server.set(302, "status: ok");
        m.expect(true, "302 (a redirect is not followed, but counts)")
            .await;
        server.set(200, "status: degraded");
        m.expect(false, "200 without the text").await;

        let request = server.requests.lock().unwrap()[0].clone();
        assert!(
            request.starts_with("GET /health?verbose=1 HTTP/1.1\r\n"),
            "{request:?}"
        );
        let host = format!("\r\nHost: 127.0.0.1:{}\r\n", server.port);
        assert!(request.contains(&host), "{request:?}");
        assert!(request.contains("\r\nConnection: close\r\n"), "{request:?}");
    }

    #[tokio::test]
    async fn http_check_without_contains_needs_only_the_status() {
        let server = HttpServer::start(204, "").await;
        let check = format!("http://127.0.0.1:{}", server.port);
        let mut m = start(checks(&[&check]), local(1), policy());
        m.expect(true, "204").await;
        server.set(500, "");
        m.expect(false, "500").await;
    }

    #[tokio::test]
    async fn exec_check_exit_zero_is_healthy() {
        let mut m = start(checks(&["exec:exit 0"]), local(1), policy());
        m.expect(true, "exit 0").await;
    }

    #[tokio::test]
    async fn exec_check_follows_a_flag_file() {
        let dir = scratch_dir("flag");
        let flag = dir.join("ready");
        let check = format!("exec:test -e {}", flag.display());
        let mut m = start(checks(&[&check]), local(1), policy());
        assert!(!*m.healthy.borrow());
        std::fs::write(&flag, "").unwrap();
        m.expect(true, "the flag was created").await;
        std::fs::remove_file(&flag).unwrap();
        m.expect(false, "the flag was removed").await;
        std::fs::write(&flag, "").unwrap();
        m.expect(true, "the flag was created again").await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn exec_check_past_its_timeout_fails_every_run() {
        let dir = scratch_dir("slow");
        let runs = dir.join("runs");
        // Each run would take 5 s; only the timeout can let a third one start within 4 s.
        let check = format!("exec:echo run >> {}; sleep 5", runs.display());
        let policy = Policy {
            timeout: Duration::from_millis(200),
            ..policy()
        };
        let m = start(checks(&[&check]), local(1), policy);
        let started = Instant::now();
        let count = || {
            std::fs::read_to_string(&runs)
                .map(|r| r.lines().count())
                .unwrap_or(0)
        };
        eventually("three runs started", || count() >= 3).await;
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "runs were not cut at the timeout: {:?}",
            started.elapsed()
        );
        assert!(!*m.healthy.borrow(), "a timed-out check counted as healthy");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The exec check cannot finish its first run until the tcp check has connected three
    /// times: if checks waited for one another, neither would ever come up.
    #[tokio::test]
    async fn a_hanging_check_does_not_delay_another() {
        let dir = scratch_dir("independent");
        let flag = dir.join("tcp-ran-3-times");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let _server = accept_all(listener, accepted.clone());
        tokio::spawn({
            let flag = flag.clone();
            async move {
                eventually("the tcp check ran 3 times", || {
                    accepted.load(Ordering::SeqCst) >= 3
                })
                .await;
                std::fs::write(&flag, "").unwrap();
            }
        });
        let exec = format!(
            "exec:while ! test -e {}; do sleep 0.01; done",
            flag.display()
        );
        let policy = Policy {
            timeout: Duration::from_secs(60),
            ..policy()
        };
        let mut m = start(checks(&[&exec, "tcp"]), local(port), policy);
        m.expect(true, "the tcp check ran while the exec check hung")
            .await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    async fn pid_of_a_running_check(pidfile: &Path) -> String {
        eventually("the check started", || pidfile.exists()).await;
        std::fs::read_to_string(pidfile).unwrap().trim().to_owned()
    }

    #[tokio::test]
    async fn cancel_stops_the_checks_and_kills_a_running_one() {
        let dir = scratch_dir("cancel");
        let pidfile = dir.join("pid");
        let check = format!(
            "exec:echo $$ > {0}.tmp && mv {0}.tmp {0}; sleep 30",
            pidfile.display()
        );
        let policy = Policy {
            timeout: Duration::from_secs(60),
            ..policy()
        };
        let mut m = start(checks(&[&check]), local(1), policy);
        let pid = pid_of_a_running_check(&pidfile).await;
        m.cancel.cancel();
        eventually("the running check was killed", || is_dead(&pid)).await;
        let closed = tokio::time::timeout(DEADLINE, m.healthy.changed()).await;
        assert!(matches!(closed, Ok(Err(_))), "the sender outlived cancel");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn dropping_the_receiver_stops_the_checks() {
        let dir = scratch_dir("dropped");
        let pidfile = dir.join("pid");
        let check = format!(
            "exec:echo $$ > {0}.tmp && mv {0}.tmp {0}; sleep 30",
            pidfile.display()
        );
        let policy = Policy {
            timeout: Duration::from_secs(60),
            ..policy()
        };
        let m = start(checks(&[&check]), local(1), policy);
        let pid = pid_of_a_running_check(&pidfile).await;
        drop(m.healthy);
        eventually("the running check was killed", || is_dead(&pid)).await;
        assert!(
            !m.cancel.is_cancelled(),
            "the caller's token is not ours to cancel"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
