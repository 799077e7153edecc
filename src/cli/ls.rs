//! `herald ls`: what is published and registered under the root.

use std::io::Write;

use anyhow::Context;
use clap::Args;
use herald::layout::ServiceName;
use herald::{catalog, zk};
use serde_json::json;

use super::ZkArgs;

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  herald ls
  herald ls --json | jq '.environment | keys'
  herald ls pg                   the instances of service pg (Curator-registered ones too)

Values are not shown (they may be credentials): only their sizes; of instance metadata, only the
keys. An instance a director leaves out of a value (every value with it failed the output's
check) says `EXCLUDED from KEY: why` (JSON: excludedFrom).")]
pub struct LsArgs {
    /// List this service's instances instead.
    #[arg(value_name = "SERVICE")]
    pub service: Option<String>,
    /// Print one JSON object: {"environment": {KEY: bytes}, "services": {name: instances}}.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(zk_args: &ZkArgs, args: LsArgs) -> anyhow::Result<()> {
    if let Some(service) = &args.service {
        return instances(zk_args, service.parse()?, args.json).await;
    }
    let target = zk_args.target()?;
    let layout = target.values.layout();
    let client = zk::connect(&target.config).await?;
    let listed = zk::bounded(&target.config, async {
        let keys = target.values.list(&client).await?;
        let services = catalog::services(&client, layout).await?;
        let holds = catalog::holds(&client, layout).await?;
        anyhow::Ok((keys, services, holds))
    })
    .await;
    zk::close(client).await;
    let (keys, services, holds) =
        listed?.with_context(|| format!("cannot list {}", layout.root()))?;

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
        let holds: serde_json::Map<_, _> = holds
            .iter()
            .map(|(k, record)| (k.to_string(), record.clone()))
            .collect();
        out = json!({ "root": layout.root(), "environment": environment, "services": services, "holds": holds })
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
        let held = |key: &herald::layout::EnvKey| -> String {
            let Some((_, record)) = holds.iter().find(|(k, _)| k == key) else {
                return String::new();
            };
            let since = record["since"]
                .as_u64()
                .map(|ms| {
                    humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
                    )
                    .to_string()
                })
                .unwrap_or_default();
            format!(
                "  HELD since {since}: {}",
                printable(record["message"].as_str().unwrap_or("?"))
            )
        };
        for (key, bytes) in &keys {
            out.push_str(&format!("  {key:width$}  {bytes} bytes{}\n", held(key)));
        }
        // A held output that has never published has no value to list.
        for (key, _) in holds
            .iter()
            .filter(|(k, _)| !keys.iter().any(|(p, _)| p == k))
        {
            out.push_str(&format!("  {key:width$}  not published{}\n", held(key)));
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

/// `herald ls SERVICE`: one line (or JSON object) per valid instance, metadata values hidden.
async fn instances(zk_args: &ZkArgs, service: ServiceName, json: bool) -> anyhow::Result<()> {
    let target = zk_args.target()?;
    let layout = target.values.layout();
    let client = zk::connect(&target.config).await?;
    let listed = zk::bounded(&target.config, async {
        let instances = catalog::instances(&client, layout, &service, None).await?;
        let excluded = catalog::excluded(&client, layout).await?;
        anyhow::Ok((instances, excluded))
    })
    .await;
    zk::close(client).await;
    let (instances, excluded) =
        listed?.with_context(|| format!("cannot list {}", layout.service(&service)))?;
    let mut out = String::new();
    for i in &instances {
        let meta_keys: Vec<&str> = i.meta.keys().map(String::as_str).collect();
        // The outputs that leave this instance out, and why.
        let left_out: Vec<(String, &str)> = excluded
            .iter()
            .flat_map(|(key, list)| {
                list.iter()
                    .filter(|x| x.service == service.as_str() && x.id == i.id.as_str())
                    .map(move |x| (key.to_string(), x.reason.as_str()))
            })
            .collect();
        if json {
            out.push_str(
                &json!({
                    "id": i.id.as_str(), "address": i.address, "port": i.port,
                    "sslPort": i.ssl_port, "weight": i.weight, "labels": i.labels,
                    "endpoints": i.endpoints, "metaKeys": meta_keys,
                    "registrationTimeUTC": i.registered_ms, "serviceType": i.service_type,
                    "excludedFrom": left_out.iter().map(|(k, r)| (k.clone(), json!(r))).collect::<serde_json::Map<_, _>>(),
                    "drained": i.drained.as_ref().map(|d| json!({"reason": d.reason, "until": d.until_ms})),
                })
                .to_string(),
            );
        } else {
            let port = i.port.map_or("-".to_owned(), |p| p.to_string());
            let labels: Vec<String> = i.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            // What other writers put in a document reaches a terminal escaped.
            out.push_str(&format!(
                "{}  {}:{}  weight={}  labels={}  meta={}",
                i.id,
                printable(&i.address),
                port,
                i.weight,
                printable(&labels.join(",")),
                printable(&meta_keys.join(","))
            ));
            if let Some(note) = &i.drained {
                out.push_str(&format!("  DRAINED {}", printable(&note.to_string())));
            }
            for (key, reason) in &left_out {
                out.push_str(&format!("  EXCLUDED from {key}: {}", printable(reason)));
            }
        }
        out.push('\n');
    }
    std::io::stdout()
        .lock()
        .write_all(out.as_bytes())
        .context("cannot write to stdout")?;
    Ok(())
}

/// `text` with control characters (terminal escapes, newlines) written as Rust escapes.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(super::printable("10.0.0.1"), "10.0.0.1");
        assert_eq!(super::printable("a\u{1b}[2Jb\nc"), "a\\u{1b}[2Jb\\nc");
    }
}
