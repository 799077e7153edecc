//! The local control socket of a running agent, so `herald drain` / `herald undrain` from a shell
//! in the container can reach it: one Unix socket per instance, `<dir>/<service>@<id>.sock` (`@`
//! is in neither name), one request line and one reply line per connection.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::document::{Drain, Switch};
use super::registrar::{Registered, Status};
use crate::layout::{InstanceId, ServiceName};

/// How long a request waits for the node to follow (drain: deleted; undrain: created).
const SETTLE: Duration = Duration::from_secs(5);

/// What a client asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Deregister and keep running.
    Drain,
    /// Stay registered with weight 0.
    DrainSoft,
    Undrain,
    Status,
}

impl Request {
    fn as_str(self) -> &'static str {
        match self {
            Request::Drain => "drain",
            Request::DrainSoft => "drain-soft",
            Request::Undrain => "undrain",
            Request::Status => "status",
        }
    }
}

/// What the agent answers: how drained it is, whether its node exists, and whether the node
/// had not followed the request yet when the agent stopped waiting for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    pub drain: Drain,
    pub registered: bool,
    pub pending: bool,
}

fn drain_word(drain: Drain) -> &'static str {
    match drain {
        Drain::Serving => "serving",
        Drain::Soft => "soft-drained",
        Drain::Out => "drained",
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let drain = match self.drain {
            Drain::Soft => "drained softly (weight 0)",
            other => drain_word(other),
        };
        let node = if self.registered {
            "registered"
        } else {
            "not registered"
        };
        write!(f, "{drain}, {node}")?;
        if self.pending {
            write!(f, ", not yet carried out")?;
        }
        Ok(())
    }
}

/// Why the control socket could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot create the control socket {}: {source}; set --control-dir to a writable directory", .path.display())]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot reach the agent at {}: {source}", .path.display())]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the agent at {} gave no answer", .path.display())]
    NoAnswer { path: PathBuf },
    #[error("another live agent answers on {}; give this instance another --id or --control-dir", .path.display())]
    InUse { path: PathBuf },
}

/// Where control sockets go by default: /run/herald for root, else under XDG_RUNTIME_DIR or /tmp.
pub fn default_control_dir() -> PathBuf {
    // SAFETY: plain syscall.
    let uid = unsafe { libc::geteuid() };
    if uid == 0 {
        return PathBuf::from("/run/herald");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("herald"),
        _ => PathBuf::from(format!("/tmp/herald-{uid}")),
    }
}

fn socket_path(dir: &Path, service: &ServiceName, id: &InstanceId) -> PathBuf {
    dir.join(format!("{service}@{id}.sock"))
}

/// A listening control socket; removed when dropped.
pub struct Control {
    path: PathBuf,
    listener: UnixListener,
}

impl Control {
    /// Binds `<dir>/<service>@<id>.sock`, replacing a stale socket left by a crashed agent, but
    /// never one a live agent still answers on.
    pub fn bind(
        dir: &Path,
        service: &ServiceName,
        id: &InstanceId,
    ) -> Result<Control, ControlError> {
        let path = socket_path(dir, service, id);
        if std::os::unix::net::UnixStream::connect(&path).is_ok() {
            return Err(ControlError::InUse { path });
        }
        let bind = || -> std::io::Result<UnixListener> {
            std::fs::create_dir_all(dir)?;
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            UnixListener::bind(&path)
        };
        let listener = bind().map_err(|source| ControlError::Bind {
            path: path.clone(),
            source,
        })?;
        Ok(Control { path, listener })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Answers requests until `cancel`: drain deregisters and waits for the node to go, a soft
    /// drain waits for the node to say weight 0, undrain waits (briefly) for the node to come
    /// back with its weight.
    pub async fn serve(
        self,
        switch: Arc<Switch>,
        status: watch::Receiver<Status>,
        cancel: CancellationToken,
    ) {
        loop {
            let stream = tokio::select! {
                _ = cancel.cancelled() => return,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(err) => {
                        // E.g. out of file descriptors: do not spin.
                        debug!(error = %err, "control socket accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let switch = switch.clone();
            let status = status.clone();
            tokio::spawn(async move {
                if let Err(err) = answer(stream, &switch, status).await {
                    debug!(error = %err, "control request failed");
                }
            });
        }
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn answer(
    stream: UnixStream,
    switch: &Switch,
    mut status: watch::Receiver<Status>,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    // One short line, promptly: an idle or endless client must not hold the task.
    let mut reader = BufReader::new(read.take(64));
    if tokio::time::timeout(Duration::from_secs(1), reader.read_line(&mut line))
        .await
        .is_err()
    {
        return Ok(());
    }
    let wanted = match line.trim() {
        "drain" => Some(Drain::Out),
        "drain-soft" => Some(Drain::Soft),
        "undrain" => Some(Drain::Serving),
        "status" => None,
        other => {
            write
                .write_all(format!("error: unknown request {other:?}\n").as_bytes())
                .await?;
            return Ok(());
        }
    };
    let mut pending = false;
    if let Some(drain) = wanted {
        let (previous, generation) = switch.set_drain(drain);
        if previous != drain {
            info!("{} by a control request", drain_word(drain));
        }
        // Done when the registrar has carried the change out: the node is gone (drain), or
        // holds the document with the new weight.
        let done = |s: &Status| match drain {
            Drain::Out => !s.wanted && s.registered == Registered::No,
            Drain::Soft | Drain::Serving => {
                s.registered == Registered::Yes && s.document >= generation
            }
        };
        pending = tokio::time::timeout(SETTLE, status.wait_for(done))
            .await
            .is_err();
    }
    let registered = status.borrow().registered == Registered::Yes;
    write
        .write_all(
            format!(
                "{} {}{}\n",
                drain_word(switch.drain()),
                if registered {
                    "registered"
                } else {
                    "unregistered"
                },
                if pending { " pending" } else { "" }
            )
            .as_bytes(),
        )
        .await
}

/// The control sockets in `dir` as (path, service.id), sorted.
pub fn sockets(dir: &Path) -> std::io::Result<Vec<(PathBuf, String)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(stem) = name.strip_suffix(".sock") {
            found.push((entry.path(), stem.to_owned()));
        }
    }
    found.sort();
    Ok(found)
}

/// Sends `request` to the agent at `path` and returns its reply.
pub async fn request(path: &Path, request: Request) -> Result<Reply, ControlError> {
    let connect = |source| ControlError::Connect {
        path: path.to_owned(),
        source,
    };
    let mut stream = UnixStream::connect(path).await.map_err(connect)?;
    stream
        .write_all(format!("{}\n", request.as_str()).as_bytes())
        .await
        .map_err(connect)?;
    let mut line = String::new();
    let read = tokio::time::timeout(
        SETTLE + Duration::from_secs(1),
        BufReader::new(stream).read_line(&mut line),
    )
    .await;
    let no_answer = || ControlError::NoAnswer {
        path: path.to_owned(),
    };
    match read {
        Ok(Ok(n)) if n > 0 => {}
        _ => return Err(no_answer()),
    }
    let mut words = line.split_whitespace();
    let drain = match words.next() {
        Some("drained") => Drain::Out,
        Some("soft-drained") => Drain::Soft,
        Some("serving") => Drain::Serving,
        _ => return Err(no_answer()),
    };
    let registered = words.next() == Some("registered");
    let pending = words.next() == Some("pending");
    Ok(Reply {
        drain,
        registered,
        pending,
    })
}
