//! One bounded HTTP/1.1 server for every listener herald opens (the gateway, the metrics and
//! status listener): where it listens ([`Address`]: TCP, or a private Unix socket), who
//! connected ([`Peer`]), and the accept loop that keeps each client-controlled quantity bounded.
//!
//! Past `max_connections` the loop stops accepting, so further clients wait in the kernel's
//! queue instead of costing memory; a request head must arrive within `header_timeout` (also how
//! long a kept-alive connection may idle); a response nobody takes fails after `write_timeout`.
//! Connection tasks are tracked without keeping finished ones; after a stop, requests in flight
//! may finish for [`DRAIN`].

mod listen;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

pub use listen::{Address, Listener, Peer, Stream, WriteDeadline};

/// How long requests in flight may finish after a stop.
pub const DRAIN: Duration = Duration::from_secs(5);

/// A whole response, as every herald route builds it.
pub type Reply = Response<Full<Bytes>>;

/// What bounds a server against its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Connections served at once.
    pub max_connections: usize,
    /// How long a request head may take to arrive (and a kept-alive connection may idle).
    pub header_timeout: Duration,
    /// How long a response may go untaken (a write that makes no progress).
    pub write_timeout: Duration,
}

/// Serves `handler` on `listener` until `cancel`, then lets requests in flight finish (up to
/// [`DRAIN`]). Each request is logged at debug level with its status.
pub async fn serve<H, F>(listener: Listener, bounds: Bounds, handler: H, cancel: CancellationToken)
where
    H: Fn(Request<Incoming>, Peer) -> F + Send + Sync + 'static,
    F: Future<Output = Reply> + Send + 'static,
{
    let handler = Arc::new(handler);
    let slots = Arc::new(Semaphore::new(bounds.max_connections.max(1)));
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
            warn!(%peer, "refusing a connection from another user on a private socket");
        }
        let handler = handler.clone();
        let cancel = cancel.clone();
        connections.spawn(async move {
            let _slot = slot;
            let service = service_fn({
                let peer = peer.clone();
                move |request: Request<Incoming>| {
                    let method = request.method().clone();
                    let path = request.uri().path().to_owned();
                    let reply = handler(request, peer.clone());
                    async move {
                        let reply = reply.await;
                        debug!(%method, path, status = reply.status().as_u16(), "request");
                        Ok::<_, Infallible>(reply)
                    }
                }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(bounds.header_timeout)
                .serve_connection(
                    TokioIo::new(WriteDeadline::new(stream, bounds.write_timeout)),
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
