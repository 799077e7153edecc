//! `herald announce --service S --port P …`: the sidecar. Registers one service process as an
//! ephemeral instance while its checks pass, until SIGTERM/SIGINT. Also the registration flags
//! that `herald run --service` shares.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use herald::announce::{self, Agent, Drain, Node, Plan, Switch};
use herald::departure::Departure;
use herald::harness::{self, Limits};
use herald::health::{Check, Policy};
use herald::instance::{Instance, UriSpec};
use herald::layout::{EnvKey, InstanceId, ServiceName};
use herald::reaper::Reaper;
use herald::telemetry::Telemetry;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use super::metrics::MetricsArgs;
use super::{Outcome, ZkArgs, pairs, parse_duration, without_credentials};

/// How long deregistration may take at shutdown before herald exits anyway (the session's close
/// removes the node too).
pub const DEREGISTER_GRACE: Duration = Duration::from_secs(5);

/// What to register and when it is healthy.
#[derive(Debug, Clone, Args)]
pub struct RegistrationArgs {
    #[command(flatten)]
    pub metrics: MetricsArgs,
    /// Service name to register under (<root>/services/SERVICE).
    #[arg(long, env = "HERALD_SERVICE", value_name = "SERVICE")]
    pub service: Option<String>,
    /// The service's port.
    #[arg(long, env = "HERALD_PORT", value_name = "PORT")]
    pub port: Option<u16>,
    /// Address clients use (default: the address this host reaches ZooKeeper from; else a
    /// running interface's, not loopback, bridge or link-local, IPv4 first).
    #[arg(long, env = "HERALD_ADDRESS", value_name = "HOST")]
    pub address: Option<String>,
    /// Instance id (default: HOSTNAME-PORT, stable across restarts of the container).
    #[arg(long, env = "HERALD_ID", value_name = "ID")]
    pub id: Option<String>,
    /// Metadata entry (repeatable). Arguments are visible in `ps`: put secrets in --meta-file
    /// or /export instead.
    #[arg(long = "meta", value_name = "KEY=VALUE")]
    pub meta: Vec<String>,
    /// Metadata from a JSON object of strings.
    #[arg(long, value_name = "FILE")]
    pub meta_file: Option<PathBuf>,
    /// Label for selection, e.g. role=primary (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Named extra port, e.g. metrics=9187 (repeatable).
    #[arg(long = "endpoint", value_name = "NAME=PORT")]
    pub endpoints: Vec<String>,
    /// Relative weight for load balancing (0: registered, but send nothing).
    #[arg(long, default_value_t = 1)]
    pub weight: u32,
    /// TLS port (Curator's sslPort).
    #[arg(long, value_name = "PORT")]
    pub ssl_port: Option<u16>,
    /// Curator URI template, e.g. '{scheme}://{address}:{port}'.
    #[arg(long, value_name = "TEMPLATE")]
    pub uri_spec: Option<String>,
    /// Health check (repeatable): tcp, tcp:PORT, tcp:HOST:PORT, http://HOST:PORT/PATH
    /// [contains=TEXT], exec:COMMAND. Registered only while all pass.
    #[arg(long = "check", value_name = "CHECK")]
    pub checks: Vec<String>,
    /// How often each check runs.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub check_interval: Duration,
    /// A check running longer fails.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub check_timeout: Duration,
    /// Consecutive passes that make a failing check healthy.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    pub rise: u32,
    /// Consecutive failures that make a healthy check fail.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    pub fall: u32,
    /// Directory for the control socket `herald drain` uses (default /run/herald as root).
    #[arg(long, env = "HERALD_CONTROL_DIR", value_name = "DIR")]
    pub control_dir: Option<PathBuf>,
    /// Register through the host agent (`herald host`) listening on SOCKET, over its one
    /// ZooKeeper session, instead of opening a session of this process's own.
    #[arg(long, env = "HERALD_HOST_AGENT", value_name = "SOCKET")]
    pub host_agent: Option<PathBuf>,
}

