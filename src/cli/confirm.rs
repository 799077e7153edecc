//! `herald confirm KEY`: an operator confirms the drop a director holds back (`max_drop`), so
//! it is published now instead of after `drop_confirm`.

use anyhow::Context;
use clap::Args;
use herald::zk;
use zookeeper_client as zkc;

use super::{Outcome, ZkArgs, parse_key};

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  herald ls                        HELD since …: the instances fell from 10 to 3, …
  herald confirm PGPOOL_BACKENDS   publish that drop now

The leader of KEY records its hold at <root>/holds/KEY; this marks that very hold confirmed (a
hold that began after it was read is not), and the leader publishes the drop at once. Exit 3
when KEY holds no drop.")]
pub struct ConfirmArgs {
    /// The key whose held drop to publish.
    pub key: String,
}

pub async fn run(zk_args: &ZkArgs, args: ConfirmArgs) -> anyhow::Result<()> {
    let key = parse_key(&args.key)?;
    let target = zk_args.target()?;
    let path = target.values.layout().hold(&key);
    let client = zk::connect(&target.config).await?;
    let marked = zk::bounded(&target.config, async {
        let (data, stat) = match client.get_data(&path).await {
            Ok(found) => found,
            Err(zkc::Error::NoNode) => return Ok(None),
            Err(err) => return Err(zk::ZkError::op("read", &path, err)),
        };
        let Ok(serde_json::Value::Object(mut record)) = serde_json::from_slice(&data) else {
            return Ok(None);
        };
        if record.get("reason").and_then(|r| r.as_str()) != Some("max_drop") {
            return Ok(None);
        }
        let message = record
            .get("message")
            .and_then(|m| m.as_str())
            .unwrap_or_default()
            .to_owned();
        record.insert("confirmed".to_owned(), serde_json::Value::Bool(true));
        let bytes = serde_json::Value::Object(record).to_string();
        // At the version read: a hold that changed meanwhile is not confirmed blindly.
        match client
            .set_data(&path, bytes.as_bytes(), Some(stat.version))
            .await
        {
            Ok(_) => Ok(Some(message)),
            Err(zkc::Error::BadVersion | zkc::Error::NoNode) => Ok(None),
            Err(err) => Err(zk::ZkError::op("write", &path, err)),
        }
    })
    .await;
    zk::close(client).await;
    match marked?.with_context(|| format!("cannot confirm the hold of {key}"))? {
        Some(message) => {
            println!("{key}: confirmed ({message})");
            Ok(())
        }
        None => Err(Outcome::NotFound(format!(
            "{key} holds no drop to confirm (herald ls shows what is held)"
        ))
        .into()),
    }
}
