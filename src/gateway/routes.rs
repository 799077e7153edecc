//! The gateway's HTTP routes, as the proposal's single-machine case spells them:
//!
//! ```text
//! GET    /environment/KEY[?wait=30s]   the value, byte for byte (404 until published; with wait,
//!                                      until published or 504); HEAD: the same without the body.
//!                                      From memory when held (see `mirror`); `Cache-Control:
//!                                      no-cache` reads ZooKeeper after a sync. While ZooKeeper
//!                                      cannot be reached: the copy or the last known value, with
//!                                      `Age: SECONDS` (503 past --max-stale, or when none)
//! POST   /environment/KEY  (or PUT)    publish the request body (204)
//! DELETE /environment/KEY              remove it (204, or 404)
//! GET    /environment                  {"KEY": bytes, …}
//! GET    /services                     {"service": instances, …}
//! GET    /services/SERVICE[?metadata=1]  the instances, as the director's json preset writes them,
//!                                      without their metadata unless asked (and a token is set)
//! GET    /live, /ready                 liveness; readiness = connected to ZooKeeper
//! ```
//!
//! With a token set, every route but `/live` and `/ready` answers 401 to a request without it.
//! Every GET route answers HEAD too (hyper leaves the body out). Values and tokens are never
//! logged; errors are one line of plain text saying what to do.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{
    AGE, ALLOW, AUTHORIZATION, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue,
    WWW_AUTHENTICATE,
};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;
use zookeeper_client::SessionState;

use crate::catalog;
use crate::director::derive::instance_json;
use crate::last_known::LastKnown;
use crate::layout::{EnvKey, ServiceName};
use crate::telemetry::Telemetry;
use crate::values::{MAX_VALUE_LEN, ValueError, Values};
use crate::zk::{Live, SessionHandle, ZkError};

use super::auth::Token;
use super::limits::UploadBudget;
use super::mirror::{Lookup, Mirror};

/// What the routes work on.
#[derive(Clone)]
pub struct Backend {
    pub values: Values,
    /// Set once the first session is established (the gateway serves before that, from its
    /// last known values).
    pub session: Arc<OnceLock<SessionHandle>>,
    /// The values held in memory, kept current by a watch ([`super::mirror`]).
    pub mirror: Arc<Mirror>,
    /// The last known values on disk: written from every value read, answered from while
    /// ZooKeeper cannot be reached.
    pub cache: Option<LastKnown>,
    /// The oldest value answered while ZooKeeper cannot be reached.
    pub max_stale: Duration,
    /// The longest a read may wait for ZooKeeper before the last known value answers.
    pub read_timeout: Duration,
    /// Metrics and the status page (`/metrics`, `/status`, `/status.json`, behind the token
    /// like the values).
    pub telemetry: Telemetry,
}

impl Backend {
    /// The current client, once there has been a session.
    fn live(&self) -> Option<Live> {
        self.session.get().map(SessionHandle::live)
    }

    /// The current client if it is connected now.
    fn connected(&self) -> Option<Live> {
        self.live()
            .filter(|live| matches!(live.client.state(), SessionState::SyncConnected))
    }

    /// `None` when ZooKeeper did not answer within the read timeout.
    async fn bounded<T>(&self, request: impl std::future::Future<Output = T>) -> Option<T> {
        tokio::time::timeout(self.read_timeout, request).await.ok()
    }
}

/// What every request shares: the backend and the guards.
pub(super) struct Shared {
    pub backend: Backend,
    /// Where the gateway listens, for the status page.
    pub listen: String,
    pub token: Option<Token>,
    pub uploads: UploadBudget,
    pub body_timeout: Duration,
}

/// Where a GET's answer came from (`memory`, `zookeeper`, `cache`).
const SOURCE: hyper::header::HeaderName = hyper::header::HeaderName::from_static("x-herald-source");

/// The longest `?wait=`.
const MAX_WAIT: Duration = Duration::from_secs(300);

