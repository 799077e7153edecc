//! `herald gateway`: the single-machine case — a local HTTP daemon through which containers
//! POST and GET values, backed by ZooKeeper.

use herald::telemetry::Telemetry;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use std::sync::{Arc, OnceLock};

use herald::gateway::{self, Address, Backend, Guard, Limits, Listener, Mirror, Token};
use herald::last_known::LastKnown;
use herald::local_socket::SocketError;
use herald::values::MAX_VALUE_LEN;
use herald::zk::{Session, ZkConfig};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use super::last_known::CacheArgs;
use super::{Outcome, ZkArgs, parse_duration};

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  herald gateway                                  listen on 127.0.0.1:7070
  herald gateway --listen unix:/run/herald/gateway/gateway.sock
                                                  a socket only this user (and root) may use
  curl --unix-socket /run/herald/gateway/gateway.sock http://gateway/environment/DATABASE_URL
  openssl rand -hex 32 > token && chmod 600 token
  herald gateway --listen 172.17.0.1:7070 --token-file token
                                                  for containers on a bridge network
  curl -X POST -H \"Authorization: Bearer $TOKEN\" --data-binary \"postgresql://app@$HOST/app\" \\
       http://$GATEWAY/environment/DATABASE_URL
  curl -H \"Authorization: Bearer $TOKEN\" 'http://$GATEWAY/environment/DATABASE_URL?wait=30s'
                                                  wait until published (504 after)
  curl -H \"Authorization: Bearer $TOKEN\" http://$GATEWAY/services/pg     the instances, as JSON

Routes: GET/HEAD/POST/PUT/DELETE /environment/KEY, GET /environment, GET /services,
GET /services/SERVICE[?metadata=1], GET /live, GET /ready (200 while connected to ZooKeeper).
Values are stored exactly as sent (use --data-binary: curl -d strips newlines) and never logged.
With a token (--token-file or HERALD_GATEWAY_TOKEN) every route but /live and /ready needs
`Authorization: Bearer TOKEN` (401 without); an address other than loopback needs one.
Instance metadata is left out unless ?metadata=1, which needs a token.
A value read once is served from memory, kept current by a watch (Cache-Control: no-cache reads
ZooKeeper). While ZooKeeper cannot be reached (also at start), GETs are answered from memory or
the last known values (--cache DIR) with an Age header; past --max-stale, 503.")]
pub struct GatewayArgs {
    /// Address to listen on (HOST:PORT, or unix:PATH for a socket only this user and root may
    /// use); other than loopback or a socket only with a token.
    #[arg(long, env = "HERALD_GATEWAY_LISTEN", default_value = "127.0.0.1:7070")]
    pub listen: String,
    /// File holding the bearer token requests must present (HERALD_GATEWAY_TOKEN holds it
    /// directly).
    #[arg(long, env = "HERALD_GATEWAY_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Connections served at once; more wait until one ends.
    #[arg(long, env = "HERALD_GATEWAY_MAX_CONNECTIONS", value_name = "N",
          default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub max_connections: u32,
    /// How long a request head may take, from the connection's opening or its previous
    /// response (so also how long a kept-alive connection may idle).
    #[arg(long, env = "HERALD_GATEWAY_HEADER_TIMEOUT", value_name = "DURATION",
          default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,
    /// How long a request body may take once its head has arrived (408 after).
    #[arg(long, env = "HERALD_GATEWAY_BODY_TIMEOUT", value_name = "DURATION",
          default_value = "30s", value_parser = parse_duration)]
    pub body_timeout: Duration,
    /// Bytes of request bodies held at once across all uploads (503 past it), e.g. 64MiB.
    #[arg(long, env = "HERALD_GATEWAY_UPLOAD_BUDGET", value_name = "SIZE",
          default_value = "64MiB", value_parser = gateway::parse_size)]
    pub upload_budget: usize,
    #[command(flatten)]
    pub cache: CacheArgs,
}

/// The longest token file read.
const MAX_TOKEN_FILE: usize = 8192;

impl GatewayArgs {
    /// The token from --token-file, else HERALD_GATEWAY_TOKEN, else none.
    fn token(&self) -> anyhow::Result<Option<Token>> {
        if let Some(file) = &self.token_file {
            let text = herald::input::read_text("--token-file", file, MAX_TOKEN_FILE)
                .map_err(|e| Outcome::Usage(e.to_string()))?;
            let token = Token::parse(&text).map_err(|why| {
                Outcome::Usage(format!("--token-file {}: the token {why}", file.display()))
            })?;
            herald::input::warn_if_others_can_read(
                file,
                "--token-file",
                "read and write every value through the gateway",
            );
            return Ok(Some(token));
        }
        match std::env::var("HERALD_GATEWAY_TOKEN") {
            Ok(text) if !text.is_empty() => Token::parse(&text).map(Some).map_err(|why| {
                Outcome::Usage(format!("HERALD_GATEWAY_TOKEN: the token {why}")).into()
            }),
            _ => Ok(None),
        }
    }

