//! The agent's side: hands the registration to the host agent and follows what it carries out,
//! with the same contract as [`crate::announce::maintain`] (the caller's checks, drain switch
//! and status are unchanged). If the host agent goes away, its session's nodes go with it: the
//! agent connects again (every second) and registers anew.

use std::path::Path;
use std::time::Duration;

use tokio::io::BufReader;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{ToAgent, ToHost, receive, send};
use crate::announce::{AnnounceError, Document, Registered, Status, Wanted};
use crate::departure::Departure;
use crate::layout::{InstanceId, ServiceName};
use crate::local_socket::{self, trusted};

/// How long to wait before connecting again to a host agent that is not there.
const RECONNECT: Duration = Duration::from_secs(1);

/// Why a connection to the host agent ended.
enum Ended {
    /// Stopped as asked: the node is deleted.
    Stopped,
    /// The host agent is gone (or was never there): connect again.
    Lost(String),
}

/// Keeps the instance registered through the host agent at `socket` while `wanted` says so,
/// holding the latest `document`, until `cancel`; then has the host agent delete the node and
/// returns. `status` follows what the host agent carried out.
///
/// # Notable errors
/// [`AnnounceError::Duplicate`] and [`AnnounceError::Persistent`] as from
/// [`crate::announce::maintain`]; [`AnnounceError::Host`] when the host agent refuses the
/// registration.
pub async fn register(
    socket: &Path,
    (service, id): (&ServiceName, &InstanceId),
    wanted: Wanted,
    mut document: watch::Receiver<Document>,
    status: watch::Sender<Status>,
    give_up_on_duplicate: bool,
    cancel: CancellationToken,
) -> Result<(), AnnounceError> {
    let Wanted {
        now: mut want, why, ..
    } = wanted;
    let mut said = None::<String>;
    loop {
        let ended = relay(
            socket,
            (service, id),
            (&mut want, &why),
            &mut document,
            &status,
            give_up_on_duplicate,
            &cancel,
        )
        .await?;
        let reason = match ended {
            Ended::Stopped => return Ok(()),
            Ended::Lost(reason) => reason,
        };
        status.send_modify(|s| {
            s.registered = Registered::No;
            s.left = None;
        });
        if said.as_deref() != Some(reason.as_str()) {
            warn!(socket = %socket.display(), error = %reason, "no host agent to register through; trying again every second");
            said = Some(reason);
        }
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = tokio::time::sleep(RECONNECT) => {}
        }
    }
}

/// One connection: register, relay changes both ways, stop when cancelled.
async fn relay(
    socket: &Path,
    (service, id): (&ServiceName, &InstanceId),
    (want, why): (&mut watch::Receiver<bool>, &crate::announce::Why),
    document: &mut watch::Receiver<Document>,
    status: &watch::Sender<Status>,
    give_up_on_duplicate: bool,
    cancel: &CancellationToken,
) -> Result<Ended, AnnounceError> {
    let lost = |e: std::io::Error| Ended::Lost(e.to_string());
    if cancel.is_cancelled() {
        return Ok(Ended::Stopped);
    }
    let stream = match local_socket::connect(socket).await {
        Ok(stream) => stream,
        Err(err) => return Ok(lost(err)),
    };
    // The host agent writes the node with its identity: it must be this user's or root's.
    match stream.peer_cred() {
        Ok(cred) if trusted(cred.uid()) => {}
        _ => {
            return Err(AnnounceError::Host(format!(
                "{} is answered by another user's process; point --host-agent at your own host agent",
                socket.display()
            )));
        }
    }
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let (generation, bytes) = {
        let doc = document.borrow_and_update();
        (doc.generation, doc.bytes.clone())
    };
    let register = ToHost::Register {
        service: service.to_string(),
        id: id.to_string(),
        generation,
        document: String::from_utf8_lossy(&bytes).into_owned(),
        give_up_on_duplicate,
    };
    if let Err(err) = send(&mut write, &register).await {
        return Ok(lost(err));
    }
    let wanted_now = |want: &mut watch::Receiver<bool>| {
        let now = *want.borrow_and_update();
        ToHost::Wanted {
            now,
            why: if now {
                String::new()
            } else {
                why(false).as_str().to_owned()
            },
        }
    };
    if let Err(err) = send(&mut write, &wanted_now(want)).await {
        return Ok(lost(err));
    }
    info!(socket = %socket.display(), "registering through the host agent");
    loop {
        tokio::select! {
            _ = cancel.cancelled() => {
                let stop = ToHost::Stop { why: why(true).as_str().to_owned() };
                if send(&mut write, &stop).await.is_err() {
                    return Ok(Ended::Stopped);
                }
                // The node is deleted when the host agent answers (or goes away).
                loop {
                    match receive::<_, ToAgent>(&mut read).await {
                        Ok(Some(ToAgent::Status { registered, wanted, document, left })) => {
                            follow(status, registered, wanted, document, left.as_deref());
                        }
                        Ok(Some(ToAgent::Stopped)) => {
                            status.send_modify(|s| {
                                if s.registered == Registered::Yes {
                                    s.left = Some(why(true));
                                }
                                s.registered = Registered::No;
                            });
                            return Ok(Ended::Stopped);
                        }
                        _ => return Ok(Ended::Stopped),
                    }
                }
            }
            changed = want.changed() => {
                if changed.is_err() {
                    continue;
                }
                if let Err(err) = send(&mut write, &wanted_now(want)).await {
                    return Ok(lost(err));
                }
            }
            changed = document.changed() => {
                if changed.is_err() {
                    continue;
                }
                let (generation, bytes) = {
                    let doc = document.borrow_and_update();
                    (doc.generation, doc.bytes.clone())
                };
                let message = ToHost::Document {
                    generation,
                    document: String::from_utf8_lossy(&bytes).into_owned(),
                };
                if let Err(err) = send(&mut write, &message).await {
                    return Ok(lost(err));
                }
            }
            message = receive::<_, ToAgent>(&mut read) => match message {
                Ok(Some(ToAgent::Status { registered, wanted, document, left })) => {
                    follow(status, registered, wanted, document, left.as_deref());
                }
                Ok(Some(ToAgent::Failed { kind, message, path, owner })) => {
                    return Err(match (kind.as_str(), path, owner) {
                        ("duplicate", Some(path), Some(owner)) => AnnounceError::Duplicate { path, owner },
                        ("persistent", Some(path), _) => AnnounceError::Persistent { path },
                        _ => AnnounceError::Host(message),
                    });
                }
                Ok(Some(ToAgent::Stopped)) | Ok(None) => {
                    return Ok(Ended::Lost("the host agent closed the connection".to_owned()));
                }
                Err(err) => return Ok(lost(err)),
            },
        }
    }
}

/// Passes on what the host agent carried out.
fn follow(
    status: &watch::Sender<Status>,
    registered: bool,
    wanted: bool,
    document: u64,
    left: Option<&str>,
) {
    status.send_replace(Status {
        registered: if registered {
            Registered::Yes
        } else {
            Registered::No
        },
        wanted,
        document,
        left: left.map(Departure::named),
    });
}