impl RegistrationArgs {
    /// Validates everything into a [`Plan`] before any connection: bad input is exit 2.
    /// `declared` is the /export metadata; flags override it.
    pub fn plan(
        &self,
        zk: &ZkArgs,
        declared: BTreeMap<EnvKey, String>,
        env: BTreeMap<OsString, OsString>,
        telemetry: &Telemetry,
    ) -> anyhow::Result<Plan> {
        let usage = |msg: String| anyhow::Error::from(Outcome::Usage(msg));
        let service: ServiceName = self
            .service
            .as_deref()
            .ok_or_else(|| usage("give --service".to_owned()))?
            .parse()?;
        let port = self
            .port
            .ok_or_else(|| usage("give --port, the service's port".to_owned()))?;
        if port == 0 {
            return Err(usage(
                "--port 0 is no port clients can reach; give the port the service listens on"
                    .to_owned(),
            ));
        }
        let address = match &self.address {
            Some(a) if !a.trim().is_empty() => a.trim().to_owned(),
            Some(_) => return Err(usage("--address is empty".to_owned())),
            None => announce::default_address(zk.target()?.config.connect.hosts())
                .map(|ip| ip.to_string())
                .ok_or_else(|| {
                    usage(
                        "no address to advertise found (no route to ZooKeeper off loopback, no running interface but loopback, bridges and link-local); give --address"
                            .to_owned(),
                    )
                })?,
        };
        // Clients must reach what is advertised: a typo would register an instance every
        // consumer fails on (a config check then refuses each value holding it).
        if let Err(err) = std::net::ToSocketAddrs::to_socket_addrs(&(address.as_str(), port)) {
            return Err(usage(format!(
                "--address {address} does not resolve ({err}); give a host name or IP address clients can reach"
            )));
        }
        let id: InstanceId = match &self.id {
            Some(id) => id.parse()?,
            None => announce::hostname()
                .and_then(|h| announce::default_id(&h, port))
                .ok_or_else(|| {
                    usage("cannot derive an id from the host name; give --id".to_owned())
                })?,
        };
        let mut instance = Instance::new(service, id, address, port);
        instance.ssl_port = self.ssl_port;
        instance.weight = self.weight;
        if let Some(spec) = &self.uri_spec {
            instance.uri_spec = Some(UriSpec::parse(spec).map_err(|e| usage(e.to_string()))?);
        }
        instance.meta = self.metadata(declared)?;
        instance.labels = pairs("--label", &self.labels)?;
        for (name, port) in pairs("--endpoint", &self.endpoints)? {
            let port = port.parse::<u16>().map_err(|_| {
                usage(format!(
                    "--endpoint {name}={port}: not a port number; write NAME=PORT, e.g. metrics=9187"
                ))
            })?;
            instance.endpoints.insert(name, port);
        }
        let checks = self
            .checks
            .iter()
            .map(|c| c.parse::<Check>().map_err(|e| usage(e.to_string())))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let target = zk.target()?;
        if target.config.auth.is_none() {
            let secret = herald::instance::secret_looking(instance.meta.keys());
            if !secret.is_empty() {
                tracing::warn!(
                    "meta {} looks secret, and without ZooKeeper credentials the instance node is readable (and writable) by every ZooKeeper client; set HERALD_ZK_AUTH or HERALD_ZK_AUTH_FILE",
                    secret.join(", ")
                );
            }
        }
        let node = Node::of(target.values.layout(), &instance, target.values.policy())
            .map_err(|e| usage(e.to_string()))?;
        Ok(Plan {
            layout: target.values.layout().clone(),
            zk: target.config,
            instance,
            node,
            checks,
            policy: Policy {
                interval: self.check_interval,
                timeout: self.check_timeout,
                rise: self.rise,
                fall: self.fall,
            },
            control_dir: Some(
                self.control_dir
                    .clone()
                    .unwrap_or_else(announce::default_control_dir),
            ),
            // Checks need no ZooKeeper credentials.
            env: without_credentials(env),
            give_up_on_duplicate: true,
            telemetry: telemetry.clone(),
            via: self.host_agent.clone(),
        })
    }
}

impl RegistrationArgs {
    /// The metadata: /export's outputs, then --meta-file, then --meta (later ones win).
    pub fn metadata(
        &self,
        declared: BTreeMap<EnvKey, String>,
    ) -> anyhow::Result<BTreeMap<String, String>> {
        let mut meta: BTreeMap<String, String> = declared
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        if let Some(file) = &self.meta_file {
            meta.extend(read_meta_file(file)?);
        }
        meta.extend(pairs("--meta", &self.meta)?);
        Ok(meta)
    }
}

/// How SIGHUP declares the metadata again: /export run as at start, then --meta-file and --meta.
pub struct Redeclare {
    /// The /export directory and whether it was given explicitly (a missing default is empty).
    pub export: Option<(PathBuf, bool)>,
    pub env: BTreeMap<OsString, OsString>,
    pub limits: Limits,
    pub registration: RegistrationArgs,
    /// One declaration at a time, in the order the signals came.
    pub running: tokio::sync::Mutex<()>,
}

impl Redeclare {
    /// Declares again in the background (stop signals are not held up by the scripts).
    pub fn spawn(self: &Arc<Self>, switch: Arc<Switch>) {
        let this = self.clone();
        tokio::spawn(async move { this.run(&switch).await });
    }

