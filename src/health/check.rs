//! What a check is: the `--check` syntax (tcp, http, exec), its parsing, and how a check is
//! named in logs without revealing what may be secret in it.

use std::fmt;
use std::str::FromStr;

use super::error::CheckError;

/// One health check of a service instance.
#[derive(Clone, PartialEq, Eq)]
pub enum Check {
    /// `tcp` (the registered address and port), `tcp:PORT` (registered address), `tcp:HOST:PORT`:
    /// healthy when a TCP connection is established.
    Tcp {
        host: Option<String>,
        port: Option<u16>,
    },
    /// `http://HOST[:PORT][/PATH]` (port 80 and path `/` by default), optionally followed by
    /// whitespace and `contains=SUBSTRING`: healthy on a 2xx or 3xx status (and, when given, the
    /// first 64 KiB of the body contain SUBSTRING).
    Http {
        host: String,
        port: u16,
        /// The request target: the path and any query string, never empty.
        path: String,
        contains: Option<String>,
    },
    /// `exec:COMMAND ARGS…`, run with `/bin/sh -c`: healthy on exit status 0.
    Exec { command: String },
}

impl FromStr for Check {
    type Err = CheckError;

    fn from_str(text: &str) -> Result<Check, CheckError> {
        let invalid = |problem: String| CheckError::Invalid {
            text: masked(text),
            problem,
        };
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(invalid("it is empty".into()));
        }
        if trimmed == "tcp" {
            return Ok(Check::Tcp {
                host: None,
                port: None,
            });
        }
        if let Some(rest) = trimmed.strip_prefix("tcp:") {
            return parse_tcp(rest).map_err(invalid);
        }
        if let Some(rest) = strip_scheme(trimmed, "http://") {
            return parse_http(rest).map_err(invalid);
        }
        if strip_scheme(trimmed, "https://").is_some() {
            return Err(CheckError::Https { text: masked(text) });
        }
        if let Some(command) = trimmed.strip_prefix("exec:") {
            let command = command.trim();
            if command.is_empty() {
                return Err(invalid(
                    "exec: needs a command, e.g. exec:pg_isready -q".into(),
                ));
            }
            return Ok(Check::Exec {
                command: command.to_owned(),
            });
        }
        Err(invalid("unknown kind of check".into()))
    }
}

/// Names the check for logs: exec shows only its program, http neither credentials nor the
/// query string, so that tokens and passwords in a check never reach a log line.
impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Check::Tcp { host, port } => {
                f.write_str("tcp")?;
                if let Some(host) = host {
                    write!(f, ":{}", bracketed(host))?;
                }
                match port {
                    Some(port) => write!(f, ":{port}"),
                    None => Ok(()),
                }
            }
            Check::Http {
                host, port, path, ..
            } => {
                let path = path.split(['?', '#']).next().unwrap_or_default();
                write!(f, "http://{}{path}", host_port(host, *port))
            }
            Check::Exec { command } => write!(f, "exec:{}", program(command)),
        }
    }
}

/// The same as Display: the exec command line may hold secrets.
impl fmt::Debug for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Check")
            .field(&format_args!("{self}"))
            .finish()
    }
}

/// `host:port` as it goes into a URL or a Host header (an IPv6 address in brackets).
pub(super) fn host_port(host: &str, port: u16) -> String {
    format!("{}:{port}", bracketed(host))
}

