//! `herald watch KEY`: follow a published value; print each new value, or render it into a file
//! atomically, check it, and reload the program that reads it.

use super::metrics::MetricsArgs;
use herald::telemetry::Telemetry;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use herald::first::first_of;
use herald::layout::EnvKey;
use herald::watch::haproxy::Haproxy;
use herald::watch::pgpool::Pgpool;
use herald::watch::{Applied, Applies, Embed, FileTarget, OutFile, Program};
use herald::zk::Session;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use super::last_known::{self, CacheArgs};
use super::{Outcome, ZkArgs, parse_duration, parse_key, without_credentials};

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  herald watch PGPOOL_BACKENDS --out /etc/pgpool2/backends.conf --reload 'pgpool reload'
  herald watch HAPROXY_SERVERS --out /etc/haproxy/haproxy.cfg --template haproxy.cfg.j2 \\
      --check 'haproxy -c -q -f \"$1\"' --reload 'systemctl reload haproxy'
  herald watch DATABASE_URL                 print each new value, one per line (-0: NUL-separated)
  herald watch DATABASE_URL --out db.url --once
  herald watch PGPOOL_BACKENDS --out pgpool.conf --template pgpool.conf.j2   ({{ value }} inside)
  herald watch PGPOOL_BACKENDS PGPOOL_SR_CHECK --out pgpool.conf --template pgpool.conf.j2
      ({{ values.PGPOOL_SR_CHECK }} too; the file is written once every key is published)
  herald watch HAPROXY_SERVERS --out haproxy.cfg --template haproxy.cfg.j2 \\
      --check 'haproxy -c -q -f \"$1\"' --reload 'kill -USR2 \"$(cat haproxy.pid)\"' \\
      --haproxy /run/haproxy/admin.sock --haproxy-backend web
  PCPPASSFILE=/etc/pgpool2/pcppass herald watch PGPOOL_BACKENDS --out /etc/pgpool2/pgpool.conf \\
      --template pgpool.conf.j2 --pgpool 127.0.0.1:9898 --pcp-user pcpadmin

