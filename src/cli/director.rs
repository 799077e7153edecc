//! `herald director`: derive values from the live instances and publish them, as one of any
//! number of directors (one leader per output).

use super::metrics::MetricsArgs;
use herald::telemetry::Telemetry;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use herald::director::config::{self, Output, OutputSpec};
use herald::director::run::{Director, run as run_director};
use herald::zk::Session;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use super::{Outcome, ZkArgs, pairs, without_credentials};

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  herald director --config /etc/herald/director.toml
  herald director --config director.toml --check-config      validate and exit
  herald director --service pg --key PGPOOL_BACKENDS --preset pgpool
  herald director --service memcache --key MEMCACHE_SERVERS --preset hostports --wait 100ms:1s
  herald director --service pg --key DATABASE_URL --preset url \\
      --url 'postgresql://app@{address}:{port}/app' --select role=primary
  herald director --service api --key API_HOSTS --template '{% for i in instances %}{{ i.address }} {% endfor %}'

Every output is led by one director at a time (ephemeral-sequential election under
<root>/directors/KEY); its writes are fenced, so a paused old leader can never overwrite. A value
is published only when its bytes change. Fewer instances than --min-instances (default 1) keep the
last value unless --allow-empty. Logs name the key and a digest of the value, never the value.")]
pub struct DirectorArgs {
    #[command(flatten)]
    pub metrics: MetricsArgs,
    /// Configuration file (TOML) with one [[output]] table per published key (the one-output
    /// flags below are refused with it: say them in the file).
    #[arg(long, value_name = "FILE", conflicts_with_all = [
        "key", "service", "select", "template", "template_file", "preset", "url", "exec",
        "exec_timeout", "min_instances", "allow_empty", "check", "max_drop", "drop_confirm",
        "drop_window", "removal_delay", "max_value", "wait", "settle",
    ])]
    pub config: Option<PathBuf>,
    /// Validate the configuration and exit.
    #[arg(long)]
    pub check_config: bool,
    /// One output: the key to publish.
    #[arg(long, value_name = "KEY", requires = "service")]
    pub key: Option<String>,
    /// One output: a service to read (repeatable).
    #[arg(long, value_name = "SERVICE")]
    pub service: Vec<String>,
    /// One output: only instances with this label (repeatable, all must match).
    #[arg(long, value_name = "KEY=VALUE")]
    pub select: Vec<String>,
    /// One output: a minijinja template over `instances`.
    #[arg(long, value_name = "TEMPLATE", group = "derivation")]
    pub template: Option<String>,
    /// One output: a template file.
    #[arg(long, value_name = "FILE", group = "derivation")]
    pub template_file: Option<PathBuf>,
    /// One output: hostports, url, json, pgpool, pool_passwd or haproxy.
    #[arg(long, value_name = "PRESET", group = "derivation")]
    pub preset: Option<String>,
    /// With --preset url: the URL, e.g. 'postgresql://app@{address}:{port}/app'.
    #[arg(long, value_name = "FORMAT")]
    pub url: Option<String>,
    /// One output: a program that reads the instances (JSON) on stdin and prints the value.
    #[arg(long, value_name = "COMMAND", group = "derivation")]
    pub exec: Option<String>,
    /// Bound on --exec [default: 10s].
    #[arg(long, value_name = "DURATION")]
    pub exec_timeout: Option<String>,
    /// Keep the last value while fewer instances are registered [default: 1].
    #[arg(long, value_name = "N")]
    pub min_instances: Option<usize>,
    /// Publish even with no instances.
    #[arg(long)]
    pub allow_empty: bool,
    /// A program that gets the new value on stdin and must exit 0 for it to be published.
    #[arg(long, value_name = "COMMAND")]
    pub check: Option<String>,
    /// Hold a value that loses more than this share of the instances, not counting those stopped
    /// or drained on purpose (default 50%; 100% turns the guard off)…
    #[arg(long, value_name = "PERCENT")]
    pub max_drop: Option<String>,
    /// …until the drop has lasted this long (default 30s)…
    #[arg(long, value_name = "DURATION")]
    pub drop_confirm: Option<String>,
    /// …measured against the most instances within this window (default 5m).
    #[arg(long, value_name = "DURATION")]
    pub drop_window: Option<String>,
    /// Keep an instance whose node vanished without a deregistration (a lost session, maybe a
    /// blip) in the value this long, unless it comes back first. Default 0s: removed at once.
    #[arg(long, value_name = "DURATION")]
    pub removal_delay: Option<String>,
    /// Hold a value larger than this many bytes (e.g. 512KiB) instead of publishing it.
    /// Default: what a znode takes, 1 MiB − 1 KiB (ZooKeeper's jute.maxbuffer, less headers).
    #[arg(long, value_name = "SIZE")]
    pub max_value: Option<String>,
    /// Debounce: quiet period (of this output's own services), or QUIET:MAX (e.g. 100ms:1s).
    /// Default 0: publish at once.
    #[arg(long, value_name = "DURATION[:DURATION]")]
    pub wait: Option<String>,
    /// After leading begins and after a reconnect or new session: publish once the instances
    /// were quiet this long, or QUIET:MAX. Default 1s:10s; 0s turns it off.
    #[arg(long, value_name = "DURATION[:DURATION]")]
    pub settle: Option<String>,
    /// Re-list every instance this often, under the watches, as a safety net.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = super::parse_duration)]
    pub reconcile: Duration,
    /// Spread leadership over the directors: each output is led by the director whose
    /// identity (host and pid) scores highest with its key, so each leads about its share and
    /// one that goes away moves only its own outputs. `off`: whoever joined first leads.
    #[arg(long, value_name = "on|off", env = "HERALD_SPREAD", default_value = "on", action = clap::ArgAction::Set, hide_possible_values = true, value_parser = clap::builder::BoolishValueParser::new())]
    pub spread: bool,
    /// ZooKeeper requests per second of the whole instance listings (at start, after a
    /// reconnect or a new session), so that directors listing at once after an outage do not
    /// flood the ensemble. 0: as fast as ZooKeeper answers.
    #[arg(
        long,
        value_name = "N",
        env = "HERALD_RELIST_RATE",
        default_value_t = 0
    )]
    pub relist_rate: u32,
    /// ZooKeeper requests per second of the reconcile (--reconcile): a pass over many
    /// instances takes longer than the interval rather than reading faster. 0: unpaced.
    #[arg(
        long,
        value_name = "N",
        env = "HERALD_RECONCILE_RATE",
        default_value_t = 1000
    )]
    pub reconcile_rate: u32,
}

