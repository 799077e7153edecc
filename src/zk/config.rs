//! What it takes to reach ZooKeeper: the connect string (hosts and optional chroot), timeouts,
//! digest credentials and TLS. Validated before any connection is attempted.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use super::tls::ZkTls;

/// A connect string `host:port[,host:port…][/chroot]`, split into its hosts and its chroot.
///
/// herald does not hand the chroot to the client: it folds it into the [`crate::layout::Layout`]
/// root instead, so that writers can create the chroot node when it does not exist yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectString {
    hosts: String,
    chroot: Option<String>,
}

impl ConnectString {
    /// The host list, e.g. `h1:2181,h2:2181`.
    pub fn hosts(&self) -> &str {
        &self.hosts
    }

    /// True when a host is written `tcp+tls://HOST:PORT` (the client speaks TLS to it).
    pub fn has_tls_hosts(&self) -> bool {
        self.hosts.split(',').any(|h| h.starts_with("tcp+tls://"))
    }

    /// The path after the host list, e.g. `/chroot`, if there is one.
    pub fn chroot(&self) -> Option<&str> {
        self.chroot.as_deref()
    }
}

/// A connect string that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid ZooKeeper connect string {value:?}: {reason}; write host:port[,host:port…][/chroot]"
)]
pub struct ConnectStringError {
    value: String,
    reason: &'static str,
}

impl FromStr for ConnectString {
    type Err = ConnectStringError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let fail = |reason| {
            Err(ConnectStringError {
                value: s.to_owned(),
                reason,
            })
        };
        // The chroot starts at the first '/' that is not part of a `tcp://` scheme.
        let mut hosts_end = s.len();
        let mut search_from = 0;
        while let Some(i) = s[search_from..].find('/') {
            let at = search_from + i;
            if s[..at].ends_with(':') && s[at..].starts_with("//") {
                search_from = at + 2;
                continue;
            }
            hosts_end = at;
            break;
        }
        let (hosts, chroot) = s.split_at(hosts_end);
        if hosts.is_empty() {
            return fail("it names no host");
        }
        if hosts.contains('@') {
            // user:password@host: said without the credentials.
            let redacted: Vec<String> = hosts
                .split(',')
                .map(|e| match e.rsplit_once('@') {
                    Some((_, host)) => format!("***@{host}"),
                    None => e.to_owned(),
                })
                .collect();
            return Err(ConnectStringError {
                value: format!("{}{chroot}", redacted.join(",")),
                reason: "it holds credentials (user:password@), which ps and logs would show; give them in HERALD_ZK_AUTH or --zk-auth-file",
            });
        }
        for entry in hosts.split(',') {
            let bare = entry
                .strip_prefix("tcp://")
                .or_else(|| entry.strip_prefix("tcp+tls://"))
                .unwrap_or(entry);
            if bare.is_empty() {
                return fail("it has an empty host entry");
            }
            if bare.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return fail("a host entry contains white space");
            }
            let (host, port) = match bare.strip_prefix('[') {
                Some(v6) => match v6.split_once(']') {
                    Some((host, tail)) => (host, tail.strip_prefix(':')),
                    None => return fail("an IPv6 address lacks its closing ']'"),
                },
                None => match bare.rsplit_once(':') {
                    Some((host, port)) => (host, Some(port)),
                    None => (bare, None),
                },
            };
            if host.is_empty() {
                return fail("a host entry has a port but no host");
            }
            if port.is_some_and(|p| p.parse::<u16>().is_err() || p == "0") {
                return fail("a port is not a number from 1 to 65535");
            }
        }
        let chroot = match chroot {
            "" | "/" => None,
            c => Some(c.to_owned()),
        };
        Ok(ConnectString {
            hosts: hosts.to_owned(),
            chroot,
        })
    }
}

impl fmt::Display for ConnectString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.hosts, self.chroot.as_deref().unwrap_or(""))
    }
}

/// Digest credentials `user:password`. Never printed: `Debug` shows only the user.
#[derive(Clone, PartialEq, Eq)]
pub struct DigestAuth {
    user: String,
    /// `user:password`, as ZooKeeper's digest scheme takes it.
    raw: Vec<u8>,
}

