//! A read-only view of the registered services: each service under `<root>/services` with its
//! number of live instances.

use zookeeper_client as zk;

use crate::layout::{Layout, ServiceName};
use crate::zk::{ZkError, list_named};

/// Services with their instance counts, sorted by name. Children that are not valid service
/// names (written by something else) are skipped.
pub async fn services(
    client: &zk::Client,
    layout: &Layout,
) -> Result<Vec<(ServiceName, usize)>, ZkError> {
    let listed = list_named::<ServiceName>(client, &layout.services()).await?;
    Ok(listed
        .into_iter()
        .map(|(service, stat)| (service, stat.num_children.max(0) as usize))
        .collect())
}
