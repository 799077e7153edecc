//! Connecting within a deadline, closing cleanly, and [`Session`]: a client that is rebuilt after
//! its session expires.
//!
//! zookeeper-client reconnects by itself while the session lives (the same session moves between
//! servers), so nothing here reacts to `Disconnected`. An expired client, though, is unusable
//! forever: [`Session`] builds a new one with jittered backoff and bumps the generation, so users
//! know to re-create their ephemeral nodes and watches.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};
use zookeeper_client as zk;

use super::config::ZkConfig;
use super::error::ZkError;
use super::tls::explain;
use crate::telemetry::Telemetry;

/// Connects to ZooKeeper, retrying refused or silent servers until `connect_timeout` has passed.
/// Each attempt tries every host once (the client's `fail_eagerly`), so the way the last one
/// failed (refused, a TLS handshake error, a server that hung up) reaches the error.
///
/// # Notable errors
/// * [`ZkError::Unreachable`] when no session was established within `connect_timeout`, with
///   the last attempt's cause when it told one.
///
/// # Cancellation safety
/// Dropping the future abandons the attempt; no session outlives it.
pub async fn connect(cfg: &ZkConfig) -> Result<zk::Client, ZkError> {
    let hosts = cfg.connect.hosts();
    let deadline = Instant::now() + cfg.connect_timeout;
    let mut cause = None;
    // Between passes over the hosts: from 50 ms, doubling to 1 s, as the Java client pauses.
    let mut pause = Duration::from_millis(50);
    loop {
        let mut connector = zk::Client::connector()
            .with_session_timeout(cfg.session_timeout)
            .with_fail_eagerly();
        if let Some(auth) = &cfg.auth {
            connector = connector.with_auth("digest", auth.raw());
        }
        #[cfg(feature = "tls")]
        if let Some(tls) = &cfg.tls {
            connector = connector.with_tls(tls.options().clone());
        }
        let unreachable = |cause| ZkError::Unreachable {
            hosts: hosts.to_owned(),
            within: cfg.connect_timeout,
            cause,
        };
        match tokio::time::timeout_at(deadline, connector.connect(hosts)).await {
            Err(_elapsed) => return Err(unreachable(cause)),
            Ok(Ok(client)) => {
                debug!(session = %client.session_id(), timeout_ms = client.session_timeout().as_millis() as u64, "session established");
                return Ok(client);
            }
            Ok(Err(zk::Error::AuthFailed)) => {
                return Err(ZkError::AuthFailed {
                    hosts: hosts.to_owned(),
                    user: cfg
                        .auth
                        .as_ref()
                        .map(|a| a.user().to_owned())
                        .unwrap_or_default(),
                });
            }
            // Every host failed this time (refused, hung up, TLS handshake): keep the cause and
            // try again until our own deadline.
            Ok(Err(
                err @ (zk::Error::Timeout
                | zk::Error::NoHosts
                | zk::Error::ConnectionLoss
                | zk::Error::Custom(_)),
            )) => {
                debug!(error = %err, "no session this pass over the hosts");
                if let Some(why) = explain(&err, cfg.tls.as_ref()) {
                    cause = Some(why);
                }
                let now = Instant::now();
                if now >= deadline {
                    return Err(unreachable(cause));
                }
                tokio::time::sleep_until(deadline.min(now + pause)).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            Ok(Err(err)) => return Err(ZkError::op("connect to", hosts, err)),
        }
    }
}

/// Runs the requests of a one-shot command, bounded. While no server answers, the client keeps
/// the session for as long as ZooKeeper might (it never gives up on its own), so a request sent
/// then waits for the servers to return; a one-shot command waits at most one session timeout
/// for that and then fails as unreachable.
///
/// # Notable errors
/// [`ZkError::Unreachable`] when `requests` did not finish within the session timeout.
pub async fn bounded<T>(cfg: &ZkConfig, requests: impl Future<Output = T>) -> Result<T, ZkError> {
    tokio::time::timeout(cfg.session_timeout, requests)
        .await
        .map_err(|_elapsed| ZkError::Unreachable {
            hosts: cfg.connect.hosts().to_owned(),
            within: cfg.session_timeout,
            cause: None,
        })
}

/// Closes the session of `client` (its last clone) and waits briefly for the server to confirm,
/// so one-shot commands leave no session behind to time out.
pub async fn close(client: zk::Client) {
    let mut states = client.state_watcher();
    drop(client);
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while !states.peek_state().is_terminated() {
            states.changed().await;
        }
    })
    .await;
}

