//! `herald host`: the host agent. One ZooKeeper session for every service process on this
//! machine that registers with `--host-agent SOCKET`; each keeps its own health checks and
//! drain, the host agent keeps their nodes.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use herald::announce::{self, relay};
use herald::local_socket::{PrivateSocket, SocketError};
use herald::telemetry::Telemetry;
use herald::zk::Session;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::announce::DEREGISTER_GRACE;
use super::metrics::MetricsArgs;
use super::{Outcome, ZkArgs};

#[derive(Args, Debug)]
#[command(after_help = "\
Examples:
  herald host --socket /run/herald/host.sock &
  herald announce --host-agent /run/herald/host.sock --service pg --port 5432 --check tcp
  herald run --service pg --port 5432 --host-agent /run/herald/host.sock -- postgres

Every registration made through the socket is an instance node of this process's one session:
exactly the node the process would have made itself (Curator-compatible, ephemeral). A process
that ends without stopping has its node deleted (recorded as exited). SIGTERM/SIGINT delete
every node (recorded as stopped), then close the session; if the host agent dies, its nodes go
with its session, and the processes register again once a host agent answers. Only processes
of this user (or root) may register: the socket is 0600 in a directory only this user may
write.")]
pub struct HostArgs {
    #[command(flatten)]
    pub metrics: MetricsArgs,
    /// The socket processes register through (default: host.sock in the control directory,
    /// /run/herald as root).
    #[arg(long, env = "HERALD_HOST_SOCKET", value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Registrations per second at most (each a few ZooKeeper requests): after a new session
    /// every node is created again, and after an ensemble-wide loss every host does it at once.
    /// 0: as fast as ZooKeeper answers.
    #[arg(
        long,
        env = "HERALD_REGISTER_RATE",
        value_name = "N",
        default_value_t = 0
    )]
    pub register_rate: u32,
}

pub async fn run(zk: &ZkArgs, args: HostArgs) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let target = zk.target()?;
    let path = args
        .socket
        .unwrap_or_else(|| announce::default_control_dir().join("host.sock"));
    let socket = PrivateSocket::bind(&path).map_err(|err| match err {
        SocketError::InUse { .. } => anyhow::Error::from(Outcome::Usage(format!(
            "--socket {}: another host agent answers on it; stop it or pick another path",
            path.display()
        ))),
        err => anyhow::Error::new(err).context(format!(
            "cannot listen on --socket {}; pick another path",
            path.display()
        )),
    })?;
    let telemetry = Telemetry::new("host");
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    args.metrics.start(&telemetry, &cancel).await?;
    let session = tokio::select! {
        session = Session::open(target.config.clone(), &telemetry, cancel.clone()) => session?,
        _ = term.recv() => return Ok(()),
        _ = int.recv() => return Ok(()),
    };
    let host = Arc::new(relay::host::Host::new(
        session.handle(),
        target.values.layout().clone(),
        target.values.policy(),
        args.register_rate,
    ));
    info!(socket = %path.display(), "host agent: registering the processes of this machine");
    let serving = CancellationToken::new();
    let server = tokio::spawn(relay::host::serve(socket, host.clone(), serving.clone()));
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    let held = host.registrations();
    serving.cancel();
    if tokio::time::timeout(DEREGISTER_GRACE, server)
        .await
        .is_err()
    {
        warn!(
            registrations = held,
            "not every instance node was confirmed deleted within {}; they go when the session ends",
            humantime::format_duration(DEREGISTER_GRACE)
        );
    }
    session.close().await;
    Ok(())
}
