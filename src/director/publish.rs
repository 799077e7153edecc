//! Writing an output's value as its leader, fenced: one multi-op checks the version of the
//! leader's own election node and writes `<root>/environment/<KEY>` and with it the output's
//! other znodes that changed (`<root>/slots/<KEY>` when the output keeps stable member numbers,
//! `<root>/excluded/<KEY>` when it leaves instances out). If the leader's session has ended or
//! its node is gone, nothing is written.

use zookeeper_client::{self as zk, CreateMode, MultiWriteError};

use super::election::Leadership;
use crate::acl;
use crate::layout::EnvKey;
use crate::values::{ValueError, Values, check_value};
use crate::zk::ZkError;

/// What a fenced write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fenced {
    /// Written; `zxid` is the value's mzxid after the write (`None` when only the output's
    /// other znodes were written, or the value's stat could not be read after its create).
    Published { zxid: Option<i64> },
    /// This director no longer leads: nothing was written.
    Deposed,
}

/// Another znode of the output, written with its value.
#[derive(Debug, Clone, Copy)]
pub enum Beside<'a> {
    /// `<root>/slots/<KEY>`: the bytes, and whether the znode exists.
    Slots(&'a [u8], bool),
    /// `<root>/excluded/<KEY>`: the bytes, and whether the znode exists.
    Excluded(&'a [u8], bool),
    /// `<root>/holds/<KEY>`: the bytes, and whether the znode exists.
    Hold(&'a [u8], bool),
}

/// Writes `value` as KEY if `lead` still leads, and with it, in the same multi-op, the output's
/// `beside` znodes (only those when `value` is `None`). `exists` is what the caller believes
/// (it read the value when it began to lead): a wrong guess costs one more round trip, never a
/// wrong write.
pub async fn publish(
    lead: &Leadership,
    values: &Values,
    key: &EnvKey,
    value: Option<&[u8]>,
    exists: bool,
    beside: &[Beside<'_>],
) -> Result<Fenced, ValueError> {
    let layout = values.layout();
    let mut writes = Vec::new();
    if let Some(value) = value {
        check_value(key, value)?;
        writes.push(Write {
            path: layout.value(key),
            parent: layout.environment(),
            data: value,
            exists,
            created_parent: false,
        });
    }
    for b in beside {
        let (path, parent, data, exists) = match *b {
            Beside::Slots(data, exists) => (layout.slots(key), layout.slots_dir(), data, exists),
            Beside::Excluded(data, exists) => {
                (layout.excluded(key), layout.excluded_dir(), data, exists)
            }
            Beside::Hold(data, exists) => (layout.hold(key), layout.holds_dir(), data, exists),
        };
        check_value(key, data)?;
        writes.push(Write {
            path,
            parent,
            data,
            exists,
            created_parent: false,
        });
    }
    if writes.is_empty() {
        return Ok(Fenced::Published { zxid: None });
    }
    let client = &lead.live.client;
    for _ in 0..8 {
        let mut multi = client.new_multi_writer();
        let op = |path: &str, err| ZkError::op("write", path, err);
        multi
            .add_check_version(&lead.node, lead.version)
            .map_err(|e| op(&writes[0].path, e))?;
        for w in &writes {
            if w.exists {
                multi.add_set_data(&w.path, w.data, None)
            } else {
                let mode = CreateMode::Persistent.with_acls(values.value_acl());
                multi.add_create(&w.path, w.data, &mode)
            }
            .map_err(|e| op(&w.path, e))?;
        }
        let (index, source) = match multi.commit().await {
            Ok(results) => {
                // The value, when written, is the first write after the fence. A create in a
                // multi-op comes back without its stat (ZOOKEEPER-4026): the value's first
                // publish reads it.
                let zxid = match results.get(1) {
                    Some(zk::MultiWriteResult::SetData { stat }) if value.is_some() => {
                        Some(stat.mzxid)
                    }
                    Some(zk::MultiWriteResult::Create { stat, .. }) if value.is_some() => {
                        if stat.is_invalid() {
                            match client.check_stat(&writes[0].path).await {
                                Ok(stat) => stat.map(|s| s.mzxid),
                                Err(_) => None,
                            }
                        } else {
                            Some(stat.mzxid)
                        }
                    }
                    _ => None,
                };
                return Ok(Fenced::Published { zxid });
            }
            Err(MultiWriteError::OperationFailed { index, source }) => (index, source),
            Err(err) => {
                let err: zk::Error = err.into();
                if session_ended(&err) {
                    return Ok(Fenced::Deposed);
                }
                return Err(op(&writes[0].path, err).into());
            }
        };
        // The fence: our election node is gone or changed.
        if index == 0 && matches!(source, zk::Error::NoNode | zk::Error::BadVersion) {
            return Ok(Fenced::Deposed);
        }
        let Some(w) = index.checked_sub(1).and_then(|i| writes.get_mut(i)) else {
            return Err(op(&writes[0].path, source).into());
        };
        match source {
            // The znode exists after all, or not: write it the other way.
            zk::Error::NodeExists => w.exists = true,
            zk::Error::NoNode if w.exists => w.exists = false,
            zk::Error::NoNode if !w.created_parent => {
                w.created_parent = true;
                match acl::make_dirs(client, layout.root(), &w.parent, values.policy()).await {
                    Ok(()) => {}
                    Err(err) if session_ended(&err) => return Ok(Fenced::Deposed),
                    Err(err) => return Err(ZkError::op("create", &w.parent, err).into()),
                }
            }
            err => {
                if session_ended(&err) {
                    return Ok(Fenced::Deposed);
                }
                return Err(op(&w.path, err).into());
            }
        }
    }
    // Someone keeps creating and deleting the znodes under us: report rather than spin.
    Err(ZkError::op("write", &writes[0].path, zk::Error::RuntimeInconsistent).into())
}

/// One znode of a fenced publish.
struct Write<'a> {
    path: String,
    parent: String,
    data: &'a [u8],
    exists: bool,
    created_parent: bool,
}

/// The session that won the election is over: so is the leadership.
fn session_ended(err: &zk::Error) -> bool {
    matches!(err, zk::Error::SessionExpired | zk::Error::ClientClosed)
}
