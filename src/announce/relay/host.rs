//! The host agent's side: accepts registrations on its private socket and runs a registrar for
//! each on the one session, until the agent stops, its connection closes, or the host agent
//! stops (then every node is deleted, recorded as `stopped`).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::BufReader;
use tokio::net::UnixStream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use super::{ToAgent, ToHost, receive, send};
use crate::acl::Policy;
use crate::announce::{
    AnnounceError, Document, Node, Registered, Status, Wanted, Why, duplicate_wait, maintain,
};
use crate::departure::Departure;
use crate::instance::Instance;
use crate::layout::{InstanceId, Layout, ServiceName};
use crate::local_socket::{PrivateSocket, trusted};
use crate::zk::{Pace, SessionHandle};

/// What every registration of a host agent shares.
pub struct Host {
    pub session: SessionHandle,
    pub layout: Layout,
    pub policy: Policy,
    /// The instances registered through this host agent now: one connection each.
    active: Mutex<BTreeSet<(ServiceName, InstanceId)>>,
    /// The rate of registrations (`--register-rate`), shared by all of them.
    pace: Option<Arc<Pace>>,
}

impl Host {
    /// `register_rate`: registrations per second at most (0: unpaced), e.g. after a new
    /// session, when every node is created again.
    pub fn new(session: SessionHandle, layout: Layout, policy: Policy, register_rate: u32) -> Host {
        Host {
            session,
            layout,
            policy,
            active: Mutex::new(BTreeSet::new()),
            pace: Pace::per_second(register_rate).map(Arc::new),
        }
    }

    /// How many registrations are held now.
    pub fn registrations(&self) -> usize {
        self.active.lock().map_or(0, |a| a.len())
    }
}

/// Serves registrations on `socket` until `cancel`; then waits until every registration's node
/// is deleted (the caller bounds the wait).
pub async fn serve(socket: PrivateSocket, host: Arc<Host>, cancel: CancellationToken) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let stream = tokio::select! {
            _ = cancel.cancelled() => break,
            // Reap the finished ones as they go, so the set stays small.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = socket.listener().accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    debug!(error = %err, "host agent accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (host, cancel) = (host.clone(), cancel.clone());
        connections.spawn(async move {
            if let Err(err) = connection(stream, host, cancel).await {
                debug!(error = %err, "a registration's connection failed");
            }
        });
    }
    while connections.join_next().await.is_some() {}
}

/// One agent's registration, from its `register` to its end.
async fn connection(
    stream: UnixStream,
    host: Arc<Host>,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let peer = stream.peer_cred().ok();
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let refuse = |kind: &str, message: String| ToAgent::Failed {
        kind: kind.to_owned(),
        message,
        path: None,
        owner: None,
    };
    // Whoever registers here writes into ZooKeeper with the host agent's identity.
    if !peer.is_some_and(|c| trusted(c.uid())) {
        let uid = peer.map_or("unknown".to_owned(), |c| c.uid().to_string());
        warn!(uid, "refused a registration from another user");
        let message = format!(
            "the host agent registers only for its own user or root, not uid {uid}; run herald as that user"
        );
        return send(&mut write, &refuse("refused", message)).await;
    }
    let Some(ToHost::Register {
        service,
        id,
        generation,
        document,
        give_up_on_duplicate,
    }) = receive(&mut read).await?
    else {
        let message = "the first message must be a registration".to_owned();
        return send(&mut write, &refuse("refused", message)).await;
    };
    let instance = match admit(&service, &id, document.as_bytes()) {
        Ok(instance) => instance,
        Err(message) => return send(&mut write, &refuse("refused", message)).await,
    };
    let name = (instance.service.clone(), instance.id.clone());
    let claimed = host
        .active
        .lock()
        .map(|mut a| a.insert(name.clone()))
        .unwrap_or(false);
    if !claimed {
        // Another process holds it through this very session.
        let duplicate = ToAgent::Failed {
            kind: "duplicate".to_owned(),
            message: format!(
                "{service}/{id} is registered through this host agent by another process"
            ),
            path: Some(host.layout.instance(&instance.service, &instance.id)),
            owner: Some(host.session.live().client.session_id().0),
        };
        return send(&mut write, &duplicate).await;
    }
    let span = info_span!("host", service = %instance.service, id = %instance.id, pid = peer.and_then(|c| c.pid()).unwrap_or(0));
    let outcome = registration(
        &mut read,
        &mut write,
        &host,
        (&instance, document.into_bytes(), generation),
        give_up_on_duplicate,
        cancel,
    )
    .instrument(span)
    .await;
    if let Ok(mut active) = host.active.lock() {
        active.remove(&name);
    }
    outcome
}

/// The instance an agent asks to register, checked: valid names, and a document that is that
/// instance's (the node's path comes from the host agent's own root).
fn admit(service: &str, id: &str, document: &[u8]) -> Result<Instance, String> {
    let service: ServiceName = service.parse().map_err(|e| format!("{e}"))?;
    let id: InstanceId = id.parse().map_err(|e| format!("{e}"))?;
    Instance::from_json(service, id, document).map_err(|e| format!("{e}"))
}