impl DirectorArgs {
    /// The outputs, validated: from --config, or the one output the flags describe.
    fn outputs(&self) -> anyhow::Result<Vec<Output>> {
        let usage = |e: config::ConfigError| anyhow::Error::from(Outcome::Usage(e.to_string()));
        if let Some(file) = &self.config {
            let text = herald::input::read_text("--config", file, herald::input::MAX_FLAG_FILE)
                .map_err(|e| Outcome::Usage(e.to_string()))?;
            return config::parse(&text, file).map_err(usage);
        }
        let Some(key) = &self.key else {
            return Err(Outcome::Usage(
                "give --config FILE, or --key KEY --service SERVICE and one of --template, --template-file, --preset, --exec".to_owned(),
            )
            .into());
        };
        let select = pairs("--select", &self.select)?;
        let spec = OutputSpec {
            key: key.clone(),
            service: None,
            services: Some(self.service.clone()),
            select,
            template: self.template.clone(),
            template_file: self.template_file.clone(),
            preset: self.preset.clone(),
            exec: self.exec.clone(),
            url: self.url.clone(),
            exec_timeout: self.exec_timeout.clone(),
            min_instances: self.min_instances,
            allow_empty: Some(self.allow_empty),
            check: self.check.clone(),
            max_drop: self.max_drop.clone(),
            drop_confirm: self.drop_confirm.clone(),
            drop_window: self.drop_window.clone(),
            removal_delay: self.removal_delay.clone(),
            max_value: self.max_value.clone(),
            wait: self.wait.clone(),
            settle: self.settle.clone(),
            slots: None,
        };
        Ok(vec![
            spec.validate(Path::new("the command line"))
                .map_err(usage)?,
        ])
    }
}