fn bracketed(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

/// The program an exec command runs: its first word after any leading `NAME=value`
/// assignments (which are as likely as anything to hold a password).
fn program(command: &str) -> &str {
    command
        .split_whitespace()
        .find(|word| !is_assignment(word))
        .unwrap_or("…")
}

fn is_assignment(word: &str) -> bool {
    word.split_once('=').is_some_and(|(name, _)| {
        let mut chars = name.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

/// The text as an error may quote it: with any `scheme://user:password@` password masked.
fn masked(text: &str) -> String {
    crate::harness::mask("check", text).into_owned()
}

fn strip_scheme<'a>(text: &'a str, scheme: &str) -> Option<&'a str> {
    let head = text.get(..scheme.len())?;
    head.eq_ignore_ascii_case(scheme)
        .then(|| &text[scheme.len()..])
}

/// `PORT` or `HOST:PORT` (`[IPv6]:PORT`).
fn parse_tcp(rest: &str) -> Result<Check, String> {
    if rest.is_empty() {
        return Err("tcp: needs a port, e.g. tcp:5432".into());
    }
    if rest.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(Check::Tcp {
            host: None,
            port: Some(parse_port(rest)?),
        });
    }
    let Some((host, port)) = rest.rsplit_once(':') else {
        return Err(format!("{rest:?} is not a port (1-65535)"));
    };
    let host = unbracketed(host)?;
    Ok(Check::Tcp {
        host: Some(host.to_owned()),
        port: Some(parse_port(port)?),
    })
}

/// `HOST[:PORT][/PATH][?QUERY]`, then optionally white space and `contains=TEXT`.
fn parse_http(rest: &str) -> Result<Check, String> {
    let (url, option) = match rest.split_once(char::is_whitespace) {
        Some((url, option)) => (url, Some(option.trim_start())),
        None => (rest, None),
    };
    let contains = match option {
        None => None,
        Some(option) => match option.strip_prefix("contains=") {
            Some("") => return Err("contains= needs the text to look for".into()),
            Some(text) => Some(text.to_owned()),
            None => return Err("after the URL only contains=TEXT may follow".into()),
        },
    };
    let end = url.find(['/', '?', '#']).unwrap_or(url.len());
    let (authority, target) = url.split_at(end);
    if authority.contains('@') {
        return Err(
            "credentials in the URL are not supported; use exec: with a client (e.g. exec:curl -fsS URL)"
                .into(),
        );
    }
    let (host, port) = match authority.strip_prefix('[') {
        Some(bracketed) => {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or("the IPv6 address has no closing ']'")?;
            match after {
                "" => (host, 80),
                _ => match after.strip_prefix(':') {
                    Some(port) => (host, parse_port(port)?),
                    None => return Err("expected :PORT after the IPv6 address".into()),
                },
            }
        }
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (host, parse_port(port)?),
            None => (authority, 80),
        },
    };
    let host = unbracketed(host)?;
    // The fragment is never sent; the rest goes into the request line as it is.
    let target = target.split('#').next().unwrap_or_default();
    if target.chars().any(char::is_control) {
        return Err("the path contains a control character; percent-encode it".into());
    }
    let path = match target {
        "" => "/".to_owned(),
        query if query.starts_with('?') => format!("/{query}"),
        path => path.to_owned(),
    };
    Ok(Check::Http {
        host: host.to_owned(),
        port,
        path,
        contains,
    })
}

/// A host name or address, with the brackets of an IPv6 address removed.
fn unbracketed(host: &str) -> Result<&str, String> {
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return Err("the host is empty".into());
    }
    if host
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '/' | '@' | '[' | ']'))
    {
        return Err(format!("{host:?} is not a host name or address"));
    }
    Ok(host)
}

