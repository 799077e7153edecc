//! The metrics and status listener: `/metrics` (OpenMetrics text, for Prometheus),
//! `/status.json` (the [`super::Board`]) and `/status` (a page that renders it and refreshes
//! itself), on the one bounded HTTP server ([`crate::http_server`]).

use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::Telemetry;
use crate::http_server::{self, Address, Bounds, Listener, Peer, Reply};

/// The page: static HTML, CSS and a script that fetches `/status.json`.
const PAGE: &str = include_str!("status.html");

/// The content type Prometheus asks for and the encoder writes.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `--metrics-listen`: `HOST:PORT`, `unix:PATH`, or a bare `PORT` (loopback).
pub fn listen_address(text: &str) -> Result<Address, String> {
    if let Ok(port) = text.trim().parse::<u16>() {
        return Ok(Address::Tcp(([127, 0, 0, 1], port).into()));
    }
    text.parse::<Address>()
        .map_err(|why| format!("{why} (or a bare port for 127.0.0.1)"))
}

fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Reply {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Answers `/metrics`, `/status` and `/status.json`; `None` for any other path (the gateway
/// routes those itself).
pub fn routes(telemetry: &Telemetry, request: &Request<Incoming>) -> Option<Reply> {
    let path = request.uri().path();
    if !matches!(path, "/metrics" | "/status" | "/status.json") {
        return None;
    }
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        let mut refused = reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            format!("{path} answers GET only\n"),
        );
        refused
            .headers_mut()
            .insert(hyper::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return Some(refused);
    }
    Some(match path {
        "/metrics" => reply(StatusCode::OK, OPENMETRICS, telemetry.encode()),
        "/status.json" => match serde_json::to_vec(&telemetry.snapshot()) {
            Ok(body) => reply(StatusCode::OK, "application/json", body),
            Err(err) => reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain; charset=utf-8",
                format!("cannot encode the status: {err}\n"),
            ),
        },
        _ => reply(StatusCode::OK, "text/html; charset=utf-8", PAGE),
    })
}

/// Serves the routes on `listener` until `cancel`.
pub async fn serve(listener: Listener, telemetry: Telemetry, cancel: CancellationToken) {
    info!(listen = listener.describe(), "serving metrics and status");
    let bounds = Bounds {
        max_connections: 16,
        header_timeout: Duration::from_secs(10),
        write_timeout: Duration::from_secs(10),
    };
    http_server::serve(
        listener,
        bounds,
        move |request, peer| {
            let answer = match peer {
                Peer::Stranger(_) => Some(reply(
                    StatusCode::FORBIDDEN,
                    "text/plain; charset=utf-8",
                    "this socket serves its own user and root only\n",
                )),
                _ => routes(&telemetry, &request),
            };
            let answer = answer.unwrap_or_else(|| {
                reply(
                    StatusCode::NOT_FOUND,
                    "text/plain; charset=utf-8",
                    "no such page; use /metrics, /status or /status.json\n",
                )
            });
            std::future::ready(answer)
        },
        cancel,
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_port_is_loopback() {
        assert_eq!(
            listen_address("9464"),
            Ok(Address::Tcp("127.0.0.1:9464".parse().unwrap()))
        );
        assert_eq!(
            listen_address("0.0.0.0:9464"),
            Ok(Address::Tcp("0.0.0.0:9464".parse().unwrap()))
        );
        assert_eq!(
            listen_address("unix:/run/herald/metrics.sock"),
            Ok(Address::Unix("/run/herald/metrics.sock".into()))
        );
        assert!(listen_address("localhost").is_err());
        assert!(listen_address("70000").is_err());
    }
}
