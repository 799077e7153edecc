//! Making a running pgpool's node table match the pgpool.conf herald wrote, through pgpool's
//! PCP tools (`pcp_node_info`, `pcp_attach_node`, `pcp_detach_node`, `pcp_reload_config`).
//!
//! A reload alone does not do it (measured on pgpool 4.3.5): a backend added to the file is
//! loaded `down` and gets no query until it is attached; a backend removed from the file stays
//! `up` and keeps getting queries until it is detached; a changed address of a loaded backend is
//! ignored until pgpool restarts; and a restart with a stale `pgpool_status` brings a healthy
//! backend back `down`. So after every swap (and at start, and every `--sync-every`) herald
//! reads the node table, attaches the configured backends pgpool holds down, detaches
//! the ones that are up but no longer configured, and reads the table again:
//! what still differs is an error that names the backend, never silence.
//!
//! The PCP password comes from a PCPPASSFILE (`host:port:user:password`, mode 0600), never from
//! argv. The pure parts — reading backends from the file, reading `pcp_node_info -v`, the plan —
//! are functions tested without a pgpool.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

use crate::command::{CommandError, run_program};

/// Where pgpool's PCP listens and how herald talks to it.
#[derive(Debug, Clone)]
pub struct Pgpool {
    pub host: String,
    pub port: u16,
    /// `-U`; `None` lets the PCP tools use the OS user's name.
    pub user: Option<String>,
    /// The environment of the PCP tools (PATH, HOME, PCPPASSFILE).
    pub env: BTreeMap<OsString, OsString>,
    /// Bound on each PCP command.
    pub timeout: Duration,
    /// How long pgpool may take to show the backends of a reloaded file.
    pub load_timeout: Duration,
}

/// A backend as the file or pgpool names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// pgpool's view of one backend slot (`Status` of `pcp_node_info -v`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// 1, "waiting": attached, no connection made yet. Counts as up.
    Waiting,
    /// 2, "up".
    Up,
    /// 3, "down": detached (by a failover, an operator, or a stale pgpool_status).
    Down,
    /// 0, "unused", or any other code.
    Other,
}

impl Status {
    fn serving(self) -> bool {
        matches!(self, Status::Waiting | Status::Up)
    }
}

/// A loaded slot of pgpool's node table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub backend: Backend,
    pub status: Status,
}

/// Why pgpool does not match the file.
#[derive(Debug, thiserror::Error)]
pub enum PgpoolError {
    /// The tool's own diagnosis is in the message (said once: not also a source).
    #[error("{0}")]
    Pcp(CommandError),
    #[error("{what}: {reason}")]
    Conf { what: String, reason: String },
    #[error(
        "pgpool has not loaded backend {slots} of the new file within {}; is --pgpool the pgpool that reads it?",
        humantime::format_duration(*after)
    )]
    NotLoaded { slots: String, after: Duration },
    #[error("pgpool does not match the file: {0}")]
    Differs(String),
}

/// Reads the backends a pgpool.conf configures: `backend_hostnameN` and `backend_portN` lines
/// (comments and other settings are ignored). A slot with a host but no port, or the other way
/// round, is an error.
pub fn configured(conf: &[u8]) -> Result<BTreeMap<u32, Backend>, String> {
    let text = String::from_utf8_lossy(conf);
    let mut hosts: BTreeMap<u32, String> = BTreeMap::new();
    let mut ports: BTreeMap<u32, u16> = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        let Some((name, value)) = line.split_once('=') else {
            continue;
        };
        let name = name.trim();
        let value = value.split('#').next().unwrap_or("").trim();
        let unquoted = value.trim_matches('\'');
        for (prefix, is_host) in [("backend_hostname", true), ("backend_port", false)] {
            let Some(slot) = name.strip_prefix(prefix) else {
                continue;
            };
            let Ok(slot) = slot.parse::<u32>() else {
                continue;
            };
            if is_host {
                hosts.insert(slot, unquoted.to_owned());
            } else {
                let port = unquoted
                    .parse::<u16>()
                    .map_err(|_| format!("line {}: {name} is not a port number", n + 1))?;
                ports.insert(slot, port);
            }
        }
    }
    let mut out = BTreeMap::new();
    for slot in hosts
        .keys()
        .chain(ports.keys())
        .copied()
        .collect::<BTreeSet<_>>()
    {
        match (hosts.get(&slot), ports.get(&slot)) {
            (Some(host), Some(&port)) => {
                out.insert(
                    slot,
                    Backend {
                        host: host.clone(),
                        port,
                    },
                );
            }
            (Some(_), None) => {
                return Err(format!("backend_hostname{slot} has no backend_port{slot}"));
            }
            (None, _) => return Err(format!("backend_port{slot} has no backend_hostname{slot}")),
        }
    }
    Ok(out)
}

