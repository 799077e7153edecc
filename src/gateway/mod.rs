//! The single-machine gateway: a local HTTP daemon through which containers publish and read
//! values (`curl -X POST -d … http://HOST/environment/KEY`, `curl http://HOST/environment/KEY`),
//! backed by the same `<root>/environment` znodes as `herald put` and `herald resolve`.
//!
//! ```text
//! TcpListener ─accept─▶ one task per connection (hyper HTTP/1.1) ─▶ routes::handle ─▶ Values / catalog
//! ```

mod routes;

use std::net::SocketAddr;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

pub use routes::{Backend, handle};

/// How long requests in flight may finish after a stop.
pub const DRAIN: Duration = Duration::from_secs(5);

/// Serves on `listener` until `cancel`, then lets requests in flight finish (up to [`DRAIN`]).
pub async fn serve(listener: TcpListener, backend: Backend, cancel: CancellationToken) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "serving HTTP");
    }
    let mut connections = JoinSet::new();
    loop {
        let (stream, peer): (_, SocketAddr) = tokio::select! {
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
        let backend = backend.clone();
        let cancel = cancel.clone();
        connections.spawn(async move {
            let service = service_fn(move |request| {
                let backend = backend.clone();
                async move {
                    let method = request.method().clone();
                    let path = request.uri().path().to_owned();
                    let reply = handle(backend, request).await;
                    debug!(%method, path, status = reply.status().as_u16(), "request");
                    Ok::<_, std::convert::Infallible>(reply)
                }
            });
            let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
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
    let _ = tokio::time::timeout(DRAIN, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
}
