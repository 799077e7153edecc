//! `herald put KEY VALUE|-|--file F`: publish a value.

use std::io::Read;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use herald::values::{MAX_VALUE_LEN, check_value};
use herald::zk;

use super::{Outcome, ZkArgs, parse_key};

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  herald put MEMCACHE_SERVERS 10.0.0.5:11211,10.0.0.6:11211
  printf %s \"$DATABASE_URL\" | herald put DATABASE_URL -     (secrets: stdin or --file, not argv)
  herald put PGPOOL_BACKENDS --file backends.conf

The value is stored byte for byte: `echo` adds a newline, `printf %s` does not.")]
pub struct PutArgs {
    /// The key: an environment variable name.
    pub key: String,
    /// The value; `-` reads it from stdin. Arguments are visible in `ps`: pass secrets on stdin.
    #[arg(required_unless_present = "file", conflicts_with = "file")]
    pub value: Option<String>,
    /// Read the value from this file.
    #[arg(long, short)]
    pub file: Option<PathBuf>,
}

pub async fn run(zk_args: &ZkArgs, args: PutArgs) -> anyhow::Result<()> {
    let key = parse_key(&args.key)?;
    let target = zk_args.target()?;
    // Read and check the whole value before connecting: bad input writes nothing.
    let value = read_value(&args)?;
    check_value(&key, &value)?;
    let client = zk::connect(&target.config).await?;
    let result = zk::bounded(&target.config, target.values.put(&client, &key, &value)).await;
    zk::close(client).await;
    result?.with_context(|| format!("cannot publish {key}"))?;
    tracing::debug!(key = %key, bytes = value.len(), "published");
    Ok(())
}

/// Reads at most one byte more than the limit, so an endless stdin cannot exhaust memory.
fn read_value(args: &PutArgs) -> anyhow::Result<Vec<u8>> {
    let limit = MAX_VALUE_LEN as u64 + 1;
    let mut value = Vec::new();
    match (&args.file, args.value.as_deref()) {
        (Some(file), _) => {
            let opened =
                std::fs::File::open(file).and_then(|f| f.take(limit).read_to_end(&mut value));
            opened.map_err(|e| {
                Outcome::Usage(format!("cannot read --file {}: {e}", file.display()))
            })?;
        }
        (None, Some("-")) => {
            std::io::stdin()
                .lock()
                .take(limit)
                .read_to_end(&mut value)
                .map_err(|e| Outcome::Usage(format!("cannot read the value from stdin: {e}")))?;
        }
        (None, Some(v)) => value = v.as_bytes().to_vec(),
        (None, None) => {
            return Err(
                Outcome::Usage("give a VALUE, - for stdin, or --file FILE".to_owned()).into(),
            );
        }
    }
    Ok(value)
}