use crate::http_server::Reply;

fn text(status: StatusCode, body: impl Into<String>) -> Reply {
    let mut body = body.into();
    body.push('\n');
    let mut reply = Response::new(Full::new(Bytes::from(body)));
    *reply.status_mut() = status;
    reply.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    reply
}

fn json_reply(value: serde_json::Value) -> Reply {
    let mut reply = Response::new(Full::new(Bytes::from(value.to_string())));
    reply.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    reply
}

fn empty(status: StatusCode) -> Reply {
    let mut reply = Response::new(Full::new(Bytes::new()));
    *reply.status_mut() = status;
    reply
}

fn not_allowed(allow: &'static str) -> Reply {
    let mut reply = text(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("use {allow} on this path"),
    );
    reply
        .headers_mut()
        .insert(ALLOW, hyper::header::HeaderValue::from_static(allow));
    reply
}

/// A ZooKeeper failure as a status: unreachable → 503, denied → 403, other → 500.
fn zk_error(err: &ZkError) -> Reply {
    let status = if err.is_unreachable() {
        StatusCode::SERVICE_UNAVAILABLE
    } else if err.is_denied() {
        StatusCode::FORBIDDEN
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    text(status, err.to_string())
}

/// ZooKeeper cannot be reached now: what needs it cannot be done (nothing was written).
fn not_connected() -> Reply {
    text(
        StatusCode::SERVICE_UNAVAILABLE,
        "the gateway cannot reach ZooKeeper now; nothing was done, try again shortly",
    )
}

/// A write sent, but not confirmed in time.
fn unconfirmed(backend: &Backend) -> Reply {
    text(
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "ZooKeeper did not confirm the write within {}; it may still be applied: GET the key, or send it again",
            humantime::format_duration(backend.read_timeout)
        ),
    )
}

fn unauthorized() -> Reply {
    let mut reply = text(
        StatusCode::UNAUTHORIZED,
        "send the gateway's token: Authorization: Bearer TOKEN",
    );
    reply.headers_mut().insert(
        WWW_AUTHENTICATE,
        hyper::header::HeaderValue::from_static("Bearer realm=\"herald\""),
    );
    reply
}

/// The answer to every request from another user on the gateway's Unix socket.
pub(super) fn stranger() -> Reply {
    text(
        StatusCode::FORBIDDEN,
        "this socket serves only the gateway's own user and root",
    )
}

