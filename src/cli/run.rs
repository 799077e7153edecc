//! `herald run [OPTIONS] -- CMD [ARGS…]`: build the environment from /environment, run the
//! /export declarations, then replace herald with CMD, or supervise it when herald must stay.

use std::ffi::OsString;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use herald::announce::{Agent, Registered};
use herald::departure::Departure;
use herald::harness::{self, Limits};
use herald::reaper::Reaper;
use herald::telemetry::Telemetry;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

use super::announce::{DEREGISTER_GRACE, Redeclare, RegistrationArgs};
use super::harness::HarnessArgs;
use super::{ZkArgs, env, parse_duration, parse_duration_or_zero};

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  herald run -- /usr/local/bin/app --port 8080
  herald run --env-dir /etc/app/shared --env-dir /environment -- app
  ENTRYPOINT [\"herald\", \"run\", \"--\"]     (Dockerfile; CMD follows)

Each file in an /environment directory names a variable: an executable prints its value (one
trailing newline is removed), a plain file holds it. Entries run in byte order of their names,
each seeing the variables set before it. Then /export/bootstrap and each /export declaration run.
herald then replaces itself with CMD (exec), so CMD gets signals and its exit code is the
container's. CMD not found: exit 127; not executable: exit 126; an entry failed: exit 7.

With --supervise herald stays as CMD's parent: CMD runs in its own process group; SIGTERM,
SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2 and SIGWINCH are forwarded to it; as PID 1 herald reaps
every orphaned zombie; herald exits with CMD's code (128+N when CMD died of signal N). A SIGTERM or
SIGINT arriving --kill-timeout after the first kills CMD's process group.

Entries and /export declarations see herald's ZooKeeper identity (HERALD_ZK_AUTH,
HERALD_ZK_AUTH_FILE, HERALD_ZK_TLS_CERT, HERALD_ZK_TLS_KEY); CMD does not, unless an entry sets
one.

With --service (and --port; every `herald announce` option applies) herald supervises CMD and
registers it once it runs and its checks pass, with the /export outputs as metadata. The first
SIGTERM/SIGINT deregisters, waits --stop-delay (2s) so consumers stop sending work, and only then
is forwarded; when CMD exits the node is deleted before herald exits with CMD's code. Drain with `herald drain` (SIGUSR1/SIGUSR2 go to CMD). SIGHUP goes to CMD
and also runs /export again: changed metadata is rewritten into the node in place.

  herald run --service api --port 8080 --check http://127.0.0.1:8080/health -- api-server")]
pub struct RunArgs {
    #[command(flatten)]
    pub harness: HarnessArgs,
    /// Print the environment (as `herald env` does) instead of running CMD.
    #[arg(long)]
    pub print_env: bool,
    /// Stay as CMD's parent (forward signals, reap zombies) instead of replacing herald with it.
    #[arg(long, env = "HERALD_SUPERVISE", value_parser = clap::builder::BoolishValueParser::new())]
    pub supervise: bool,
    /// Under --supervise: a SIGTERM/SIGINT this long after the first one sends SIGKILL.
    #[arg(long, value_name = "DURATION", env = "HERALD_KILL_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub kill_timeout: Duration,
    /// Under --service: after the first SIGTERM/SIGINT has deregistered the instance, wait this
    /// long before passing the signal on, so consumers stop sending work first (a director's
    /// wait, a reload of HAProxy or pgpool). 0s passes it on at once.
    #[arg(long, value_name = "DURATION", env = "HERALD_STOP_DELAY", default_value = "2s", value_parser = parse_duration_or_zero)]
    pub stop_delay: Duration,
    #[command(flatten)]
    pub registration: RegistrationArgs,
    /// The command and its arguments.
    #[arg(
        value_name = "CMD",
        trailing_var_arg = true,
        required_unless_present = "print_env"
    )]
    pub cmd: Vec<OsString>,
}