impl DigestAuth {
    /// Parses `user:password` (one trailing newline, as a file usually has, is dropped).
    pub fn parse(text: &str) -> Result<DigestAuth, &'static str> {
        let text = text.strip_suffix('\n').unwrap_or(text);
        let text = text.strip_suffix('\r').unwrap_or(text);
        let Some((user, password)) = text.split_once(':') else {
            return Err("expected user:password");
        };
        if user.is_empty() {
            return Err("the user part before ':' is empty");
        }
        if password.is_empty() {
            return Err("the password part after ':' is empty");
        }
        if text.contains('\n') {
            return Err("it spans more than one line");
        }
        Ok(DigestAuth {
            user: user.to_owned(),
            raw: text.as_bytes().to_vec(),
        })
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    /// The id ZooKeeper's digest scheme gives these credentials in ACLs:
    /// `user:base64(sha1(user:password))`, as `--acl` takes it.
    pub fn id(&self) -> String {
        use base64::Engine;
        use sha1::Digest;
        let hash = sha1::Sha1::digest(&self.raw);
        format!(
            "{}:{}",
            self.user,
            base64::engine::general_purpose::STANDARD.encode(hash)
        )
    }

    pub(crate) fn raw(&self) -> &[u8] {
        &self.raw
    }
}

impl fmt::Debug for DigestAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DigestAuth({}:<redacted>)", self.user)
    }
}

/// Everything the session layer needs to reach ZooKeeper.
#[derive(Debug, Clone)]
pub struct ZkConfig {
    pub connect: ConnectString,
    /// The session timeout asked of the server (it clamps it to its min/max).
    pub session_timeout: Duration,
    /// How long to try before giving up on establishing a session.
    pub connect_timeout: Duration,
    pub auth: Option<DigestAuth>,
    /// CA bundle and client identity for `tcp+tls://` hosts.
    pub tls: Option<ZkTls>,
    /// After the session expired, a new one is established after a random delay below this,
    /// so that the clients of an ensemble that lost every session do not all come back in the
    /// same instant.
    pub rejoin_spread: Duration,
}

impl ZkConfig {
    pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(10);
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    pub const DEFAULT_REJOIN_SPREAD: Duration = Duration::from_secs(1);

    pub fn new(connect: ConnectString) -> ZkConfig {
        ZkConfig {
            connect,
            session_timeout: Self::DEFAULT_SESSION_TIMEOUT,
            connect_timeout: Self::DEFAULT_CONNECT_TIMEOUT,
            auth: None,
            tls: None,
            rejoin_spread: Self::DEFAULT_REJOIN_SPREAD,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_strings() {
        type Parsed<'a> = Option<(&'a str, Option<&'a str>)>;
        let table: &[(&str, Parsed)] = &[
            ("127.0.0.1:2181", Some(("127.0.0.1:2181", None))),
            (
                "h1:2181,h2:2182/chroot",
                Some(("h1:2181,h2:2182", Some("/chroot"))),
            ),
            ("h1:2181/a/b", Some(("h1:2181", Some("/a/b")))),
            ("h1:2181/", Some(("h1:2181", None))),
            ("localhost", Some(("localhost", None))),
            (
                "tcp://h1:2181,h2:1/x",
                Some(("tcp://h1:2181,h2:1", Some("/x"))),
            ),
            ("[::1]:2181", Some(("[::1]:2181", None))),
            ("[::1", None),
            ("", None),
            ("/chroot", None),
            ("h1:2181,,h2:2181", None),
            ("h1:notaport", None),
            ("h1:0", None),
            ("h1:70000", None),
            (":2181", None),
            ("h 1:2181", None),
            ("admin:s3cret@h1:2181", None),
        ];
        for (input, want) in table {
            let got = input.parse::<ConnectString>().ok();
            let got = got.as_ref().map(|c| (c.hosts(), c.chroot()));
            assert_eq!(got, *want, "connect string {input:?}");
        }
    }

    #[test]
    fn credentials_in_a_connect_string_are_refused_without_being_repeated() {
        let err = "admin:s3cret@h1:2181,h2:2181/app"
            .parse::<ConnectString>()
            .unwrap_err()
            .to_string();
        assert!(!err.contains("s3cret") && !err.contains("admin"), "{err}");
        assert!(
            err.contains("***@h1:2181,h2:2181/app") && err.contains("HERALD_ZK_AUTH"),
            "{err}"
        );
    }

    #[test]
    fn digest_auth() {
        let a = DigestAuth::parse("svc:s3cr:et\n").unwrap();
        assert_eq!(a.user(), "svc");
        assert_eq!(a.raw(), b"svc:s3cr:et");
        assert!(!format!("{a:?}").contains("s3cr"));
        for bad in ["nocolon", ":pw", "user:", "a:b\nc:d"] {
            assert!(DigestAuth::parse(bad).is_err(), "{bad:?}");
        }
    }
}
