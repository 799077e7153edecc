//! Registering through a host agent: `herald host` keeps one ZooKeeper session for every
//! service process on its machine, and each `herald announce --host-agent SOCKET` (or
//! `herald run --service … --host-agent SOCKET`) hands it its registration over a private Unix
//! socket instead of opening a session of its own. The process keeps its health checks, its
//! drain switch and its control socket; the host agent runs the same registrar
//! ([`super::registrar::maintain`]) for it on the shared session, so the instance node is
//! exactly what it would be otherwise (Curator-compatible, ephemeral, owner-checked).
//!
//! ```text
//! herald announce ── health, drain ─▶ wanted ─┐            herald host (one session)
//!                    document ────────────────┼─ socket ─▶ registrar::maintain ─▶ ZooKeeper
//!                    ◀── status (registered) ─┘
//! ```
//!
//! The protocol is one JSON object per line. The agent says [`ToHost::Register`] first, then
//! every change of wanted state and document, and [`ToHost::Stop`] when it ends (the host then
//! deletes the node with that reason and answers [`ToAgent::Stopped`]). A connection that
//! closes without a stop is a process that ended by itself: its node is deleted with the
//! reason `exited`. When the host agent goes away, its instances go with its session; the
//! agents connect again and register anew.

pub mod agent;
pub mod host;

use std::io;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The longest line either side reads: a document is at most a znode's size, and JSON escaping
/// may grow it.
pub const MAX_LINE: u64 = 8 << 20;

/// What an agent tells the host agent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ToHost {
    /// The first message: which instance, its document (the instance JSON, as written to the
    /// node) and its generation, and whether a node held by another session at the first
    /// registration is given up on (exit 8) rather than waited for.
    Register {
        service: String,
        id: String,
        generation: u64,
        document: String,
        give_up_on_duplicate: bool,
    },
    /// Wanted (healthy and not drained out), or not and why (`drained`, `unhealthy`).
    Wanted { now: bool, why: String },
    /// A new document (new metadata, a soft drain's weight).
    Document { generation: u64, document: String },
    /// The registration ends: delete the node, recording `why` (`stopped`, `exited`, …).
    Stop { why: String },
}

/// What the host agent tells an agent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ToAgent {
    /// What the registrar carried out (see [`super::Status`]).
    Status {
        registered: bool,
        wanted: bool,
        document: u64,
        left: Option<String>,
    },
    /// The registration failed for good; `kind` is `duplicate`, `persistent`, `refused` or
    /// `error`.
    Failed {
        kind: String,
        message: String,
        path: Option<String>,
        owner: Option<i64>,
    },
    /// The node is deleted (after [`ToHost::Stop`]).
    Stopped,
}

/// Writes `message` as one line.
pub async fn send<W: AsyncWrite + Unpin>(to: &mut W, message: &impl Serialize) -> io::Result<()> {
    let mut line = serde_json::to_vec(message).map_err(io::Error::other)?;
    line.push(b'\n');
    to.write_all(&line).await?;
    to.flush().await
}

/// Reads one line as a message; `None` at the end of the stream.
///
/// # Notable errors
/// `InvalidData` for a line longer than [`MAX_LINE`], cut short, or not such a message.
pub async fn receive<R, T>(from: &mut R) -> io::Result<Option<T>>
where
    R: AsyncBufRead + Unpin,
    T: for<'de> Deserialize<'de>,
{
    let mut line = Vec::new();
    let read = from.take(MAX_LINE).read_until(b'\n', &mut line).await?;
    if read == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a message longer than the limit, or cut short",
        ));
    }
    serde_json::from_slice(&line)
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn messages_go_one_per_line_and_back() {
        let messages = vec![
            ToHost::Register {
                service: "pg".into(),
                id: "db1".into(),
                generation: 1,
                document: "{\"name\":\"pg\",\n\"id\":\"db1\"}".into(),
                give_up_on_duplicate: true,
            },
            ToHost::Wanted {
                now: false,
                why: "drained".into(),
            },
            ToHost::Stop {
                why: "stopped".into(),
            },
        ];
        let mut wire = Vec::new();
        for m in &messages {
            send(&mut wire, m).await.unwrap();
        }
        assert_eq!(wire.iter().filter(|b| **b == b'\n').count(), 3);
        let mut reader = tokio::io::BufReader::new(&wire[..]);
        for m in &messages {
            assert_eq!(
                &receive::<_, ToHost>(&mut reader).await.unwrap().unwrap(),
                m
            );
        }
        assert_eq!(receive::<_, ToHost>(&mut reader).await.unwrap(), None);
        // Cut short, or not a message: refused.
        let mut cut = tokio::io::BufReader::new(&b"{\"type\":\"stop\""[..]);
        assert!(receive::<_, ToHost>(&mut cut).await.is_err());
        let mut other = tokio::io::BufReader::new(&b"{\"type\":\"shutdown\"}\n"[..]);
        assert!(receive::<_, ToHost>(&mut other).await.is_err());
    }
}