    /// Declares again and rewrites the instance node in place when the metadata changed; on any
    /// failure the node keeps what it says (nothing half-declared is registered).
    pub async fn run(&self, switch: &Switch) {
        let _one = self.running.lock().await;
        let registration = &self.registration;
        let declared = match &self.export {
            Some((dir, explicit)) => {
                harness::declare(dir, *explicit, &self.env, self.limits.clone()).await
            }
            None => Ok(BTreeMap::new()),
        };
        let meta = declared
            .map_err(anyhow::Error::from)
            .and_then(|declared| registration.metadata(declared));
        let outcome = meta.and_then(|meta| Ok(switch.set_meta(meta)?));
        match outcome {
            Ok(true) => tracing::info!(
                "SIGHUP: metadata declared again; the instance node is rewritten in place"
            ),
            Ok(false) => tracing::info!("SIGHUP: metadata declared again, unchanged"),
            Err(err) => tracing::error!(
                "SIGHUP: {}; the instance keeps the metadata it has",
                herald::report::one_line(&err)
            ),
        }
    }
}

fn read_meta_file(file: &std::path::Path) -> anyhow::Result<BTreeMap<String, String>> {
    let bad = |why: String| Outcome::Usage(format!("--meta-file {}: {why}", file.display()));
    let text = herald::input::read("--meta-file", file, herald::input::MAX_FLAG_FILE)
        .map_err(|e| Outcome::Usage(e.to_string()))?;
    let value: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|e| bad(format!("not JSON ({e}); write an object of strings")))?;
    let serde_json::Value::Object(map) = value else {
        return Err(bad("not a JSON object; write {\"key\": \"value\", …}".to_owned()).into());
    };
    map.into_iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => Ok((k, s)),
            _ => Err(bad(format!("the value of {k:?} is not a string; quote it")).into()),
        })
        .collect()
}

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  herald announce --service pg --port 5432 --check exec:'pg_isready -q' --label role=primary
  herald announce --service api --port 8080 --check http://127.0.0.1:8080/health --meta-file meta.json
  herald announce --service api --port 8080 --export-dir /export    (/export outputs become meta)

Registers <root>/services/SERVICE/ID as an ephemeral znode while every --check passes (at once
without checks). SIGUSR1 or `herald drain` deregisters and keeps running; `herald drain --soft`
keeps it registered with weight 0; SIGUSR2 or `herald undrain` registers again. SIGHUP runs
/export again (and rereads --meta-file) and rewrites the node in place when the metadata changed
(credential rotation); a failing declaration leaves the node as it was. SIGTERM/SIGINT deletes the
node, then exits 0. A node with this id held by
another live session is never taken: exit 8 after waiting twice the session timeout for it to go
(connected: the wait starts over after a lost connection).")]
pub struct AnnounceArgs {
    #[command(flatten)]
    pub registration: RegistrationArgs,
    /// Run this /export directory first (bootstrap, then declarations); outputs become metadata.
    #[arg(long, value_name = "DIR")]
    pub export_dir: Option<PathBuf>,
    /// Kill an /export script (its whole process group) after this long.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub script_timeout: Duration,
}

pub async fn run(zk: &ZkArgs, args: AnnounceArgs) -> anyhow::Result<()> {
    // Installed first: a stop signal during start-up ends herald cleanly, never half-registered.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let mut usr2 = signal(SignalKind::user_defined2())?;
    let mut hup = signal(SignalKind::hangup())?;
    let env: BTreeMap<OsString, OsString> = std::env::vars_os().collect();
    // Before the first declaration: as PID 1 it reaps every child, scripts included.
    let reaper = Arc::new(Reaper::start().context("cannot watch for child processes")?);
    let redeclare = Arc::new(Redeclare {
        export: args.export_dir.clone().map(|dir| (dir, true)),
        env,
        limits: Limits {
            script_timeout: args.script_timeout,
            reaper: Some(reaper.clone()),
        },
        registration: args.registration,
        running: tokio::sync::Mutex::new(()),
    });
    let declared = match &redeclare.export {
        Some((dir, explicit)) => {
            harness::declare(dir, *explicit, &redeclare.env, redeclare.limits.clone()).await?
        }
        None => BTreeMap::new(),
    };
    let telemetry = Telemetry::new("announce");
    let plan = redeclare
        .registration
        .plan(zk, declared, redeclare.env.clone(), &telemetry)?;
    let serving = CancellationToken::new();
    let _stop_serving = serving.clone().drop_guard();
    redeclare
        .registration
        .metrics
        .start(&telemetry, &serving)
        .await?;
    let mut agent = tokio::select! {
        connected = Agent::connect(plan) => connected?.start(reaper),
        _ = term.recv() => return Ok(()),
        _ = int.recv() => return Ok(()),
    };
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = usr1.recv() => {
                tracing::info!("drained by SIGUSR1");
                agent.drain(Drain::Out);
            }
            _ = usr2.recv() => {
                tracing::info!("undrained by SIGUSR2");
                agent.drain(Drain::Serving);
            }
            _ = hup.recv() => redeclare.spawn(agent.switch()),
            err = agent.failed() => return Err(err.into()),
        }
    }
    agent.stop(DEREGISTER_GRACE, Departure::Stopped).await?;
    Ok(())
}
