//! Built-in derivations (presets): the common formats, so most outputs need no template.
//! Every preset gives empty output for an empty instance list; the caller decides whether an
//! empty value may be published. Instances without a plain `port` (Curator allows that) are
//! skipped by the presets that need one.

use super::derive::{DeriveError, instance_json};
use super::slots::SlotOf;
use crate::instance::Instance;

/// A built-in format. The examples below are over two instances `db1` (10.0.0.5:5432, weight 1,
/// registered first) and `db2` (10.0.0.6:5432, weight 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Preset {
    /// `hostports`: `host:port` of every instance with weight > 0, comma-separated, in order.
    /// IPv6 addresses are bracketed (`[::1]:5432`).
    ///
    /// ```text
    /// 10.0.0.5:5432
    /// ```
    HostPorts,
    /// `url`: one instance — the oldest with weight > 0 (registered first; ties: smallest id) —
    /// written into `format`, e.g. `postgresql://{meta.user}@{address}:{port}/app`:
    ///
    /// ```text
    /// postgresql://app@10.0.0.5:5432/app
    /// ```
    ///
    /// Placeholders: `{address}` (bracketed when IPv6), `{port}`, `{sslPort}`, `{id}`,
    /// `{service}`, `{meta.KEY}`, `{label.KEY}`, `{endpoint.NAME}`. Values are inserted as they
    /// are, not percent-encoded. A placeholder the instance has no value for, or a meta or
    /// label value with whitespace or a control character, is an error. No instance with
    /// weight > 0 gives an empty value.
    Url { format: String },
    /// `json`: the instances as one compact JSON array of [`instance_json`] objects, no
    /// trailing newline.
    ///
    /// ```text
    /// [{"address":"10.0.0.5","endpoints":{},"id":"db1",…,"weight":1},{…,"weight":0}]
    /// ```
    Json,
    /// `pgpool`: the backend block of pgpool.conf, one backend per instance, numbered by the
    /// output's stable slots (see [`super::slots`]: an instance keeps its number while it is
    /// registered, and a removed one leaves a gap), in slot order. The data directory
    /// is the instance's meta `data_directory` (default `/var/lib/postgresql/data`); the
    /// application name (what a standby's walreceiver says in `pg_stat_replication`, so
    /// pgpool can show its replication state) is meta `application_name`, default the
    /// instance id. The flag is meta `pgpool_flag` when given, else `ALLOW_TO_FAILOVER`, with
    /// `|ALWAYS_PRIMARY` for the instance whose `role` (meta, else label) is `primary`; the
    /// weight is as registered (0 kept). A value that would break the file (a quote, a
    /// backslash, a newline) is an error.
    ///
    /// ```text
    /// backend_hostname0 = '10.0.0.5'
    /// backend_port0 = 5432
    /// backend_weight0 = 1
    /// backend_data_directory0 = '/var/lib/postgresql/data'
    /// backend_application_name0 = 'db1'
    /// backend_flag0 = 'ALLOW_TO_FAILOVER'
    /// backend_hostname1 = '10.0.0.6'
    /// …
    /// ```
    Pgpool,
    /// `haproxy`: one `server` line per instance, for a backend section; weight 0 is kept
    /// (HAProxy sends such a server nothing). An address with whitespace or a weight over 256
    /// (HAProxy's largest) is an error.
    ///
    /// ```text
    /// server db1 10.0.0.5:5432 weight 1 check
    /// server db2 10.0.0.6:5432 weight 0 check
    /// ```
    Haproxy,
    /// `pool_passwd`: pgpool's password file, one `USER:md5HASH` line per user (sorted), from
    /// the instances' meta `user` and `password` (instances without both are skipped). The
    /// hash is PostgreSQL's md5 (`md5` + md5(password + user)), never the password itself; it
    /// works where the backends authenticate with md5 (scram-sha-256 needs pgpool's AES
    /// entries and its key, which herald does not write). Instances that give one user
    /// different passwords are refused, naming both (the old value stays published until
    /// they agree, e.g. after every server has been given the new one by SIGHUP).
    ///
    /// ```text
    /// app:md5f44ca69ffd2494f6d3e571acf7a949aa
    /// ```
    PoolPasswd,
}

/// The preset names, for error messages.
pub const PRESET_NAMES: &str = "hostports, url, json, pgpool, pool_passwd or haproxy";

const DEFAULT_DATA_DIRECTORY: &str = "/var/lib/postgresql/data";
const DEFAULT_PGPOOL_FLAG: &str = "ALLOW_TO_FAILOVER";

impl Preset {
    /// The preset called `name`; `url` needs its format. `None` for an unknown name.
    pub fn from_name(name: &str, url: Option<String>) -> Option<Result<Preset, DeriveError>> {
        Some(Ok(match name {
            "hostports" => Preset::HostPorts,
            "json" => Preset::Json,
            "pgpool" => Preset::Pgpool,
            "haproxy" => Preset::Haproxy,
            "pool_passwd" => Preset::PoolPasswd,
            "url" => {
                let Some(format) = url else {
                    return Some(Err(DeriveError::UrlFormat {
                        reason: "preset \"url\" needs a url format".to_owned(),
                    }));
                };
                if let Err(e) = parse_url_format(&format) {
                    return Some(Err(e));
                }
                Preset::Url { format }
            }
            _ => return None,
        }))
    }

