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
//! Every client-controlled quantity is bounded ([`Limits`]); the accept loop and its bounds are
//! [`crate::http_server`]'s, shared with the metrics and status listener.

mod auth;
mod limits;
pub mod mirror;
mod routes;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::http_server::{self, Bounds};

pub use crate::http_server::{Address, DRAIN, Listener, Peer};
pub use auth::Token;
pub use limits::{Limits, UploadBudget, parse_size};
pub use mirror::Mirror;
pub use routes::Backend;

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
        listen: listener.describe(),
        backend,
        token: guard.token,
        uploads: UploadBudget::new(limits.upload_budget),
        body_timeout: limits.body_timeout,
    });
    let bounds = Bounds {
        max_connections: limits.max_connections,
        header_timeout: limits.header_timeout,
        write_timeout: limits.body_timeout,
    };
    http_server::serve(
        listener,
        bounds,
        move |request, peer| {
            let shared = shared.clone();
            async move {
                let started = std::time::Instant::now();
                let method = request.method().clone();
                let reply = if let Peer::Stranger(_) = peer {
                    routes::stranger()
                } else {
                    routes::handle(&shared, request).await
                };
                shared.backend.telemetry.gateway_request(
                    method.as_str(),
                    reply.status().as_u16(),
                    started.elapsed(),
                );
                reply
            }
        },
        cancel,
    )
    .await;
}
