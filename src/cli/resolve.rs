//! `herald resolve KEY`: print a published value exactly, optionally waiting for it.
//! This is what an /environment script runs: `exec herald resolve DATABASE_URL`.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use herald::zk::{self, Session};
use tokio_util::sync::CancellationToken;

use super::{Outcome, ZkArgs, parse_duration, parse_key};

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  herald resolve DATABASE_URL
  herald resolve --wait --timeout 30s DATABASE_URL
  herald resolve --default 127.0.0.1:11211 MEMCACHE_SERVERS

As an /environment script (/environment/DATABASE_URL):
  #!/bin/sh
  exec herald resolve DATABASE_URL

Exit codes: 0 printed, 3 not published, 4 timed out, 5 ZooKeeper unreachable.
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
}

pub async fn run(zk_args: &ZkArgs, args: ResolveArgs) -> anyhow::Result<()> {
    let key = parse_key(&args.key)?;
    let target = zk_args.target()?;
    let values = &target.values;
    let found = if args.wait {
        let session = Session::open(target.config.clone(), CancellationToken::new()).await?;
        let waited = match args.timeout {
            Some(limit) => tokio::time::timeout(limit, values.wait(&session.handle(), &key))
                .await
                .ok(),
            None => Some(values.wait(&session.handle(), &key).await),
        };
        session.close().await;
        match waited {
            Some(result) => Some(result?),
            None if args.default.is_some() => None,
            None => {
                let limit = humantime::format_duration(args.timeout.unwrap_or_default());
                return Err(
                    Outcome::TimedOut(format!("{key} was not published within {limit}")).into(),
                );
            }
        }
    } else {
        let client = zk::connect(&target.config).await?;
        let got = zk::bounded(&target.config, values.get(&client, &key)).await;
        zk::close(client).await;
        got??
    };
    let value = match (found, args.default) {
        (Some(value), _) => value,
        (None, Some(default)) => default.into_bytes(),
        (None, None) => {
            return Err(Outcome::NotFound(format!(
                "{key} is not published (no znode {}); publish it with `herald put {key} …`, or pass --default or --wait",
                values.layout().value(&key)
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
