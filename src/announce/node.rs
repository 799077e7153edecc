//! One instance's ephemeral znode: creating it, recognising it as ours by its ephemeral owner,
//! and removing it. The owner check (as Finagle does) makes every step safe to retry after a
//! connection loss, and means a plain reconnect never deletes and re-creates the node. Ownership
//! is read from the node's `Stat` (no READ permission needed), and a delete is only ever issued
//! for a node our session owns, at the version just read.

use zookeeper_client::{self as zk, CreateMode, Stat};

use super::control::now_ms;
use crate::acl::{self, Policy};
use crate::departure::Departure;

/// Where the instance lives and what it says.
#[derive(Debug, Clone)]
pub struct Node {
    pub path: String,
    /// The service directory (persistent, created when missing).
    pub parent: String,
    /// Created and deleted in the rewrite's multi-op: the service directory's `pzxid` tells a
    /// reader coming back from a disconnection that something below it changed.
    pub mark: String,
    pub data: Vec<u8>,
    /// The trace a deregistration leaves (`<root>/departures/S/ID`) and its directory.
    pub departure: String,
    pub departures: String,
    /// herald's root (the service directory's ACL depends on it being below).
    pub root: String,
    pub policy: Policy,
}

/// Which node of ours: its creation zxid tells it from a later node at the same path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owned {
    pub czxid: i64,
    pub version: i32,
}

/// Who holds the node after [`Node::claim`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Our session owns it.
    Ours(Owned),
    /// Another session owns it (or it is not ephemeral: owner 0).
    Foreign { owner: i64 },
    /// It vanished or changed between two steps: try again.
    Gone,
}

impl Node {
    /// Creates the node, or recognises an existing one as ours (rewriting its data when someone
    /// changed it) or someone else's.
    pub async fn claim(&self, client: &zk::Client) -> Result<Claim, zk::Error> {
        let mode = CreateMode::Ephemeral.with_acls(self.policy.instance());
        match client.create(&self.path, &self.data, &mode).await {
            Ok((stat, _)) => return Ok(self.created(client, &stat).await),
            Err(zk::Error::NodeExists) => {}
            Err(zk::Error::NoNode) => {
                acl::make_dirs(client, &self.root, &self.parent, self.policy).await?;
                match client.create(&self.path, &self.data, &mode).await {
                    Ok((stat, _)) => return Ok(self.created(client, &stat).await),
                    Err(zk::Error::NodeExists) => {}
                    Err(err) => return Err(err),
                }
            }
            Err(err) => return Err(err),
        }
        self.recognise(client).await
    }

    /// A new node: the record of an earlier departure no longer speaks for it (best effort: a
    /// director reads a record only when it sees the node go).
    async fn created(&self, client: &zk::Client, stat: &Stat) -> Claim {
        match client.delete(&self.departure, None).await {
            Ok(()) | Err(zk::Error::NoNode) => {}
            Err(err) => {
                tracing::debug!(path = %self.departure, error = %err, "cannot remove the earlier departure record")
            }
        }
        Claim::Ours(owned(stat))
    }

    async fn recognise(&self, client: &zk::Client) -> Result<Claim, zk::Error> {
        let Some(stat) = client.check_stat(&self.path).await? else {
            return Ok(Claim::Gone);
        };
        if stat.ephemeral_owner != client.session_id().0 {
            return Ok(Claim::Foreign {
                owner: stat.ephemeral_owner,
            });
        }
        let (data, stat) = match client.get_data(&self.path).await {
            Ok(found) => found,
            Err(zk::Error::NoNode) => return Ok(Claim::Gone),
            Err(err) => return Err(err),
        };
        if data == self.data {
            return Ok(Claim::Ours(owned(&stat)));
        }
        match self.rewrite(client, stat.version).await {
            Ok(stat) => Ok(Claim::Ours(owned(&stat))),
            // Changed again or deleted meanwhile: look again on the next round.
            Err(zk::Error::BadVersion | zk::Error::NoNode) => Ok(Claim::Gone),
            Err(err) => Err(err),
        }
    }