fn parse_port(text: &str) -> Result<u16, String> {
    match text.parse::<u16>() {
        Ok(port) if port != 0 && text.bytes().all(|b| b.is_ascii_digit()) => Ok(port),
        _ => Err(format!("{text:?} is not a port (1-65535)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(host: Option<&str>, port: Option<u16>) -> Check {
        Check::Tcp {
            host: host.map(str::to_owned),
            port,
        }
    }

    fn http(host: &str, port: u16, path: &str, contains: Option<&str>) -> Check {
        Check::Http {
            host: host.to_owned(),
            port,
            path: path.to_owned(),
            contains: contains.map(str::to_owned),
        }
    }

    fn exec(command: &str) -> Check {
        Check::Exec {
            command: command.to_owned(),
        }
    }

    #[test]
    fn parsing_accepts_the_documented_forms() {
        let table = [
            ("tcp", tcp(None, None)),
            (" tcp ", tcp(None, None)),
            ("tcp:5432", tcp(None, Some(5432))),
            ("tcp:db:5432", tcp(Some("db"), Some(5432))),
            ("tcp:10.0.0.7:6379", tcp(Some("10.0.0.7"), Some(6379))),
            ("tcp:[::1]:5432", tcp(Some("::1"), Some(5432))),
            (
                "http://127.0.0.1:8080/health",
                http("127.0.0.1", 8080, "/health", None),
            ),
            ("http://h:80", http("h", 80, "/", None)),
            ("http://h", http("h", 80, "/", None)),
            ("HTTP://h:81/", http("h", 81, "/", None)),
            ("http://h:1/x contains=ok", http("h", 1, "/x", Some("ok"))),
            (
                "http://h:1/x   contains=all good",
                http("h", 1, "/x", Some("all good")),
            ),
            (
                "http://h:1/ready?full=1#top",
                http("h", 1, "/ready?full=1", None),
            ),
            ("http://h:1?full=1", http("h", 1, "/?full=1", None)),
            ("http://[::1]:8080/x", http("::1", 8080, "/x", None)),
            ("http://[::1]/", http("::1", 80, "/", None)),
            ("exec:pg_isready -q", exec("pg_isready -q")),
            ("exec: true ", exec("true")),
            (
                "exec:test -e /tmp/ready && test -s /tmp/ready",
                exec("test -e /tmp/ready && test -s /tmp/ready"),
            ),
        ];
        for (text, want) in table {
            match text.parse::<Check>() {
                Ok(got) => assert!(got == want, "{text:?}: got {got:?}, want {want:?}"),
                Err(err) => panic!("{text:?}: {err}"),
            }
        }
    }

    #[test]
    fn parsing_rejects_with_a_message_naming_the_text_and_the_forms() {
        // (text, a phrase the message must contain)
        let table = [
            ("", "it is empty"),
            ("   ", "it is empty"),
            ("tcp:", "needs a port"),
            ("tcp:0", "\"0\" is not a port"),
            ("tcp:abc", "\"abc\" is not a port"),
            ("tcp:65536", "\"65536\" is not a port"),
            ("tcp:db:", "\"\" is not a port"),
            ("tcp::5432", "the host is empty"),
            ("tcp:d b:1", "is not a host name"),
            ("htp://x", "unknown kind of check"),
            ("ftp://x", "unknown kind of check"),
            ("udp:53", "unknown kind of check"),
            ("exec:", "exec: needs a command"),
            ("exec:   ", "exec: needs a command"),
            ("http://", "the host is empty"),
            ("http://:80/", "the host is empty"),
            ("http://h:0/", "\"0\" is not a port"),
            ("http://h:x/", "\"x\" is not a port"),
            ("http://h:1/x contains=", "contains= needs the text"),
            ("http://h:1/x body=ok", "only contains=TEXT"),
            (
                "http://u:pw@h:1/",
                "credentials in the URL are not supported",
            ),
            ("http://[::1:80/", "no closing ']'"),
            ("https://h/health", "https is not supported"),
            ("HTTPS://h/health", "https is not supported"),
        ];
        for (text, phrase) in table {
            match text.parse::<Check>() {
                Ok(got) => panic!("{text:?} parsed as {got:?}"),
                Err(err) => {
                    let message = err.to_string();
                    assert!(message.contains(phrase), "{text:?}: {message}");
                    assert!(
                        message.starts_with(&format!("invalid --check {text:?}"))
                            || text.contains('@'),
                        "{text:?}: {message}"
                    );
                    assert!(!message.contains('\n'), "{text:?}: {message}");
                    let forms = message.contains("tcp:PORT") || message.contains("exec:");
                    assert!(forms, "{text:?}: no accepted forms in {message}");
                }
            }
        }
    }

    #[test]
    fn parse_errors_mask_url_passwords() {
        let message = "http://u:secret@h:1/"
            .parse::<Check>()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(!message.contains("secret"), "{message}");
        assert!(message.contains("u:********@h"), "{message}");
    }

    #[test]
    fn display_names_the_check_without_secrets() {
        let table = [
            ("tcp", "tcp"),
            ("tcp:5432", "tcp:5432"),
            ("tcp:db:5432", "tcp:db:5432"),
            ("tcp:[::1]:5432", "tcp:[::1]:5432"),
            ("http://h:80", "http://h:80/"),
            ("http://h/ready?token=secret", "http://h:80/ready"),
            ("http://[::1]:8080/x contains=secret", "http://[::1]:8080/x"),
            (
                "exec:pg_isready -d postgres://u:secret@h",
                "exec:pg_isready",
            ),
            ("exec:PGPASSWORD=secret pg_isready -q", "exec:pg_isready"),
            (
                "exec:/usr/bin/redis-cli -a secret ping",
                "exec:/usr/bin/redis-cli",
            ),
            ("exec:TOKEN=secret", "exec:…"),
        ];
        for (text, want) in table {
            let check: Check = text.parse().unwrap();
            assert_eq!(check.to_string(), want, "{text:?}");
            assert!(!format!("{check:?}").contains("secret"), "{text:?}");
        }
    }
}
