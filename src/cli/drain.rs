//! `herald drain` / `herald undrain` / `herald status`: ask the agents running on this host (or in
//! this container) through their control sockets to deregister, register again, or say how they
//! are.

use std::path::PathBuf;

use clap::Args;
use herald::announce::{self, Request};
use herald::instance::DrainNote;

use super::Outcome;

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  herald drain                   deregister every agent here; returns once their nodes are gone
  herald drain --service pg      only the pg agent
  herald drain --soft            stay registered with weight 0: no new work, sessions finish
  herald undrain                 register again (once the health checks pass), with its weight
  herald drain --for 10m --reason \"kernel upgrade\"    ends by itself after 10 minutes

A soft drain keeps the instance in every derived value with weight 0: pgpool (backend_weightN)
and HAProxy (weight) send it no new sessions while open ones go on, and the url and hostports
presets leave it out. `herald drain` then deregisters it: the pgpool preset drops the backend
and `herald watch --pgpool` detaches it.

Agents are found by their control sockets in --control-dir (default /run/herald as root).
Exit 3 when no agent matches; `drain` exits 4 when a node was not confirmed gone (or, with
--soft, rewritten) within 5s.")]
pub struct DrainArgs {
    /// Only the agent of this service.
    #[arg(long, value_name = "SERVICE")]
    pub service: Option<String>,
    /// Only the agent with this instance id.
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,
    /// Where the agents' control sockets are.
    #[arg(long, env = "HERALD_CONTROL_DIR", value_name = "DIR")]
    pub control_dir: Option<PathBuf>,
}

/// `herald drain`'s own flags.
#[derive(Debug, Args)]
pub struct DrainCommand {
    /// Stay registered with weight 0 instead of deregistering.
    #[arg(long, visible_alias = "keep-registered")]
    pub soft: bool,
    /// End the drain by itself after this long (e.g. 10m): the instance serves again.
    #[arg(long = "for", value_name = "DURATION", value_parser = super::parse_duration)]
    pub for_: Option<std::time::Duration>,
    /// Why (shown by herald status, and by herald ls for a soft drain); at most 200 bytes.
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    #[command(flatten)]
    pub agents: DrainArgs,
}

pub async fn drain(args: DrainCommand) -> anyhow::Result<()> {
    let request = if args.soft {
        Request::DrainSoft
    } else {
        Request::Drain
    };
    if let Some(reason) = &args.reason
        && (reason.trim().is_empty()
            || reason.len() > announce::MAX_REASON
            || reason.chars().any(char::is_control))
    {
        return Err(Outcome::Usage(format!(
            "--reason: write one line of at most {} bytes, e.g. --reason \"kernel upgrade\"",
            announce::MAX_REASON
        ))
        .into());
    }
    let note = DrainNote {
        reason: args.reason.map(|r| r.trim().to_owned()),
        until_ms: args
            .for_
            .map(|d| announce::now_ms().saturating_add(d.as_millis() as u64)),
    };
    send(args.agents, request, &note).await
}

pub async fn run(args: DrainArgs, request: Request) -> anyhow::Result<()> {
    send(args, request, &DrainNote::default()).await
}

async fn send(args: DrainArgs, request: Request, note: &DrainNote) -> anyhow::Result<()> {
    let dir = args
        .control_dir
        .clone()
        .unwrap_or_else(announce::default_control_dir);
    let found = announce::sockets(&dir).unwrap_or_default();
    let matching: Vec<_> = found
        .into_iter()
        .filter(|(_, name)| {
            announce::matches_socket(name, args.service.as_deref(), args.id.as_deref())
        })
        .collect();
    if matching.is_empty() {
        return Err(Outcome::NotFound(format!(
            "no herald agent found in {}; check --control-dir/HERALD_CONTROL_DIR and --service",
            dir.display()
        ))
        .into());
    }
    let mut failures = 0;
    let mut unsettled = 0;
    for (path, name) in matching {
        match announce::request(&path, request, note).await {
            Ok(reply) => {
                println!("{}: {reply}", name.replacen('@', "/", 1));
                if matches!(request, Request::Drain | Request::DrainSoft) && reply.pending {
                    unsettled += 1;
                }
            }
            Err(err) => {
                eprintln!("herald: {err}");
                failures += 1;
            }
        }
    }
    if failures > 0 {
        anyhow::bail!("{failures} agent(s) did not answer");
    }
    if unsettled > 0 {
        return Err(Outcome::TimedOut(format!(
            "{unsettled} agent(s) still registered after the drain's wait; check ZooKeeper, then run herald drain again"
        ))
        .into());
    }
    Ok(())
}
