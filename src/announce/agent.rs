//! A running registration: the session, the health checks, the drain switch (signals and the
//! control socket) and the registrar, started together and stopped in order — checks stop, the
//! node is deleted, then the session is closed.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span, warn};

use super::control::Control;
use super::document::{Drain, Switch};
use super::node::Node;
use super::registrar::{Registered, Status, maintain};
use super::{AnnounceError, all_of, duplicate_wait};
use crate::departure::Departure;
use crate::health::{self, Check, Policy, Target};
use crate::instance::{DocumentError, Instance};
use crate::layout::Layout;
use crate::reaper::Reaper;
use crate::telemetry::Telemetry;
use crate::zk::{Session, ZkConfig};

/// Everything a registration needs, validated.
pub struct Plan {
    pub zk: ZkConfig,
    /// Where herald's znodes live (for the start-up ACL check).
    pub layout: Layout,
    pub instance: Instance,
    pub node: Node,
    pub checks: Vec<Check>,
    pub policy: Policy,
    /// Where the control socket goes; `None` for no socket.
    pub control_dir: Option<PathBuf>,
    /// The environment exec checks run with.
    pub env: BTreeMap<OsString, OsString>,
    /// At the first registration, give up (exit 8) when another session keeps holding the id;
    /// otherwise wait for it as long as it takes.
    pub give_up_on_duplicate: bool,
    /// Where the session, the checks and the registration report.
    pub telemetry: Telemetry,
    /// Register through the host agent at this socket instead of a session of our own.
    pub via: Option<PathBuf>,
}

/// A session established for a plan (none through a host agent), not yet registering.
pub struct Connected {
    plan: Plan,
    session: Option<Session>,
    cancel: CancellationToken,
}

/// A registration in progress.
pub struct Agent {
    /// `None` when registering through a host agent.
    session: Option<Session>,
    /// Ends the registrar (which then deletes the node).
    registrar_cancel: CancellationToken,
    /// `None` once it has ended with an error (taken by [`Agent::failed`]).
    registrar: Option<tokio::task::JoinHandle<Result<(), AnnounceError>>>,
    /// Ends the checks and the control socket.
    cancel: CancellationToken,
    switch: Arc<Switch>,
    status: watch::Receiver<Status>,
    /// Why the registration ends, for the departure record (set by whoever ends it).
    ending: Arc<Mutex<Departure>>,
}

impl Agent {
    /// Establishes the session (within the connect timeout); registering starts with
    /// [`Connected::start`].
    ///
    /// # Notable errors
    /// [`AnnounceError::Zk`] when ZooKeeper cannot be reached.
    /// Through a host agent there is no session to establish: the host agent has one.
    pub async fn connect(plan: Plan) -> Result<Connected, AnnounceError> {
        let cancel = CancellationToken::new();
        if plan.via.is_some() {
            return Ok(Connected {
                plan,
                session: None,
                cancel,
            });
        }
        let session = Session::open(plan.zk.clone(), &plan.telemetry, cancel.clone()).await?;
        if let Some(auth) = &plan.zk.auth {
            let client = session.handle().live().client;
            crate::acl::warn_if_open(&client, &plan.layout, plan.node.policy, auth.user()).await;
        }
        Ok(Connected {
            plan,
            session: Some(session),
            cancel,
        })
    }
}

impl Connected {
    /// Starts the checks, the control socket and registration.
    pub fn start(self, reaper: Arc<Reaper>) -> Agent {
        let Connected {
            plan,
            session,
            cancel,
        } = self;
        let span = info_span!("announce", service = %plan.instance.service, id = %plan.instance.id);
        let (service, id) = (plan.instance.service.as_str(), plan.instance.id.as_str());

        let healthy = health::monitor(
            plan.checks,
            Target {
                address: plan.instance.address.clone(),
                port: plan.instance.port.unwrap_or(0),
            },
            plan.policy,
            Arc::new(plan.env),
            reaper,
            plan.telemetry.checks_of(service, id),
            cancel.clone(),
        );
        let switch = Switch::new(plan.instance.clone(), plan.node.data.clone());
        let (status_tx, status) = watch::channel(Status {
            registered: Registered::No,
            wanted: false,
            document: 0,
            left: None,
        });
        if let Some(dir) = &plan.control_dir {
            match Control::bind(dir, &plan.instance.service, &plan.instance.id) {
                Ok(control) => {
                    tokio::spawn(
                        control
                            .serve(switch.clone(), status.clone(), cancel.clone())
                            .instrument(span.clone()),
                    );
                }
                Err(err) => warn!("{err}; `herald drain` will not reach this agent"),
            }
        }
        let serving = switch.serving();
        let wanted = all_of(vec![healthy, serving.clone()]);
        let ending = Arc::new(Mutex::new(Departure::Stopped));
        let why: super::Why = Arc::new({
            let ending = ending.clone();
            move |exiting| {
                if exiting {
                    *ending.lock().unwrap_or_else(|e| e.into_inner())
                } else if !*serving.borrow() {
                    Departure::Drained
                } else {
                    Departure::Unhealthy
                }
            }
        });
        tokio::spawn(report(
            plan.telemetry.clone(),
            (service.to_owned(), id.to_owned()),
            status.clone(),
            switch.clone(),
        ));
        let registrar_cancel = CancellationToken::new();
        let registrar = tokio::spawn({
            let node = plan.node;
            let document = switch.document();
            let cancel = registrar_cancel.clone();
            let session = session.as_ref().map(Session::handle);
            let (service, id) = (plan.instance.service.clone(), plan.instance.id.clone());
            let (via, give_up) = (plan.via, plan.give_up_on_duplicate);
            let configured = plan.zk.session_timeout;
            async move {
                let wanted = super::Wanted {
                    now: wanted,
                    why,
                    pace: None,
                };
                let result = match (session, via) {
                    (Some(session), _) => {
                        let negotiated = session.live().client.session_timeout();
                        let wait = give_up.then(|| duplicate_wait(configured.max(negotiated)));
                        maintain(&session, &node, wanted, document, status_tx, wait, cancel).await
                    }
                    (None, Some(socket)) => {
                        super::relay::agent::register(
                            &socket,
                            (&service, &id),
                            wanted,
                            document,
                            status_tx,
                            give_up,
                            cancel,
                        )
                        .await
                    }
                    (None, None) => Ok(()),
                };
                if let Err(err) = &result {
                    tracing::error!("{err}");
                }
                result
            }
            .instrument(span)
        });
        Agent {
            session,
            registrar_cancel,
            registrar: Some(registrar),
            cancel,
            switch,
            status,
            ending,
        }
    }
}

