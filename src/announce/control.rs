//! The local control socket of a running agent, so `herald drain` / `herald undrain` from a shell
//! in the container can reach it: one Unix socket per instance, `<dir>/<service>@<id>.sock` (`@`
//! is in neither name), one request line and one reply line per connection.
//!
//! Whoever can answer on that socket decides what `herald drain` reports, and whoever can
//! connect can drain the instance. So the directory is created 0700 and must be owned by herald's
//! user (or root) and writable by nobody else; the socket is 0600 whatever the umask; and each
//! side checks the other's uid (`SO_PEERCRED`): the agent answers only its own user and root, and
//! `herald drain` believes only an agent of its own user or root ([`crate::local_socket`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::document::{Drain, Switch};
use super::registrar::{Registered, Status};
use crate::instance::DrainNote;
use crate::layout::{InstanceId, ServiceName};
use crate::local_socket::{PrivateSocket, SocketError, trusted};

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

/// What the agent answers: how drained it is, whether its node exists, whether the node had
/// not followed the request yet when the agent stopped waiting for it, and what the operator
/// said of the drain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub drain: Drain,
    pub registered: bool,
    pub pending: bool,
    pub note: DrainNote,
}

/// The longest drain reason.
pub const MAX_REASON: usize = 200;

/// ` until=MS reason=TEXT`, the parts `note` has (the reason last: it may hold spaces).
fn note_words(note: &DrainNote) -> String {
    let mut words = String::new();
    if let Some(until) = note.until_ms {
        words.push_str(&format!(" until={until}"));
    }
    if let Some(reason) = &note.reason {
        words.push_str(&format!(" reason={reason}"));
    }
    words
}