/// Answers one request.
pub(super) async fn handle(shared: &Shared, request: Request<Incoming>) -> Reply {
    let backend = &shared.backend;
    let path = request.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    // Probes stay open, so an orchestrator's health check needs no secret.
    let open = matches!(segments.as_slice(), ["live"] | ["ready"]);
    if !open
        && let Some(token) = &shared.token
        && !token.accepts(request.headers().get(AUTHORIZATION))
    {
        return unauthorized();
    }
    if let Some(reply) = crate::telemetry::routes(&backend.telemetry, &request) {
        backend.telemetry.gateway_state(
            &shared.listen,
            backend.mirror.is_live(),
            backend.mirror.held(),
        );
        return reply;
    }
    match segments.as_slice() {
        ["live"] => text(StatusCode::OK, "ok"),
        ["ready"] => ready(backend),
        ["environment"] | ["environment", ""] => match *request.method() {
            Method::GET | Method::HEAD => list_values(backend).await,
            _ => not_allowed("GET, HEAD"),
        },
        ["environment", key] => {
            let key = match key.parse::<EnvKey>() {
                Ok(key) => key,
                Err(err) => return text(StatusCode::BAD_REQUEST, err.to_string()),
            };
            match *request.method() {
                Method::GET | Method::HEAD => {
                    let wait = match wait_of(request.uri().query()) {
                        Ok(wait) => wait,
                        Err(msg) => return text(StatusCode::BAD_REQUEST, msg),
                    };
                    let fresh = request
                        .headers()
                        .get_all(CACHE_CONTROL)
                        .iter()
                        .filter_map(|v| v.to_str().ok())
                        .flat_map(|v| v.split(','))
                        .any(|d| d.trim().eq_ignore_ascii_case("no-cache"));
                    match wait {
                        Some(limit) => wait_value(backend, &key, limit).await,
                        None => get_value(backend, &key, fresh).await,
                    }
                }
                Method::POST | Method::PUT => put_value(shared, &key, request).await,
                Method::DELETE => delete_value(backend, &key).await,
                _ => not_allowed("GET, HEAD, POST, PUT, DELETE"),
            }
        }
        ["services"] | ["services", ""] => match *request.method() {
            Method::GET | Method::HEAD => list_services(backend).await,
            _ => not_allowed("GET, HEAD"),
        },
        ["services", service] => {
            let service = match service.parse::<ServiceName>() {
                Ok(service) => service,
                Err(err) => return text(StatusCode::BAD_REQUEST, err.to_string()),
            };
            match *request.method() {
                Method::GET | Method::HEAD => {
                    let metadata = match flag_of(request.uri().query(), "metadata") {
                        Ok(metadata) => metadata,
                        Err(msg) => return text(StatusCode::BAD_REQUEST, msg),
                    };
                    if metadata && shared.token.is_none() {
                        return text(
                            StatusCode::FORBIDDEN,
                            "metadata (it may hold credentials) is served only by a gateway that requires a token; start it with --token-file or HERALD_GATEWAY_TOKEN",
                        );
                    }
                    list_instances(backend, &service, metadata).await
                }
                _ => not_allowed("GET, HEAD"),
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            format!("no route {path}; use /environment/KEY, /services/SERVICE, /live or /ready"),
        ),
    }
}

fn ready(backend: &Backend) -> Reply {
    let Some(live) = backend.live() else {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not connected to ZooKeeper (no session yet)",
        );
    };
    match live.client.state() {
        SessionState::SyncConnected | SessionState::ConnectedReadOnly
            if backend.mirror.is_live() =>
        {
            text(StatusCode::OK, "ready")
        }
        SessionState::SyncConnected | SessionState::ConnectedReadOnly => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "connected to ZooKeeper, not yet following the values",
        ),
        state => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not connected to ZooKeeper ({state:?})"),
        ),
    }
}

/// `?NAME=1` (or `true`) → true; `0`, `false` or absent → false.
fn flag_of(query: Option<&str>, name: &str) -> Result<bool, String> {
    for pair in query.unwrap_or("").split('&') {
        if pair == name {
            return Ok(true);
        }
        if let Some(value) = pair.strip_prefix(name).and_then(|v| v.strip_prefix('=')) {
            return match value {
                "1" | "true" => Ok(true),
                "0" | "false" => Ok(false),
                _ => Err(format!("{name}={value}: write {name}=1 or {name}=0")),
            };
        }
    }
    Ok(false)
}

/// `?wait=DURATION`, at most five minutes.
fn wait_of(query: Option<&str>) -> Result<Option<Duration>, String> {
    let Some(query) = query else {
        return Ok(None);
    };
    for pair in query.split('&') {
        if let Some(value) = pair.strip_prefix("wait=") {
            let wait = humantime::parse_duration(value)
                .ok()
                .filter(|d| *d <= MAX_WAIT)
                .ok_or_else(|| {
                    format!("wait={value}: write a duration of at most 5m, e.g. wait=30s")
                })?;
            return Ok(Some(wait));
        }
    }
    Ok(None)
}