    /// The name as written in the config.
    pub fn name(&self) -> &'static str {
        match self {
            Preset::HostPorts => "hostports",
            Preset::Url { .. } => "url",
            Preset::Json => "json",
            Preset::Pgpool => "pgpool",
            Preset::Haproxy => "haproxy",
            Preset::PoolPasswd => "pool_passwd",
        }
    }

    /// The value over `instances` (sorted by service, id).
    /// Slotted outputs pass `slots`; without them `pgpool` numbers the instances from 0.
    pub(super) fn render(
        &self,
        instances: &[&Instance],
        slots: Option<&SlotOf>,
    ) -> Result<Vec<u8>, DeriveError> {
        if instances.is_empty() {
            return Ok(Vec::new());
        }
        // `url` takes one instance of them: it checks that one.
        if !matches!(self, Preset::Url { .. })
            && let Some(refused) = instances.iter().find_map(|i| self.refuses(i))
        {
            return Err(refused);
        }
        let out = match self {
            Preset::HostPorts => hostports(instances)?,
            Preset::Url { format } => url(format, instances)?,
            Preset::Json => {
                let list: Vec<serde_json::Value> =
                    instances.iter().map(|i| instance_json(i, slots)).collect();
                return serde_json::to_vec(&list).map_err(|e| {
                    DeriveError::Io(format!("json: cannot encode the instances: {e}"))
                });
            }
            Preset::Pgpool => pgpool(instances, slots)?,
            Preset::Haproxy => haproxy(instances)?,
            Preset::PoolPasswd => pool_passwd(instances)?,
        };
        Ok(out.into_bytes())
    }
}

impl Preset {
    /// Why this preset cannot render instance `i` (an address or metadata that would break the
    /// format, a placeholder it lacks), if it cannot. The director leaves such an instance out
    /// of the value, saying so, rather than publish nothing; [`Preset::render`] refuses it.
    /// Instances the preset leaves out anyway (no port, weight 0 where that drops them) pass.
    pub fn refuses(&self, i: &Instance) -> Option<DeriveError> {
        let checked = match self {
            Preset::HostPorts if i.port.is_some() && i.weight != 0 => {
                check_address("hostports", i, &[','])
            }
            Preset::Url { format } if i.weight > 0 => url_refuses(format, i),
            Preset::Pgpool if i.port.is_some() => pgpool_refuses(i),
            Preset::Haproxy if i.port.is_some() => {
                check_address("haproxy", i, &['#', '@']).and_then(|()| haproxy_weight(i))
            }
            Preset::PoolPasswd => pool_passwd_refuses(i),
            _ => Ok(()),
        };
        checked.err()
    }
}

fn instance_error(preset: &'static str, i: &Instance, reason: impl Into<String>) -> DeriveError {
    DeriveError::Instance {
        preset,
        instance: format!("{}/{}", i.service, i.id),
        reason: reason.into(),
    }
}

/// Refuses an address that would break a line- or list-oriented format.
fn check_address(preset: &'static str, i: &Instance, also: &[char]) -> Result<(), DeriveError> {
    if i.address
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || also.contains(&c))
    {
        let mut reason = "its address contains whitespace or a control character".to_owned();
        if !also.is_empty() {
            let listed: Vec<String> = also.iter().map(|c| format!("{c:?}")).collect();
            reason = format!(
                "its address contains whitespace, a control character or one of {}",
                listed.join(" ")
            );
        }
        return Err(instance_error(preset, i, reason));
    }
    Ok(())
}

/// HAProxy's largest server weight: a configuration with a larger one does not load.
const HAPROXY_MAX_WEIGHT: u32 = 256;

fn haproxy_weight(i: &Instance) -> Result<(), DeriveError> {
    if i.weight > HAPROXY_MAX_WEIGHT {
        return Err(instance_error(
            "haproxy",
            i,
            format!(
                "its weight {} is over HAProxy's largest, {HAPROXY_MAX_WEIGHT}",
                i.weight
            ),
        ));
    }
    Ok(())
}

/// `host` for a `host:port` pair: IPv6 addresses in brackets.
fn host(address: &str) -> String {
    if address.contains(':') && !address.starts_with('[') {
        format!("[{address}]")
    } else {
        address.to_owned()
    }
}

fn hostports(instances: &[&Instance]) -> Result<String, DeriveError> {
    let mut parts = Vec::new();
    for i in instances {
        let Some(port) = i.port else { continue };
        if i.weight == 0 {
            continue;
        }
        parts.push(format!("{}:{port}", host(&i.address)));
    }
    Ok(parts.join(","))
}

