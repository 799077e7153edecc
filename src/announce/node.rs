//! One instance's ephemeral znode: creating it, recognising it as ours by its ephemeral owner,
//! and removing it. The owner check (as Finagle does) makes every step safe to retry after a
//! connection loss, and means a plain reconnect never deletes and re-creates the node.

use zookeeper_client::{self as zk, Acls, CreateMode};

use crate::zk::ZkError;

/// Where the instance lives and what it says.
#[derive(Debug, Clone)]
pub struct Node {
    pub path: String,
    /// The service directory (persistent, created when missing).
    pub parent: String,
    pub data: Vec<u8>,
    pub acl: Acls<'static>,
}

/// Who holds the node after [`Node::claim`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Our session owns it, at this data version.
    Ours { version: i32 },
    /// Another session owns it (or it is not ephemeral: owner 0).
    Foreign { owner: i64 },
    /// It vanished between create and check: try again.
    Gone,
}

impl Node {
    /// Creates the node, or recognises an existing one as ours (rewriting its data when someone
    /// changed it) or someone else's.
    pub async fn claim(&self, client: &zk::Client) -> Result<Claim, zk::Error> {
        let mode = CreateMode::Ephemeral.with_acls(self.acl);
        match client.create(&self.path, &self.data, &mode).await {
            Ok((stat, _)) => {
                return Ok(Claim::Ours {
                    version: stat.version,
                });
            }
            Err(zk::Error::NodeExists) => {}
            Err(zk::Error::NoNode) => {
                let dir = CreateMode::Persistent.with_acls(Acls::anyone_all());
                client.mkdir(&self.parent, &dir).await?;
                return match client.create(&self.path, &self.data, &mode).await {
                    Ok((stat, _)) => Ok(Claim::Ours {
                        version: stat.version,
                    }),
                    Err(zk::Error::NodeExists) => self.recognise(client).await,
                    Err(err) => Err(err),
                };
            }
            Err(err) => return Err(err),
        }
        self.recognise(client).await
    }

    async fn recognise(&self, client: &zk::Client) -> Result<Claim, zk::Error> {
        let (data, stat) = match client.get_data(&self.path).await {
            Ok(found) => found,
            Err(zk::Error::NoNode) => return Ok(Claim::Gone),
            Err(err) => return Err(err),
        };
        if stat.ephemeral_owner != client.session_id().0 {
            return Ok(Claim::Foreign {
                owner: stat.ephemeral_owner,
            });
        }
        if data == self.data {
            return Ok(Claim::Ours {
                version: stat.version,
            });
        }
        match client
            .set_data(&self.path, &self.data, Some(stat.version))
            .await
        {
            Ok(stat) => Ok(Claim::Ours {
                version: stat.version,
            }),
            // Changed again or deleted meanwhile: look again on the next round.
            Err(zk::Error::BadVersion | zk::Error::NoNode) => Ok(Claim::Gone),
            Err(err) => Err(err),
        }
    }

    /// Deletes the node if our session owns it. A node that is already gone is fine.
    pub async fn release(&self, client: &zk::Client, version: i32) -> Result<(), ZkError> {
        match client.delete(&self.path, Some(version)).await {
            Ok(()) | Err(zk::Error::NoNode) => Ok(()),
            // Our data was changed by someone: check ownership before deleting.
            Err(zk::Error::BadVersion) => match client.check_stat(&self.path).await {
                Ok(Some(stat)) if stat.ephemeral_owner == client.session_id().0 => client
                    .delete(&self.path, None)
                    .await
                    .or_else(|err| match err {
                        zk::Error::NoNode => Ok(()),
                        err => Err(err),
                    })
                    .map_err(|err| ZkError::op("delete", &self.path, err)),
                Ok(_) => Ok(()),
                Err(err) => Err(ZkError::op("delete", &self.path, err)),
            },
            Err(err) => Err(ZkError::op("delete", &self.path, err)),
        }
    }
}