/// The value, from memory when held; else read (and held); while ZooKeeper cannot be reached,
/// the copy held or the last known value on disk, with an `Age` header. `fresh`
/// (`Cache-Control: no-cache`): a `sync` and a read, whatever memory holds.
async fn get_value(backend: &Backend, key: &EnvKey, fresh: bool) -> Reply {
    // What memory held, when a no-cache read bypasses it: the same answer needs no new copy
    // on disk (the hot path of a client that always asks for no-cache).
    let mut had = None;
    let ticket = match backend.mirror.lookup(key) {
        Lookup::Held(value, age) if !fresh => {
            return held(backend, key, value, age, Source::Memory);
        }
        Lookup::Held(value, None) => {
            had = Some(value);
            None
        }
        Lookup::Held(..) => None,
        Lookup::Miss(ticket) => Some(ticket),
        Lookup::Offline => None,
    };
    // Offline: no watch armed (yet, or since a disconnection); read only on a connected session.
    let Some(live) = backend.live().filter(|live| {
        ticket.is_some() || matches!(live.client.state(), SessionState::SyncConnected)
    }) else {
        return last_known(backend, key, None);
    };
    let read = async {
        if fresh {
            let path = backend.values.layout().environment();
            match backend
                .telemetry
                .zk_request("sync", live.client.sync(&path))
                .await
            {
                Ok(()) | Err(zookeeper_client::Error::NoNode) => {}
                Err(err) => return Err(ZkError::op("sync", &path, err)),
            }
        }
        backend
            .telemetry
            .zk_request("get_data", backend.values.get(&live.client, key))
            .await
    };
    let read = tokio::time::timeout(backend.read_timeout, read).await;
    if let (Some(ticket), Ok(Err(_)) | Err(_)) = (ticket, &read) {
        backend.mirror.abandon(key, ticket);
    }
    let found = match read {
        Ok(Ok(found)) => found,
        Ok(Err(err)) if !err.is_unreachable() => return zk_error(&err),
        Ok(Err(err)) => return last_known(backend, key, Some(&err)),
        Err(_elapsed) => return last_known(backend, key, None),
    };
    if let Some(ticket) = ticket {
        backend.mirror.fill(
            key,
            ticket,
            found.as_ref().map(|v| Bytes::copy_from_slice(v)),
        );
    }
    let unchanged = had.is_some_and(|had| had.as_deref() == found.as_deref());
    // Kept before the answer goes out: a gateway killed right after answering still has on
    // disk what it answered (only a new or changed value is written, so this costs a miss).
    if let Some(cache) = backend.cache.as_ref().filter(|_| !unchanged) {
        let (cache, key, found) = (cache.clone(), key.clone(), found.clone());
        let kept = tokio::task::spawn_blocking(move || match &found {
            Some(value) => cache.store(&key, value),
            None => cache.forget(&key),
        })
        .await;
        if let Ok(Err(err)) = kept {
            tracing::debug!("cannot keep the last known value: {err}");
        }
    }
    held(
        backend,
        key,
        found.map(Bytes::from),
        None,
        Source::Zookeeper,
    )
}

/// Where an answer came from: the `X-Herald-Source` header.
#[derive(Debug, Clone, Copy)]
enum Source {
    /// Held in memory (current while the watch is armed; else with `Age`).
    Memory,
    /// Read from ZooKeeper for this request.
    Zookeeper,
    /// The last known values on disk (with `Age`).
    Cache,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::Memory => "memory",
            Source::Zookeeper => "zookeeper",
            Source::Cache => "cache",
        }
    }

    fn header(self) -> HeaderValue {
        HeaderValue::from_static(self.as_str())
    }
}

/// The value (or its absence) as a reply; `age` when ZooKeeper could not confirm it now.
fn held(
    backend: &Backend,
    key: &EnvKey,
    value: Option<Bytes>,
    age: Option<Duration>,
    source: Source,
) -> Reply {
    backend.telemetry.gateway_answer(source.as_str());
    if let Some(age) = age
        && age > backend.max_stale
    {
        return too_stale(backend, key, age);
    }
    let mut reply = match value {
        Some(value) => {
            let mut reply = Response::new(Full::new(value));
            reply.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            reply
        }
        None => text(
            StatusCode::NOT_FOUND,
            format!("{key} is not published; POST it, or GET with ?wait=30s"),
        ),
    };
    if let Some(age) = age {
        reply
            .headers_mut()
            .insert(AGE, HeaderValue::from(age.as_secs()));
    }
    reply.headers_mut().insert(SOURCE, source.header());
    reply
}