At start and on every change the value is written to a file staged beside FILE (fsynced, with
FILE's mode and owner, or --mode when new), --check runs on it (its path is $1), and only if it
passes does it replace FILE by rename; then --reload runs, once per change, and --verify after it.
A value that cannot be written or fails its check leaves FILE as it was and is reported. A reload
(or --verify) that fails puts back the last file that reloaded and reloads it, then tries the new
value again with back-off (1s, 2s, … 32s); --once exits 1 saying whether the rollback worked. A
deleted key keeps the last file. Waits for the key when it is not published yet.

Each value read is kept in the last known values (--cache DIR, HERALD_CACHE; by default
/var/cache/herald for root, ~/.cache/herald otherwise; --no-cache to turn off). When ZooKeeper
cannot be reached at start, FILE is written from them (a warning says how old they are; exit 9
with --once past --max-stale), and watch follows ZooKeeper once it answers.

With --pgpool, a reload is followed by making pgpool's node table match the file: configured
backends pgpool holds down are attached, backends no longer configured are detached, and
what still differs (a new address for a loaded backend needs a pgpool restart) is an error,
retried. Without --reload, pgpool is reloaded with pcp_reload_config. This also runs at start and
every --sync-every, so a pgpool restarted with a stale pgpool_status is corrected. The PCP
password is read by the PCP tools from PCPPASSFILE (or --pcp-passfile, or ~/.pcppass).

With --haproxy, a change of the servers of --haproxy-backend is made through HAProxy's admin
socket instead of a reload: added servers are added and enabled, removed ones drained (their
sessions may last up to --haproxy-drain) and deleted, addresses and weights set, and HAProxy's
`show servers state` must then match FILE. --reload runs only when that cannot be done (another
option of a server changed, an option HAProxy refuses at runtime such as cookie or init-addr,
the socket failed). This also runs at start and every --sync-every, so a HAProxy started from an
older file, or changed by hand, is corrected.")]
pub struct WatchArgs {
    #[command(flatten)]
    pub metrics: MetricsArgs,
    /// The key to follow; with --template, more keys may follow ({{ values.KEY }}).
    #[arg(required = true, value_name = "KEY")]
    pub keys: Vec<String>,
    /// Write each value to this file (atomically) instead of printing it.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Run on the staged file ($1) before it replaces FILE; non-zero keeps the old file.
    #[arg(long, value_name = "COMMAND", requires = "out")]
    pub check: Option<String>,
    /// Run after FILE was replaced (once per change).
    #[arg(long, value_name = "COMMAND", requires = "out")]
    pub reload: Option<String>,
    /// Run after each reload (e.g. a health probe of the reloaded program); non-zero counts as
    /// a failed reload.
    #[arg(long, value_name = "COMMAND", requires = "reload")]
    pub verify: Option<String>,
    /// Bound on each --check, --reload and --verify run.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub command_timeout: Duration,
    /// Mode of FILE when herald creates it (an existing file keeps its own); no set-id, sticky or
    /// world-writable bits.
    #[arg(long, value_name = "OCTAL", default_value = "600", value_parser = parse_mode)]
    pub mode: u32,
    /// Write FILE even in a directory group or others may write that is not herald's user's
    /// (they could swap the file between writes).
    #[arg(long, requires = "out")]
    pub allow_shared_dir: bool,
    /// Embed the value in this minijinja template ({{ value }}, {{ key }}, {{ values.KEY }} for
    /// every key) before writing FILE.
    #[arg(long, value_name = "FILE", requires = "out")]
    pub template: Option<PathBuf>,
    /// Handle the current value (waiting for it if need be), then exit.
    #[arg(long)]
    pub once: bool,
    /// Keep this pgpool's node table equal to FILE, through its PCP port.
    #[arg(long, value_name = "HOST:PORT", requires = "out")]
    pub pgpool: Option<String>,
    /// The PCP user (default: the PCP tools' own, the OS user's name).
    #[arg(long, value_name = "USER", requires = "pgpool")]
    pub pcp_user: Option<String>,
    /// The PCP password file (host:port:user:password, mode 600); default $PCPPASSFILE.
    #[arg(long, value_name = "FILE", requires = "pgpool")]
    pub pcp_passfile: Option<PathBuf>,
    /// Keep the servers of HAProxy's --haproxy-backend equal to FILE through this admin stats
    /// socket, without reloads (--reload only when a change cannot be made so).
    #[arg(long, value_name = "SOCKET", requires_all = ["out", "haproxy_backend"], conflicts_with = "pgpool")]
    pub haproxy: Option<PathBuf>,
    /// The backend (or listen section) of FILE whose servers --haproxy keeps; may be repeated.
    #[arg(long, value_name = "NAME", requires = "haproxy")]
    pub haproxy_backend: Vec<String>,
    /// How long a removed HAProxy server may keep its sessions before they are shut.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration, requires = "haproxy")]
    pub haproxy_drain: Duration,
    /// How often to check pgpool's node table or HAProxy's servers against FILE between changes.
    #[arg(long, alias = "pgpool-every", value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub sync_every: Duration,
    /// Separate printed values with NUL instead of newline.
    #[arg(short = '0', long = "null", conflicts_with = "out")]
    pub null: bool,
    #[command(flatten)]
    pub cache: CacheArgs,
}

fn parse_mode(s: &str) -> Result<u32, String> {
    let mode = u32::from_str_radix(s, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| "write an octal file mode such as 600 or 644".to_owned())?;
    if mode & 0o7000 != 0 {
        return Err(format!(
            "{mode:o} has set-id or sticky bits, which a config file has no use for; write e.g. 600 or 640"
        ));
    }
    if mode & 0o002 != 0 {
        return Err(format!(
            "{mode:o} lets anyone change the file; write e.g. 600 or 644"
        ));
    }
    Ok(mode)
}

pub async fn run(zk_args: &ZkArgs, args: WatchArgs) -> anyhow::Result<()> {
    let keys = args
        .keys
        .iter()
        .map(|k| parse_key(k))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if keys.len() > 1 && args.template.is_none() {
        return Err(Outcome::Usage(
            "several keys go into one file through --template (each is {{ values.KEY }}); give --template, or watch one key".to_owned(),
        )
        .into());
    }
    let target = zk_args.target()?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let env = without_credentials(std::env::vars_os());
    let embed = match &args.template {
        Some(file) => {
            let origin = file.display().to_string();
            let text = herald::input::read_text("--template", file, herald::input::MAX_FLAG_FILE)
                .map_err(|e| Outcome::Usage(e.to_string()))?;
            let embed = Embed::compile(text, &origin).map_err(|e| Outcome::Usage(e.to_string()))?;
            Some((embed, origin))
        }
        None => None,
    };
    let program = match (&args.pgpool, &args.haproxy) {
        (Some(addr), _) => Some(Program::Pgpool(pgpool_target(addr, &args, &env)?)),
        (None, Some(socket)) => Some(Program::Haproxy(haproxy_target(socket, &args)?)),
        (None, None) => None,
    };
    // A symlink is followed once, here: the file it points to is the one replaced.
    let out = args
        .out
        .as_ref()
        .map(|path| OutFile::open(path, args.mode, args.allow_shared_dir))
        .transpose()
        .map_err(|e| Outcome::Usage(e.to_string()))?;
    let mut file = out.map(|out| FileTarget {
        out,
        check: args.check.clone(),
        reload: args.reload.clone(),
        verify: args.verify.clone(),
        last_good: None,
        command_timeout: args.command_timeout,
        env,
        reload_owed: false,
        program,
        applies: Applies::default(),
    });
    let mut resync = tokio::time::interval(args.sync_every);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first check is one period from now: the first value's apply checks the program too.
    resync.reset();
    let syncing = (args.pgpool.is_some() || args.haproxy.is_some()) && !args.once;
    let cache = args.cache.open(target.values.layout(), true)?;
    let telemetry = Telemetry::new("watch");
    let watched = file
        .as_ref()
        .map_or_else(|| "-".to_owned(), |f| f.path().display().to_string());
    telemetry.watching(&watched, keys.iter().map(ToString::to_string).collect());
    let serving = CancellationToken::new();
    let _stop_serving = serving.clone().drop_guard();
    args.metrics.start(&telemetry, &serving).await?;
    let session = match Session::open(target.config.clone(), &telemetry, CancellationToken::new())
        .await
    {
        Ok(session) => session,
        Err(err) if err.is_unreachable() => {
            // The last known values, if every key has one: written now, followed once
            // ZooKeeper answers.
            let why = err.to_string();
            let mut kept = Vec::with_capacity(keys.len());
            for key in &keys {
                match last_known::fallback(cache.as_ref(), args.cache.max_stale, key, &why)? {
                    Some(cached) => {
                        let read_at = cached.read_at.duration_since(std::time::UNIX_EPOCH);
                        telemetry
                            .watch_read(&watched, Some(read_at.map_or(0.0, |d| d.as_secs_f64())));
                        kept.push(Some(cached.value))
                    }
                    None => return Err(err.into()),
                }
            }
            let content = render(&embed, &keys, &kept)?;
            deliver(file.as_mut(), &content, args.null, &telemetry).await?;
            if args.once {
                return Ok(());
            }
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = term.recv() => return Ok(()),
                    _ = int.recv() => return Ok(()),
                }
                match Session::open(target.config.clone(), &telemetry, CancellationToken::new())
                    .await
                {
                    Ok(session) => {
                        tracing::info!("reached ZooKeeper; following the values again");
                        break session;
                    }
                    Err(err) if err.is_unreachable() => {
                        tracing::debug!(error = %err, "ZooKeeper still cannot be reached");
                    }
                    Err(err) => return Err(err.into()),
                }
            }
        }
        Err(err) => return Err(err.into()),
    };
    let handle = session.handle();
    let values = &target.values;
    // Per key: the value each watch compares against (None: wait for it to exist), and the
    // last value seen (kept when the key is deleted).
    let mut known: Vec<Option<Vec<u8>>> = vec![None; keys.len()];
    let mut last: Vec<Option<Vec<u8>>> = vec![None; keys.len()];
    // After a failed delivery: the same value is tried again after a pause (a new one at once).
    let mut failures: u32 = 0;
    let mut delivered_any = false;
    let missing = |last: &[Option<Vec<u8>>]| {
        keys.iter()
            .zip(last)
            .find(|(_, v)| v.is_none())
            .map(|(k, _)| k.clone())
    };
    let outcome = loop {
        let changes = keys
            .iter()
            .zip(&known)
            .map(|(key, known)| Box::pin(values.next(&handle, key, known.as_deref())));
        let (next, index) = tokio::select! {
            changed = first_of(changes) => changed,
            _ = resync.tick(), if syncing && delivered_any => {
                if let Some(file) = file.as_mut()
                    && let Err(err) = file.resync().await
                {
                    tracing::error!("{}", herald::report::one_line(&anyhow::Error::from(err)));
                }
                continue;
            }
            _ = term.recv() => break stopped(args.once && !delivered_any, missing(&last)),
            _ = int.recv() => break stopped(args.once && !delivered_any, missing(&last)),
            // Apply again: read every key afresh, write the file if it differs, and reload
            // (and sync the program) even when it does not.
            _ = hup.recv() => {
                tracing::info!("SIGHUP: applying the current values again");
                if let Some(file) = file.as_mut() {
                    file.reload_owed = true;
                }
                known.iter_mut().for_each(|k| *k = None);
                continue;
            }
        };
        let value = match next {
            Ok(Some(value)) => {
                last_known::record(cache.as_ref(), &keys[index], Some(&value));
                telemetry.watch_read(&watched, None);
                value
            }
            Ok(None) => {
                last_known::record(cache.as_ref(), &keys[index], None);
                tracing::warn!(key = %keys[index], "the key was deleted; keeping the last value");
                known[index] = None;
                continue;
            }
            Err(err) => break Err(anyhow::Error::from(err)),
        };
        last[index] = Some(value.clone());
        if let Some(waiting) = missing(&last) {
            tracing::info!(key = %waiting, "waiting for {waiting} to be published before writing the file");
            known[index] = Some(value);
            continue;
        }
        let delivery = async {
            let content = render(&embed, &keys, &last)?;
            deliver(file.as_mut(), &content, args.null, &telemetry).await
        };
        let delivered = tokio::select! {
            delivered = delivery => delivered,
            _ = term.recv() => break stopped(args.once && !delivered_any, None),
            _ = int.recv() => break stopped(args.once && !delivered_any, None),
        };
        match delivered {
            Ok(()) => {
                known[index] = Some(value);
                failures = 0;
                delivered_any = true;
                if args.once {
                    break Ok(());
                }
            }
            Err(err) if args.once => break Err(err),
            Err(err) => {
                failures += 1;
                let pause = Duration::from_secs(1u64 << failures.min(6).saturating_sub(1));
                tracing::error!(
                    "{}; trying again in {}s",
                    herald::report::one_line(&err),
                    pause.as_secs()
                );
                // Known stays the old value, so the same value comes back after the pause.
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = term.recv() => break Ok(()),
                    _ = int.recv() => break Ok(()),
                }
            }
        }
    };
    session.close().await;
    outcome
}

