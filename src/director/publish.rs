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

/// Writes `value` as KEY if `lead` still leads. `exists` is what the caller believes (it read
/// the value when it began to lead): a wrong guess costs one more round trip, never a wrong
/// write.
pub async fn publish(
    lead: &Leadership,
    values: &Values,
    key: &EnvKey,
    value: &[u8],
    exists: bool,
) -> Result<Fenced, ValueError> {
    check_value(key, value)?;
    let client = &lead.live.client;
    let path = values.layout().value(key);
    let mut created_parent = false;
    let mut exists = exists;
    for _ in 0..5 {
        let mut multi = client.new_multi_writer();
        let op = |err| ZkError::op("write", &path, err);
        multi
            .add_check_version(&lead.node, lead.version)
            .map_err(op)?;
        if exists {
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
            // The value exists after all, or not: write it the other way.
            Err(MultiWriteError::OperationFailed {
                index: 1,
                source: zk::Error::NodeExists,
            }) => exists = true,
            Err(MultiWriteError::OperationFailed {
                index: 1,
                source: zk::Error::NoNode,
            }) if exists => exists = false,
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
    // Someone keeps creating and deleting the value under us: report rather than spin.
    Err(ZkError::op("write", &path, zk::Error::RuntimeInconsistent).into())
}

/// The session that won the election is over: so is the leadership.
fn session_ended(err: &zk::Error) -> bool {
    matches!(err, zk::Error::SessionExpired | zk::Error::ClientClosed)
}