fn too_stale(backend: &Backend, key: &EnvKey, age: Duration) -> Reply {
    text(
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "ZooKeeper cannot be reached, and the last known value of {key} is {} old, older than --max-stale {}",
            humantime::format_duration(Duration::from_secs(age.as_secs())),
            humantime::format_duration(backend.max_stale)
        ),
    )
}

/// ZooKeeper cannot answer for KEY now (`err`, when it said why): the last known value on disk.
fn last_known(backend: &Backend, key: &EnvKey, err: Option<&ZkError>) -> Reply {
    let cached = backend
        .cache
        .as_ref()
        .and_then(|cache| match cache.load(key) {
            Ok(cached) => cached,
            Err(err) => {
                tracing::warn!("{err}");
                None
            }
        });
    match cached {
        Some(cached) => {
            let age = cached.age();
            tracing::debug!(key = %key, age_s = age.as_secs(), "answering from the last known value");
            held(
                backend,
                key,
                Some(Bytes::from(cached.value)),
                Some(age),
                Source::Cache,
            )
        }
        None => {
            let why = err.map_or_else(
                || "ZooKeeper cannot be reached now".to_owned(),
                ToString::to_string,
            );
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{why}; no last known value of {key} to answer with"),
            )
        }
    }
}

/// `?wait=`: until KEY is published (from ZooKeeper, never from memory).
async fn wait_value(backend: &Backend, key: &EnvKey, limit: Duration) -> Reply {
    let Some(session) = backend.session.get() else {
        return not_connected();
    };
    match tokio::time::timeout(limit, backend.values.wait(session, key)).await {
        Ok(Ok(value)) => held(
            backend,
            key,
            Some(Bytes::from(value)),
            None,
            Source::Zookeeper,
        ),
        Ok(Err(err)) => zk_error(&err),
        Err(_) => text(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "{key} was not published within {}",
                humantime::format_duration(limit)
            ),
        ),
    }
}

async fn put_value(shared: &Shared, key: &EnvKey, request: Request<Incoming>) -> Reply {
    let backend = &shared.backend;
    let too_large = || {
        text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the value for {key} is over the {MAX_VALUE_LEN}-byte limit of a znode; nothing was written"
            ),
        )
    };
    // A declared length over the limit is refused before any of the body is read.
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_VALUE_LEN) {
        return too_large();
    }
    // Room for the body before any of it is read; given back when this request ends.
    let Some(_reservation) = shared.uploads.reserve(declared) else {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the gateway is receiving too many uploads at once; try again shortly",
        );
    };
    let collect = Limited::new(request.into_body(), MAX_VALUE_LEN).collect();
    let body = match tokio::time::timeout(shared.body_timeout, collect).await {
        Err(_) => {
            return text(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the body did not arrive within {}; nothing was written, send it again",
                    humantime::format_duration(shared.body_timeout)
                ),
            );
        }
        Ok(Ok(body)) => body.to_bytes(),
        Ok(Err(err)) if err.is::<http_body_util::LengthLimitError>() => return too_large(),
        Ok(Err(_)) => {
            return text(
                StatusCode::BAD_REQUEST,
                "the request body could not be read; send it again",
            );
        }
    };
    let Some(live) = backend.connected() else {
        return not_connected();
    };
    let written = backend
        .bounded(
            backend
                .telemetry
                .zk_request("set_data", backend.values.put(&live.client, key, &body)),
        )
        .await;
    // Whatever happened, the copy may be stale now: the writer's next GET reads ZooKeeper.
    backend.mirror.invalidate(key);
    let written = match written {
        Some(written) => written,
        None => return unconfirmed(backend),
    };
    match written {
        Ok(()) => {
            tracing::info!(key = %key, bytes = body.len(), "published over HTTP");
            empty(StatusCode::NO_CONTENT)
        }
        Err(ValueError::TooLarge { .. }) => too_large(),
        Err(ValueError::Zk(err)) => zk_error(&err),
    }
}

