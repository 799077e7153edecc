//! The znode layout: the only code that builds znode paths, and the validated names that go in them.
//!
//! ```text
//! <root>/environment/<KEY>                    persistent: the raw bytes of a published value
//! <root>/services/<service>/<instance-id>     ephemeral: one JSON document per live instance
//! <root>/directors/<KEY>/…                    director election for the output KEY
//! <root>/slots/<KEY>                          persistent: the member numbers of output KEY (JSON)
//! ```
//!
//! `<root>` is the chroot of the connect string (if any) followed by `--root` (default `/herald`).
//! Every name is validated on construction, so a path built here never contains `/`, `..`,
//! control characters or an empty segment.

use std::fmt;
use std::str::FromStr;

/// Why a name, key or root path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error(
        "invalid key {value:?}: {reason}; a key is an environment variable name: a letter or '_', then letters, digits or '_'"
    )]
    Key { value: String, reason: &'static str },
    #[error(
        "invalid {kind} {value:?}: {reason}; use a letter or digit, then letters, digits, '.', '_' or '-' (at most {MAX_NAME_LEN} bytes)"
    )]
    Name {
        kind: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("invalid {what} {value:?}: {reason}; write an absolute path like /herald")]
    Root {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
}

/// Longest service name or instance id, in bytes.
pub const MAX_NAME_LEN: usize = 128;
/// Longest key, in bytes (far below any limit of ZooKeeper or of an environment).
pub const MAX_KEY_LEN: usize = 255;

/// The name of a published value: an environment variable name, `[A-Za-z_][A-Za-z0-9_]*`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EnvKey(String);

impl EnvKey {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for EnvKey {
    type Err = LayoutError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let fail = |reason| {
            Err(LayoutError::Key {
                value: s.to_owned(),
                reason,
            })
        };
        let Some(first) = s.chars().next() else {
            return fail("it is empty");
        };
        if s.len() > MAX_KEY_LEN {
            return fail("it is longer than 255 bytes");
        }
        if !(first.is_ascii_alphabetic() || first == '_') {
            return fail("it must start with a letter or '_'");
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '_'))
        {
            return fail(if c == '/' {
                "it contains '/'"
            } else if c.is_control() {
                "it contains a control character"
            } else {
                "it contains a character other than letters, digits and '_'"
            });
        }
        Ok(EnvKey(s.to_owned()))
    }
}

impl fmt::Display for EnvKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

fn validate_name(kind: &'static str, s: &str) -> Result<(), LayoutError> {
    let fail = |reason| {
        Err(LayoutError::Name {
            kind,
            value: s.to_owned(),
            reason,
        })
    };
    let Some(first) = s.chars().next() else {
        return fail("it is empty");
    };
    if s.len() > MAX_NAME_LEN {
        return fail("it is longer than 128 bytes");
    }
    if !first.is_ascii_alphanumeric() {
        return fail("it must start with a letter or digit");
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return fail(if c == '/' {
            "it contains '/'"
        } else if c.is_control() {
            "it contains a control character"
        } else {
            "it contains a character other than letters, digits, '.', '_' and '-'"
        });
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = LayoutError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                validate_name($kind, s).map(|()| $name(s.to_owned()))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(&self.0)
            }
        }
    };
}

name_type!(
    /// A service name, `[A-Za-z0-9][A-Za-z0-9._-]*`, at most 128 bytes.
    ServiceName,
    "service name"
);
name_type!(
    /// An instance id, `[A-Za-z0-9][A-Za-z0-9._-]*`, at most 128 bytes.
    InstanceId,
    "instance id"
);

/// Checks an absolute znode path (a chroot or `--root`) and returns it without a trailing `/`.
/// `/` alone becomes the empty string.
fn normalize_root(what: &'static str, s: &str) -> Result<String, LayoutError> {
    let fail = |reason| {
        Err(LayoutError::Root {
            what,
            value: s.to_owned(),
            reason,
        })
    };
    if !s.starts_with('/') {
        return fail("it must start with '/'");
    }
    let trimmed = s.strip_suffix('/').unwrap_or(s);
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    // Only a first segment `zookeeper` is ZooKeeper's (`/zookeeperx/zookeeper` is not).
    if trimmed == "/zookeeper" || trimmed.starts_with("/zookeeper/") {
        return fail("/zookeeper is reserved by ZooKeeper");
    }
    for segment in trimmed[1..].split('/') {
        if segment.is_empty() {
            return fail("it contains an empty segment ('//')");
        }
        if segment == "." || segment == ".." {
            return fail("it contains '.' or '..'");
        }
        if segment.chars().any(|c| c.is_control()) {
            return fail("it contains a control character");
        }
    }
    Ok(trimmed.to_owned())
}