/// A piece of a url format.
#[derive(Debug, PartialEq, Eq)]
enum Piece<'a> {
    Literal(&'a str),
    Address,
    Port,
    SslPort,
    Id,
    Service,
    Meta(&'a str),
    Label(&'a str),
    Endpoint(&'a str),
}

/// Parses a url format. Errors name the placeholder but never quote the format: it may carry
/// a password.
fn parse_url_format(format: &str) -> Result<Vec<Piece<'_>>, DeriveError> {
    let syntax = |reason: &str| DeriveError::UrlFormat {
        reason: reason.to_owned(),
    };
    let mut pieces = Vec::new();
    let mut rest = format;
    while !rest.is_empty() {
        let Some(open) = rest.find(['{', '}']) else {
            pieces.push(Piece::Literal(rest));
            break;
        };
        if rest.as_bytes()[open] == b'}' {
            return Err(syntax("a '}' without '{'"));
        }
        if open > 0 {
            pieces.push(Piece::Literal(&rest[..open]));
        }
        let after = &rest[open + 1..];
        let close = after
            .find(['{', '}'])
            .filter(|&c| after.as_bytes()[c] == b'}')
            .ok_or_else(|| syntax("a '{' without '}'"))?;
        let name = &after[..close];
        let keyed = |prefix: &str| name.strip_prefix(prefix).filter(|k| !k.is_empty());
        pieces.push(match name {
            "address" => Piece::Address,
            "port" => Piece::Port,
            "sslPort" => Piece::SslPort,
            "id" => Piece::Id,
            "service" => Piece::Service,
            _ => {
                if let Some(key) = keyed("meta.") {
                    Piece::Meta(key)
                } else if let Some(key) = keyed("label.") {
                    Piece::Label(key)
                } else if let Some(key) = keyed("endpoint.") {
                    Piece::Endpoint(key)
                } else {
                    return Err(DeriveError::Placeholder {
                        placeholder: name.to_owned(),
                        reason: "unknown; use address, port, sslPort, id, service, meta.KEY, label.KEY or endpoint.NAME".to_owned(),
                    });
                }
            }
        });
        rest = &after[close + 1..];
    }
    if pieces.is_empty() {
        return Err(syntax("the format is empty"));
    }
    Ok(pieces)
}

/// An instance can fill every placeholder of `format`, with an address a URL can hold.
fn url_refuses(format: &str, i: &Instance) -> Result<(), DeriveError> {
    // A bad format is the output's error, said by the render.
    let Ok(pieces) = parse_url_format(format) else {
        return Ok(());
    };
    let missing = |placeholder: String, what: &str| DeriveError::Placeholder {
        placeholder,
        reason: format!("instance {}/{} has no {what}", i.service, i.id),
    };
    for piece in pieces {
        match piece {
            Piece::Address => check_address("url", i, &['/', '@', '?', '#'])?,
            Piece::Port if i.port.is_none() => return Err(missing("port".into(), "port")),
            Piece::SslPort if i.ssl_port.is_none() => {
                return Err(missing("sslPort".into(), "sslPort"));
            }
            Piece::Meta(key) => match i.meta.get(key) {
                None => return Err(missing(format!("meta.{key}"), "such meta")),
                Some(value) => one_word("url", i, &format!("meta {key}"), value)?,
            },
            Piece::Label(key) => match i.labels.get(key) {
                None => return Err(missing(format!("label.{key}"), "such label")),
                Some(value) => one_word("url", i, &format!("label {key}"), value)?,
            },
            Piece::Endpoint(name) if !i.endpoints.contains_key(name) => {
                return Err(missing(format!("endpoint.{name}"), "such endpoint"));
            }
            _ => {}
        }
    }
    Ok(())
}

/// A metadata or label value that goes into a url as it is: whitespace or a control
/// character would add a line, or a word to a `key=value` connection string. The error names
/// the field, never its value.
fn one_word(
    preset: &'static str,
    i: &Instance,
    field: &str,
    value: &str,
) -> Result<(), DeriveError> {
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(instance_error(
            preset,
            i,
            format!("its {field} contains whitespace or a control character"),
        ));
    }
    Ok(())
}

fn url(format: &str, instances: &[&Instance]) -> Result<String, DeriveError> {
    let pieces = parse_url_format(format)?;
    let Some(i) = instances
        .iter()
        .filter(|i| i.weight > 0)
        .min_by(|a, b| (a.registered_ms, &a.id).cmp(&(b.registered_ms, &b.id)))
    else {
        return Ok(String::new());
    };
    url_refuses(format, i)?;
    let missing = |placeholder: String, what: &str| DeriveError::Placeholder {
        placeholder,
        reason: format!("instance {}/{} has no {what}", i.service, i.id),
    };
    let mut out = String::new();
    for piece in pieces {
        match piece {
            Piece::Literal(text) => out.push_str(text),
            Piece::Address => out.push_str(&host(&i.address)),
            Piece::Port => match i.port {
                Some(port) => out.push_str(&port.to_string()),
                None => return Err(missing("port".into(), "port")),
            },
            Piece::SslPort => match i.ssl_port {
                Some(port) => out.push_str(&port.to_string()),
                None => return Err(missing("sslPort".into(), "sslPort")),
            },
            Piece::Id => out.push_str(i.id.as_str()),
            Piece::Service => out.push_str(i.service.as_str()),
            Piece::Meta(key) => match i.meta.get(key) {
                Some(value) => out.push_str(value),
                None => return Err(missing(format!("meta.{key}"), "such meta")),
            },
            Piece::Label(key) => match i.labels.get(key) {
                Some(value) => out.push_str(value),
                None => return Err(missing(format!("label.{key}"), "such label")),
            },
            Piece::Endpoint(name) => match i.endpoints.get(name) {
                Some(port) => out.push_str(&port.to_string()),
                None => return Err(missing(format!("endpoint.{name}"), "such endpoint")),
            },
        }
    }
    Ok(out)
}

/// Checks that `url` is a usable format for preset `url` (at config time).
pub fn check_url_format(format: &str) -> Result<(), DeriveError> {
    parse_url_format(format).map(|_| ())
}

/// A value pgpool.conf can hold in single quotes.
fn pgpool_quotable(value: &str) -> bool {
    !value.is_empty()
        && !value
            .chars()
            .any(|c| c == '\'' || c == '\\' || c.is_control())
}

/// The instance's backend flag: meta `pgpool_flag`, else from its role.
fn pgpool_flag(i: &Instance) -> String {
    let role = i.meta.get("role").or_else(|| i.labels.get("role"));
    match i.meta.get("pgpool_flag") {
        Some(flag) => flag.clone(),
        None if role.is_some_and(|r| r == "primary") => {
            format!("{DEFAULT_PGPOOL_FLAG}|ALWAYS_PRIMARY")
        }
        None => DEFAULT_PGPOOL_FLAG.to_owned(),
    }
}

/// Every field of the instance's backend block fits pgpool.conf.
fn pgpool_refuses(i: &Instance) -> Result<(), DeriveError> {
    // '#' too: herald watch --pgpool, like many readers, takes it for a comment.
    check_address("pgpool", i, &['\'', '\\', '#'])?;
    let data_directory = i
        .meta
        .get("data_directory")
        .map_or(DEFAULT_DATA_DIRECTORY, String::as_str);
    if !pgpool_quotable(data_directory) {
        return Err(instance_error(
            "pgpool",
            i,
            "its meta data_directory is empty or contains a quote, a backslash or a control character",
        ));
    }
    let application_name = i
        .meta
        .get("application_name")
        .map_or(i.id.as_str(), String::as_str);
    if !pgpool_quotable(application_name) {
        return Err(instance_error(
            "pgpool",
            i,
            "its meta application_name is empty or contains a quote, a backslash or a control character",
        ));
    }
    let flag = pgpool_flag(i);
    if flag.is_empty()
        || !flag
            .chars()
            .all(|c| c.is_ascii_uppercase() || c == '_' || c == '|')
    {
        return Err(instance_error(
            "pgpool",
            i,
            "its meta pgpool_flag is not like ALLOW_TO_FAILOVER, DISALLOW_TO_FAILOVER or ALWAYS_PRIMARY (upper case, '_', '|')",
        ));
    }
    Ok(())
}

fn pgpool(instances: &[&Instance], slots: Option<&SlotOf>) -> Result<String, DeriveError> {
    let mut numbered: Vec<(u32, &Instance)> = Vec::new();
    for i in instances {
        if i.port.is_none() {
            continue;
        }
        let n = match slots {
            Some(slots) => match slots.get(&(i.service.clone(), i.id.clone())) {
                Some(&n) => n,
                // Refused a slot: left out (the director says why).
                None => continue,
            },
            None => numbered.len() as u32,
        };
        numbered.push((n, i));
    }
    numbered.sort_by_key(|(n, _)| *n);
    let mut out = String::new();
    for (n, i) in numbered {
        let Some(port) = i.port else { continue };
        let data_directory = i
            .meta
            .get("data_directory")
            .map_or(DEFAULT_DATA_DIRECTORY, String::as_str);
        let application_name = i
            .meta
            .get("application_name")
            .map_or(i.id.as_str(), String::as_str);
        let flag = pgpool_flag(i);
        out.push_str(&format!(
            "backend_hostname{n} = '{address}'\n\
             backend_port{n} = {port}\n\
             backend_weight{n} = {weight}\n\
             backend_data_directory{n} = '{data_directory}'\n\
             backend_application_name{n} = '{application_name}'\n\
             backend_flag{n} = '{flag}'\n",
            address = i.address,
            weight = i.weight,
        ));
    }
    Ok(out)
}

/// Instance ids cannot contain whitespace (`InstanceId` allows letters, digits, `.`, `_`, `-`),
/// so only the address is checked.
fn haproxy(instances: &[&Instance]) -> Result<String, DeriveError> {
    let mut out = String::new();
    for i in instances {
        let Some(port) = i.port else { continue };
        out.push_str(&format!(
            "server {} {}:{port} weight {} check\n",
            i.id, i.address, i.weight
        ));
    }
    Ok(out)
}

/// PostgreSQL's md5 password hash: `md5` + hex(md5(password + user)).
pub fn md5_password(user: &str, password: &str) -> String {
    use md5::{Digest, Md5};
    let digest = Md5::new()
        .chain_update(password.as_bytes())
        .chain_update(user.as_bytes())
        .finalize();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("md5{hex}")
}

/// The instance's meta user can be a pool_passwd line's user.
fn pool_passwd_refuses(i: &Instance) -> Result<(), DeriveError> {
    let (Some(user), Some(_)) = (i.meta.get("user"), i.meta.get("password")) else {
        return Ok(());
    };
    if user.is_empty() || user.contains([':', '\n', '\r']) || user.chars().any(char::is_control) {
        return Err(instance_error(
            "pool_passwd",
            i,
            "its meta user is empty or contains ':' or a control character",
        ));
    }
    Ok(())
}

fn pool_passwd(instances: &[&Instance]) -> Result<String, DeriveError> {
    // user → (hash, the first instance that gave it)
    let mut users: std::collections::BTreeMap<&str, (String, &Instance)> =
        std::collections::BTreeMap::new();
    for i in instances {
        let (Some(user), Some(password)) = (i.meta.get("user"), i.meta.get("password")) else {
            continue;
        };
        let hash = md5_password(user, password);
        match users.get(user.as_str()) {
            Some((known, first)) if *known != hash => {
                return Err(instance_error(
                    "pool_passwd",
                    i,
                    format!(
                        "it and {}/{} give user {user:?} different passwords; give every server the same password (the value stays as it was meanwhile)",
                        first.service, first.id
                    ),
                ));
            }
            Some(_) => {}
            None => {
                users.insert(user, (hash, i));
            }
        }
    }
    Ok(users
        .into_iter()
        .map(|(user, (hash, _))| format!("{user}:{hash}\n"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::super::derive::Derivation;
    use super::*;

    fn instance(
        id: &str,
        address: &str,
        port: Option<u16>,
        weight: u32,
        registered: u64,
    ) -> Instance {
        let mut i = Instance::new(
            "pg".parse().unwrap(),
            id.parse().unwrap(),
            address.into(),
            1,
        );
        i.port = port;
        i.weight = weight;
        i.registered_ms = registered;
        i
    }

    /// db1 (weight 1, registered at 20), db2 (weight 0, registered first), db3 (IPv6, weight 2,
    /// registered at 20), db4 (no port, registered last): unsorted.
    fn sample() -> Vec<Instance> {
        let mut db1 = instance("db1", "10.0.0.5", Some(5432), 1, 20);
        db1.meta.insert("user".into(), "app".into());
        db1.labels.insert("role".into(), "primary".into());
        db1.endpoints.insert("metrics".into(), 9187);
        let mut db2 = instance("db2", "10.0.0.6", Some(5432), 0, 10);
        db2.meta
            .insert("application_name".into(), "standby_a".into());
        let mut db3 = instance("db3", "::1", Some(5433), 2, 20);
        db3.meta.insert("data_directory".into(), "/srv/pg".into());
        db3.meta.insert(
            "pgpool_flag".into(),
            "DISALLOW_TO_FAILOVER|ALWAYS_PRIMARY".into(),
        );
        let db4 = instance("db4", "10.0.0.8", None, 1, 30);
        vec![db4, db3, db2, db1]
    }

    fn derive(preset: Preset, instances: &[Instance]) -> Result<String, DeriveError> {
        Derivation::Preset(preset)
            .derive(instances, None)
            .map(|v| String::from_utf8(v).unwrap())
    }

    #[test]
    fn refuses_names_the_instances_a_preset_cannot_render() {
        let quoted = instance("q", "10.0.0.1'", Some(1), 1, 1);
        let hashed = instance("h", "10.0.0.1#x", Some(1), 1, 1);
        // HAProxy reads `unix@PATH`, `ipv4@…` as an address family: never from a registration.
        let family = instance("f", "unix@/run/x.sock", Some(1), 1, 1);
        let no_port = instance("n", "10.0.0.1'", None, 1, 1);
        let mut bad_dir = instance("d", "10.0.0.2", Some(1), 1, 1);
        bad_dir.meta.insert("data_directory".into(), "/it's".into());
        let url = Preset::from_name("url", Some("pg://{address}:{port}/{meta.db}".into()))
            .unwrap()
            .unwrap();
        let heavy = instance("w", "10.0.0.1", Some(1), 257, 1);
        let heavy_no_port = instance("w", "10.0.0.1", None, 257, 1);
        let table: &[(&Preset, &Instance, bool)] = &[
            (&Preset::Haproxy, &heavy, true),
            (&Preset::Haproxy, &heavy_no_port, false),
            (&Preset::HostPorts, &heavy, false),
            (&Preset::Pgpool, &quoted, true),
            (&Preset::Pgpool, &bad_dir, true),
            (&Preset::Pgpool, &hashed, true),
            (&Preset::Pgpool, &no_port, false),
            (&Preset::Haproxy, &hashed, true),
            (&Preset::Haproxy, &family, true),
            (&Preset::HostPorts, &family, false),
            (&Preset::Haproxy, &quoted, false),
            (&Preset::HostPorts, &quoted, false),
            (&url, &bad_dir, true),
            (&Preset::Json, &quoted, false),
        ];
        for (preset, i, refused) in table {
            assert_eq!(preset.refuses(i).is_some(), *refused, "{preset:?} {}", i.id);
        }
    }

    #[test]
    fn pool_passwd_writes_md5_hashes_and_refuses_disagreeing_passwords() {
        // The hash PostgreSQL itself stores for `create role app password 'apppw'` under md5.
        assert_eq!(
            md5_password("app", "apppw"),
            "md5f44ca69ffd2494f6d3e571acf7a949aa"
        );
        let mut a = instance("a", "10.0.0.5", Some(5432), 1, 1);
        let mut b = instance("b", "10.0.0.6", Some(5432), 1, 2);
        let c = instance("c", "10.0.0.7", Some(5432), 1, 3);
        for i in [&mut a, &mut b] {
            i.meta.insert("user".into(), "app".into());
            i.meta.insert("password".into(), "apppw".into());
        }
        b.meta.insert("password".into(), "apppw".into());
        let mut d = instance("d", "10.0.0.8", Some(5432), 1, 4);
        d.meta.insert("user".into(), "report".into());
        d.meta.insert("password".into(), "r".into());
        let value = derive(Preset::PoolPasswd, &[a.clone(), b.clone(), c, d]).unwrap();
        assert_eq!(
            value,
            format!(
                "app:md5f44ca69ffd2494f6d3e571acf7a949aa\nreport:{}\n",
                md5_password("report", "r")
            )
        );
        assert!(!value.contains("apppw"), "never the password itself");
        b.meta.insert("password".into(), "rotated".into());
        let err = derive(Preset::PoolPasswd, &[a, b]).unwrap_err().to_string();
        assert!(err.contains("pg/b") && err.contains("pg/a"), "{err}");
        assert!(!err.contains("rotated") && !err.contains("apppw"), "{err}");
    }

    fn url(format: &str) -> Preset {
        Preset::from_name("url", Some(format.into()))
            .unwrap()
            .unwrap()
    }

    #[test]
    fn presets() {
        let all = sample();
        for (preset, expected) in [
            (Preset::HostPorts, "10.0.0.5:5432,[::1]:5433"),
            (
                url("postgresql://{meta.user}@{address}:{port}/app"),
                "postgresql://app@10.0.0.5:5432/app",
            ),
            (
                url("{service}/{id} {label.role} {endpoint.metrics}"),
                "pg/db1 primary 9187",
            ),
            (url("x"), "x"),
            (
                Preset::Pgpool,
                "backend_hostname0 = '10.0.0.5'\n\
                 backend_port0 = 5432\n\
                 backend_weight0 = 1\n\
                 backend_data_directory0 = '/var/lib/postgresql/data'\n\
                 backend_application_name0 = 'db1'\n\
                 backend_flag0 = 'ALLOW_TO_FAILOVER|ALWAYS_PRIMARY'\n\
                 backend_hostname1 = '10.0.0.6'\n\
                 backend_port1 = 5432\n\
                 backend_weight1 = 0\n\
                 backend_data_directory1 = '/var/lib/postgresql/data'\n\
                 backend_application_name1 = 'standby_a'\n\
                 backend_flag1 = 'ALLOW_TO_FAILOVER'\n\
                 backend_hostname2 = '::1'\n\
                 backend_port2 = 5433\n\
                 backend_weight2 = 2\n\
                 backend_data_directory2 = '/srv/pg'\n\
                 backend_application_name2 = 'db3'\n\
                 backend_flag2 = 'DISALLOW_TO_FAILOVER|ALWAYS_PRIMARY'\n",
            ),
            (
                Preset::Haproxy,
                "server db1 10.0.0.5:5432 weight 1 check\n\
                 server db2 10.0.0.6:5432 weight 0 check\n\
                 server db3 ::1:5433 weight 2 check\n",
            ),
        ] {
            assert_eq!(
                derive(preset.clone(), &all).unwrap(),
                expected,
                "{preset:?}"
            );
        }
    }

    #[test]
    fn pgpool_numbers_by_slot_in_slot_order_with_gaps() {
        let all = sample();
        let mut slots = SlotOf::new();
        for (id, n) in [("db1", 4), ("db3", 0)] {
            slots.insert(("pg".parse().unwrap(), id.parse().unwrap()), n);
        }
        // db2 has no slot (refused): left out; db4 has no port.
        let out = Derivation::Preset(Preset::Pgpool)
            .derive(&all, Some(&slots))
            .unwrap();
        let out = String::from_utf8(out).unwrap();
        let hosts: Vec<&str> = out
            .lines()
            .filter(|l| l.starts_with("backend_hostname"))
            .collect();
        assert_eq!(
            hosts,
            [
                "backend_hostname0 = '::1'",
                "backend_hostname4 = '10.0.0.5'"
            ]
        );
        // The json preset carries the slot too.
        let json = Derivation::Preset(Preset::Json)
            .derive(&all[3..], Some(&slots))
            .unwrap();
        assert!(String::from_utf8(json).unwrap().contains(r#""slot":4"#));
    }

    #[test]
    fn json_is_one_compact_line() {
        let all = sample();
        let out = derive(Preset::Json, &all[3..]).unwrap();
        assert_eq!(
            out,
            r#"[{"address":"10.0.0.5","endpoints":{"metrics":9187},"id":"db1","labels":{"role":"primary"},"meta":{"user":"app"},"port":5432,"registered":20,"service":"pg","sslPort":null,"weight":1}]"#
        );
        let ids: Vec<String> =
            serde_json::from_str::<Vec<serde_json::Value>>(&derive(Preset::Json, &all).unwrap())
                .unwrap()
                .iter()
                .map(|v| v["id"].as_str().unwrap().to_owned())
                .collect();
        assert_eq!(ids, ["db1", "db2", "db3", "db4"]);
    }

    #[test]
    fn empty_input_gives_empty_output() {
        for preset in [
            Preset::HostPorts,
            url("{address}"),
            Preset::Json,
            Preset::Pgpool,
            Preset::Haproxy,
        ] {
            assert_eq!(derive(preset.clone(), &[]).unwrap(), "", "{preset:?}");
        }
        // Nothing with weight > 0: hostports and url have nothing to say either.
        let drained = [instance("db2", "10.0.0.6", Some(5432), 0, 10)];
        assert_eq!(derive(Preset::HostPorts, &drained).unwrap(), "");
        assert_eq!(derive(url("{address}"), &drained).unwrap(), "");
    }

    #[test]
    fn url_picks_the_oldest_weighted_instance_ties_by_id() {
        let all = [
            instance("b", "10.0.0.2", Some(1), 1, 5),
            instance("a", "10.0.0.1", Some(1), 1, 5),
            instance("z", "10.0.0.9", Some(1), 0, 1),
            instance("c", "10.0.0.3", Some(1), 1, 7),
        ];
        assert_eq!(derive(url("{id}"), &all).unwrap(), "a");
    }

    #[test]
    fn preset_errors() {
        let secret = |mut i: Instance, key: &str, value: &str| {
            i.meta.insert(key.into(), value.into());
            i
        };
        let base = || instance("db1", "10.0.0.5", Some(5432), 1, 1);
        let no_port = instance("db1", "10.0.0.5", None, 1, 1);
        for (preset, instances, contains) in [
            (
                url("{meta.password}"),
                vec![base()],
                "{meta.password}: instance pg/db1 has no such meta",
            ),
            (url("{label.role}"), vec![base()], "{label.role}"),
            (
                url("host={address} user={meta.user}"),
                vec![secret(base(), "user", "app sslmode=disable")],
                "its meta user contains whitespace",
            ),
            (
                url("postgresql://{meta.user}@{address}/app"),
                vec![secret(base(), "user", "app\nX=1")],
                "its meta user contains whitespace",
            ),
            (url("{endpoint.admin}"), vec![base()], "{endpoint.admin}"),
            (
                url("{port}"),
                vec![no_port.clone()],
                "{port}: instance pg/db1 has no port",
            ),
            (url("{sslPort}"), vec![base()], "{sslPort}"),
            (
                url("{address}"),
                vec![instance("db1", "a b", Some(1), 1, 1)],
                "address",
            ),
            (
                url("{address}"),
                vec![instance("db1", "evil@host", Some(1), 1, 1)],
                "address",
            ),
            (
                Preset::HostPorts,
                vec![instance("db1", "a,b", Some(1), 1, 1)],
                "hostports: instance pg/db1",
            ),
            (
                Preset::Haproxy,
                vec![instance("db1", "10.0.0.5 backup", Some(1), 1, 1)],
                "whitespace",
            ),
            (
                Preset::Haproxy,
                vec![instance("db1", "10.0.0.5\nserver x", Some(1), 1, 1)],
                "whitespace",
            ),
            (
                Preset::Pgpool,
                vec![instance("db1", "x'y", Some(1), 1, 1)],
                "pgpool: instance pg/db1",
            ),
            (
                Preset::Pgpool,
                vec![secret(base(), "data_directory", "/srv/it's")],
                "data_directory",
            ),
            (
                Preset::Pgpool,
                vec![secret(base(), "data_directory", "/srv\n/x")],
                "data_directory",
            ),
            (
                Preset::Pgpool,
                vec![secret(base(), "data_directory", "C:\\pg")],
                "data_directory",
            ),
            (
                Preset::Pgpool,
                vec![secret(base(), "pgpool_flag", "ALLOW'; x")],
                "pgpool_flag",
            ),
        ] {
            let e = derive(preset.clone(), &instances).unwrap_err().to_string();
            assert!(e.contains(contains), "{preset:?}: {e}");
            for i in &instances {
                for value in i.meta.values() {
                    assert!(!e.contains(value.as_str()), "{e}");
                }
            }
        }
    }

    #[test]
    fn url_formats_are_checked_without_quoting_them() {
        for (format, contains) in [
            (
                "postgresql://app:s3cret@{adress}:{port}",
                "{adress}: unknown",
            ),
            ("postgresql://app:s3cret@{address", "'{' without '}'"),
            ("s3cret}", "'}' without '{'"),
            ("{meta.}", "{meta.}: unknown"),
            ("{a{b}}", "'{' without '}'"),
            ("", "empty"),
        ] {
            let e = check_url_format(format).unwrap_err().to_string();
            assert!(e.contains(contains), "{format}: {e}");
            assert!(!e.contains("s3cret"), "{e}");
        }
        assert!(Preset::from_name("url", None).unwrap().is_err());
        assert!(Preset::from_name("pgpol", None).is_none());
    }

    /// Every preset over instances read from generated documents (hostile hosts, metadata and
    /// weights), as the director derives it (leaving out what the preset refuses): an error,
    /// or a value every line of which is well-formed for the preset, with exactly the
    /// instances' fields in it (no injected line, server, backend or keyword).
    mod properties {
        use proptest::prelude::*;

        use super::*;
        use crate::instance::strategies;
        use crate::layout::InstanceId;

        const SERVICES: [&str; 2] = ["pg", "pg-replica"];
        const IDS: [&str; 5] = ["a", "b", "db1", "db-2", "x.y"];

        /// Instances as the director's cache admits them: documents read by `from_json`, the
        /// refused ones dropped; (service, id) unique; ids may repeat across services.
        fn instances() -> impl Strategy<Value = Vec<Instance>> {
            let document = prop_oneof![
                2 => strategies::herald_instance()
                    .prop_map(|i| i.to_json().unwrap_or_default()),
                3 => strategies::herald_like_document()
                    .prop_map(|v| serde_json::to_vec(&v).unwrap_or_default()),
                1 => strategies::curator_document()
                    .prop_map(|v| serde_json::to_vec(&v).unwrap_or_default()),
            ];
            proptest::collection::vec((0..SERVICES.len(), 0..IDS.len(), document), 0..8).prop_map(
                |docs| {
                    let mut out: Vec<Instance> = Vec::new();
                    for (s, n, data) in docs {
                        let (service, id) = (SERVICES[s].parse().unwrap(), IDS[n].parse().unwrap());
                        if out.iter().any(|i| i.service == service && i.id == id) {
                            continue;
                        }
                        out.extend(Instance::from_json(service, id, &data).ok());
                    }
                    out
                },
            )
        }

        fn presets() -> impl Strategy<Value = Preset> {
            prop_oneof![
                Just(Preset::HostPorts),
                Just(Preset::Json),
                Just(Preset::Pgpool),
                Just(Preset::Haproxy),
                Just(Preset::PoolPasswd),
                proptest::sample::select(
                    &[
                        "postgresql://{meta.user}@{address}:{port}/{meta.db}",
                        "host={address} port={port} user={meta.user} dbname={label.db}",
                        "{service}/{id} {endpoint.metrics} {label.role}",
                        "redis://{address}:{sslPort}",
                        "{meta.user}",
                        "host={address} user={meta.user}",
                    ][..]
                )
                .prop_map(url),
            ]
        }

        /// What the director publishes: the instances the preset refuses left out.
        fn as_director(
            preset: &Preset,
            all: &[Instance],
        ) -> (Vec<Instance>, Result<String, DeriveError>) {
            let kept: Vec<Instance> = all
                .iter()
                .filter(|i| preset.refuses(i).is_none())
                .cloned()
                .collect();
            let value = derive(preset.clone(), &kept);
            let mut sorted = kept;
            sorted.sort_by(|a, b| (&a.service, &a.id).cmp(&(&b.service, &b.id)));
            (sorted, value)
        }

        fn clean(s: &str) -> bool {
            !s.is_empty() && !s.chars().any(|c| c.is_whitespace() || c.is_control())
        }

        fn check_hostports(kept: &[Instance], value: &str) -> Result<(), TestCaseError> {
            let listed: Vec<&Instance> = kept
                .iter()
                .filter(|i| i.port.is_some() && i.weight > 0)
                .collect();
            if value.is_empty() {
                prop_assert!(listed.is_empty());
                return Ok(());
            }
            let items: Vec<&str> = value.split(',').collect();
            prop_assert_eq!(items.len(), listed.len(), "{:?}", value);
            for (item, i) in items.iter().zip(listed) {
                let (host, port) = match item.strip_prefix('[') {
                    Some(rest) => {
                        let (host, port) = rest.split_once("]:").ok_or_else(|| {
                            TestCaseError::fail(format!("{item:?}: '[' without ']:'"))
                        })?;
                        prop_assert!(
                            host.contains(':') && !host.contains(['[', ']']),
                            "{:?}",
                            item
                        );
                        (host, port)
                    }
                    None => {
                        let (host, port) = item.rsplit_once(':').unwrap_or(("", ""));
                        prop_assert!(!host.contains([':', '[', ']']), "{:?}", item);
                        (host, port)
                    }
                };
                prop_assert!(clean(host) && !host.contains(','), "{:?}", item);
                prop_assert_eq!(port.parse::<u16>().ok(), i.port, "{:?}", item);
                prop_assert_eq!(
                    host,
                    i.address.trim_start_matches('[').trim_end_matches(']')
                );
            }
            Ok(())
        }

        fn check_url(format: &str, value: &str) -> Result<(), TestCaseError> {
            prop_assert!(!value.chars().any(char::is_control), "{:?}", value);
            // An empty meta value may drop a word; none may add one.
            prop_assert!(
                value.split_whitespace().count() <= format.split_whitespace().count(),
                "words injected into {:?}",
                value
            );
            Ok(())
        }

        fn check_json(kept: &[Instance], value: &str) -> Result<(), TestCaseError> {
            prop_assert!(!value.contains('\n'));
            if kept.is_empty() {
                prop_assert_eq!(value, "");
                return Ok(());
            }
            let list: Vec<serde_json::Value> = serde_json::from_str(value).unwrap();
            prop_assert_eq!(list.len(), kept.len());
            for (v, i) in list.iter().zip(kept) {
                prop_assert_eq!(v["address"].as_str(), Some(i.address.as_str()));
            }
            Ok(())
        }

        fn check_pgpool(kept: &[Instance], value: &str) -> Result<(), TestCaseError> {
            let backends: Vec<&Instance> = kept.iter().filter(|i| i.port.is_some()).collect();
            prop_assert_eq!(value.lines().count(), 6 * backends.len(), "{:?}", value);
            prop_assert!(value.is_empty() || value.ends_with('\n'));
            for line in value.lines() {
                let (name, setting) = line
                    .split_once(" = ")
                    .ok_or_else(|| TestCaseError::fail(format!("not a setting: {line:?}")))?;
                let field = name.trim_end_matches(|c: char| c.is_ascii_digit());
                prop_assert!(field.len() < name.len(), "{:?}", line);
                match field {
                    "backend_port" | "backend_weight" => {
                        prop_assert!(setting.parse::<u32>().is_ok(), "{:?}", line)
                    }
                    "backend_hostname"
                    | "backend_data_directory"
                    | "backend_application_name"
                    | "backend_flag" => {
                        let inner = setting
                            .strip_prefix('\'')
                            .and_then(|s| s.strip_suffix('\''))
                            .ok_or_else(|| TestCaseError::fail(format!("unquoted: {line:?}")))?;
                        prop_assert!(
                            !inner.is_empty()
                                && !inner.contains(['\'', '\\'])
                                && !inner.chars().any(char::is_control),
                            "{:?}",
                            line
                        );
                    }
                    _ => prop_assert!(false, "unknown setting {:?}", line),
                }
            }
            // herald watch --pgpool reads the same backends back.
            let read =
                crate::watch::pgpool::configured(value.as_bytes()).map_err(TestCaseError::fail)?;
            let read: Vec<(String, u16)> = read.into_values().map(|b| (b.host, b.port)).collect();
            let expected: Vec<(String, u16)> = backends
                .iter()
                .filter_map(|i| Some((i.address.clone(), i.port?)))
                .collect();
            prop_assert_eq!(read, expected);
            Ok(())
        }

        fn check_haproxy(kept: &[Instance], value: &str) -> Result<(), TestCaseError> {
            let servers: Vec<&Instance> = kept.iter().filter(|i| i.port.is_some()).collect();
            prop_assert_eq!(value.lines().count(), servers.len(), "{:?}", value);
            for (line, i) in value.lines().zip(&servers) {
                let words: Vec<&str> = line.split(' ').collect();
                prop_assert!(!line.chars().any(char::is_control), "{:?}", line);
                let [server, name, address, weight, w, check] = words[..] else {
                    return Err(TestCaseError::fail(format!("not a server line: {line:?}")));
                };
                prop_assert_eq!((server, weight, check), ("server", "weight", "check"));
                prop_assert!(name.parse::<InstanceId>().is_ok(), "{:?}", line);
                prop_assert!(clean(address) && !address.contains('#'), "{:?}", line);
                // HAProxy refuses a configuration with a weight over 256.
                prop_assert!(w.parse::<u32>().is_ok_and(|w| w <= 256), "{:?}", line);
                prop_assert_eq!(w.parse::<u32>().ok(), Some(i.weight));
            }
            // herald watch --haproxy reads the same servers back (server names are instance
            // ids, so two services' instances with one id would clash: not checked here).
            let ids: std::collections::BTreeSet<&str> =
                servers.iter().map(|i| i.id.as_str()).collect();
            if ids.len() == servers.len() {
                let conf = format!("backend b\n{value}");
                let read = crate::watch::haproxy::configured(conf.as_bytes(), "b")
                    .map_err(TestCaseError::fail)?;
                prop_assert_eq!(read.servers.len(), servers.len());
                for i in servers {
                    let s = &read.servers[i.id.as_str()];
                    let host = i.address.trim_start_matches('[').trim_end_matches(']');
                    prop_assert_eq!(
                        (s.host.as_str(), Some(s.port), s.weight),
                        (host, i.port, i.weight)
                    );
                }
            }
            Ok(())
        }

        fn check_pool_passwd(value: &str) -> Result<(), TestCaseError> {
            for line in value.lines() {
                let (user, hash) = line.rsplit_once(':').unwrap_or(("", ""));
                prop_assert!(
                    !user.is_empty() && !user.contains(':') && !user.chars().any(char::is_control),
                    "{:?}",
                    line
                );
                prop_assert!(
                    hash.len() == 35
                        && hash.starts_with("md5")
                        && hash[3..].chars().all(|c| c.is_ascii_hexdigit()),
                    "{:?}",
                    line
                );
            }
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn every_preset_gives_a_refusal_or_well_formed_lines(
                preset in presets(),
                all in instances(),
            ) {
                let (kept, value) = as_director(&preset, &all);
                // Rendering every instance, refused ones included, fails or gives the same.
                if let Ok(whole) = derive(preset.clone(), &all) {
                    prop_assert_eq!(Ok(&whole), value.as_ref().map_err(|_| ()));
                }
                let Ok(value) = value else { return Ok(()) };
                match &preset {
                    Preset::HostPorts => check_hostports(&kept, &value)?,
                    Preset::Url { format } => check_url(format, &value)?,
                    Preset::Json => check_json(&kept, &value)?,
                    Preset::Pgpool => check_pgpool(&kept, &value)?,
                    Preset::Haproxy => check_haproxy(&kept, &value)?,
                    Preset::PoolPasswd => check_pool_passwd(&value)?,
                }
            }
        }
    }
}