/// The tokens after a request's verb or a reply's state: `pending`, `until=MS`, and
/// `reason=TEXT` to the end of the line. A reason is cut to [`MAX_REASON`] bytes and loses
/// control characters.
fn parse_words(rest: &str) -> (bool, DrainNote) {
    let (head, reason) = match rest.split_once("reason=") {
        Some((head, reason)) => (head, Some(reason.trim())),
        None => (rest, None),
    };
    let mut note = DrainNote {
        reason: reason.filter(|r| !r.is_empty()).map(|r| {
            r.chars()
                .filter(|c| !c.is_control())
                .scan(0, |len, c| {
                    *len += c.len_utf8();
                    (*len <= MAX_REASON).then_some(c)
                })
                .collect()
        }),
        until_ms: None,
    };
    let mut pending = false;
    for word in head.split_whitespace() {
        if word == "pending" {
            pending = true;
        } else if let Some(until) = word.strip_prefix("until=") {
            note.until_ms = until.parse().ok();
        }
    }
    (pending, note)
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
        if !self.note.is_empty() {
            write!(f, "; {}", self.note)?;
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
    #[error("the control directory {} {why}: another user could answer for the agent or drain it; use a directory only this user (or root) owns and can write, e.g. chmod 700 it", .path.display())]
    Unsafe { path: PathBuf, why: String },
    #[error("{} is answered by uid {uid}, not this user or root; refusing to trust it", .path.display())]
    Stranger { path: PathBuf, uid: u32 },
}

/// Refuses a control directory another user could write to or owns.
fn check_dir(dir: &Path) -> Result<(), ControlError> {
    Ok(crate::local_socket::check_dir(dir)?)
}

/// A private-socket failure in the words of the control socket.
impl From<SocketError> for ControlError {
    fn from(err: SocketError) -> ControlError {
        match err {
            SocketError::Io { path, source } => ControlError::Bind { path, source },
            SocketError::InUse { path } => ControlError::InUse { path },
            SocketError::Unsafe { path, why } => ControlError::Unsafe { path, why },
        }
    }
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
    let (service, id) = socket_parts(service.as_str(), id.as_str());
    dir.join(format!("{service}@{id}.sock"))
}

/// The longest socket name: with `/proc/self/fd/NNNNN/` before it, it still fits `sun_path`.
const MAX_SOCKET_NAME: usize = 88;
/// The longest service part of a socket name.
const MAX_SOCKET_SERVICE: usize = 40;

/// `s`, or when longer than `cap` its start and a hash of the whole (`~` is in no name).
fn shortened(s: &str, cap: usize) -> String {
    if s.len() <= cap {
        return s.to_owned();
    }
    use sha2::Digest;
    let hash = sha2::Sha256::digest(s.as_bytes());
    let hex: String = hash[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("{}~{hex}", &s[..cap - 9])
}

/// The service and id parts of a socket name: as they are when they fit, else shortened the
/// same way every time, so `herald drain --service S --id I` finds the socket by
/// [`matches_socket`].
fn socket_parts(service: &str, id: &str) -> (String, String) {
    let service = shortened(service, MAX_SOCKET_SERVICE);
    let id_cap = MAX_SOCKET_NAME - service.len() - "@.sock".len();
    let id = shortened(id, id_cap);
    (service, id)
}

/// Whether the socket named `stem` (`SERVICE@ID`, as [`sockets`] lists it) is that of the
/// agent of `service` and `id` (either unset: any).
pub fn matches_socket(stem: &str, service: Option<&str>, id: Option<&str>) -> bool {
    let (found_service, found_id) = stem.split_once('@').unwrap_or((stem, ""));
    service.is_none_or(|s| shortened(s, MAX_SOCKET_SERVICE) == found_service)
        && id.is_none_or(|i| {
            let cap = MAX_SOCKET_NAME - found_service.len() - "@.sock".len();
            shortened(i, cap) == found_id
        })
}

/// A listening control socket; removed when dropped.
pub struct Control {
    socket: PrivateSocket,
}

impl Control {
    /// Binds `<dir>/<service>@<id>.sock`, replacing a stale socket left by a crashed agent, but
    /// never one a live agent still answers on.
    pub fn bind(
        dir: &Path,
        service: &ServiceName,
        id: &InstanceId,
    ) -> Result<Control, ControlError> {
        Ok(Control {
            socket: PrivateSocket::bind(&socket_path(dir, service, id))?,
        })
    }

    pub fn path(&self) -> &Path {
        self.socket.path()
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
                accepted = self.socket.listener().accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(err) => {
                        // E.g. out of file descriptors: do not spin.
                        debug!(error = %err, "control socket accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            // Another user's request is read (so the client sees the answer, not a reset) and
            // refused.
            let stranger = match stream.peer_cred() {
                Ok(cred) if trusted(cred.uid()) => None,
                Ok(cred) => Some(cred.uid().to_string()),
                Err(_) => Some("unknown".to_owned()),
            };
            let switch = switch.clone();
            let status = status.clone();
            let cancel = cancel.clone();
            tokio::spawn(async move {
                if let Err(err) = answer(stream, switch, status, stranger, cancel).await {
                    debug!(error = %err, "control request failed");
                }
            });
        }
    }
}

async fn answer(
    stream: UnixStream,
    switch: Arc<Switch>,
    mut status: watch::Receiver<Status>,
    stranger: Option<String>,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    // One short line, promptly: an idle or endless client must not hold the task.
    let mut reader = BufReader::new(read.take(64 + MAX_REASON as u64 * 4));
    if tokio::time::timeout(Duration::from_secs(1), reader.read_line(&mut line))
        .await
        .is_err()
    {
        return Ok(());
    }
    if let Some(uid) = stranger {
        warn!(uid, "refused a control request from another user");
        write.write_all(b"error: not allowed\n").await?;
        return Ok(());
    }
    let (verb, rest) = line.trim().split_once(' ').unwrap_or((line.trim(), ""));
    let (_, note) = parse_words(rest);
    let wanted = match verb {
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
        let (previous, generation, epoch) = switch.set_drain(drain, note.clone());
        if previous != drain || !note.is_empty() {
            info!(
                "{} by a control request{}",
                drain_word(drain),
                if note.is_empty() {
                    String::new()
                } else {
                    format!(" ({note})")
                }
            );
        }
        // A drain for a while ends by itself, unless another request came meanwhile.
        if let Some(until) = note.until_ms.filter(|_| drain != Drain::Serving) {
            let wait = Duration::from_millis(until.saturating_sub(now_ms()));
            let switch = switch.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = tokio::time::sleep(wait) => {
                        if switch.expire(epoch) {
                            info!("the drain's time is up: serving again");
                        } else {
                            info!("an earlier drain's time is up; the later request stands");
                        }
                    }
                }
            });
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
                "{} {}{}{}\n",
                drain_word(switch.drain()),
                if registered {
                    "registered"
                } else {
                    "unregistered"
                },
                if pending { " pending" } else { "" },
                note_words(&switch.note()),
            )
            .as_bytes(),
        )
        .await
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
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

/// Sends `request` (with what the operator says of a drain) to the agent at `path` and returns
/// its reply.
pub async fn request(
    path: &Path,
    request: Request,
    note: &DrainNote,
) -> Result<Reply, ControlError> {
    let connect = |source| ControlError::Connect {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        check_dir(dir)?;
    }
    let mut stream = crate::local_socket::connect(path).await.map_err(connect)?;
    let uid = stream.peer_cred().map_err(connect)?.uid();
    if !trusted(uid) {
        return Err(ControlError::Stranger {
            path: path.to_owned(),
            uid,
        });
    }
    stream
        .write_all(format!("{}{}\n", request.as_str(), note_words(note)).as_bytes())
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
    let rest = words.collect::<Vec<_>>().join(" ");
    let (pending, note) = parse_words(&rest);
    Ok(Reply {
        drain,
        registered,
        pending,
        note,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_are_shortened_alike_on_both_ends() {
        let long_id = format!("pod-{}-5432", "x".repeat(100));
        let long_service = "s".repeat(100);
        for (service, id) in [
            ("pg", "db1-5432"),
            ("pg", long_id.as_str()),
            (long_service.as_str(), "a"),
        ] {
            let path = socket_path(
                Path::new("/run/herald"),
                &service.parse().unwrap(),
                &id.parse().unwrap(),
            );
            let name = path.file_name().unwrap().to_str().unwrap();
            assert!(name.len() <= MAX_SOCKET_NAME, "{name}");
            let stem = name.strip_suffix(".sock").unwrap();
            assert!(matches_socket(stem, Some(service), Some(id)), "{stem}");
            assert!(matches_socket(stem, Some(service), None));
            assert!(matches_socket(stem, None, Some(id)));
            assert!(!matches_socket(stem, Some("other"), None));
            assert!(!matches_socket(stem, None, Some("other")));
        }
        // Names that fit are kept as they are.
        let path = socket_path(
            Path::new("/d"),
            &"pg".parse().unwrap(),
            &"db1-5432".parse().unwrap(),
        );
        assert_eq!(path, Path::new("/d/pg@db1-5432.sock"));
    }
}