/// Where herald's znodes live. Built once from the connect string's chroot and `--root`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Absolute, without trailing `/`; never empty.
    root: String,
}

/// The default `--root`.
pub const DEFAULT_ROOT: &str = "/herald";

impl Layout {
    /// `chroot` is the path part of a connect string (`h1:2181/chroot`), `root` is `--root`.
    pub fn new(chroot: Option<&str>, root: &str) -> Result<Layout, LayoutError> {
        let chroot = match chroot {
            Some(c) => normalize_root("chroot", c)?,
            None => String::new(),
        };
        let root = normalize_root("--root", root)?;
        let joined = format!("{chroot}{root}");
        if joined.is_empty() {
            return Err(LayoutError::Root {
                what: "--root",
                value: "/".to_owned(),
                reason: "herald needs a base path of its own, not the ZooKeeper root",
            });
        }
        Ok(Layout { root: joined })
    }

    /// herald's base path, e.g. `/herald` or `/chroot/herald`.
    pub fn root(&self) -> &str {
        &self.root
    }

    /// `<root>/environment`: the parent of every published value.
    pub fn environment(&self) -> String {
        format!("{}/environment", self.root)
    }

    /// `<root>/environment/<KEY>`.
    pub fn value(&self, key: &EnvKey) -> String {
        format!("{}/environment/{key}", self.root)
    }

    /// `<root>/services`: a Curator service-discovery basePath.
    pub fn services(&self) -> String {
        format!("{}/services", self.root)
    }

    /// `<root>/services/<service>`.
    pub fn service(&self, service: &ServiceName) -> String {
        format!("{}/services/{service}", self.root)
    }

    /// `<root>/services/<service>/<instance-id>`.
    pub fn instance(&self, service: &ServiceName, id: &InstanceId) -> String {
        format!("{}/services/{service}/{id}", self.root)
    }

    /// `<root>/services/<service>/.rewritten-<instance-id>`: created and deleted again in the
    /// multi-op that rewrites an instance's node in place (a soft drain, new metadata), so the
    /// service node's `pzxid` moves with every change below it. Never seen in a listing (it
    /// lives only inside that transaction); never an instance id (those start with a letter
    /// or digit).
    pub fn rewrite_mark(&self, service: &ServiceName, id: &InstanceId) -> String {
        format!("{}/services/{service}/.rewritten-{id}", self.root)
    }

    /// `<root>/departures`: where agents leave a trace of a graceful deregistration.
    pub fn departures(&self) -> String {
        format!("{}/departures", self.root)
    }

    /// `<root>/departures/<service>`.
    pub fn departures_of(&self, service: &ServiceName) -> String {
        format!("{}/departures/{service}", self.root)
    }

    /// `<root>/departures/<service>/<instance-id>`: written in the same multi-op that deletes
    /// the instance's node, so a director can tell a deregistration from a lost session.
    pub fn departure(&self, service: &ServiceName, id: &InstanceId) -> String {
        format!("{}/departures/{service}/{id}", self.root)
    }

    /// `<root>/slots`: the parent of every slot map.
    pub fn slots_dir(&self) -> String {
        format!("{}/slots", self.root)
    }

    /// `<root>/slots/<KEY>`: the stable member numbers of output KEY, written with its value.
    pub fn slots(&self, key: &EnvKey) -> String {
        format!("{}/slots/{key}", self.root)
    }

    /// `<root>/excluded`: the parent of every output's list of excluded instances.
    pub fn excluded_dir(&self) -> String {
        format!("{}/excluded", self.root)
    }

    /// `<root>/excluded/<KEY>`: the instances output KEY leaves out because every value with
    /// them failed its check (JSON), written with its value.
    pub fn excluded(&self, key: &EnvKey) -> String {
        format!("{}/excluded/{key}", self.root)
    }

    /// `<root>/holds`: the parent of every output's current hold.
    pub fn holds_dir(&self) -> String {
        format!("{}/holds", self.root)
    }

    /// `<root>/holds/<KEY>`: why output KEY's leader keeps the last value instead of a new one
    /// (JSON; `{}` when nothing is held), written by the leader, fenced.
    pub fn hold(&self, key: &EnvKey) -> String {
        format!("{}/holds/{key}", self.root)
    }

