//! `herald resolve KEY`: print a published value exactly, optionally waiting for it.
//! This is what an /environment script runs: `exec herald resolve DATABASE_URL`.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use herald::harness::RunNotes;
use herald::layout::EnvKey;
use herald::zk::{self, Session, ZkError};
use tokio_util::sync::CancellationToken;

use super::last_known::{self, CacheArgs};
use super::{Outcome, Target, ZkArgs, parse_duration, parse_key};

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  herald resolve DATABASE_URL
  herald resolve --wait --timeout 30s DATABASE_URL
  herald resolve --default 127.0.0.1:11211 MEMCACHE_SERVERS

As an /environment script (/environment/DATABASE_URL):
  #!/bin/sh
  exec herald resolve DATABASE_URL

With a cache (--cache DIR or HERALD_CACHE), each value read is kept there, and while ZooKeeper
cannot be reached the kept value is printed instead, with a warning saying its age:
  HERALD_CACHE=/var/cache/herald herald resolve DATABASE_URL

Exit codes: 0 printed, 3 not published, 4 timed out, 5 ZooKeeper unreachable (and no kept
value), 9 ZooKeeper unreachable and the kept value older than --max-stale.
--default is used when the key is not published (or --wait timed out), never when
ZooKeeper is unreachable.")]
pub struct ResolveArgs {
    /// The key to print.
    pub key: String,
    /// Wait until the key is published (a ZooKeeper watch, not polling).
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up after this long (exit 4), counted once connected.
    #[arg(long, requires = "wait", value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Print this when the key is not published, and exit 0.
    #[arg(long)]
    pub default: Option<String>,
    #[command(flatten)]
    pub cache: CacheArgs,
}

pub async fn run(zk_args: &ZkArgs, args: ResolveArgs) -> anyhow::Result<()> {
    let key = parse_key(&args.key)?;
    let target = zk_args.target()?;
    let cache = args.cache.open(target.values.layout(), false)?;
    let notes = RunNotes::from_env();
    // An earlier entry of this `herald run` found ZooKeeper unreachable: do not wait out the
    // connect timeout again.
    let read = if notes.as_ref().is_some_and(RunNotes::unreachable) {
        Err(ZkError::Unreachable {
            hosts: target.config.connect.hosts().to_owned(),
            within: target.config.connect_timeout,
            cause: Some("an earlier entry of this herald run could not reach it".to_owned()),
        }
        .into())
    } else {
        read(&target, &key, &args).await
    };
    let found = match read {
        Ok(found) => {
            last_known::record(cache.as_ref(), &key, found.as_deref());
            found
        }
        Err(err) => {
            let Some(zk) = err
                .downcast_ref::<ZkError>()
                .filter(|zk| zk.is_unreachable())
            else {
                return Err(err);
            };
            if let Some(notes) = &notes {
                notes.mark_unreachable();
            }
            let why = zk.to_string();
            match last_known::fallback(cache.as_ref(), args.cache.max_stale, &key, &why)? {
                Some(cached) => Some(cached.value),
                None => return Err(err),
            }
        }
    };
    let value = match (found, args.default) {
        (Some(value), _) => value,
        (None, Some(default)) => default.into_bytes(),
        (None, None) => {
            return Err(Outcome::NotFound(format!(
                "{key} is not published (no znode {}); publish it with `herald put {key} …`, or pass --default or --wait",
                target.values.layout().value(&key)
            ))
            .into());
        }
    };
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(&value)
        .and_then(|()| stdout.flush())
        .with_context(|| format!("cannot write the value of {key} to stdout"))?;
    Ok(())
}

/// KEY from ZooKeeper (`None`: not published; with `--wait`, once published).
async fn read(
    target: &Target,
    key: &EnvKey,
    args: &ResolveArgs,
) -> anyhow::Result<Option<Vec<u8>>> {
    let values = &target.values;
    if !args.wait {
        let client = zk::connect(&target.config).await?;
        let got = zk::bounded(&target.config, values.get(&client, key)).await;
        zk::close(client).await;
        return Ok(got??);
    }
    let session = Session::open(
        target.config.clone(),
        &herald::telemetry::Telemetry::new("resolve"),
        CancellationToken::new(),
    )
    .await?;
    let waited = match args.timeout {
        Some(limit) => tokio::time::timeout(limit, values.wait(&session.handle(), key))
            .await
            .ok(),
        None => Some(values.wait(&session.handle(), key).await),
    };
    session.close().await;
    match waited {
        Some(result) => Ok(Some(result?)),
        None if args.default.is_some() => Ok(None),
        None => {
            let limit = humantime::format_duration(args.timeout.unwrap_or_default());
            Err(Outcome::TimedOut(format!("{key} was not published within {limit}")).into())
        }
    }
}