/// Reads one `pcp_node_info -v -n N` answer; `None` for a slot pgpool has not loaded ("No node
/// information available", or an error about the id).
pub fn parse_node_info(stdout: &str) -> Option<Node> {
    let mut fields: BTreeMap<&str, &str> = BTreeMap::new();
    for line in stdout.lines() {
        if let Some((name, value)) = line.split_once(':') {
            fields.entry(name.trim()).or_insert(value.trim());
        }
    }
    let host = fields.get("Hostname")?;
    let port = fields.get("Port")?.parse().ok()?;
    let status = match *fields.get("Status")? {
        "1" => Status::Waiting,
        "2" => Status::Up,
        "3" => Status::Down,
        _ => Status::Other,
    };
    Some(Node {
        backend: Backend {
            host: (*host).to_owned(),
            port,
        },
        status,
    })
}

/// What to do to make pgpool match the file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Configured, loaded with the file's address, and down.
    pub attach: Vec<u32>,
    /// Serving, but not in the file.
    pub detach: Vec<u32>,
    /// In the file, not in pgpool's table (yet).
    pub unloaded: Vec<u32>,
    /// Loaded with another address than the file's: pgpool applies it only at restart.
    pub moved: Vec<(u32, Backend, Backend)>,
}

impl Plan {
    pub fn is_done(&self) -> bool {
        self.attach.is_empty()
            && self.detach.is_empty()
            && self.unloaded.is_empty()
            && self.moved.is_empty()
    }
}

/// Compares the file's backends with pgpool's table.
pub fn plan(file: &BTreeMap<u32, Backend>, table: &BTreeMap<u32, Node>) -> Plan {
    let mut plan = Plan::default();
    for (&slot, want) in file {
        match table.get(&slot) {
            None => plan.unloaded.push(slot),
            Some(node) if node.backend != *want => {
                plan.moved.push((slot, node.backend.clone(), want.clone()))
            }
            Some(node) if !node.status.serving() => plan.attach.push(slot),
            Some(_) => {}
        }
    }
    for (&slot, node) in table {
        if !file.contains_key(&slot) && node.status.serving() {
            plan.detach.push(slot);
        }
    }
    plan
}

/// What a sync changed, for the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Synced {
    pub attached: Vec<u32>,
    pub detached: Vec<u32>,
}