    /// `<root>/directors/<KEY>`: where the directors of output KEY hold their election.
    pub fn directors(&self, key: &EnvKey) -> String {
        format!("{}/directors/{key}", self.root)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        let table = [
            ("DATABASE_URL", true),
            ("_x", true),
            ("a1", true),
            ("", false),
            ("1ABC", false),
            ("FOO-BAR", false),
            ("FOO.BAR", false),
            ("A/B", false),
            ("..", false),
            ("A\u{0}", false),
            ("A\n", false),
            ("É", false),
        ];
        for (input, ok) in table {
            assert_eq!(input.parse::<EnvKey>().is_ok(), ok, "key {input:?}");
        }
        assert!("A".repeat(255).parse::<EnvKey>().is_ok());
        assert!("A".repeat(256).parse::<EnvKey>().is_err());
    }

    #[test]
    fn names() {
        let table = [
            ("pg", true),
            ("pg-primary.v2_x", true),
            ("0abc", true),
            ("", false),
            ("-pg", false),
            (".hidden", false),
            ("..", false),
            ("a/b", false),
            ("a b", false),
            ("a\u{7}", false),
        ];
        for (input, ok) in table {
            assert_eq!(
                input.parse::<ServiceName>().is_ok(),
                ok,
                "service {input:?}"
            );
            assert_eq!(input.parse::<InstanceId>().is_ok(), ok, "id {input:?}");
        }
        assert!("a".repeat(128).parse::<ServiceName>().is_ok());
        assert!("a".repeat(129).parse::<InstanceId>().is_err());
    }

    #[test]
    fn error_names_the_value_and_the_rule() {
        let err = "FOO-BAR".parse::<EnvKey>().unwrap_err().to_string();
        assert!(err.contains("\"FOO-BAR\""), "{err}");
        assert!(err.contains("environment variable name"), "{err}");
    }

    #[test]
    fn paths() {
        let key: EnvKey = "DATABASE_URL".parse().unwrap();
        let svc: ServiceName = "pg".parse().unwrap();
        let id: InstanceId = "pg-1".parse().unwrap();
        let l = Layout::new(None, "/herald").unwrap();
        assert_eq!(l.value(&key), "/herald/environment/DATABASE_URL");
        assert_eq!(l.environment(), "/herald/environment");
        assert_eq!(l.services(), "/herald/services");
        assert_eq!(l.service(&svc), "/herald/services/pg");
        assert_eq!(l.instance(&svc, &id), "/herald/services/pg/pg-1");
        assert_eq!(l.directors(&key), "/herald/directors/DATABASE_URL");

        let l = Layout::new(Some("/tenant/a/"), "/herald/").unwrap();
        assert_eq!(l.root(), "/tenant/a/herald");
        let l = Layout::new(Some("/tenant"), "/").unwrap();
        assert_eq!(l.root(), "/tenant");
    }

    #[test]
    fn roots() {
        let table = [
            (None, "/herald", Some("/herald")),
            (None, "/a/b", Some("/a/b")),
            (None, "herald", None),
            (None, "/", None),
            (None, "/a//b", None),
            (None, "/a/../b", None),
            (None, "/zookeeper", None),
            (None, "/zookeeper/x/", None),
            (None, "/zookeeperx/zookeeper", Some("/zookeeperx/zookeeper")),
            (
                Some("/zookeeperx"),
                "/a/zookeeper",
                Some("/zookeeperx/a/zookeeper"),
            ),
            (Some("/"), "/x", Some("/x")),
            (Some("x"), "/x", None),
            (Some("/c\n"), "/x", None),
        ];
        for (chroot, root, want) in table {
            let got = Layout::new(chroot, root).ok();
            assert_eq!(
                got.as_ref().map(Layout::root),
                want,
                "chroot {chroot:?} root {root:?}"
            );
        }
    }

    /// Names from arbitrary strings: parsing never panics; an accepted name builds paths with
    /// no empty, `.` or `..` segment and no NUL or control character, and its display form
    /// parses back to the same name.
    mod properties {
        use proptest::prelude::*;

        use super::*;
        use crate::zk::ConnectString;

