//! `herald delete KEY`: remove a published value.

use anyhow::Context;
use clap::Args;
use herald::zk;

use super::{Outcome, ZkArgs, parse_key};

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  herald delete DATABASE_URL
  herald delete --missing-ok DATABASE_URL     (exit 0 even when it was not published)")]
pub struct DeleteArgs {
    /// The key to remove.
    pub key: String,
    /// Succeed when the key is not published (otherwise exit 3).
    #[arg(long)]
    pub missing_ok: bool,
}

pub async fn run(zk_args: &ZkArgs, args: DeleteArgs) -> anyhow::Result<()> {
    let key = parse_key(&args.key)?;
    let target = zk_args.target()?;
    let client = zk::connect(&target.config).await?;
    let deleted = zk::bounded(&target.config, target.values.delete(&client, &key)).await;
    zk::close(client).await;
    let deleted = deleted?.with_context(|| format!("cannot delete {key}"))?;
    if !deleted && !args.missing_ok {
        return Err(Outcome::NotFound(format!(
            "{key} is not published; nothing deleted (--missing-ok accepts that)"
        ))
        .into());
    }
    Ok(())
}