/// A client and the generation of its session: 1 for the first, one more after each rebuild.
#[derive(Debug, Clone)]
pub struct Live {
    pub client: zk::Client,
    pub generation: u64,
}

/// A ZooKeeper session that survives expiry: the first session is established by [`Session::open`];
/// after an expiry a background task establishes a new one and publishes it as a new [`Live`].
#[derive(Debug)]
pub struct Session {
    live: watch::Receiver<Live>,
    /// Set when the keeper gives up (cancelled, closed, or credentials refused).
    failure: Arc<Mutex<Option<ZkError>>>,
    cancel: CancellationToken,
    keeper: tokio::task::JoinHandle<()>,
    telemetry: Telemetry,
}

impl Session {
    /// Establishes the first session (within `connect_timeout`) and starts keeping it; its
    /// state changes (disconnected, reconnected, expired, a new session) go to `telemetry`.
    /// Cancelling `cancel` stops the rebuilding; [`Session::close`] also closes the session.
    pub async fn open(
        cfg: ZkConfig,
        telemetry: &Telemetry,
        cancel: CancellationToken,
    ) -> Result<Session, ZkError> {
        telemetry.session_servers(cfg.connect.hosts());
        let client = connect(&cfg).await?;
        telemetry.session_established(client.session_id().0, client.server().as_deref());
        let span = info_span!("session", zk = %cfg.connect.hosts());
        let (tx, live) = watch::channel(Live {
            client,
            generation: 1,
        });
        let failure = Arc::new(Mutex::new(None));
        let cancel = cancel.child_token();
        let keeper = tokio::spawn(
            keep(cfg, tx, failure.clone(), telemetry.clone(), cancel.clone()).instrument(span),
        );
        Ok(Session {
            live,
            failure,
            cancel,
            keeper,
            telemetry: telemetry.clone(),
        })
    }

    /// The current client. It may expire at any time; see [`Session::renewed`].
    pub fn live(&self) -> Live {
        self.live.borrow().clone()
    }

    /// A receiver that sees every new [`Live`].
    pub fn subscribe(&self) -> watch::Receiver<Live> {
        self.live.clone()
    }

    /// Waits until a session newer than `generation` exists and returns it.
    ///
    /// # Notable errors
    /// The error that made the keeper give up (e.g. credentials refused after expiry), or
    /// [`ZkError::Lost`] when the session was closed.
    pub async fn renewed(&self, generation: u64) -> Result<Live, ZkError> {
        self.handle().renewed(generation).await
    }

    /// A cheap handle for tasks: the current client and its renewals, without closing rights.
    pub fn handle(&self) -> SessionHandle {
        SessionHandle {
            live: self.live.clone(),
            failure: self.failure.clone(),
            telemetry: self.telemetry.clone(),
        }
    }

    /// Stops rebuilding and closes the current session.
    pub async fn close(self) {
        self.cancel.cancel();
        let _ = self.keeper.await;
        let client = self.live.borrow().client.clone();
        drop(self.live);
        close(client).await;
    }
}

/// What a task needs of a [`Session`]: the current client and a way to wait for the next one.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    live: watch::Receiver<Live>,
    failure: Arc<Mutex<Option<ZkError>>>,
    telemetry: Telemetry,
}

impl SessionHandle {
    /// Where the session's users report (and time their ZooKeeper requests).
    pub fn telemetry(&self) -> &Telemetry {
        &self.telemetry
    }

    /// The current client.
    pub fn live(&self) -> Live {
        self.live.borrow().clone()
    }

    /// See [`Session::renewed`].
    pub async fn renewed(&self, generation: u64) -> Result<Live, ZkError> {
        let mut live = self.live.clone();
        loop {
            {
                let current = live.borrow_and_update();
                if current.generation > generation {
                    return Ok(current.clone());
                }
            }
            if live.changed().await.is_err() {
                let failure = self.failure.lock().ok().and_then(|f| f.clone());
                return Err(failure.unwrap_or(ZkError::Lost {
                    op: "renew",
                    path: "the session".to_owned(),
                    source: zk::Error::ClientClosed,
                }));
            }
        }
    }
}