        /// Strings near the rules and far from them.
        fn name_like() -> impl Strategy<Value = String> {
            prop_oneof![
                "[A-Za-z0-9._-]{0,12}",
                "[A-Za-z0-9._/-]{0,12}",
                "[A-Za-z_][A-Za-z0-9_]{0,300}",
                proptest::sample::select(
                    &[
                        "",
                        ".",
                        "..",
                        "/",
                        "//",
                        "a/../b",
                        "/zookeeper",
                        "/zookeeper/x",
                        "/zookeeperx",
                        "a\u{0}b",
                        "a\nb",
                        "\u{7f}",
                        "\u{85}",
                        "é",
                        "a b",
                        "a\u{2028}",
                        "\u{feff}a",
                        "0",
                        "_",
                        "-",
                        "zookeeper",
                        "zookeeperx",
                    ][..]
                )
                .prop_map(str::to_owned),
                any::<String>(),
            ]
        }

        /// Paths near the rules and far from them.
        fn path_like() -> impl Strategy<Value = String> {
            prop_oneof![
                1 => proptest::collection::vec(name_like(), 0..5).prop_map(|s| format!("/{}", s.join("/"))),
                1 => (name_like(), name_like()).prop_map(|(a, b)| format!("{a}/{b}")),
                1 => name_like(),
                // Near the reserved /zookeeper.
                3 => proptest::collection::vec(
                    proptest::sample::select(&["zookeeper", "zookeeperx", "a", "", "."][..]),
                    1..4,
                )
                .prop_map(|s| format!("/{}", s.join("/"))),
            ]
        }

        fn path_is_clean(path: &str) -> Result<(), TestCaseError> {
            prop_assert!(path.starts_with('/'), "{:?}", path);
            for segment in path[1..].split('/') {
                prop_assert!(
                    !segment.is_empty() && segment != "." && segment != "..",
                    "segment {:?} in {:?}",
                    segment,
                    path
                );
                prop_assert!(!segment.chars().any(char::is_control), "{:?}", path);
            }
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(1024))]

            #[test]
            fn names_and_keys_make_clean_paths(s in name_like(), root in path_like()) {
                let layout = Layout::new(None, &root);
                let layout = layout.unwrap_or_else(|_| Layout::new(None, DEFAULT_ROOT).unwrap());
                if let Ok(key) = s.parse::<EnvKey>() {
                    prop_assert_eq!(key.to_string().parse::<EnvKey>().unwrap(), key.clone());
                    prop_assert!(key.as_str().len() <= MAX_KEY_LEN);
                    for path in [layout.value(&key), layout.slots(&key), layout.excluded(&key),
                                 layout.hold(&key), layout.directors(&key)] {
                        path_is_clean(&path)?;
                        prop_assert_eq!(path.rsplit('/').next(), Some(key.as_str()));
                    }
                }
                let service = s.parse::<ServiceName>();
                let id = s.parse::<InstanceId>();
                prop_assert_eq!(service.is_ok(), id.is_ok(), "one rule for both: {:?}", s);
                if let (Ok(service), Ok(id)) = (service, id) {
                    prop_assert_eq!(service.to_string().parse::<ServiceName>().unwrap(), service.clone());
                    prop_assert_eq!(id.to_string().parse::<InstanceId>().unwrap(), id.clone());
                    prop_assert!(id.as_str().len() <= MAX_NAME_LEN);
                    let path = layout.instance(&service, &id);
                    path_is_clean(&path)?;
                    prop_assert_eq!(path, format!("{}/{}/{}", layout.services(), service, id));
                }
            }

            /// Roots and chroots (also through a connect string): an accepted one is an
            /// absolute path with clean segments, outside /zookeeper, and reads back the same.
            #[test]
            fn roots_are_clean(chroot in proptest::option::of(path_like()), root in path_like(),
                               hosts in "[a-z0-9.:,\\[\\]]{0,12}") {
                if let Ok(layout) = Layout::new(chroot.as_deref(), &root) {
                    path_is_clean(layout.root())?;
                    prop_assert!(layout.root() != "/zookeeper" && !layout.root().starts_with("/zookeeper/"));
                    prop_assert_eq!(&Layout::new(None, layout.root()).unwrap(), &layout);
                    prop_assert_eq!(&Layout::new(Some(layout.root()), "/").unwrap(), &layout);
                }
                let connect = format!("{hosts}{}", chroot.as_deref().unwrap_or(""));
                if let Ok(parsed) = connect.parse::<ConnectString>() {
                    let again: ConnectString = parsed.to_string().parse().unwrap();
                    prop_assert_eq!((again.hosts(), again.chroot()), (parsed.hosts(), parsed.chroot()));
                    if let Ok(layout) = Layout::new(parsed.chroot(), &root) {
                        path_is_clean(layout.root())?;
                    }
                }
            }
        }
    }
}