async fn delete_value(backend: &Backend, key: &EnvKey) -> Reply {
    let Some(live) = backend.connected() else {
        return not_connected();
    };
    let deleted = backend
        .bounded(
            backend
                .telemetry
                .zk_request("delete", backend.values.delete(&live.client, key)),
        )
        .await;
    backend.mirror.invalidate(key);
    let Some(deleted) = deleted else {
        return unconfirmed(backend);
    };
    match deleted {
        Ok(true) => {
            tracing::info!(key = %key, "deleted over HTTP");
            empty(StatusCode::NO_CONTENT)
        }
        Ok(false) => text(StatusCode::NOT_FOUND, format!("{key} is not published")),
        Err(err) => zk_error(&err),
    }
}

async fn list_values(backend: &Backend) -> Reply {
    let Some(live) = backend.connected() else {
        return not_connected();
    };
    let Some(answer) = backend.bounded(backend.values.list(&live.client)).await else {
        return not_connected();
    };
    match answer {
        Ok(keys) => json_reply(
            keys.into_iter()
                .map(|(k, n)| (k.to_string(), json!(n)))
                .collect::<serde_json::Map<_, _>>()
                .into(),
        ),
        Err(err) => zk_error(&err),
    }
}

async fn list_services(backend: &Backend) -> Reply {
    let Some(live) = backend.connected() else {
        return not_connected();
    };
    let Some(answer) = backend
        .bounded(catalog::services(&live.client, backend.values.layout()))
        .await
    else {
        return not_connected();
    };
    match answer {
        Ok(services) => json_reply(
            services
                .into_iter()
                .map(|(s, n)| (s.to_string(), json!(n)))
                .collect::<serde_json::Map<_, _>>()
                .into(),
        ),
        Err(err) => zk_error(&err),
    }
}

async fn list_instances(backend: &Backend, service: &ServiceName, metadata: bool) -> Reply {
    let Some(live) = backend.connected() else {
        return not_connected();
    };
    let Some(answer) = backend
        .bounded(catalog::instances(
            &live.client,
            backend.values.layout(),
            service,
            None,
        ))
        .await
    else {
        return not_connected();
    };
    match answer {
        Ok(instances) => json_reply(
            instances
                .iter()
                .map(|i| {
                    let mut v = instance_json(i, None);
                    if !metadata && let Some(map) = v.as_object_mut() {
                        map.remove("meta");
                    }
                    v
                })
                .collect(),
        ),
        Err(err) => zk_error(&err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits() {
        assert_eq!(wait_of(None), Ok(None));
        assert_eq!(wait_of(Some("x=1")), Ok(None));
        assert_eq!(
            wait_of(Some("x=1&wait=30s")),
            Ok(Some(Duration::from_secs(30)))
        );
        assert!(wait_of(Some("wait=soon")).is_err());
        assert!(wait_of(Some("wait=1h")).is_err());
    }

    #[test]
    fn flags() {
        assert_eq!(flag_of(None, "metadata"), Ok(false));
        assert_eq!(flag_of(Some("metadata=1"), "metadata"), Ok(true));
        assert_eq!(flag_of(Some("x=1&metadata=true"), "metadata"), Ok(true));
        assert_eq!(flag_of(Some("metadata=0"), "metadata"), Ok(false));
        assert_eq!(flag_of(Some("metadatax=1"), "metadata"), Ok(false));
        assert!(flag_of(Some("metadata=yes"), "metadata").is_err());
        assert_eq!(flag_of(Some("metadata"), "metadata"), Ok(true));
    }
}
