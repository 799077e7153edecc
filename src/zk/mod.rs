//! The session layer every command uses: connect strings, credentials, TLS, connecting within a
//! deadline, and a [`Session`] that rebuilds its client after expiry.

mod children;
mod config;
mod error;
mod pace;
mod session;
mod tls;

pub use children::list_named;
pub use config::{ConnectString, DigestAuth, ZkConfig};
pub use error::{ZkError, state_error};
pub use pace::{Pace, paced};
pub use session::{Live, Session, SessionHandle, bounded, close, connect};
pub use tls::{REBUILD_WITH_TLS, TLS_BUILT, TlsFile, TlsFileError, ZkTls};