fn slots_text(slots: &[u32]) -> String {
    slots
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl Pgpool {
    fn args(&self, extra: &[String]) -> Vec<String> {
        let mut args = vec![
            "-h".to_owned(),
            self.host.clone(),
            "-p".to_owned(),
            self.port.to_string(),
            "-w".to_owned(),
        ];
        if let Some(user) = &self.user {
            args.push("-U".to_owned());
            args.push(user.clone());
        }
        args.extend_from_slice(extra);
        args
    }

    async fn pcp(&self, tool: &'static str, extra: &[String]) -> Result<String, PgpoolError> {
        let out = run_program(tool, tool, &self.args(extra), &self.env, self.timeout)
            .await
            .map_err(PgpoolError::Pcp)?;
        // pcp tools of 4.3 exit 0 after some errors, saying so on stderr.
        if out.stdout.trim().is_empty()
            && let Some(line) = out.stderr.lines().find(|l| l.starts_with("ERROR"))
            && !out.stderr.contains("invalid node ID")
        {
            return Err(PgpoolError::Pcp(CommandError::Said {
                role: tool,
                code: 0,
                said: line.trim().to_owned(),
            }));
        }
        Ok(out.stdout)
    }

    /// `pcp_reload_config`: pgpool re-reads its files.
    pub async fn reload(&self) -> Result<(), PgpoolError> {
        self.pcp("pcp_reload_config", &[]).await.map(|_| ())
    }

    /// pgpool's table for slots `0..upto` and `0..pcp_node_count`.
    async fn table(&self, upto: u32) -> Result<BTreeMap<u32, Node>, PgpoolError> {
        let count = self.pcp("pcp_node_count", &[]).await?;
        let count: u32 = count.trim().parse().map_err(|_| PgpoolError::Conf {
            what: "pcp_node_count".to_owned(),
            reason: "did not print a number".to_owned(),
        })?;
        let mut table = BTreeMap::new();
        for slot in 0..count.max(upto) {
            let out = self
                .pcp(
                    "pcp_node_info",
                    &["-v".to_owned(), "-n".to_owned(), slot.to_string()],
                )
                .await?;
            if let Some(node) = parse_node_info(&out) {
                table.insert(slot, node);
            }
        }
        Ok(table)
    }

    /// Makes pgpool's node table match `conf` (the file as written): waits until pgpool has
    /// loaded every configured backend, attaches, detaches, and checks again.
    pub async fn sync(&self, conf: &[u8]) -> Result<Synced, PgpoolError> {
        let file = configured(conf).map_err(|reason| PgpoolError::Conf {
            what: "the file's backends".to_owned(),
            reason,
        })?;
        let upto = file.keys().next_back().map_or(0, |n| n + 1);
        let deadline = Instant::now() + self.load_timeout;
        let mut synced = Synced::default();
        loop {
            let table = match self.table(upto).await {
                Ok(table) => table,
                // pgpool restarts its PCP process after an attach or detach: the next call
                // may find nobody answering for a moment.
                Err(PgpoolError::Pcp(_))
                    if !(synced.attached.is_empty() && synced.detached.is_empty())
                        && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                Err(err) => return Err(err),
            };
            let mut plan = plan(&file, &table);
            // pgpool carries out an attach or detach on its own time: each slot is asked once
            // per sync, then waited for.
            plan.attach.retain(|slot| !synced.attached.contains(slot));
            plan.detach.retain(|slot| !synced.detached.contains(slot));
            let waiting = synced.attached.iter().chain(&synced.detached).any(|slot| {
                let serving = table.get(slot).is_some_and(|n| n.status.serving());
                serving != file.contains_key(slot)
            });
            if plan.is_done() && !waiting {
                return Ok(synced);
            }
            if !plan.moved.is_empty() {
                let moved: Vec<String> = plan
                    .moved
                    .iter()
                    .map(|(slot, have, want)| {
                        format!("backend {slot} is {have} in pgpool but {want} in the file")
                    })
                    .collect();
                // What can be done is done first: attach and detach the others.
                self.act(&plan, &mut synced).await?;
                return Err(PgpoolError::Differs(format!(
                    "{}; pgpool takes a new address for a backend only when it starts: restart pgpool",
                    moved.join("; ")
                )));
            }
            let acted = !plan.attach.is_empty() || !plan.detach.is_empty();
            self.act(&plan, &mut synced).await?;
            if Instant::now() >= deadline {
                let stuck: Vec<u32> = synced
                    .attached
                    .iter()
                    .chain(&synced.detached)
                    .copied()
                    .filter(|slot| {
                        table.get(slot).is_some_and(|n| n.status.serving())
                            != file.contains_key(slot)
                    })
                    .collect();
                return Err(if plan.unloaded.is_empty() {
                    PgpoolError::Differs(format!(
                        "backends {} did not follow attach or detach within {}",
                        slots_text(&stuck),
                        humantime::format_duration(self.load_timeout)
                    ))
                } else {
                    PgpoolError::NotLoaded {
                        slots: slots_text(&plan.unloaded),
                        after: self.load_timeout,
                    }
                });
            }
            if !acted {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// Attach first, then detach: never fewer backends than needed in between.
    async fn act(&self, plan: &Plan, synced: &mut Synced) -> Result<(), PgpoolError> {
        for &slot in &plan.attach {
            self.pcp("pcp_attach_node", &["-n".to_owned(), slot.to_string()])
                .await?;
            synced.attached.push(slot);
        }
        // Not `-g`: pgpool 4.3.5 deadlocks when a graceful detach arrives while its PCP
        // process is being restarted after an attach (seen: main waits for the PCP process,
        // which waits for its detach worker, which waits for main). A backend that left the
        // file is gone or deregistered anyway; in streaming replication mode pgpool then
        // ends only the sessions that used it.
        for &slot in &plan.detach {
            match self
                .pcp("pcp_detach_node", &["-n".to_owned(), slot.to_string()])
                .await
            {
                Ok(_) => {}
                // Down meanwhile (pgpool failed it over itself): what we wanted.
                Err(PgpoolError::Pcp(CommandError::Said { said, .. }))
                    if said.contains("is not valid for failover") => {}
                Err(err) => return Err(err),
            }
            synced.detached.push(slot);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(host: &str, port: u16) -> Backend {
        Backend {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn backends_are_read_from_the_whole_file() {
        let conf = b"# pgpool.conf\nport = 9999\nbackend_hostname0 = '10.0.0.5'\nbackend_port0 = 5432\n\
            backend_weight0 = 1\n#backend_hostname1 = 'old'\n  backend_hostname3='10.0.0.7'  # new\nbackend_port3 = 5433\n";
        let got = configured(conf).unwrap();
        assert_eq!(
            got.into_iter().collect::<Vec<_>>(),
            [(0, b("10.0.0.5", 5432)), (3, b("10.0.0.7", 5433))]
        );
        assert!(
            configured(b"backend_hostname2 = 'x'\n")
                .unwrap_err()
                .contains("backend_port2")
        );
        assert!(
            configured(b"backend_port2 = x\n")
                .unwrap_err()
                .contains("line 1")
        );
        assert!(configured(b"").unwrap().is_empty());
    }

    #[test]
    fn node_info_as_pgpool_4_3_prints_it() {
        let up = "Hostname               : 127.0.0.1\nPort                   : 27001\nStatus                 : 2\n\
            Weight                 : 0.500000\nStatus Name            : up\nLast Status Change     : 2026-12-02 07:58:20\n";
        assert_eq!(
            parse_node_info(up),
            Some(Node {
                backend: b("127.0.0.1", 27001),
                status: Status::Up
            })
        );
        let waiting = up.replace(": 2\n", ": 1\n");
        assert_eq!(parse_node_info(&waiting).unwrap().status, Status::Waiting);
        assert_eq!(
            parse_node_info(&up.replace(": 2\n", ": 3\n"))
                .unwrap()
                .status,
            Status::Down
        );
        assert_eq!(parse_node_info("No node information available\n\n"), None);
        assert_eq!(parse_node_info(""), None);
    }

    #[test]
    fn the_plan_attaches_detaches_and_names_what_only_a_restart_fixes() {
        let node = |host: &str, port, status| Node {
            backend: b(host, port),
            status,
        };
        let file: BTreeMap<u32, Backend> = [
            (0, b("a", 1)),
            (1, b("b", 1)),
            (2, b("c", 1)),
            (4, b("e", 1)),
        ]
        .into();
        let table: BTreeMap<u32, Node> = [
            (0, node("a", 1, Status::Up)),
            (1, node("b", 1, Status::Down)),
            (2, node("x", 1, Status::Up)),
            (3, node("d", 1, Status::Up)),
            (5, node("f", 1, Status::Down)),
        ]
        .into();
        let p = plan(&file, &table);
        assert_eq!(p.attach, [1]);
        assert_eq!(p.detach, [3]);
        assert_eq!(p.unloaded, [4]);
        assert_eq!(p.moved, [(2, b("x", 1), b("c", 1))]);
        assert!(!p.is_done());
        let same: BTreeMap<u32, Node> = [
            (0, node("a", 1, Status::Waiting)),
            (1, node("b", 1, Status::Up)),
            (2, node("c", 1, Status::Up)),
            (3, node("d", 1, Status::Down)),
            (4, node("e", 1, Status::Up)),
        ]
        .into();
        assert!(plan(&file, &same).is_done());
    }
}
