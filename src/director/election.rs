//! One leader per output: each director creates an ephemeral-sequential node under
//! `<root>/directors/<KEY>/`; the lowest sequence leads, every other watches only its
//! predecessor (no herd). The leader's own node is its fencing token: a publish is one multi-op
//! that checks the node's version and writes the value, so a leader whose session has ended
//! (say, paused past its timeout) can never write.

use std::collections::BTreeSet;
use std::time::Duration;

use tracing::{debug, info, warn};
use zookeeper_client::{self as zk, CreateMode, EventType};

use crate::acl;
use crate::values::Values;
use crate::zk::{Live, SessionHandle, ZkError, state_error};

/// A won election: valid while `node` exists in `live`'s session.
#[derive(Debug, Clone)]
pub struct Leadership {
    pub live: Live,
    /// Our election node.
    pub node: String,
    /// Its data version, checked by every fenced write.
    pub version: i32,
}

/// Sequence number of an election node name `n_0000000012` (ZooKeeper's ten digits); any other
/// name is not a director's node.
fn sequence(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("n_")?;
    if digits.len() != 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Campaigns until this director leads `dir` (the output's election directory).
///
/// # Notable errors
/// Only what cannot be retried: credentials refused, ACLs. Connection losses and expired
/// sessions are waited out.
pub async fn campaign(
    session: &SessionHandle,
    values: &Values,
    dir: &str,
    identity: &[u8],
) -> Result<Leadership, ZkError> {
    let mut live = session.live();
    let mut ours: Option<(String, u64)> = None;
    // Nodes that are no director's (persistent ones): left out of the election, said once.
    let mut ignored: BTreeSet<String> = BTreeSet::new();
    loop {
        match attempt(&live, values, dir, identity, &mut ours, &mut ignored).await {
            Ok(Some(leadership)) => return Ok(leadership),
            Ok(None) => {}
            Err(zk::Error::SessionExpired | zk::Error::ClientClosed) => {
                ours = None;
                live = session.renewed(live.generation).await?;
            }
            Err(zk::Error::ConnectionLoss | zk::Error::Timeout | zk::Error::SessionMoved) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => return Err(ZkError::op("campaign in", dir, err)),
        }
    }
}

/// One round: make sure we have a node, then lead or wait for the predecessor to go.
async fn attempt(
    live: &Live,
    values: &Values,
    dir: &str,
    identity: &[u8],
    ours: &mut Option<(String, u64)>,
    ignored: &mut BTreeSet<String>,
) -> Result<Option<Leadership>, zk::Error> {
    let client = &live.client;
    let mut children = match client.list_children(dir).await {
        Ok(children) => children,
        Err(zk::Error::NoNode) => Vec::new(),
        Err(err) => return Err(err),
    };
    for name in &children {
        if sequence(name).is_none() && ignored.insert(name.clone()) {
            warn!(node = %format!("{dir}/{name}"), "not a director's election node (directors create n_ and ten digits); it takes no part in the election: remove it");
        }
    }
    children.retain(|name| !ignored.contains(name));
    // After a connection loss during create, our node may exist without our knowing its name:
    // recognise it by its owner rather than creating a second one.
    // A failed stat must not read as "not ours": that would create a second node of ours.
    if ours.is_none() {
        for name in &children {
            let path = format!("{dir}/{name}");
            match client.check_stat(&path).await {
                Ok(Some(stat)) if stat.ephemeral_owner == client.session_id().0 => {
                    if let Some(seq) = sequence(name) {
                        *ours = Some((path, seq));
                        break;
                    }
                }
                Ok(_) => {}
                Err(err) => return Err(err),
            }
        }
    }
    if ours.is_none() {
        let mode = CreateMode::EphemeralSequential.with_acls(values.policy().election());
        let prefix = format!("{dir}/n_");
        let created = match client.create(&prefix, identity, &mode).await {
            Ok((_, seq)) => seq,
            Err(zk::Error::NoNode) => {
                acl::make_dirs(client, values.layout().root(), dir, values.policy()).await?;
                client.create(&prefix, identity, &mode).await?.1
            }
            Err(err) => return Err(err),
        };
        let seq = created.into_i64() as u64;
        let path = format!("{prefix}{created}");
        debug!(node = %path, "joined the election");
        *ours = Some((path, seq));
        return Ok(None); // list again, now with our node
    }
    let Some((node, seq)) = ours.clone() else {
        return Ok(None);
    };
    let predecessor = children
        .iter()
        .filter_map(|name| Some((sequence(name)?, name)))
        .filter(|(s, _)| *s < seq)
        .max_by_key(|(s, _)| *s)
        .map(|(_, name)| format!("{dir}/{name}"));
    if !children.iter().any(|name| sequence(name) == Some(seq)) {
        // Our node is gone (deleted by someone): join again.
        *ours = None;
        return Ok(None);
    }
    let Some(predecessor) = predecessor else {
        let Some(stat) = client.check_stat(&node).await? else {
            *ours = None;
            return Ok(None);
        };
        info!(node = %node, "leading");
        return Ok(Some(Leadership {
            live: live.clone(),
            node,
            version: stat.version,
        }));
    };
    let (stat, watcher) = client.check_and_watch_stat(&predecessor).await?;
    let Some(stat) = stat else {
        return Ok(None);
    };
    // A persistent node is no director: no session would ever end it, and everyone behind it
    // would stand by forever.
    if stat.ephemeral_owner == 0 {
        warn!(node = %predecessor, "a persistent node in the election is no director; it takes no part in the election: remove it");
        if let Some(name) = predecessor.rsplit('/').next() {
            ignored.insert(name.to_owned());
        }
        return Ok(None);
    }
    // A node of our own session ahead of ours (left by an earlier round): remove it, or nobody
    // would ever lead.
    if stat.ephemeral_owner == client.session_id().0 {
        debug!(node = %predecessor, "removing an older election node of ours");
        match client.delete(&predecessor, None).await {
            Ok(()) | Err(zk::Error::NoNode) => return Ok(None),
            Err(err) => return Err(err),
        }
    }
    debug!(waiting_for = %predecessor, "standing by");
    let event = watcher.changed().await;
    if event.event_type == EventType::Session {
        return Err(state_error(event.session_state));
    }
    Ok(None)
}

impl Leadership {
    /// Resolves when this leadership has ended: our node was deleted, or the session ended.
    pub async fn lost(&self) {
        loop {
            match self.live.client.check_and_watch_stat(&self.node).await {
                Ok((Some(_), watcher)) => {
                    let event = watcher.changed().await;
                    match event.event_type {
                        EventType::NodeDeleted => return,
                        EventType::Session if event.session_state.is_terminated() => return,
                        _ => {}
                    }
                }
                Ok((None, _)) => return,
                Err(zk::Error::SessionExpired | zk::Error::ClientClosed) => return,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Steps down: deletes our election node so a standby takes over at once.
    pub async fn resign(self) {
        let _ = self.live.client.delete(&self.node, None).await;
    }
}

#[cfg(test)]
mod tests {
    use super::sequence;

    #[test]
    fn only_directors_node_names_count() {
        assert_eq!(sequence("n_0000000012"), Some(12));
        for other in [
            "a_0",
            "n_12",
            "x_0000000001",
            "n_000000001a",
            "n_",
            "n_00000000001",
        ] {
            assert_eq!(sequence(other), None, "{other}");
        }
    }
}