/// `--pgpool HOST:PORT` and its companions, checked.
fn pgpool_target(
    addr: &str,
    args: &WatchArgs,
    env: &std::collections::BTreeMap<std::ffi::OsString, std::ffi::OsString>,
) -> anyhow::Result<Pgpool> {
    let usage = |why: &str| {
        Outcome::Usage(format!(
            "--pgpool {addr:?}: {why}; write the PCP address, e.g. 127.0.0.1:9898"
        ))
    };
    let (host, port) = addr.rsplit_once(':').ok_or_else(|| usage("no port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(usage("no host").into());
    }
    let port: u16 = port
        .parse()
        .map_err(|_| usage("the port is not a number"))?;
    let mut env = env.clone();
    if let Some(file) = &args.pcp_passfile {
        let meta = std::fs::metadata(file).map_err(|e| {
            Outcome::Usage(format!(
                "cannot read --pcp-passfile {}: {e}; check the path",
                file.display()
            ))
        })?;
        if !meta.is_file() {
            return Err(Outcome::Usage(format!(
                "--pcp-passfile {} is not a regular file",
                file.display()
            ))
            .into());
        }
        // The PCP tools silently ignore a password file others may read, then fail as if the
        // password were wrong.
        let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777;
        if mode & 0o077 != 0 {
            return Err(Outcome::Usage(format!(
                "--pcp-passfile {} has mode {mode:o}, and the PCP tools ignore a password file group or others can read; chmod 600 it",
                file.display()
            ))
            .into());
        }
        let path = std::fs::canonicalize(file).unwrap_or_else(|_| file.clone());
        env.insert("PCPPASSFILE".into(), path.into_os_string());
    }
    Ok(Pgpool {
        host: host.to_owned(),
        port,
        user: args.pcp_user.clone(),
        env,
        timeout: args.command_timeout,
        load_timeout: Duration::from_secs(10),
    })
}

/// `--haproxy SOCKET` and its companions, checked.
fn haproxy_target(socket: &std::path::Path, args: &WatchArgs) -> anyhow::Result<Haproxy> {
    for backend in &args.haproxy_backend {
        if backend.is_empty() || backend.chars().any(|c| c.is_whitespace() || c == '/') {
            return Err(Outcome::Usage(format!(
                "--haproxy-backend {backend:?} is not a backend name; write the name of a backend section of FILE"
            ))
            .into());
        }
    }
    Ok(Haproxy {
        socket: socket.to_owned(),
        backends: args.haproxy_backend.clone(),
        drain: args.haproxy_drain,
        timeout: args.command_timeout,
        load_timeout: Duration::from_secs(10),
    })
}

/// The outcome of a stop signal: an error for `--once` before anything was delivered.
fn stopped(nothing_delivered: bool, missing: Option<herald::layout::EnvKey>) -> anyhow::Result<()> {
    if nothing_delivered {
        match missing {
            Some(key) => anyhow::bail!("stopped before {key} was published"),
            None => anyhow::bail!("stopped before the file was written"),
        }
    }
    Ok(())
}

/// What the file (or stdout) gets: the one key's value, or every key's through `--template`.
fn render(
    embed: &Option<(Embed, String)>,
    keys: &[EnvKey],
    values: &[Option<Vec<u8>>],
) -> anyhow::Result<Vec<u8>> {
    Ok(match embed {
        Some((embed, origin)) => {
            let bound: Vec<(&str, &[u8])> = keys
                .iter()
                .zip(values)
                .map(|(k, v)| (k.as_str(), v.as_deref().unwrap_or_default()))
                .collect();
            embed.render(&bound, origin)?
        }
        None => values.first().cloned().flatten().unwrap_or_default(),
    })
}

/// Prints the value, or makes the file hold it.
async fn deliver(
    file: Option<&mut FileTarget>,
    value: &[u8],
    null: bool,
    telemetry: &Telemetry,
) -> anyhow::Result<()> {
    let Some(file) = file else {
        let mut stdout = std::io::stdout().lock();
        stdout
            .write_all(value)
            .and_then(|()| stdout.write_all(if null { b"\0" } else { b"\n" }))
            .and_then(|()| stdout.flush())
            .context("cannot write to stdout")?;
        return Ok(());
    };
    let name = file.path().display().to_string();
    let content = (herald::director::run::digest(Some(value)), value.len());
    let applied = file.apply(value).await;
    let result = match &applied {
        Ok(Applied::Written) => {
            tracing::debug!(file = %name, "the new value is applied");
            "applied"
        }
        Ok(Applied::Reloaded) => {
            tracing::info!(file = %name, "reloaded (the earlier reload had failed)");
            "applied"
        }
        Ok(Applied::Unchanged) => "unchanged",
        Err(err) => err.result(),
    };
    let error = applied.as_ref().err().map(|e| e.to_string());
    let content = applied.is_ok().then_some((content.0.as_str(), content.1));
    telemetry.watch_result(&name, result, content, error.as_deref());
    applied.map(|_| ()).map_err(Into::into)
}
