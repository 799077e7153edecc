//! Published values: the znodes `<root>/environment/<KEY>` that /environment scripts read.
//! Writing, reading, waiting for, deleting and listing them.

use std::time::Duration;

use tracing::debug;
use zookeeper_client::{self as zk, Acls, CreateMode};

use crate::acl::{self, Policy};
use crate::layout::{EnvKey, Layout};
use crate::zk::{SessionHandle, ZkError, list_named, state_error};

/// The largest value herald writes: ZooKeeper refuses requests over `jute.maxbuffer`
/// (1 MiB − 1 by default), and the request also carries the path and headers.
pub const MAX_VALUE_LEN: usize = 1024 * 1024 - 1024;

/// Why a value could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ValueError {
    #[error(
        "the value for {key} is {len} bytes, over the {MAX_VALUE_LEN}-byte limit of a ZooKeeper znode (jute.maxbuffer); publish a smaller value or a reference to it"
    )]
    TooLarge { key: EnvKey, len: usize },
    #[error(transparent)]
    Zk(#[from] ZkError),
}

/// Checks what can be checked before talking to ZooKeeper.
pub fn check_value(key: &EnvKey, value: &[u8]) -> Result<(), ValueError> {
    if value.len() > MAX_VALUE_LEN {
        return Err(ValueError::TooLarge {
            key: key.clone(),
            len: value.len(),
        });
    }
    Ok(())
}

/// The published values under one [`Layout`].
#[derive(Debug, Clone)]
pub struct Values {
    layout: Layout,
    /// The ACLs of the znodes herald creates (see [`crate::acl`]).
    policy: Policy,
}

impl Values {
    pub fn new(layout: Layout, policy: Policy) -> Values {
        Values { layout, policy }
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The ACL value znodes are created with.
    pub fn value_acl(&self) -> Acls<'static> {
        self.policy.value()
    }

    /// The ACL policy of this session's znodes.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Writes `value` as KEY, creating the znode and its parents when needed.
    pub async fn put(
        &self,
        client: &zk::Client,
        key: &EnvKey,
        value: &[u8],
    ) -> Result<(), ValueError> {
        check_value(key, value)?;
        let path = self.layout.value(key);
        let create = CreateMode::Persistent.with_acls(self.policy.value());
        // Most writes replace a value; a missing node costs one extra round trip, missing
        // parents one more. A racing writer can make create see NodeExists: then set again.
        for _ in 0..3 {
            match client.set_data(&path, value, None).await {
                Ok(_) => return Ok(()),
                Err(zk::Error::NoNode) => {}
                Err(err) => return Err(ZkError::op("write", &path, err).into()),
            }
            match client.create(&path, value, &create).await {
                Ok(_) => return Ok(()),
                Err(zk::Error::NodeExists) => continue,
                Err(zk::Error::NoNode) => {
                    let parent = self.layout.environment();
                    acl::make_dirs(client, self.layout.root(), &parent, self.policy)
                        .await
                        .map_err(|err| ZkError::op("create", &parent, err))?;
                    match client.create(&path, value, &create).await {
                        Ok(_) => return Ok(()),
                        Err(zk::Error::NodeExists) => continue,
                        Err(err) => return Err(ZkError::op("create", &path, err).into()),
                    }
                }
                Err(err) => return Err(ZkError::op("create", &path, err).into()),
            }
        }
        Err(ZkError::op("write", &path, zk::Error::RuntimeInconsistent).into())
    }

    /// Reads KEY; `None` when it is not published.
    pub async fn get(&self, client: &zk::Client, key: &EnvKey) -> Result<Option<Vec<u8>>, ZkError> {
        let path = self.layout.value(key);
        match client.get_data(&path).await {
            Ok((data, _)) => Ok(Some(data)),
            Err(zk::Error::NoNode) => Ok(None),
            Err(err) => Err(ZkError::op("read", &path, err)),
        }
    }

    /// Waits until KEY is published and returns its value, using an exists-watch (no polling).
    /// Survives reconnects and session expiry; bound it with a timeout.
    ///
    /// # Cancellation safety
    /// Safe: dropping it leaves nothing behind but a one-shot watch.
    pub async fn wait(&self, session: &SessionHandle, key: &EnvKey) -> Result<Vec<u8>, ZkError> {
        loop {
            if let Some(value) = self.next(session, key, None).await? {
                return Ok(value);
            }
        }
    }

    /// Waits until KEY's value differs from `known` (`None`: not published) and returns the new
    /// state: a data watch while it exists, an exists watch while it does not. Survives
    /// reconnects and session expiry (after which the value is read again, never assumed).
    ///
    /// # Cancellation safety
    /// Safe: dropping it leaves nothing behind but a one-shot watch.
    pub async fn next(
        &self,
        session: &SessionHandle,
        key: &EnvKey,
        known: Option<&[u8]>,
    ) -> Result<Option<Vec<u8>>, ZkError> {
        let path = self.layout.value(key);
        let mut live = session.live();
        loop {
            let watched = match live.client.get_and_watch_data(&path).await {
                Ok((data, _, watcher)) => Ok((Some(data), watcher)),
                Err(zk::Error::NoNode) => match live.client.check_and_watch_stat(&path).await {
                    Ok((None, watcher)) => Ok((None, watcher)),
                    Ok((Some(_), _)) => continue, // created in between: read it
                    Err(err) => Err(err),
                },
                Err(err) => Err(err),
            };
            let outcome = match watched {
                Ok((current, watcher)) => {
                    if current.as_deref() != known {
                        return Ok(current);
                    }
                    debug!(key = %key, "waiting for the value to change");
                    let event = watcher.changed().await;
                    if event.event_type != zk::EventType::Session {
                        continue;
                    }
                    state_error(event.session_state)
                }
                Err(err) => err,
            };
            match outcome {
                zk::Error::SessionExpired | zk::Error::ClientClosed => {
                    live = session.renewed(live.generation).await?;
                }
                // The client is reconnecting within the same session: ask again shortly.
                zk::Error::ConnectionLoss | zk::Error::Timeout => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                err => return Err(ZkError::op("watch", &path, err)),
            }
        }
    }

    /// Deletes KEY; `false` when it was not published.
    pub async fn delete(&self, client: &zk::Client, key: &EnvKey) -> Result<bool, ZkError> {
        let path = self.layout.value(key);
        match client.delete(&path, None).await {
            Ok(()) => Ok(true),
            Err(zk::Error::NoNode) => Ok(false),
            Err(err) => Err(ZkError::op("delete", &path, err)),
        }
    }

    /// The published keys with the size of their values, sorted by key. Children that are not
    /// valid keys (written by something else) are skipped.
    pub async fn list(&self, client: &zk::Client) -> Result<Vec<(EnvKey, usize)>, ZkError> {
        let listed = list_named::<EnvKey>(client, &self.layout.environment()).await?;
        Ok(listed
            .into_iter()
            .map(|(key, stat)| (key, stat.data_length.max(0) as usize))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_limit() {
        let key: EnvKey = "BIG".parse().unwrap();
        assert!(check_value(&key, &vec![0; MAX_VALUE_LEN]).is_ok());
        let err = check_value(&key, &vec![0; MAX_VALUE_LEN + 1]).unwrap_err();
        assert!(err.to_string().contains("BIG"), "{err}");
    }
}
