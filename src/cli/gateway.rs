//! `herald gateway`: the single-machine case — a local HTTP daemon through which containers
//! POST and GET values, backed by ZooKeeper.

use std::net::SocketAddr;

use anyhow::Context;
use clap::Args;
use herald::gateway::{self, Backend};
use herald::zk::Session;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use super::{Outcome, ZkArgs};

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  herald gateway                                  listen on 127.0.0.1:7070
  herald gateway --listen 0.0.0.0:7070            for containers on a bridge network
  curl -X POST --data-binary \"postgresql://app@$HOST/app\" http://$GATEWAY/environment/DATABASE_URL
  curl http://$GATEWAY/environment/DATABASE_URL
  curl 'http://$GATEWAY/environment/DATABASE_URL?wait=30s'     wait until published (504 after)
  curl http://$GATEWAY/services/pg                            the instances, as JSON

Routes: GET/POST/PUT/DELETE /environment/KEY, GET /environment, GET /services,
GET /services/SERVICE, GET /live, GET /ready (200 while connected to ZooKeeper). Values are stored
exactly as sent (use --data-binary: curl -d strips newlines) and never logged. No authentication:
bind it where only trusted containers reach it.")]
pub struct GatewayArgs {
    /// Address to listen on.
    #[arg(long, env = "HERALD_GATEWAY_LISTEN", default_value = "127.0.0.1:7070")]
    pub listen: String,
}

pub async fn run(zk_args: &ZkArgs, args: GatewayArgs) -> anyhow::Result<()> {
    let addr: SocketAddr = args.listen.parse().map_err(|_| {
        Outcome::Usage(format!(
            "--listen {}: write an address and port, e.g. 127.0.0.1:7070",
            args.listen
        ))
    })?;
    let target = zk_args.target()?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    // Bound before connecting: a port in use is reported at once.
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}; pick another --listen"))?;
    let cancel = CancellationToken::new();
    let session = Session::open(target.config.clone(), cancel.clone()).await?;
    let backend = Backend {
        values: target.values.clone(),
        session: session.handle(),
    };
    let serving = gateway::serve(listener, backend, cancel.clone());
    tokio::pin!(serving);
    tokio::select! {
        _ = &mut serving => {}
        _ = term.recv() => { cancel.cancel(); serving.await; }
        _ = int.recv() => { cancel.cancel(); serving.await; }
    }
    session.close().await;
    Ok(())
}