/// Runs the registrar for one agent and relays between them.
async fn registration(
    read: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
    write: &mut tokio::net::unix::OwnedWriteHalf,
    host: &Host,
    (instance, document, generation): (&Instance, Vec<u8>, u64),
    give_up_on_duplicate: bool,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let node = Node::at(&host.layout, instance, document.clone(), host.policy);
    // Not wanted until the agent says so (its checks decide).
    let (wanted_tx, wanted_rx) = watch::channel(false);
    let (document_tx, document_rx) = watch::channel(Document {
        generation,
        bytes: document.into(),
    });
    let (status_tx, mut status_rx) = watch::channel(Status {
        registered: Registered::No,
        wanted: false,
        document: 0,
        left: None,
    });
    // Why the node goes: when not wanted, what the agent said; at the end, how it ended.
    let reasons = Arc::new(Mutex::new((Departure::Unhealthy, Departure::Exited)));
    let why: Why = Arc::new({
        let reasons = reasons.clone();
        move |exiting| {
            let (not_wanted, ending) = *reasons.lock().unwrap_or_else(|e| e.into_inner());
            if exiting { ending } else { not_wanted }
        }
    });
    let negotiated = host.session.live().client.session_timeout();
    let wait = give_up_on_duplicate.then(|| duplicate_wait(negotiated));
    let registrar_cancel = CancellationToken::new();
    let mut registrar = tokio::spawn({
        let (session, node, cancel) =
            (host.session.clone(), node.clone(), registrar_cancel.clone());
        let wanted = Wanted {
            now: wanted_rx,
            why,
            pace: host.pace.clone(),
        };
        async move {
            maintain(
                &session,
                &node,
                wanted,
                document_rx,
                status_tx,
                wait,
                cancel,
            )
            .await
        }
        .in_current_span()
    });
    info!(path = %node.path, "registration handed over");
    let telemetry = host.session.telemetry();
    let (service, id) = (instance.service.as_str(), instance.id.as_str());
    let mut was = Registered::No;
    let set_ending = |why: Departure| {
        if let Ok(mut r) = reasons.lock() {
            r.1 = why;
        }
    };
    // How the relay ends: answer `Stopped` (asked to stop) or not (the agent is gone).
    let answer_stopped = loop {
        tokio::select! {
            _ = cancel.cancelled() => {
                set_ending(Departure::Stopped);
                break false;
            }
            ended = &mut registrar => {
                let failed = match ended {
                    Ok(Err(err)) => failure(&err),
                    _ => ToAgent::Failed {
                        kind: "error".to_owned(),
                        message: "the host agent's registrar ended".to_owned(),
                        path: None,
                        owner: None,
                    },
                };
                telemetry.registration_ended(service, id);
                return send(write, &failed).await;
            }
            changed = status_rx.changed() => {
                if changed.is_err() {
                    continue;
                }
                let now = *status_rx.borrow_and_update();
                if now.registered != was {
                    match now.registered {
                        Registered::Yes => telemetry.registered(service, id, true),
                        Registered::No => telemetry.deregistered(service, id, now.left.map_or("session_lost", Departure::as_str)),
                    }
                    was = now.registered;
                }
                let status = ToAgent::Status {
                    registered: now.registered == Registered::Yes,
                    wanted: now.wanted,
                    document: now.document,
                    left: now.left.map(|d| d.as_str().to_owned()),
                };
                if send(write, &status).await.is_err() {
                    set_ending(Departure::Exited);
                    break false;
                }
            }
            message = receive::<_, ToHost>(read) => match message {
                Ok(Some(ToHost::Wanted { now, why })) => {
                    if let Ok(mut r) = reasons.lock() {
                        r.0 = Departure::named(&why);
                    }
                    wanted_tx.send_replace(now);
                }
                Ok(Some(ToHost::Document { generation, document })) => {
                    match admit(instance.service.as_str(), instance.id.as_str(), document.as_bytes()) {
                        Ok(_) => {
                            document_tx.send_replace(Document { generation, bytes: document.into_bytes().into() });
                        }
                        Err(why) => warn!(error = %why, "ignored a document that is not this instance's"),
                    }
                }
                Ok(Some(ToHost::Stop { why })) => {
                    set_ending(Departure::named(&why));
                    break true;
                }
                Ok(Some(ToHost::Register { .. })) => {
                    warn!("ignored a second registration on one connection");
                }
                // The process ended without saying so (or said something unreadable).
                Ok(None) | Err(_) => {
                    set_ending(Departure::Exited);
                    break false;
                }
            },
        }
    };
    registrar_cancel.cancel();
    let _ = registrar.await;
    telemetry.registration_ended(service, id);
    if answer_stopped {
        send(write, &ToAgent::Stopped).await?;
    }
    Ok(())
}

/// The message for a registration that failed for good.
fn failure(err: &AnnounceError) -> ToAgent {
    let (kind, path, owner) = match err {
        AnnounceError::Duplicate { path, owner } => ("duplicate", Some(path.clone()), Some(*owner)),
        AnnounceError::Persistent { path } => ("persistent", Some(path.clone()), None),
        _ => ("error", None, None),
    };
    ToAgent::Failed {
        kind: kind.to_owned(),
        message: err.to_string(),
        path,
        owner,
    }
}