    /// The validated configuration: address, token, limits.
    fn validate(&self) -> anyhow::Result<(Address, Guard)> {
        let address: Address = self
            .listen
            .parse()
            .map_err(|why| Outcome::Usage(format!("--listen {why}")))?;
        let token = self.token()?;
        if token.is_none() && !address.is_local() {
            return Err(Outcome::Usage(format!(
                "--listen {} is reachable from other hosts and containers: require a token with --token-file FILE (or HERALD_GATEWAY_TOKEN), or listen on 127.0.0.1 or unix:PATH",
                self.listen
            ))
            .into());
        }
        if self.upload_budget < MAX_VALUE_LEN {
            return Err(Outcome::Usage(format!(
                "--upload-budget {} is less than one value may be ({MAX_VALUE_LEN} bytes); give at least 1MiB",
                self.upload_budget
            ))
            .into());
        }
        let limits = Limits {
            max_connections: self.max_connections as usize,
            header_timeout: self.header_timeout,
            body_timeout: self.body_timeout,
            upload_budget: self.upload_budget,
        };
        Ok((address, Guard { limits, token }))
    }
}

pub async fn run(zk_args: &ZkArgs, args: GatewayArgs) -> anyhow::Result<()> {
    let (address, guard) = args.validate()?;
    let target = zk_args.target()?;
    if guard.token.is_none() && matches!(address, Address::Tcp(_)) {
        tracing::warn!(
            "no token: every local user and process can read and write values through the gateway; set --token-file or HERALD_GATEWAY_TOKEN, or listen on unix:PATH"
        );
    }
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    // Bound before connecting: a port in use is reported at once.
    let listener = Listener::bind(&address).await.map_err(|err| match err {
        SocketError::Io { .. } => anyhow::Error::new(err)
            .context(format!("cannot listen on {}; pick another --listen", args.listen)),
        SocketError::InUse { .. } => Outcome::Usage(format!(
            "--listen {}: another live process answers on it; stop it or pick another path",
            args.listen
        ))
        .into(),
        SocketError::Unsafe { .. } => Outcome::Usage(format!(
            "--listen {}: {err}: another user could answer in the gateway's place; use a directory only this user (or root) owns and can write, e.g. chmod 700 it",
            args.listen
        ))
        .into(),
    })?;
    let cache = args.cache.open(target.values.layout(), true)?;
    let cancel = CancellationToken::new();
    let telemetry = Telemetry::new("gateway");
    let backend = Backend {
        telemetry: telemetry.clone(),
        values: target.values.clone(),
        session: Arc::new(OnceLock::new()),
        mirror: Arc::new(Mirror::default()),
        cache: cache.clone(),
        max_stale: args.cache.max_stale,
        read_timeout: target.config.session_timeout,
    };
    // Serving starts at once: until ZooKeeper answers, GETs are answered from the last known
    // values (with their age), and the rest is 503.
    let connecting = tokio::spawn(connect(
        target.config.clone(),
        telemetry,
        backend.clone(),
        cache,
        cancel.clone(),
    ));
    let serving = gateway::serve(listener, backend, guard, cancel.clone());
    tokio::pin!(serving);
    tokio::select! {
        _ = &mut serving => {}
        _ = term.recv() => { cancel.cancel(); serving.await; }
        _ = int.recv() => { cancel.cancel(); serving.await; }
    }
    cancel.cancel();
    if let Ok(Some(session)) = connecting.await {
        session.close().await;
    }
    Ok(())
}

/// Establishes the gateway's session (trying again until `cancel` while ZooKeeper cannot be
/// reached), then keeps its values in memory current.
async fn connect(
    config: ZkConfig,
    telemetry: Telemetry,
    backend: Backend,
    cache: Option<LastKnown>,
    cancel: CancellationToken,
) -> Option<Session> {
    let mut said = false;
    let session = loop {
        let attempt = tokio::select! {
            _ = cancel.cancelled() => return None,
            attempt = Session::open(config.clone(), &telemetry, cancel.clone()) => attempt,
        };
        match attempt {
            Ok(session) => break session,
            Err(err) if err.is_unreachable() => {
                if !said {
                    tracing::warn!(
                        "{err}; answering GETs from the last known values meanwhile, and trying again"
                    );
                    said = true;
                }
            }
            Err(err) => {
                tracing::error!("{}; trying again", herald::report::one_line(&err.into()));
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return None,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    };
    if said {
        tracing::info!("reached ZooKeeper");
    }
    let handle = session.handle();
    let _ = backend.session.set(handle.clone());
    tokio::spawn(gateway::mirror::follow(
        backend.mirror.clone(),
        handle,
        backend.values.layout().clone(),
        cache,
        cancel,
    ));
    Some(session)
}
