//! Writing an output's value as its leader, fenced: one multi-op checks the version of the
//! leader's own election node and writes `<root>/environment/<KEY>`. If the leader's session has
//! ended or its node is gone, nothing is written.

use zookeeper_client::{self as zk, Acls, CreateMode, MultiWriteError};

use super::election::Leadership;
use crate::layout::EnvKey;
use crate::values::{ValueError, Values, check_value};
use crate::zk::ZkError;

/// What a fenced write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fenced {
    Published,
    /// This director no longer leads: nothing was written.
    Deposed,
}

/// Writes `value` as KEY if `lead` still leads.
pub async fn publish(
    lead: &Leadership,
    values: &Values,
    key: &EnvKey,
    value: &[u8],
) -> Result<Fenced, ValueError> {
    check_value(key, value)?;
    let client = &lead.live.client;
    let path = values.layout().value(key);
    let mut created_parent = false;
    loop {
        let exists = match client.check_stat(&path).await {
            Ok(exists) => exists,
            Err(err) if session_ended(&err) => return Ok(Fenced::Deposed),
            Err(err) => return Err(ZkError::op("read", &path, err).into()),
        };
        let mut multi = client.new_multi_writer();
        let op = |err| ZkError::op("write", &path, err);
        multi
            .add_check_version(&lead.node, lead.version)
            .map_err(op)?;
        if exists.is_some() {
            multi.add_set_data(&path, value, None).map_err(op)?;
        } else {
            let mode = CreateMode::Persistent.with_acls(values.value_acl());
            multi.add_create(&path, value, &mode).map_err(op)?;
        }
        match multi.commit().await {
            Ok(_) => return Ok(Fenced::Published),
            // The fence: our election node is gone or changed.
            Err(MultiWriteError::OperationFailed {
                index: 0,
                source: zk::Error::NoNode | zk::Error::BadVersion,
            }) => return Ok(Fenced::Deposed),
            // The value appeared or vanished between the stat and the write: again.
            Err(MultiWriteError::OperationFailed {
                index: 1,
                source: zk::Error::NodeExists,
            }) => continue,
            Err(MultiWriteError::OperationFailed {
                index: 1,
                source: zk::Error::NoNode,
            }) if exists.is_some() => continue,
            Err(MultiWriteError::OperationFailed {
                index: 1,
                source: zk::Error::NoNode,
            }) if !created_parent => {
                created_parent = true;
                let parent = values.layout().environment();
                let dir = CreateMode::Persistent.with_acls(Acls::anyone_all());
                match client.mkdir(&parent, &dir).await {
                    Ok(()) => {}
                    Err(err) if session_ended(&err) => return Ok(Fenced::Deposed),
                    Err(err) => return Err(ZkError::op("create", &parent, err).into()),
                }
            }
            Err(err) => {
                let err: zk::Error = err.into();
                if session_ended(&err) {
                    return Ok(Fenced::Deposed);
                }
                return Err(ZkError::op("write", &path, err).into());
            }
        }
    }
}

/// The session that won the election is over: so is the leadership.
fn session_ended(err: &zk::Error) -> bool {
    matches!(err, zk::Error::SessionExpired | zk::Error::ClientClosed)
}