impl Agent {
    /// Drains (softly: weight 0; or out: deregistered) or serves again.
    pub fn drain(&self, drain: Drain) {
        self.switch
            .set_drain(drain, crate::instance::DrainNote::default());
    }

    /// New metadata (declared again): the node is rewritten in place. `Ok(false)` when it is
    /// the same as before.
    pub fn set_meta(&self, meta: BTreeMap<String, String>) -> Result<bool, DocumentError> {
        self.switch.set_meta(meta)
    }

    /// The wanted state, shared with the control socket.
    pub fn switch(&self) -> Arc<Switch> {
        self.switch.clone()
    }

    /// Follows whether the node exists.
    pub fn status(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// Deletes the node for good (no re-registration after this), waiting at most `grace`;
    /// `why` goes into the departure record. Used before a stop signal is passed on, so no
    /// client is sent here once it stops.
    pub async fn deregister(
        &mut self,
        grace: Duration,
        why: Departure,
    ) -> Result<(), AnnounceError> {
        if self.registrar.is_some() {
            *self.ending.lock().unwrap_or_else(|e| e.into_inner()) = why;
        }
        self.registrar_cancel.cancel();
        let Some(registrar) = self.registrar.take() else {
            return Ok(());
        };
        match tokio::time::timeout(grace, registrar).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Ok(()),
            Err(_) => {
                warn!(
                    "the instance node was not confirmed deleted within {}; it goes when the session ends",
                    humantime::format_duration(grace)
                );
                Ok(())
            }
        }
    }

    /// Resolves only if registration failed for good (e.g. a duplicate id).
    pub async fn failed(&mut self) -> AnnounceError {
        if let Some(registrar) = &mut self.registrar {
            let ended = registrar.await;
            self.registrar = None;
            if let Ok(Err(err)) = ended {
                return err;
            }
        }
        std::future::pending().await
    }

    /// Deletes the node (before anything else: clients stop being sent here first), stops the
    /// checks and closes the session, waiting at most `grace` for the deletion; `why` goes into
    /// the departure record unless [`Agent::deregister`] came first.
    pub async fn stop(mut self, grace: Duration, why: Departure) -> Result<(), AnnounceError> {
        let outcome = self.deregister(grace, why).await;
        self.cancel.cancel();
        if let Some(session) = self.session {
            session.close().await;
        }
        outcome
    }
}

/// Follows the registration for the telemetry: registered or not (and why it went: the
/// departure's reason, or a lost session), and the drain state, until the registrar ends.
async fn report(
    telemetry: Telemetry,
    (service, id): (String, String),
    mut status: watch::Receiver<Status>,
    switch: Arc<Switch>,
) {
    let mut was = Registered::No;
    telemetry.registered(&service, &id, false);
    loop {
        let now = *status.borrow_and_update();
        if now.registered != was {
            match now.registered {
                Registered::Yes => telemetry.registered(&service, &id, true),
                Registered::No => {
                    let reason = now.left.map_or("session_lost", Departure::as_str);
                    telemetry.deregistered(&service, &id, reason);
                }
            }
            was = now.registered;
        }
        let (drain, note) = (switch.drain(), switch.note());
        let drained = match drain {
            Drain::Serving => None,
            Drain::Soft => Some("soft"),
            Drain::Out => Some("out"),
        };
        telemetry.drained(&service, &id, drained, note.reason.as_deref());
        if status.changed().await.is_err() {
            return;
        }
    }
}