    /// Rewrites the node in place at `version`, creating and deleting the rewrite mark in the
    /// same transaction (see [`crate::layout::Layout::rewrite_mark`]); the node's new stat.
    async fn rewrite(&self, client: &zk::Client, version: i32) -> Result<Stat, zk::Error> {
        let mode = CreateMode::Ephemeral.with_acls(self.policy.instance());
        let mut multi = client.new_multi_writer();
        multi.add_set_data(&self.path, &self.data, Some(version))?;
        multi.add_create(&self.mark, &[], &mode)?;
        multi.add_delete(&self.mark, None)?;
        match multi.commit().await {
            Ok(results) => match results.into_iter().next() {
                Some(zk::MultiWriteResult::SetData { stat }) => Ok(stat),
                _ => Err(zk::Error::UnexpectedError("no stat from a rewrite".into())),
            },
            // The mark cannot be made (a node in its place, no create right): rewrite all the
            // same. A director that was disconnected meanwhile sees it at its next reconcile.
            Err(zk::MultiWriteError::OperationFailed { index, source }) if index > 0 => {
                tracing::warn!(path = %self.mark, error = %source, "cannot mark an in-place rewrite; rewriting without the mark");
                client.set_data(&self.path, &self.data, Some(version)).await
            }
            Err(err) => Err(err.into()),
        }
    }

    /// Deletes the node if our session owns it — and, when `czxid` is given, only that very
    /// node. Anything else at the path is left alone. Connection errors are returned so the
    /// caller can retry: the node may still be there.
    pub async fn release(
        &self,
        client: &zk::Client,
        czxid: Option<i64>,
        why: Departure,
    ) -> Result<(), zk::Error> {
        loop {
            let Some(stat) = client.check_stat(&self.path).await? else {
                return Ok(());
            };
            if stat.ephemeral_owner != client.session_id().0
                || czxid.is_some_and(|c| c != stat.czxid)
            {
                return Ok(());
            }
            match self.delete_leaving_a_trace(client, stat.version, why).await {
                Ok(()) | Err(zk::Error::NoNode) => return Ok(()),
                Err(zk::Error::BadVersion) => continue,
                Err(err) => return Err(err),
            }
        }
    }

    /// Deletes the node at `version` and, in the same multi-op, writes its departure record:
    /// whoever sees the node go can read there that it was a deregistration, not a lost
    /// session. A record that cannot be written (its directory missing and not creatable, an
    /// ACL) never keeps the node from going: it is then deleted alone.
    async fn delete_leaving_a_trace(
        &self,
        client: &zk::Client,
        version: i32,
        why: Departure,
    ) -> Result<(), zk::Error> {
        let record = why.record(now_ms());
        let mode = CreateMode::Persistent.with_acls(self.policy.instance());
        let mut made_dirs = false;
        for _ in 0..3 {
            let mut multi = client.new_multi_writer();
            multi.add_delete(&self.path, Some(version))?;
            multi.add_create(&self.departure, &record, &mode)?;
            let (index, source) = match multi.commit().await {
                Ok(_) => return Ok(()),
                Err(zk::MultiWriteError::OperationFailed { index, source }) => (index, source),
                Err(err) => return Err(err.into()),
            };
            match (index, source) {
                // The node itself: gone, or changed.
                (0, err) => return Err(err),
                // An earlier departure's record: replace it, then delete.
                (_, zk::Error::NodeExists) => {
                    match client.set_data(&self.departure, &record, None).await {
                        Ok(_) => {}
                        Err(zk::Error::NoNode) => continue,
                        Err(zk::Error::NoAuth) => break,
                        Err(err) => return Err(err),
                    }
                    return client.delete(&self.path, Some(version)).await;
                }
                (_, zk::Error::NoNode) if !made_dirs => {
                    made_dirs = true;
                    match acl::make_dirs(client, &self.root, &self.departures, self.policy).await {
                        Ok(()) => {}
                        Err(zk::Error::NoAuth) => break,
                        Err(err) => return Err(err),
                    }
                }
                _ => break,
            }
        }
        client.delete(&self.path, Some(version)).await
    }
}

fn owned(stat: &Stat) -> Owned {
    Owned {
        czxid: stat.czxid,
        version: stat.version,
    }
}