pub async fn run(zk_args: &ZkArgs, args: DirectorArgs) -> anyhow::Result<()> {
    let outputs = args.outputs()?;
    if args.check_config {
        for output in &outputs {
            println!("{}: ok", output.key);
        }
        return Ok(());
    }
    let target = zk_args.target()?;
    if target.config.auth.is_none() {
        for output in &outputs {
            if matches!(
                output.derivation,
                herald::director::derive::Derivation::Preset(
                    herald::director::preset::Preset::PoolPasswd
                )
            ) {
                tracing::warn!(
                    "output {} (pool_passwd) publishes password hashes, and without ZooKeeper credentials every ZooKeeper client can read them; set HERALD_ZK_AUTH or HERALD_ZK_AUTH_FILE",
                    output.key
                );
            }
        }
    }
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let env = without_credentials(std::env::vars_os());
    let identity = format!(
        "{} {}",
        herald::announce::hostname().unwrap_or_default(),
        std::process::id()
    );
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    let telemetry = Telemetry::new("director");
    args.metrics.start(&telemetry, &cancel).await?;
    let session = Session::open(target.config.clone(), &telemetry, cancel.clone()).await?;
    if let Some(auth) = &target.config.auth {
        let client = session.handle().live().client;
        herald::acl::warn_if_open(
            &client,
            target.values.layout(),
            target.values.policy(),
            auth.user(),
        )
        .await;
    }
    let mut hup = signal(SignalKind::hangup())?;
    // The configuration file as last applied: SIGHUP applies it again only when it changed.
    let read_config = || {
        args.config
            .as_ref()
            .and_then(|f| herald::input::read("--config", f, herald::input::MAX_FLAG_FILE).ok())
    };
    let mut applied = read_config();
    let mut outputs = outputs;
    let outcome = loop {
        // Each configuration runs under a token of its own: a new one resigns the old leaders
        // (standbys take over meanwhile) and campaigns again.
        let run_cancel = cancel.child_token();
        let director = Director {
            outputs: std::mem::take(&mut outputs),
            values: target.values.clone(),
            env: env.clone(),
            identity: identity.clone(),
            reconcile: args.reconcile,
            spread: args.spread,
            relist_rate: args.relist_rate,
            reconcile_rate: args.reconcile_rate,
            telemetry: telemetry.clone(),
        };
        let running = run_director(session.handle(), director, run_cancel.clone());
        tokio::pin!(running);
        let stop = loop {
            tokio::select! {
                ended = &mut running => break Some(ended),
                _ = term.recv() => break None,
                _ = int.recv() => break None,
                _ = hup.recv() => {
                    let Some(file) = &args.config else {
                        tracing::info!("SIGHUP: there is no --config to read again; the outputs stay as they are");
                        continue;
                    };
                    let now = read_config();
                    if now == applied {
                        tracing::info!(config = %file.display(), "SIGHUP: the configuration is unchanged");
                        continue;
                    }
                    match args.outputs() {
                        Ok(new) => {
                            tracing::info!(config = %file.display(), outputs = new.len(), "SIGHUP: applying the changed configuration (leaders resign and campaign again)");
                            applied = now;
                            outputs = new;
                            run_cancel.cancel();
                            let _ = tokio::time::timeout(Duration::from_secs(5), &mut running).await;
                            break Some(Ok(()));
                        }
                        Err(err) => tracing::error!("SIGHUP: {}; the running configuration stays", herald::report::one_line(&err)),
                    }
                }
            }
        };
        match stop {
            // Restarting with the new outputs.
            Some(Ok(())) if !outputs.is_empty() => continue,
            Some(ended) => break ended,
            None => {
                // Leaders resign, so standbys take over at once rather than after a session
                // timeout.
                cancel.cancel();
                break tokio::time::timeout(Duration::from_secs(5), running)
                    .await
                    .unwrap_or(Ok(()));
            }
        }
    };
    cancel.cancel();
    session.close().await;
    Ok(outcome?)
}
