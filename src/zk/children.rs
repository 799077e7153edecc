//! Listing a znode's children as validated names, each with its `Stat`, in one round trip.

use std::str::FromStr;

use tracing::debug;
use zookeeper_client::{self as zk, Stat};

use super::error::ZkError;

/// The children of `parent` whose names parse as `T`, sorted, each with its [`Stat`].
///
/// All stat requests are sent before the first answer is awaited (the client sends a request
/// when its future is made), so this costs two round trips however many children there are.
/// A missing `parent` gives an empty list; a child deleted meanwhile is skipped; a name that does
/// not parse (written by something else) is skipped with a debug log.
pub async fn list_named<T: FromStr + Ord>(
    client: &zk::Client,
    parent: &str,
) -> Result<Vec<(T, Stat)>, ZkError> {
    let names = match client.list_children(parent).await {
        Ok(names) => names,
        Err(zk::Error::NoNode) => return Ok(Vec::new()),
        Err(err) => return Err(ZkError::op("list", parent, err)),
    };
    let mut named: Vec<(T, String)> = names
        .into_iter()
        .filter_map(|name| match name.parse() {
            Ok(parsed) => Some((parsed, name)),
            Err(_) => {
                debug!(parent, child = %name, "skipping a child whose name herald does not use");
                None
            }
        })
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let paths: Vec<String> = named
        .iter()
        .map(|(_, name)| format!("{parent}/{name}"))
        .collect();
    let stats: Vec<_> = paths.iter().map(|path| client.check_stat(path)).collect();
    let mut listed = Vec::with_capacity(named.len());
    for (((parsed, _), path), stat) in named.into_iter().zip(&paths).zip(stats) {
        match stat.await {
            Ok(Some(stat)) => listed.push((parsed, stat)),
            Ok(None) => {}
            Err(err) => return Err(ZkError::op("stat", path, err)),
        }
    }
    Ok(listed)
}
