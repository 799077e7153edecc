//! Changing a running HAProxy's servers through its Runtime API (the admin stats socket) instead
//! of reloading it, after herald swapped the configuration file.
//!
//! A reload forks a new worker for every membership change, and the old one lingers while it
//! has connections; HAProxy 2.6 can make the same change in place (measured on Debian's 2.6.12):
//! `add server B/N ADDR:PORT OPTIONS…` (created in maintenance; then `enable health` and
//! `enable server`), `set server B/N addr A port P`, `set weight B/N W`, and for a server that
//! left `set server B/N state drain`, waiting (bounded) until its sessions end, `state maint`,
//! then `del server` — the same as a graceful removal by reload, without the reload.
//!
//! The file stays the truth: herald reads the servers of each managed backend from the file it
//! just wrote and compares them with `show servers state B`. What differs is changed through the
//! socket, then `show servers state` is read again and must match. What HAProxy cannot change at
//! runtime — a server's options other than its address and weight, the backend's
//! `default-server` line, an option HAProxy refuses for a dynamic server (`cookie`, `init-addr`,
//! …) — falls back to the reload command, after which the state must match too. A server added
//! at runtime does not inherit `default-server` in 2.6, so herald passes the backend's (and the
//! `defaults` section's) `default-server` options before the server's own.
//!
//! A server an operator put in maintenance through the socket is left so. The
//! pure parts — reading the file's backend, reading `show servers state` and `show stat`, the
//! plan — are functions tested without a HAProxy.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

/// Where HAProxy's admin socket is and which backends herald keeps.
#[derive(Debug, Clone)]
pub struct Haproxy {
    pub socket: PathBuf,
    /// The backends (or listen sections) whose servers follow the file.
    pub backends: Vec<String>,
    /// How long a removed server may keep its sessions before they are shut.
    pub drain: Duration,
    /// Bound on each socket command.
    pub timeout: Duration,
    /// How long HAProxy may take to show the file's servers after a reload.
    pub load_timeout: Duration,
}

/// A `server` line of the file, with the `default-server` options in force for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    pub host: String,
    pub port: u16,
    pub weight: u32,
    /// `disabled`: HAProxy starts it in maintenance.
    pub disabled: bool,
    /// Every word after the address, as written.
    pub options: Vec<String>,
}

impl Server {
    /// The options but the weight: what a runtime change cannot alter.
    fn fixed_options(&self) -> Vec<&str> {
        let mut out = Vec::new();
        let mut words = self.options.iter();
        while let Some(word) = words.next() {
            if word == "weight" {
                words.next();
                continue;
            }
            out.push(word.as_str());
        }
        out
    }
}

/// One backend section of the file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Section {
    /// The `default-server` words of the `defaults` section before it, then its own.
    pub defaults: Vec<String>,
    pub servers: BTreeMap<String, Server>,
}

/// A server as `show servers state` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Live {
    pub name: String,
    /// `srv_addr` (`-` when unresolved).
    pub addr: String,
    /// `srv_fqdn` (`-` when the server was given an IP address).
    pub fqdn: String,
    pub port: u16,
    /// `srv_uweight`.
    pub weight: u32,
    /// `srv_admin_state`: bit 0x01 forced maintenance, 0x04 maintenance from the configuration.
    pub admin: u32,
}

const FORCED_MAINT: u32 = 0x01;
const CONFIG_MAINT: u32 = 0x04;

impl Live {
    fn answers_at(&self, server: &Server) -> bool {
        (self.addr == server.host || self.fqdn == server.host) && self.port == server.port
    }
}

/// Section keywords of haproxy.cfg (2.6): a line starting with one ends the section before it.
const SECTIONS: [&str; 15] = [
    "global",
    "defaults",
    "frontend",
    "backend",
    "listen",
    "peers",
    "resolvers",
    "userlist",
    "mailers",
    "program",
    "http-errors",
    "ring",
    "cache",
    "log-forward",
    "fcgi-app",
];

/// The words of a config line, up to a comment.
fn words(line: &str) -> Vec<&str> {
    line.split_whitespace()
        .take_while(|w| !w.starts_with('#'))
        .collect()
}

