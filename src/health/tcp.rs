//! The tcp check: healthy when a TCP connection is established (and closed again at once).

use tokio::net::TcpStream;

use super::error::Failure;

/// One run, unbounded: the caller applies the timeout.
pub(super) async fn probe(host: &str, port: u16) -> Result<(), Failure> {
    TcpStream::connect((host, port))
        .await
        .map(drop)
        .map_err(Failure::Io)
}
