//! A read-only view of the registered services: each service under `<root>/services` with its
//! number of live instances, a service's instances read from their documents, and the
//! instances the directors leave out of their values.

use tracing::warn;
use zookeeper_client as zk;

use crate::director::culprits::{self, Excluded};
use crate::instance::Instance;
use crate::layout::{EnvKey, InstanceId, Layout, ServiceName};
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

/// The instances of `service` whose documents are valid, sorted by id: one round trip for the
/// names, one (pipelined) for all the documents. A child that vanished meanwhile is skipped; one
/// whose name is not an instance id, or that [`admit`] refuses, is skipped with a warning, never
/// failing the whole service.
pub async fn instances(
    client: &zk::Client,
    layout: &Layout,
    service: &ServiceName,
) -> Result<Vec<Instance>, ZkError> {
    let parent = layout.service(service);
    let mut names = match client.list_children(&parent).await {
        Ok(names) => names,
        Err(zk::Error::NoNode) => return Ok(Vec::new()),
        Err(err) => return Err(ZkError::op("list", &parent, err)),
    };
    names.sort();
    let ids: Vec<Option<InstanceId>> = names.iter().map(|n| n.parse().ok()).collect();
    let paths: Vec<String> = names.iter().map(|n| format!("{parent}/{n}")).collect();
    let reads: Vec<_> = paths.iter().map(|path| client.get_data(path)).collect();
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