/// `host:port` (IPv6 as `[::1]:80` or `::1:80`, as HAProxy reads it).
fn host_port(address: &str) -> Option<(String, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() || host.contains('@') {
        return None;
    }
    Some((host.to_owned(), port.parse().ok()?))
}

/// Reads backend (or listen section) `name` of a haproxy.cfg.
pub fn configured(conf: &[u8], name: &str) -> Result<Section, String> {
    let text = String::from_utf8_lossy(conf);
    let mut defaults: Vec<String> = Vec::new();
    let mut current: Option<&str> = None;
    // Whether the lines read now are those of backend `name`.
    let mut ours = false;
    let mut found: Option<Section> = None;
    for (n, line) in text.lines().enumerate() {
        let w = words(line);
        let Some(&first) = w.first() else { continue };
        if SECTIONS.contains(&first) {
            current = Some(first);
            if first == "defaults" {
                defaults.clear();
            }
            ours = matches!(first, "backend" | "listen") && w.get(1) == Some(&name);
            if ours {
                if found.is_some() {
                    return Err(format!("backend {name} is defined twice"));
                }
                found = Some(Section {
                    defaults: defaults.clone(),
                    servers: BTreeMap::new(),
                });
            }
            continue;
        }
        match first {
            "default-server" if current == Some("defaults") => {
                defaults.extend(w[1..].iter().map(|s| (*s).to_owned()));
            }
            "default-server" if ours => {
                if let Some(section) = found.as_mut() {
                    section
                        .defaults
                        .extend(w[1..].iter().map(|s| (*s).to_owned()));
                }
            }
            "server" if ours => {
                let (Some(server), Some(address)) = (w.get(1), w.get(2)) else {
                    return Err(format!(
                        "line {}: a server line needs a name and an address",
                        n + 1
                    ));
                };
                let (host, port) = host_port(address).ok_or_else(|| {
                    format!(
                        "line {}: server {server}'s address {address:?} is not HOST:PORT",
                        n + 1
                    )
                })?;
                let options: Vec<String> = w[3..].iter().map(|s| (*s).to_owned()).collect();
                let weight = match options.iter().position(|o| o == "weight") {
                    Some(at) => options
                        .get(at + 1)
                        .and_then(|v| v.parse().ok())
                        .ok_or_else(|| {
                            format!("line {}: server {server}'s weight is not a number", n + 1)
                        })?,
                    None => 1,
                };
                let disabled = options.iter().any(|o| o == "disabled");
                let section = found.as_mut().ok_or("unreachable")?;
                if section
                    .servers
                    .insert(
                        (*server).to_owned(),
                        Server {
                            host,
                            port,
                            weight,
                            disabled,
                            options,
                        },
                    )
                    .is_some()
                {
                    return Err(format!(
                        "line {}: server {name}/{server} is defined twice",
                        n + 1
                    ));
                }
            }
            _ => {}
        }
    }
    found.ok_or_else(|| format!("the file has no backend {name}"))
}

/// Reads `show servers state B` (format 1): the servers of B.
pub fn parse_state(out: &str) -> Result<Vec<Live>, String> {
    let mut lines = out.lines();
    let version = lines.next().unwrap_or_default().trim();
    if version != "1" {
        return Err(format!("HAProxy answered {:?}", first_line(out)));
    }
    let mut header: Vec<&str> = Vec::new();
    let mut servers = Vec::new();
    for line in lines {
        if let Some(names) = line.strip_prefix('#') {
            header = names.split_whitespace().collect();
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.is_empty() {
            continue;
        }
        let get = |name: &str| {
            header
                .iter()
                .position(|h| *h == name)
                .and_then(|at| fields.get(at).copied())
                .ok_or_else(|| format!("show servers state has no {name}"))
        };
        let number = |name: &str| -> Result<u32, String> {
            get(name)?
                .parse()
                .map_err(|_| format!("show servers state: {name} is not a number"))
        };
        servers.push(Live {
            name: get("srv_name")?.to_owned(),
            addr: get("srv_addr")?.to_owned(),
            fqdn: get("srv_fqdn")?.to_owned(),
            port: number("srv_port")?
                .try_into()
                .map_err(|_| "show servers state: srv_port is not a port".to_owned())?,
            weight: number("srv_uweight")?,
            admin: number("srv_admin_state")?,
        });
    }
    Ok(servers)
}

/// Reads `show stat` (CSV): current sessions per server of `backend`.
pub fn parse_sessions(out: &str, backend: &str) -> BTreeMap<String, u64> {
    let mut lines = out.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .trim_start_matches("# ")
        .split(',')
        .collect();
    let at = |name| header.iter().position(|h| *h == name);
    let (Some(px), Some(sv), Some(scur)) = (at("pxname"), at("svname"), at("scur")) else {
        return BTreeMap::new();
    };
    lines
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|f| f.get(px) == Some(&backend))
        .filter(|f| !matches!(f.get(sv), Some(&"BACKEND" | &"FRONTEND") | None))
        .filter_map(|f| Some((f[sv].to_owned(), f.get(scur)?.parse().ok()?)))
        .collect()
}

