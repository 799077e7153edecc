//! The single-machine gateway: a local HTTP daemon through which containers publish and read
//! values (`curl -X POST -d … http://HOST/environment/KEY`, `curl http://HOST/environment/KEY`),
//! backed by the same `<root>/environment` znodes as `herald put` and `herald resolve`.
//!
//! ```text
//! Listener (TCP, or a private Unix socket) ─accept (≤ max connections)─▶ one task per
//!   connection (hyper HTTP/1.1, header timeout, write deadline) ─▶ routes::handle (token,
//!   upload budget, body timeout) ─▶ Mirror (values in memory) ─miss─▶ Values / catalog
//!                                          ZooKeeper unreachable ─▶ LastKnown (disk), with Age
//! <root>/environment ──one persistent recursive watch──▶ mirror::follow ─▶ drop changed copies
//! ```
//!
//! Every client-controlled quantity is bounded ([`Limits`]): connection tasks are tracked
//! without keeping finished ones, and past the connection limit the accept loop stops accepting,
//! so further clients wait in the kernel's queue instead of costing memory.

mod auth;
mod limits;
mod listen;
pub mod mirror;
mod routes;

use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

pub use auth::Token;
pub use limits::{Limits, UploadBudget, parse_size};
pub use listen::{Address, Listener, Peer};
pub use mirror::Mirror;
pub use routes::Backend;

/// How long requests in flight may finish after a stop.
pub const DRAIN: Duration = Duration::from_secs(5);

/// How the gateway guards itself: its bounds and, when set, the token requests must present.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    pub limits: Limits,
    pub token: Option<Token>,
}

/// Serves on `listener` until `cancel`, then lets requests in flight finish (up to [`DRAIN`]).
pub async fn serve(listener: Listener, backend: Backend, guard: Guard, cancel: CancellationToken) {
    info!(
        listen = listener.describe(),
        max_connections = guard.limits.max_connections,
        token = guard.token.is_some(),
        "serving HTTP"
    );
    let limits = guard.limits;
    let shared = Arc::new(routes::Shared {
        backend,
        token: guard.token,
        uploads: UploadBudget::new(limits.upload_budget),
        body_timeout: limits.body_timeout,
    });
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    // A tracker, not a JoinSet: it forgets a task as soon as it ends (a JoinSet that is never
    // joined keeps every finished connection).
    let connections = TaskTracker::new();
    loop {
        // A slot first: past the limit nothing is accepted, and new clients wait in the queue.
        let slot = tokio::select! {
            _ = cancel.cancelled() => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // E.g. out of file descriptors: do not spin.
                    debug!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        if let Peer::Stranger(_) = peer {
            warn!(%peer, "refusing a connection from another user on the gateway's socket");
        }
        let shared = shared.clone();
        let cancel = cancel.clone();
        connections.spawn(async move {
            let _slot = slot;
            let stranger = matches!(peer, Peer::Stranger(_));
            let service = service_fn(move |request| {
                let shared = shared.clone();
                async move {
                    let method = request.method().clone();
                    let path = request.uri().path().to_owned();
                    let reply = if stranger {
                        routes::stranger()
                    } else {
                        routes::handle(&shared, request).await
                    };
                    debug!(%method, path, status = reply.status().as_u16(), "request");
                    Ok::<_, std::convert::Infallible>(reply)
                }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(
                    TokioIo::new(listen::WriteDeadline::new(stream, limits.body_timeout)),
                    service,
                );
            tokio::pin!(connection);
            tokio::select! {
                served = connection.as_mut() => {
                    if let Err(err) = served {
                        debug!(%peer, error = %err, "connection ended");
                    }
                }
                _ = cancel.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
    drop(listener);
    connections.close();
    let _ = tokio::time::timeout(DRAIN, connections.wait()).await;
}
