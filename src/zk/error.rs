//! Errors of the session layer and of ZooKeeper operations, with the znode they concern.

use std::time::Duration;

use zookeeper_client as zk;

/// A ZooKeeper failure, classified the way a user acts on it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ZkError {
    /// No session could be established (nothing listening, not a ZooKeeper, no quorum, or a
    /// TLS handshake that failed); `cause` says why when the last attempt told.
    #[error(
        "cannot reach ZooKeeper at {hosts} within {}: {}",
        humantime::format_duration(*.within),
        .cause.as_deref().unwrap_or("check --zk/HERALD_ZK and that the ensemble is up")
    )]
    Unreachable {
        hosts: String,
        within: Duration,
        cause: Option<String>,
    },

    /// The session was lost (expired or closed) and could not be regained in time.
    #[error("lost the ZooKeeper session while trying to {op} {path}: {source}")]
    Lost {
        op: &'static str,
        path: String,
        source: zk::Error,
    },

    /// The server rejected the digest credentials.
    #[error(
        "ZooKeeper at {hosts} rejected the credentials of user {user:?}; check HERALD_ZK_AUTH or --zk-auth-file"
    )]
    AuthFailed { hosts: String, user: String },

    /// The znode's ACL does not let this identity do that.
    #[error(
        "not authorized to {op} {path}; set HERALD_ZK_AUTH or --zk-auth-file to an identity its ACL allows"
    )]
    NoAuth { op: &'static str, path: String },

    /// Any other failure of an operation.
    #[error("ZooKeeper could not {op} {path}: {source}")]
    Op {
        op: &'static str,
        path: String,
        source: zk::Error,
    },
}

impl ZkError {
    /// Wraps the error of operation `op` on `path`.
    pub fn op(op: &'static str, path: &str, source: zk::Error) -> ZkError {
        let path = path.to_owned();
        match source {
            zk::Error::NoAuth => ZkError::NoAuth { op, path },
            zk::Error::SessionExpired
            | zk::Error::ClientClosed
            | zk::Error::ConnectionLoss
            | zk::Error::Timeout
            | zk::Error::NoHosts
            | zk::Error::SessionMoved => ZkError::Lost { op, path, source },
            source => ZkError::Op { op, path, source },
        }
    }

    /// True when the failure is about reaching ZooKeeper at all, not about the request.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, ZkError::Unreachable { .. } | ZkError::Lost { .. })
    }

    /// True when ZooKeeper refused this identity.
    pub fn is_denied(&self) -> bool {
        matches!(self, ZkError::AuthFailed { .. } | ZkError::NoAuth { .. })
    }
}

/// The client error that a session state reported by a watcher stands for.
pub fn state_error(state: zk::SessionState) -> zk::Error {
    match state {
        zk::SessionState::Expired => zk::Error::SessionExpired,
        zk::SessionState::AuthFailed => zk::Error::AuthFailed,
        zk::SessionState::Closed => zk::Error::ClientClosed,
        _ => zk::Error::ConnectionLoss,
    }
}