async fn keep(
    cfg: ZkConfig,
    tx: watch::Sender<Live>,
    failure: Arc<Mutex<Option<ZkError>>>,
    telemetry: Telemetry,
    cancel: CancellationToken,
) {
    let fail = |err: ZkError| {
        if let Ok(mut f) = failure.lock() {
            *f = Some(err);
        }
    };
    loop {
        let (client, mut states, session_id, generation) = {
            let live = tx.borrow();
            (
                live.client.clone(),
                live.client.state_watcher(),
                live.client.session_id(),
                live.generation,
            )
        };
        // The server of the connection in use: by the time a loss is seen, the client may be
        // connecting to the next one already (`Client::server` names the latest).
        let mut server = client.server();
        let state = loop {
            let state = states.peek_state();
            if state.is_terminated() {
                break state;
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                state = states.changed() => match state {
                    zk::SessionState::Disconnected => {
                        telemetry.session_disconnected();
                        warn!(session = %session_id, server = server.as_deref().unwrap_or_default(), "lost the connection to ZooKeeper; reconnecting")
                    }
                    zk::SessionState::SyncConnected => {
                        server = client.server();
                        telemetry.session_reconnected(server.as_deref());
                        info!(session = %session_id, server = server.as_deref().unwrap_or_default(), "reconnected to ZooKeeper")
                    }
                    _ => {}
                },
            }
        };
        match state {
            zk::SessionState::Expired => {}
            zk::SessionState::AuthFailed => {
                return fail(ZkError::AuthFailed {
                    hosts: cfg.connect.hosts().to_owned(),
                    user: cfg
                        .auth
                        .as_ref()
                        .map(|a| a.user().to_owned())
                        .unwrap_or_default(),
                });
            }
            _ => return,
        }
        telemetry.session_expired();
        let delay = spread(cfg.rejoin_spread);
        warn!(session = %session_id, generation, in_ms = delay.as_millis() as u64, "ZooKeeper session expired; establishing a new one");
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        let backoff = ExponentialBuilder::default()
            .with_jitter()
            .with_min_delay(Duration::from_millis(50))
            .with_max_delay(Duration::from_secs(5))
            .without_max_times();
        let rebuild = (|| connect(&cfg))
            .retry(backoff)
            .sleep(tokio::time::sleep)
            .when(ZkError::is_unreachable)
            .notify(|err, delay| warn!(error = %err, retry_in_ms = delay.as_millis() as u64, "cannot establish a new session yet"));
        tokio::select! {
            _ = cancel.cancelled() => return,
            rebuilt = rebuild => match rebuilt {
                Ok(client) => {
                    telemetry.session_established(client.session_id().0, client.server().as_deref());
                    info!(session = %client.session_id(), server = client.server().unwrap_or_default(), generation = generation + 1, "new ZooKeeper session");
                    tx.send_replace(Live { client, generation: generation + 1 });
                }
                Err(err) => return fail(err),
            },
        }
    }
}

/// A random delay below `limit` (zero for a zero limit): each process draws its own.
fn spread(limit: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    if limit.is_zero() {
        return Duration::ZERO;
    }
    // A per-process random seed (the standard library's hash keys), mixed with the time.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    let nanos = limit.as_nanos().min(u128::from(u64::MAX)) as u64;
    Duration::from_nanos(hasher.finish() % nanos)
}

#[cfg(test)]
mod tests {
    use super::spread;
    use std::time::Duration;

    #[test]
    fn spread_stays_below_its_limit_and_varies() {
        assert_eq!(spread(Duration::ZERO), Duration::ZERO);
        let limit = Duration::from_secs(1);
        let draws: Vec<Duration> = (0..200).map(|_| spread(limit)).collect();
        assert!(draws.iter().all(|d| *d < limit));
        let distinct: std::collections::BTreeSet<_> = draws.iter().collect();
        assert!(distinct.len() > 150, "{} distinct of 200", distinct.len());
        // Spread over the range, not bunched: some in each half.
        assert!(draws.iter().any(|d| *d < limit / 2) && draws.iter().any(|d| *d >= limit / 2));
    }
}