/// What to do to make one backend match the file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// In the file, not in HAProxy.
    pub add: Vec<String>,
    /// In HAProxy, not in the file.
    pub remove: Vec<String>,
    /// Both, at another address or port.
    pub readdress: Vec<String>,
    /// Both, with another weight.
    pub reweigh: Vec<String>,
    /// Why the change needs a reload (empty: it can be made at runtime).
    pub reload_for: Vec<String>,
}

impl Plan {
    pub fn is_done(&self) -> bool {
        self.add.is_empty()
            && self.remove.is_empty()
            && self.readdress.is_empty()
            && self.reweigh.is_empty()
            && self.reload_for.is_empty()
    }
}

/// Compares the file's backend (`new`; `old` is the file it replaced, if known) with HAProxy's.
pub fn plan(old: Option<&Section>, new: &Section, live: &[Live]) -> Plan {
    let mut plan = Plan::default();
    let live_names: BTreeSet<&str> = live.iter().map(|l| l.name.as_str()).collect();
    if let Some(old) = old
        && old.defaults != new.defaults
        && !new.servers.is_empty()
    {
        plan.reload_for
            .push("the backend's default-server options changed".to_owned());
    }
    for (name, server) in &new.servers {
        let Some(l) = live.iter().find(|l| l.name == *name) else {
            plan.add.push(name.clone());
            continue;
        };
        if let Some(before) = old.and_then(|o| o.servers.get(name))
            && before.fixed_options() != server.fixed_options()
        {
            plan.reload_for
                .push(format!("server {name}'s options changed"));
        }
        if !l.answers_at(server) {
            plan.readdress.push(name.clone());
        }
        if l.weight != server.weight {
            plan.reweigh.push(name.clone());
        }
    }
    plan.remove = live_names
        .into_iter()
        .filter(|n| !new.servers.contains_key(*n))
        .map(str::to_owned)
        .collect();
    plan
}

/// What one apply changed, for the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changed {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub readdressed: Vec<String>,
    pub reweighed: Vec<String>,
}

impl Changed {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.readdressed.is_empty()
            && self.reweighed.is_empty()
    }
}

impl std::fmt::Display for Changed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        for (verb, names) in [
            ("added", &self.added),
            ("removed", &self.removed),
            ("moved", &self.readdressed),
            ("reweighed", &self.reweighed),
        ] {
            if !names.is_empty() {
                parts.push(format!("{verb} {}", names.join(", ")));
            }
        }
        f.write_str(&parts.join("; "))
    }
}

/// Why HAProxy does not match the file.
#[derive(Debug, thiserror::Error)]
pub enum HaproxyError {
    #[error("cannot reach HAProxy's socket {}: {source}", .socket.display())]
    Socket {
        socket: PathBuf,
        source: std::io::Error,
    },
    #[error("HAProxy's socket did not answer {command:?} within {}", humantime::format_duration(*.after))]
    TimedOut { command: String, after: Duration },
    #[error("HAProxy refused {command:?}: {said}")]
    Refused { command: String, said: String },
    #[error("{0}")]
    Conf(String),
    /// The change needs a reload (the reasons, joined).
    #[error("{0}; a reload applies it")]
    NeedsReload(String),
    #[error("HAProxy does not match the file: {0}")]
    Differs(String),
}

