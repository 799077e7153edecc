//! A read-only view of the registered services: each service under `<root>/services` with its
//! number of live instances.

use tracing::debug;
use zookeeper_client as zk;

use crate::layout::{Layout, ServiceName};
use crate::zk::ZkError;

/// Services with their instance counts, sorted by name. Children that are not valid service
/// names (written by something else) are skipped.
pub async fn services(
    client: &zk::Client,
    layout: &Layout,
) -> Result<Vec<(ServiceName, usize)>, ZkError> {
    let parent = layout.services();
    let names = match client.list_children(&parent).await {
        Ok(names) => names,
        Err(zk::Error::NoNode) => return Ok(Vec::new()),
        Err(err) => return Err(ZkError::op("list", &parent, err)),
    };
    let mut services: Vec<ServiceName> = names
        .iter()
        .filter_map(|name| {
            name.parse()
                .inspect_err(|_| debug!(child = %name, "skipping a child of the services znode that is not a service name"))
                .ok()
        })
        .collect();
    services.sort();
    // One pipeline: every stat request is sent before the first answer is awaited.
    let paths: Vec<String> = services.iter().map(|s| layout.service(s)).collect();
    let stats: Vec<_> = paths.iter().map(|p| client.check_stat(p)).collect();
    let mut counted = Vec::with_capacity(services.len());
    for ((service, path), stat) in services.into_iter().zip(&paths).zip(stats) {
        match stat.await {
            Ok(Some(stat)) => counted.push((service, stat.num_children.max(0) as usize)),
            Ok(None) => {}
            Err(err) => return Err(ZkError::op("stat", path, err)),
        }
    }
    Ok(counted)
}
