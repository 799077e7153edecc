//! `herald ls`: what is published and registered under the root.

use std::io::Write;

use anyhow::Context;
use clap::Args;
use herald::{catalog, zk};
use serde_json::json;

use super::ZkArgs;

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  herald ls
  herald ls --json | jq '.environment | keys'

Values are not shown (they may be credentials): only their sizes.")]
pub struct LsArgs {
    /// Print one JSON object: {\"environment\": {KEY: bytes}, \"services\": {name: instances}}.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(zk_args: &ZkArgs, args: LsArgs) -> anyhow::Result<()> {
    let target = zk_args.target()?;
    let layout = target.values.layout();
    let client = zk::connect(&target.config).await?;
    let listed = async {
        let keys = target.values.list(&client).await?;
        let services = catalog::services(&client, layout).await?;
        anyhow::Ok((keys, services))
    }
    .await;
    zk::close(client).await;
    let (keys, services) = listed.with_context(|| format!("cannot list {}", layout.root()))?;

    let mut out = String::new();
    if args.json {
        let environment: serde_json::Map<_, _> = keys
            .iter()
            .map(|(k, n)| (k.to_string(), json!(n)))
            .collect();
        let services: serde_json::Map<_, _> = services
            .iter()
            .map(|(s, n)| (s.to_string(), json!(n)))
            .collect();
        out = json!({ "root": layout.root(), "environment": environment, "services": services })
            .to_string();
        out.push('\n');
    } else {
        let width = keys
            .iter()
            .map(|(k, _)| k.as_str().len())
            .chain(services.iter().map(|(s, _)| s.as_str().len()))
            .max()
            .unwrap_or(0);
        out.push_str(&format!("environment ({}/environment):\n", layout.root()));
        for (key, bytes) in &keys {
            out.push_str(&format!("  {key:width$}  {bytes} bytes\n"));
        }
        out.push_str(&format!("services ({}/services):\n", layout.root()));
        for (service, n) in &services {
            let noun = if *n == 1 { "instance" } else { "instances" };
            out.push_str(&format!("  {service:width$}  {n} {noun}\n"));
        }
    }
    std::io::stdout()
        .lock()
        .write_all(out.as_bytes())
        .context("cannot write to stdout")?;
    Ok(())
}