pub async fn run(zk: &ZkArgs, args: RunArgs) -> anyhow::Result<ExitCode> {
    let registering = args.registration.service.is_some();
    // Before the entries run, so a stop signal meanwhile is kept for CMD rather than ending
    // herald with CMD unstarted.
    let mut signals = if args.supervise || registering {
        Some(harness::Signals::install()?)
    } else {
        None
    };
    let prepared = args.harness.prepare().await?;
    if args.print_env {
        env::print(&prepared, false, false)?;
        return Ok(ExitCode::SUCCESS);
    }
    let Some((cmd, rest)) = args.cmd.split_first() else {
        return Err(super::Outcome::Usage("give the command to run after --".to_owned()).into());
    };
    let Some(signals) = &mut signals else {
        if args.registration.metrics.metrics_listen.is_some() {
            return Err(super::Outcome::Usage(
                "--metrics-listen needs --service or --supervise: otherwise herald becomes CMD (exec) and serves nothing".to_owned(),
            )
            .into());
        }
        tracing::debug!(vars = prepared.resolved.vars.len(), "starting the command");
        return Err(harness::exec(cmd, rest, &prepared.resolved.for_command()).into());
    };
    // Validated and connected before CMD starts: bad flags or an unreachable ZooKeeper leave
    // CMD unstarted.
    let telemetry = Telemetry::new("run");
    let serving = CancellationToken::new();
    let _stop_serving = serving.clone().drop_guard();
    let connected = if registering {
        let mut plan = args.registration.plan(
            zk,
            prepared.export.clone(),
            prepared.resolved.env.clone(),
            &telemetry,
        )?;
        args.registration
            .metrics
            .start(&telemetry, &serving)
            .await?;
        // CMD runs meanwhile: wait for a duplicate to go rather than give up.
        plan.give_up_on_duplicate = false;
        Some(Agent::connect(plan).await?)
    } else {
        args.registration
            .metrics
            .start(&telemetry, &serving)
            .await?;
        None
    };
    let reaper = Arc::new(Reaper::start()?);
    let redeclare = Arc::new(Redeclare {
        export: Some(args.harness.export_location()),
        env: prepared.resolved.env.clone(),
        limits: Limits {
            reaper: Some(reaper.clone()),
            ..args.harness.limits()
        },
        registration: args.registration.clone(),
        running: tokio::sync::Mutex::new(()),
    });
    tracing::debug!(vars = prepared.resolved.vars.len(), "starting the command");
    let child = harness::spawn(&reaper, cmd, rest, &prepared.resolved.for_command())?;
    let mut agent = connected.map(|connected| connected.start(reaper.clone()));
    let switch = agent.as_ref().map(Agent::switch);
    // SIGHUP reaches CMD (e.g. a server reloading its configuration) and declares the
    // metadata again.
    let after_forward = |sig| {
        if sig == libc::SIGHUP
            && let Some(switch) = &switch
        {
            redeclare.spawn(switch.clone());
        }
    };
    let stop_delay = args.stop_delay;
    let deregister = async {
        if let Some(agent) = &mut agent {
            let was_registered = agent.status().borrow().registered == Registered::Yes;
            if let Err(err) = agent.deregister(DEREGISTER_GRACE, Departure::Stopped).await {
                tracing::warn!("{err}");
            }
            // Consumers learn of the deregistration through ZooKeeper, a director and a
            // reload: until then they may still send work here.
            if was_registered && !stop_delay.is_zero() {
                tracing::info!(
                    "deregistered; passing the stop signal on in {}",
                    humantime::format_duration(stop_delay)
                );
                tokio::time::sleep(stop_delay).await;
            }
        }
    };
    let ended = child
        .wait(signals, args.kill_timeout, deregister, after_forward)
        .await;
    tracing::debug!(?ended, "the command ended");
    // Whatever happened to the registration, herald exits with CMD's code. Not deregistered
    // before: CMD ended by itself.
    if let Some(agent) = agent
        && let Err(err) = agent.stop(DEREGISTER_GRACE, Departure::Exited).await
    {
        tracing::warn!("{err}");
    }
    Ok(ExitCode::from(ended.exit_code()))
}
