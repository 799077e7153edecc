//! Where the gateway listens — a TCP address, or a private Unix socket — and the connection it
//! hands to hyper: who is at the other end, and a stream whose writes may not stall for ever.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::time::Sleep;
use tokio_util::either::Either;

use crate::local_socket::{PrivateSocket, SocketError, trusted};

/// What `--listen` names: `HOST:PORT`, or `unix:PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::str::FromStr for Address {
    type Err = String;

    fn from_str(text: &str) -> Result<Address, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() || path.ends_with('/') {
                return Err(format!(
                    "{text}: name the socket file, e.g. unix:/run/herald/gateway.sock"
                ));
            }
            return Ok(Address::Unix(PathBuf::from(path)));
        }
        text.parse().map(Address::Tcp).map_err(|_| {
            format!("{text}: write an address and port, e.g. 127.0.0.1:7070, or unix:PATH")
        })
    }
}

impl std::fmt::Display for Address {
    /// As `--listen` takes it: `HOST:PORT` or `unix:PATH`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Tcp(addr) => write!(f, "{addr}"),
            Address::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl Address {
    /// Whether only this machine can reach it: loopback, or a Unix socket.
    pub fn is_local(&self) -> bool {
        match self {
            Address::Tcp(addr) => addr.ip().is_loopback(),
            Address::Unix(_) => true,
        }
    }
}

/// A bound listener.
pub enum Listener {
    Tcp(TcpListener),
    /// Created 0600 in a directory only this user (or root) can write; peers of other users
    /// are refused (their requests answered 403).
    Unix(PrivateSocket),
}

/// Who connected.
#[derive(Debug, Clone)]
pub enum Peer {
    Tcp(SocketAddr),
    /// A local process of this user or root.
    Local(u32),
    /// A local process of another user (or of a uid that could not be read).
    Stranger(Option<u32>),
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Tcp(addr) => write!(f, "{addr}"),
            Peer::Local(uid) => write!(f, "uid {uid}"),
            Peer::Stranger(Some(uid)) => write!(f, "uid {uid}"),
            Peer::Stranger(None) => write!(f, "an unknown uid"),
        }
    }
}

pub type Stream = Either<TcpStream, UnixStream>;

impl Listener {
    /// Binds `address`; a TCP port in use or an unsafe socket directory is an error naming it.
    pub async fn bind(address: &Address) -> Result<Listener, SocketError> {
        match address {
            Address::Tcp(addr) => {
                TcpListener::bind(addr)
                    .await
                    .map(Listener::Tcp)
                    .map_err(|source| SocketError::Io {
                        path: PathBuf::from(addr.to_string()),
                        source,
                    })
            }
            Address::Unix(path) => PrivateSocket::bind(path).map(Listener::Unix),
        }
    }

    /// Where it listens, for the log.
    pub fn describe(&self) -> String {
        match self {
            Listener::Tcp(listener) => listener
                .local_addr()
                .map_or_else(|_| "a TCP socket".to_owned(), |a| a.to_string()),
            Listener::Unix(socket) => format!("unix:{}", socket.path().display()),
        }
    }

    /// The next connection and who made it. Cancellation safe.
    pub async fn accept(&self) -> std::io::Result<(Stream, Peer)> {
        match self {
            Listener::Tcp(listener) => {
                let (stream, addr) = listener.accept().await?;
                Ok((Either::Left(stream), Peer::Tcp(addr)))
            }
            Listener::Unix(socket) => {
                let (stream, _) = socket.listener().accept().await?;
                let peer = match stream.peer_cred() {
                    Ok(cred) if trusted(cred.uid()) => Peer::Local(cred.uid()),
                    Ok(cred) => Peer::Stranger(Some(cred.uid())),
                    Err(_) => Peer::Stranger(None),
                };
                Ok((Either::Right(stream), peer))
            }
        }
    }
}

/// A stream whose writes fail once they have made no progress for `limit`: a client that
/// never reads its response cannot hold a connection (and its slot) for ever.
pub struct WriteDeadline<S> {
    inner: S,
    limit: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<S> WriteDeadline<S> {
    pub fn new(inner: S, limit: Duration) -> WriteDeadline<S> {
        WriteDeadline {
            inner,
            limit,
            stalled: None,
        }
    }

    /// After a write that is not ready: pending until `limit` has passed since the first one in
    /// a row, then the error that ends the connection.
    fn on_pending<T>(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<T>> {
        let limit = self.limit;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        ready!(stalled.as_mut().poll(cx));
        Poll::Ready(Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the client took nothing of its response for too long",
        )))
    }

    fn settle<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        match polled {
            Poll::Ready(result) => {
                self.stalled = None;
                Poll::Ready(result)
            }
            Poll::Pending => self.on_pending(cx),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.settle(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.settle(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.settle(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.settle(cx, polled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn addresses() {
        for (text, address) in [
            (
                "127.0.0.1:7070",
                Some(Address::Tcp("127.0.0.1:7070".parse().unwrap())),
            ),
            (
                "[::1]:7070",
                Some(Address::Tcp("[::1]:7070".parse().unwrap())),
            ),
            (
                "unix:/run/herald/gw.sock",
                Some(Address::Unix("/run/herald/gw.sock".into())),
            ),
            ("unix:gw.sock", Some(Address::Unix("gw.sock".into()))),
            ("unix:", None),
            ("unix:/run/herald/", None),
            ("localhost:7070", None),
            ("7070", None),
        ] {
            assert_eq!(text.parse::<Address>().ok(), address, "{text}");
        }
        for (text, local) in [
            ("127.0.0.1:1", true),
            ("127.8.0.1:1", true),
            ("[::1]:1", true),
            ("unix:/x", true),
            ("0.0.0.0:1", false),
            ("[::]:1", false),
            ("172.17.0.1:1", false),
        ] {
            assert_eq!(text.parse::<Address>().unwrap().is_local(), local, "{text}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_nobody_takes_fails_after_the_limit() {
        let (near, _far) = tokio::io::duplex(16);
        let mut stream = WriteDeadline::new(near, Duration::from_secs(30));
        stream.write_all(&[0; 16]).await.unwrap();
        let started = tokio::time::Instant::now();
        let err = stream.write_all(&[0; 1]).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn progress_resets_the_limit() {
        use tokio::io::AsyncReadExt;
        let (near, mut far) = tokio::io::duplex(16);
        let mut stream = WriteDeadline::new(near, Duration::from_secs(30));
        let reader = tokio::spawn(async move {
            let mut buf = [0; 8];
            let mut total = 0;
            // Takes 8 bytes every 20 s: slow, but never 30 s without progress.
            while total < 64 {
                tokio::time::sleep(Duration::from_secs(20)).await;
                total += far.read(&mut buf).await.unwrap();
            }
        });
        stream.write_all(&[0; 64]).await.unwrap();
        reader.await.unwrap();
    }
}
