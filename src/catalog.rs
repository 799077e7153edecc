//! A read-only view of the registered services: each service under `<root>/services` with its
//! number of live instances, a service's instances read from their documents, and the
//! instances the directors leave out of their values.

use tracing::warn;
use zookeeper_client as zk;

use crate::director::culprits::{self, Excluded};
use crate::instance::Instance;
use crate::layout::{EnvKey, InstanceId, Layout, ServiceName};
use crate::zk::{Pace, ZkError, list_named, paced};

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

/// The instance in the znode at `path` (data and stat as read), if it is one: a document that is
/// not an instance (another writer's mistake) is skipped with a warning naming it, and so is a
/// persistent znode whose document does not say it outlives sessions (Curator's `STATIC` or
/// `PERMANENT`): a registration ends with its session, and a persistent `DYNAMIC` node is
/// nobody's registration — planted, or left by hand — that would stay in every value forever.
pub fn admit(
    path: &str,
    service: &ServiceName,
    id: InstanceId,
    data: &[u8],
    stat: &zk::Stat,
) -> Option<Instance> {
    let instance = match Instance::from_json(service.clone(), id, data) {
        Ok(instance) => instance,
        Err(err) => {
            warn!(path, error = %err, "skipping a child that is not an instance document");
            return None;
        }
    };
    if stat.ephemeral_owner == 0 && !instance.persistent_by_design() {
        warn!(
            path,
            service_type = ?instance.service_type,
            "skipping a persistent node that is no registration (no session owns it and its serviceType is not STATIC or PERMANENT); remove it with: zkCli.sh delete {path}"
        );
        return None;
    }
    Some(instance)
}

/// A service with this many instances is warned about at each listing…
pub const CROWDED_INSTANCES: usize = 10_000;
/// …and so is one whose listing (a `getChildren` reply) is this large: half of the 1 MiB
/// `jute.maxbuffer` every ZooKeeper client refuses a larger reply with by default.
pub const CROWDED_LISTING: usize = 512 * 1024;

/// The size of a `getChildren` reply naming `names`: the count, then each name with its length.
pub fn listing_bytes(names: &[String]) -> usize {
    4 + names.iter().map(|n| 4 + n.len()).sum::<usize>()
}

/// Whether a service listed as `names` is crowded ([`CROWDED_INSTANCES`], [`CROWDED_LISTING`]).
pub fn crowded(names: &[String]) -> bool {
    names.len() >= CROWDED_INSTANCES || listing_bytes(names) >= CROWDED_LISTING
}

/// The instances of `service` whose documents are valid, sorted by id: one round trip for the
/// names, one (pipelined) for all the documents. A child that vanished meanwhile is skipped; one
/// whose name is not an instance id, or that [`admit`] refuses, is skipped with a warning, never
/// failing the whole service. A [`crowded`] service is warned about. With `pace`, each request
/// waits for its slot (see [`Pace`]).
pub async fn instances(
    client: &zk::Client,
    layout: &Layout,
    service: &ServiceName,
    pace: Option<&Pace>,
) -> Result<Vec<Instance>, ZkError> {
    let parent = layout.service(service);
    paced(pace).await;
    let mut names = match client.list_children(&parent).await {
        Ok(names) => names,
        Err(zk::Error::NoNode) => return Ok(Vec::new()),
        Err(err) => return Err(ZkError::op("list", &parent, err)),
    };
    if crowded(&names) {
        warn!(
            service = %service,
            instances = names.len(),
            listing_bytes = listing_bytes(&names),
            "this service is near what one ZooKeeper listing carries (a reply over jute.maxbuffer, 1 MiB by default, is refused by every client, Curator's and herald's included): split it into several services (by zone, shard or role) before it grows further"
        );
    }
    names.sort();
    let ids: Vec<Option<InstanceId>> = names.iter().map(|n| n.parse().ok()).collect();
    let paths: Vec<String> = names.iter().map(|n| format!("{parent}/{n}")).collect();
    // Each read is sent when it is made: paced, they go out at the rate; unpaced, all at once.
    let mut reads = Vec::with_capacity(paths.len());
    for path in &paths {
        paced(pace).await;
        reads.push(client.get_data(path));
    }
    let mut found = Vec::with_capacity(reads.len());
    for ((id, path), read) in ids.into_iter().zip(&paths).zip(reads) {
        let (data, stat) = match read.await {
            Ok(read) => read,
            Err(zk::Error::NoNode) => continue,
            Err(zk::Error::NoAuth) => {
                warn!(
                    path,
                    "skipping an instance this identity may not read (its ACL)"
                );
                continue;
            }
            Err(err) => return Err(ZkError::op("read", path, err)),
        };
        let Some(id) = id else {
            warn!(path, "skipping a child whose name is not an instance id");
            continue;
        };
        found.extend(admit(path, service, id, &data, &stat));
    }
    Ok(found)
}

/// The outputs whose leader holds the last value, with what it said of the hold
/// (`<root>/holds/<KEY>`: reason, message, since), by key; outputs holding nothing are left out.
pub async fn holds(
    client: &zk::Client,
    layout: &Layout,
) -> Result<Vec<(EnvKey, serde_json::Value)>, ZkError> {
    let listed = list_named::<EnvKey>(client, &layout.holds_dir()).await?;
    let mut out = Vec::new();
    for (key, _) in listed {
        let path = layout.hold(&key);
        match client.get_data(&path).await {
            Ok((data, _)) => match serde_json::from_slice::<serde_json::Value>(&data) {
                Ok(record) if record.get("reason").is_some() => out.push((key, record)),
                _ => {}
            },
            Err(zk::Error::NoNode) => {}
            Err(err) => return Err(ZkError::op("read", &path, err)),
        }
    }
    Ok(out)
}

/// Every output's excluded instances (`<root>/excluded/<KEY>`), by key.
pub async fn excluded(
    client: &zk::Client,
    layout: &Layout,
) -> Result<Vec<(EnvKey, Vec<Excluded>)>, ZkError> {
    let parent = layout.excluded_dir();
    // No znode: nothing listed.
    let listed = list_named::<EnvKey>(client, &parent).await?;
    let mut out = Vec::new();
    for (key, _) in listed {
        let path = layout.excluded(&key);
        match client.get_data(&path).await {
            Ok((data, _)) => out.push((key, culprits::parse(&data))),
            Err(zk::Error::NoNode) => {}
            Err(err) => return Err(ZkError::op("read", &path, err)),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_is_crowded_by_its_count_or_its_listing_size() {
        let ids = |n: usize, len: usize| -> Vec<String> {
            (0..n).map(|i| format!("{i:0len$}")).collect()
        };
        assert_eq!(listing_bytes(&[]), 4);
        assert_eq!(listing_bytes(&ids(2, 3)), 4 + 2 * (4 + 3));
        assert!(!crowded(&ids(CROWDED_INSTANCES - 1, 8)));
        assert!(crowded(&ids(CROWDED_INSTANCES, 8)));
        // 5,100 names of 100 bytes: 530,404 bytes, over half a MiB (524,288); 5,000: under.
        assert!(crowded(&ids(5_100, 100)));
        assert!(!crowded(&ids(5_000, 100)));
        assert!(!crowded(&ids(5_000, 36)));
    }
}
