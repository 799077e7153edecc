//! One leader per output: each director creates an ephemeral-sequential node under
//! `<root>/directors/<KEY>/`; the lowest sequence leads, every other watches only its
//! predecessor (no herd). The leader's own node is its fencing token: a publish is one multi-op
//! that checks the node's version and writes the value, so a leader whose session has ended
//! (say, paused past its timeout) can never write.
//!
//! With several directors, leadership is spread (rendezvous hashing): for each output, the
//! candidate whose identity scores highest with the output's key ([`score`]) should lead. A
//! candidate that finds itself first in line but not preferred goes to the back of the line
//! (deletes its node and joins again), and a leader that sees a preferred candidate join hands
//! over the same way. The lowest sequence still always leads, so the fence is unchanged; the
//! spread only decides who stands first. Each director leads about its share, a director that
//! goes away moves only the outputs it led, and one that comes back takes back its own.

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

/// How well `identity` suits the output `key`: the first 8 bytes of
/// SHA-256(`key` · 0x00 · `identity`), big-endian. The highest score among the candidates
/// should lead.
pub fn score(key: &str, identity: &[u8]) -> u64 {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    hash.update(key.as_bytes());
    hash.update([0u8]);
    hash.update(identity);
    let digest = hash.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// Who takes part in an output's election and how leadership is placed among them.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    /// This director's identity, its election node's data.
    pub identity: &'a [u8],
    /// The output's key when leadership is spread (`None`: whoever joined first leads).
    pub spread: Option<&'a str>,
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
    me: Candidate<'_>,
) -> Result<Leadership, ZkError> {
    let mut live = session.live();
    let mut ours: Option<(String, u64)> = None;
    // Nodes that are no director's (persistent ones): left out of the election, said once.
    let mut ignored: BTreeSet<String> = BTreeSet::new();
    loop {
        match attempt(&live, values, dir, me, &mut ours, &mut ignored).await {
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
    me: Candidate<'_>,
    ours: &mut Option<(String, u64)>,
    ignored: &mut BTreeSet<String>,
) -> Result<Option<Leadership>, zk::Error> {
    let identity = me.identity;
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
        if let Some(key) = me.spread {
            let named: Vec<(u64, &String)> = children
                .iter()
                .filter_map(|name| Some((sequence(name)?, name)))
                .collect();
            if let Some(other) = preferred(client, dir, key, &named, (seq, identity)).await? {
                // First in line but not preferred: to the back of the line.
                debug!(node = %node, preferred = %String::from_utf8_lossy(&other), "first in line; a director this output prefers is standing by: joining again behind it");
                match client.delete(&node, None).await {
                    Ok(()) | Err(zk::Error::NoNode) => {}
                    Err(err) => return Err(err),
                }
                *ours = None;
                return Ok(None);
            }
        }
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

/// The identity of the candidate that should lead instead of `me` (`seq`, identity), if one
/// is in line: the highest [`score`] for `key`, the lower sequence on a tie. Nodes that vanish
/// while being read, and persistent ones, are left out.
async fn preferred(
    client: &zk::Client,
    dir: &str,
    key: &str,
    line: &[(u64, &String)],
    (seq, identity): (u64, &[u8]),
) -> Result<Option<Vec<u8>>, zk::Error> {
    let mut best = (score(key, identity), std::cmp::Reverse(seq));
    let mut other = None;
    for (their_seq, name) in line {
        if *their_seq == seq {
            continue;
        }
        let theirs = match client.get_data(&format!("{dir}/{name}")).await {
            // A persistent node is no director (see `attempt`).
            Ok((_, stat)) if stat.ephemeral_owner == 0 => continue,
            Ok((data, _)) => data,
            Err(zk::Error::NoNode) => continue,
            Err(err) => return Err(err),
        };
        let rank = (score(key, &theirs), std::cmp::Reverse(*their_seq));
        if rank > best {
            best = rank;
            other = Some(theirs);
        }
    }
    Ok(other)
}

impl Leadership {
    /// Resolves with the identity of a director in line that `key` prefers to this leader (see
    /// [`score`]): this leader should then hand over. Never resolves while this leader is the
    /// one preferred, nor once its session has ended (see [`Leadership::lost`]).
    pub async fn preferred_elsewhere(&self, key: &str, identity: &[u8]) -> Vec<u8> {
        let client = &self.live.client;
        let Some((dir, name)) = self.node.rsplit_once('/') else {
            return std::future::pending().await;
        };
        let Some(seq) = sequence(name) else {
            return std::future::pending().await;
        };
        loop {
            let (children, watcher) = match client.list_and_watch_children(dir).await {
                Ok(found) => found,
                Err(zk::Error::SessionExpired | zk::Error::ClientClosed) => {
                    return std::future::pending().await;
                }
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let line: Vec<(u64, &String)> = children
                .iter()
                .filter_map(|name| Some((sequence(name)?, name)))
                .collect();
            match preferred(client, dir, key, &line, (seq, identity)).await {
                Ok(Some(other)) => return other,
                Ok(None) => {}
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
            let event = watcher.changed().await;
            if event.event_type == EventType::Session && event.session_state.is_terminated() {
                return std::future::pending().await;
            }
        }
    }

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
    use super::{score, sequence};

    #[test]
    fn the_score_is_the_documented_hash() {
        // python3: int.from_bytes(hashlib.sha256(b"PG_POOL\x00db-1 4242").digest()[:8], "big")
        assert_eq!(score("PG_POOL", b"db-1 4242"), 14574610346928492940);
        assert_ne!(
            score("PG_POOL", b"db-1 4242"),
            score("PG_POOL", b"db-1 4243")
        );
    }

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