fn first_line(s: &str) -> &str {
    s.lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
}

/// Whether a command's answer says it worked. HAProxy 2.6's CLI has no status codes: success is
/// an empty answer or one of these; anything else is its error message.
fn succeeded(answer: &str) -> bool {
    let said = first_line(answer);
    said.is_empty()
        || [
            "New server registered",
            "Server deleted",
            "IP changed",
            "port changed",
            "no need to change",
        ]
        .iter()
        .any(|ok| said.starts_with(ok))
}

impl Haproxy {
    /// Sends one command and reads the whole answer.
    async fn ask(&self, command: &str) -> Result<String, HaproxyError> {
        let exchange = async {
            let mut stream = tokio::net::UnixStream::connect(&self.socket).await?;
            stream.write_all(format!("{command}\n").as_bytes()).await?;
            let mut out = String::new();
            stream.read_to_string(&mut out).await?;
            Ok::<_, std::io::Error>(out)
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(source)) => Err(HaproxyError::Socket {
                socket: self.socket.clone(),
                source,
            }),
            Err(_) => Err(HaproxyError::TimedOut {
                command: command.to_owned(),
                after: self.timeout,
            }),
        }
    }

    /// Sends a command that changes something; its answer must say it worked.
    async fn tell(&self, command: String) -> Result<(), HaproxyError> {
        let answer = self.ask(&command).await?;
        if succeeded(&answer) {
            tracing::debug!(%command, "HAProxy did it");
            Ok(())
        } else {
            Err(HaproxyError::Refused {
                command,
                said: first_line(&answer).to_owned(),
            })
        }
    }

    async fn state(&self, backend: &str) -> Result<Vec<Live>, HaproxyError> {
        let out = self.ask(&format!("show servers state {backend}")).await?;
        if first_line(&out).starts_with("Can't find backend") {
            return Err(HaproxyError::Conf(format!(
                "HAProxy has no backend {backend}; is --haproxy the socket of the HAProxy that reads the file?"
            )));
        }
        parse_state(&out).map_err(HaproxyError::Conf)
    }

    fn sections(&self, conf: &[u8]) -> Result<Vec<(String, Section)>, HaproxyError> {
        self.backends
            .iter()
            .map(|b| {
                configured(conf, b)
                    .map(|s| (b.clone(), s))
                    .map_err(|e| HaproxyError::Conf(format!("the file's backend {b}: {e}")))
            })
            .collect()
    }

    /// Makes HAProxy's servers match `conf` through the socket (`old`: the file `conf`
    /// replaced, to tell option changes); reads the state again afterwards to confirm it.
    pub async fn apply(&self, old: Option<&[u8]>, conf: &[u8]) -> Result<Changed, HaproxyError> {
        let new = self.sections(conf)?;
        // An old file that cannot be read tells nothing about options: compare without it.
        let old: BTreeMap<String, Section> = old
            .and_then(|old| self.sections(old).ok())
            .unwrap_or_default()
            .into_iter()
            .collect();
        let mut changed = Changed::default();
        // A second round when the check afterwards differs: someone else changed HAProxy
        // between our reading its state and our commands (by hand, or a restart). Only what
        // still differs then goes to the reload.
        for round in 1..=2 {
            for (backend, section) in &new {
                let live = self.state(backend).await?;
                let old = old.get(backend).filter(|_| round == 1);
                let plan = plan(old, section, &live);
                if !plan.reload_for.is_empty() {
                    return Err(HaproxyError::NeedsReload(plan.reload_for.join("; ")));
                }
                self.carry_out(backend, section, &live, &plan, &mut changed)
                    .await?;
            }
            match self.verify(conf).await {
                Ok(()) => return Ok(changed),
                Err(HaproxyError::Differs(what)) if round == 1 => {
                    tracing::debug!("HAProxy changed meanwhile ({what}); applying again");
                }
                Err(err) => return Err(err),
            }
        }
        unreachable!("the second round returns")
    }

    /// Checks that HAProxy runs the file's servers (after a reload: waiting for the new worker).
    pub async fn verify(&self, conf: &[u8]) -> Result<(), HaproxyError> {
        for (backend, section) in self.sections(conf)? {
            let live = self.state(&backend).await?;
            let plan = plan(None, &section, &live);
            if !plan.is_done() {
                return Err(HaproxyError::Differs(describe(&backend, &plan)));
            }
            for l in &live {
                let disabled = section.servers.get(&l.name).is_some_and(|s| s.disabled);
                if l.admin & CONFIG_MAINT != 0 && !disabled {
                    return Err(HaproxyError::Differs(format!(
                        "{backend}/{} is in maintenance",
                        l.name
                    )));
                }
            }
        }
        Ok(())
    }

    /// Waits until HAProxy (reloaded) runs the file's servers.
    pub async fn settled(&self, conf: &[u8]) -> Result<(), HaproxyError> {
        let deadline = Instant::now() + self.load_timeout;
        loop {
            match self.verify(conf).await {
                Ok(()) => return Ok(()),
                Err(err @ HaproxyError::Conf(_)) => return Err(err),
                Err(err) if Instant::now() >= deadline => return Err(err),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    async fn carry_out(
        &self,
        backend: &str,
        section: &Section,
        live: &[Live],
        plan: &Plan,
        changed: &mut Changed,
    ) -> Result<(), HaproxyError> {
        // Additions and changes first: never fewer servers than needed in between.
        for name in &plan.readdress {
            let s = &section.servers[name];
            self.tell(format!(
                "set server {backend}/{name} addr {} port {}",
                s.host, s.port
            ))
            .await?;
            changed.readdressed.push(name.clone());
        }
        for name in &plan.reweigh {
            let s = &section.servers[name];
            self.tell(format!("set weight {backend}/{name} {}", s.weight))
                .await?;
            changed.reweighed.push(name.clone());
        }
        for name in &plan.add {
            let s = &section.servers[name];
            let (command, words) = add_command(backend, name, section, s);
            self.tell(command).await?;
            if !s.disabled {
                if words.contains(&"check") {
                    self.tell(format!("enable health {backend}/{name}")).await?;
                }
                if words.contains(&"agent-check") {
                    self.tell(format!("enable agent {backend}/{name}")).await?;
                }
                self.tell(format!("enable server {backend}/{name}")).await?;
            }
            changed.added.push(name.clone());
        }
        for l in live {
            if l.admin & FORCED_MAINT != 0 && section.servers.contains_key(&l.name) {
                tracing::debug!(
                    "{backend}/{} is in maintenance (set through the socket); herald leaves it so",
                    l.name
                );
            }
        }
        if plan.remove.is_empty() {
            return Ok(());
        }
        // Removals: drain (no new sessions), wait for the sessions to end, then remove.
        for name in &plan.remove {
            self.tell(format!("set server {backend}/{name} state drain"))
                .await?;
        }
        let deadline = Instant::now() + self.drain;
        loop {
            let stat = self.ask("show stat").await?;
            let sessions = parse_sessions(&stat, backend);
            let busy: Vec<&String> = plan
                .remove
                .iter()
                .filter(|n| sessions.get(*n).is_some_and(|&s| s > 0))
                .collect();
            if busy.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                for name in busy {
                    tracing::warn!(
                        "{backend}/{name} still had sessions after {}; shutting them",
                        humantime::format_duration(self.drain)
                    );
                    self.tell(format!("shutdown sessions server {backend}/{name}"))
                        .await?;
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for name in &plan.remove {
            self.tell(format!("set server {backend}/{name} state maint"))
                .await?;
            // Connections just closed may take a moment to be released.
            let deadline = Instant::now() + Duration::from_secs(2);
            loop {
                match self.tell(format!("del server {backend}/{name}")).await {
                    Ok(()) => break,
                    Err(HaproxyError::Refused { said, .. })
                        if said.contains("connection") && Instant::now() < deadline =>
                    {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(err) => return Err(err),
                }
            }
            changed.removed.push(name.clone());
        }
        Ok(())
    }
}

/// What a server added at runtime gets before the file's options: the connection-reuse
/// settings a server read from the file has by default. HAProxy 2.6 gives a dynamic server
/// `pool-max-conn 0` and `pool-purge-delay 0` instead, so every request through it opens a new
/// connection to the backend (measured: a third of the throughput of the same server loaded
/// from the file). The file's own options, later on the line, win.
const STATIC_DEFAULTS: [&str; 4] = ["pool-max-conn", "-1", "pool-purge-delay", "5s"];

/// `add server B/N ADDR:PORT …` for a server of the file, and the option words it carries:
/// the static defaults, the `default-server` options, then the server's own.
fn add_command<'a>(
    backend: &str,
    name: &str,
    section: &'a Section,
    s: &'a Server,
) -> (String, Vec<&'a str>) {
    let mut words: Vec<&str> = STATIC_DEFAULTS.to_vec();
    words.extend(section.defaults.iter().map(String::as_str));
    words.extend(s.options.iter().map(String::as_str));
    let address = if s.host.contains(':') {
        format!("[{}]:{}", s.host, s.port)
    } else {
        format!("{}:{}", s.host, s.port)
    };
    let command = format!("add server {backend}/{name} {address} {}", words.join(" "));
    (command, words)
}

fn describe(backend: &str, plan: &Plan) -> String {
    let mut parts = Vec::new();
    for (what, names) in [
        ("not in HAProxy", &plan.add),
        ("in HAProxy but not in the file", &plan.remove),
        ("at another address in HAProxy", &plan.readdress),
        ("of another weight in HAProxy", &plan.reweigh),
    ] {
        if !names.is_empty() {
            let full: Vec<String> = names.iter().map(|n| format!("{backend}/{n}")).collect();
            parts.push(format!("{} {what}", full.join(", ")));
        }
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONF: &str = "global\n    stats socket /run/haproxy/admin.sock level admin\n\
        defaults\n    mode http\n    default-server inter 1s\n\
        frontend web\n    bind *:80\n    default_backend web\n\
        backend other\n    server o1 10.0.0.9:80 check\n\
        backend web # the pool\n    balance roundrobin\n    default-server rise 1 fall 1\n\
        server db1 10.0.0.5:5432 weight 1 check\n  server db2 ::1:5432 weight 0 check  # soft\n\
        server db3 [fe80::1]:6432 check disabled\n\
        listen stats\n    bind :8404\n    server s9 127.0.0.1:9 check\n";

    fn server(host: &str, port: u16, weight: u32, options: &[&str]) -> Server {
        Server {
            host: host.into(),
            port,
            weight,
            disabled: options.contains(&"disabled"),
            options: options.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn a_backend_is_read_with_its_default_server_options() {
        let web = configured(CONF.as_bytes(), "web").unwrap();
        assert_eq!(web.defaults, ["inter", "1s", "rise", "1", "fall", "1"]);
        assert_eq!(
            web.servers.into_iter().collect::<Vec<_>>(),
            [
                (
                    "db1".to_owned(),
                    server("10.0.0.5", 5432, 1, &["weight", "1", "check"])
                ),
                (
                    "db2".to_owned(),
                    server("::1", 5432, 0, &["weight", "0", "check"])
                ),
                (
                    "db3".to_owned(),
                    server("fe80::1", 6432, 1, &["check", "disabled"])
                ),
            ]
        );
        let other = configured(CONF.as_bytes(), "other").unwrap();
        assert_eq!(other.defaults, ["inter", "1s"]);
        assert_eq!(other.servers.keys().collect::<Vec<_>>(), ["o1"]);
        assert_eq!(
            configured(CONF.as_bytes(), "stats").unwrap().servers.len(),
            1
        );
        assert!(
            configured(CONF.as_bytes(), "nope")
                .unwrap_err()
                .contains("no backend nope")
        );
        assert!(
            configured(b"backend web\n server a nohost check\n", "web")
                .unwrap_err()
                .contains("line 2")
        );
        assert!(
            configured(b"backend web\n server a h:1\n server a h:2\n", "web")
                .unwrap_err()
                .contains("twice")
        );
    }

    const STATE: &str = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port\n\
        3 web 1 db1 10.0.0.5 2 0 1 1 12 6 3 1 6 0 0 0 - 5432 - 0 0 - - 0\n\
        3 web 2 db4 127.0.0.1 2 1 3 3 10 6 3 4 6 0 0 0 localhost 18002 - 0 0 - - 0\n\n";

    #[test]
    fn show_servers_state_as_haproxy_2_6_prints_it() {
        let live = parse_state(STATE).unwrap();
        assert_eq!(
            live,
            [
                Live {
                    name: "db1".into(),
                    addr: "10.0.0.5".into(),
                    fqdn: "-".into(),
                    port: 5432,
                    weight: 1,
                    admin: 0
                },
                Live {
                    name: "db4".into(),
                    addr: "127.0.0.1".into(),
                    fqdn: "localhost".into(),
                    port: 18002,
                    weight: 3,
                    admin: 1
                }
            ]
        );
        assert!(parse_state("Can't find backend.\n").is_err());
        assert_eq!(parse_state("1\n# be_id srv_name\n").unwrap(), []);
    }

    #[test]
    fn sessions_are_read_per_server_of_the_backend() {
        let stat = "# pxname,svname,qcur,qmax,scur,smax\nweb,FRONTEND,0,0,9,9\nweb,db1,0,0,2,5\n\
            web,db4,0,0,0,1\nweb,BACKEND,0,0,2,5\nother,db1,0,0,7,7\n";
        assert_eq!(
            parse_sessions(stat, "web").into_iter().collect::<Vec<_>>(),
            [("db1".to_owned(), 2), ("db4".to_owned(), 0)]
        );
    }

    #[test]
    fn the_plan_adds_removes_moves_reweighs_and_names_what_needs_a_reload() {
        let live = parse_state(STATE).unwrap();
        let new = Section {
            defaults: vec!["rise".into(), "1".into()],
            servers: [
                (
                    "db1".to_owned(),
                    server("10.0.0.5", 5433, 0, &["weight", "0", "check"]),
                ),
                ("db2".to_owned(), server("10.0.0.6", 5432, 1, &["check"])),
            ]
            .into(),
        };
        let p = plan(None, &new, &live);
        assert_eq!(p.add, ["db2"]);
        assert_eq!(p.remove, ["db4"]);
        assert_eq!(p.readdress, ["db1"]);
        assert_eq!(p.reweigh, ["db1"]);
        assert!(p.reload_for.is_empty());
        // The same servers with another option, or other default-server options: a reload.
        let mut old = new.clone();
        old.servers
            .insert("db1".into(), server("10.0.0.5", 5432, 1, &["weight", "1"]));
        let p = plan(Some(&old), &new, &live);
        assert_eq!(p.reload_for, ["server db1's options changed"]);
        let mut old = new.clone();
        old.defaults.clear();
        assert_eq!(
            plan(Some(&old), &new, &live).reload_for,
            ["the backend's default-server options changed"]
        );
        // A hostname matches its fqdn; nothing to do when all agree.
        let same = Section {
            defaults: vec![],
            servers: [
                ("db1".to_owned(), server("10.0.0.5", 5432, 1, &["check"])),
                (
                    "db4".to_owned(),
                    server("localhost", 18002, 3, &["weight", "3"]),
                ),
            ]
            .into(),
        };
        assert!(plan(Some(&same), &same, &live).is_done());
    }

    #[test]
    fn a_server_is_added_with_static_connection_reuse_then_the_files_options() {
        let web = configured(CONF.as_bytes(), "web").unwrap();
        let (command, words) = add_command("web", "db2", &web, &web.servers["db2"]);
        assert_eq!(
            command,
            "add server web/db2 [::1]:5432 pool-max-conn -1 pool-purge-delay 5s inter 1s rise 1 fall 1 weight 0 check"
        );
        assert!(words.contains(&"check"));
    }

    #[test]
    fn an_answer_is_success_only_when_haproxy_says_so() {
        assert!(succeeded(""));
        assert!(succeeded("\n"));
        assert!(succeeded("New server registered.\n"));
        assert!(succeeded("Server deleted.\n"));
        assert!(succeeded(
            "IP changed from '127.0.0.1' to '127.0.0.2' by 'stats socket command'\n"
        ));
        assert!(!succeeded(
            "'cookie' option is not accepted for dynamic server\n"
        ));
        assert!(!succeeded(
            "Only servers in maintenance mode can be deleted.\n"
        ));
        assert!(!succeeded("No such server.\n"));
    }
}
