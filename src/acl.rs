//! The ACL policy: which identities may read, write, register and lead. One place decides the
//! ACL of every znode herald creates.
//!
//! ZooKeeper checks a create and a delete against the *parent's* ACL, so a value or an instance
//! protected by `creator_all` is still open to replacement when its parent is
//! `world:anyone:cdrwa`: anyone may delete it and create their own. With credentials
//! (`--zk-auth`, digest), every node herald creates gets its own identity's full rights, read
//! for everyone on the directories and election nodes, and for each identity granted a role
//! (`--acl ROLE=SCHEME:ID`) exactly the rights that role needs:
//!
//! | znodes | anyone | `read` | `write` | `register` | `lead` |
//! |---|---|---|---|---|---|
//! | `<root>` | r | | c | c | c |
//! | `environment`, `slots`, `excluded`, `holds` | r | | cd | | cd |
//! | values, slot maps, exclusion lists | | r | rw | | rw |
//! | `services`, `services/S`, `departures`, `departures/S` | r | | | cd | |
//! | instance nodes (metadata may hold credentials), departure records | | | | | r |
//! | `directors`, `directors/K` | r | | | | cd |
//! | election nodes | r | | | | |
//!
//! So a client without a granted identity can list and watch, but cannot create, change or
//! delete anything: no value replaced, no instance injected or removed, no election node
//! planted. Without credentials every node is open (anyone: all), as ZooKeeper's default.
//! The path above `<root>` (a chroot, `/`) is not herald's: a missing part of it is created open;
//! create it yourself with the ACL you want.
//!
//! The ACL of a node is chosen by whoever creates it, so it says nothing reliable about who
//! wrote it: what keeps strangers out is the create right on the parent, which is why the
//! directories matter and why [`audit`] checks them.

use std::fmt;
use std::str::FromStr;

use tracing::warn;
use zookeeper_client::{self as zk, Acl, Acls, AuthId, CreateMode, Permission};

use crate::layout::Layout;
use crate::zk::ZkError;

/// What an identity other than herald's own may be granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Read the published values (`herald resolve`, /environment scripts, `watch`).
    Read,
    /// Write values (`herald put`, `herald delete`, the gateway's POST).
    Write,
    /// Register instances (`herald announce`, `run --service`).
    Register,
    /// Run a director: read the instances, campaign, publish.
    Lead,
}

impl Role {
    const ALL: [Role; 4] = [Role::Read, Role::Write, Role::Register, Role::Lead];

    fn name(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Register => "register",
            Role::Lead => "lead",
        }
    }
}

/// One `--acl ROLE=SCHEME:ID`: an identity and what it may do in herald's tree.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Grant {
    pub role: Role,
    pub scheme: String,
    pub id: String,
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}:{}", self.role.name(), self.scheme, self.id)
    }
}

impl FromStr for Grant {
    type Err = String;

    /// `lead=digest:director:Qq7W…=`, `read=x509:CN=app`, `read=ip:10.0.0.0/8`,
    /// `read=world:anyone` (values readable by everyone: an explicit choice).
    fn from_str(s: &str) -> Result<Grant, String> {
        const FORM: &str = "write ROLE=SCHEME:ID, e.g. lead=digest:director:HASH (herald acl id prints an identity's)";
        let (role, who) = s.split_once('=').ok_or(format!("{FORM}; got no '='"))?;
        let role = Role::ALL
            .into_iter()
            .find(|r| r.name() == role)
            .ok_or_else(|| {
                format!("unknown role {role:?}: the roles are read, write, register and lead")
            })?;
        let (scheme, id) = who
            .split_once(':')
            .filter(|(scheme, id)| !scheme.is_empty() && !id.is_empty())
            .ok_or(format!("{FORM}; the identity has no SCHEME:ID"))?;
        match scheme {
            "digest" => {
                let hash = id.split_once(':');
                if !matches!(hash, Some((user, hash)) if !user.is_empty() && hash.len() == 28 && hash.ends_with('='))
                {
                    return Err(format!(
                        "a digest identity is USER:HASH, the 28-character base64 hash ZooKeeper compares (herald acl id prints it), not a password; {FORM}"
                    ));
                }
            }
            "world" if id == "anyone" && role == Role::Read => {}
            "world" => {
                return Err(
                    "world:anyone may only be granted read: any other role would let every client create or delete"
                        .to_owned(),
                );
            }
            "x509" | "ip" | "sasl" | "super" => {}
            other => {
                return Err(format!(
                    "unknown scheme {other:?}: use digest, x509, sasl or ip"
                ));
            }
        }
        Ok(Grant {
            role,
            scheme: scheme.to_owned(),
            id: id.to_owned(),
        })
    }
}

/// What a znode of herald's tree is, for its ACL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `<root>` (and anything below it herald does not know).
    Root,
    /// `environment`, `slots`, `excluded`, `holds`.
    ValueDir,
    /// Values, slot maps, exclusion lists.
    Value,
    /// `services` and `services/S`.
    ServiceDir,
    /// Instance nodes: their metadata may hold credentials.
    Instance,
    /// `directors` and `directors/K`.
    ElectionDir,
    /// Election nodes.
    Election,
}

impl Kind {
    const ALL: [Kind; 7] = [
        Kind::Root,
        Kind::ValueDir,
        Kind::Value,
        Kind::ServiceDir,
        Kind::Instance,
        Kind::ElectionDir,
        Kind::Election,
    ];

    /// What everyone may do.
    fn anyone(self) -> Permission {
        match self {
            Kind::Value | Kind::Instance => Permission::NONE,
            _ => Permission::READ,
        }
    }

    /// What an identity granted `role` may do.
    fn granted(self, role: Role) -> Permission {
        let cd = Permission::CREATE | Permission::DELETE;
        let rw = Permission::READ | Permission::WRITE;
        match (self, role) {
            (Kind::Root, Role::Write | Role::Register | Role::Lead) => Permission::CREATE,
            (Kind::ValueDir, Role::Write | Role::Lead) => cd,
            (Kind::Value, Role::Read) => Permission::READ,
            (Kind::Value, Role::Write | Role::Lead) => rw,
            (Kind::ServiceDir, Role::Register) => cd,
            (Kind::Instance, Role::Lead) => Permission::READ,
            (Kind::ElectionDir, Role::Lead) => cd,
            _ => Permission::NONE,
        }
    }

    /// The kind of directory `dir`, or `None` above `root` (not herald's).
    pub fn of_dir(root: &str, dir: &str) -> Option<Kind> {
        if dir == root {
            return Some(Kind::Root);
        }
        let below = dir.strip_prefix(root)?.strip_prefix('/')?;
        let top = below.split('/').next().unwrap_or_default();
        Some(match top {
            "environment" | "slots" | "excluded" | "holds" => Kind::ValueDir,
            "services" | "departures" => Kind::ServiceDir,
            "directors" => Kind::ElectionDir,
            _ => Kind::Root,
        })
    }
}

/// Which ACLs herald's znodes get: built once per process from its credentials and grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Per [`Kind`], in the order of `Kind::ALL`; `None` without credentials (anyone: all).
    acls: Option<&'static [&'static [Acl]; 7]>,
}

impl Policy {
    /// The policy of a session without credentials: ZooKeeper's default, anyone may do all.
    pub fn open() -> Policy {
        Policy { acls: None }
    }

    /// The policy of a session with credentials, granting `grants` to other identities.
    pub fn new(authenticated: bool, grants: &[Grant]) -> Policy {
        if !authenticated {
            return Policy::open();
        }
        // A handful of small lists made once per process (and per policy in tests): leaking
        // them gives the `'static` lifetime the client's create options want.
        let acls = Kind::ALL.map(|kind| -> &'static [Acl] {
            let mut acls = vec![Acl::new(Permission::ALL, AuthId::authed())];
            if kind.anyone() != Permission::NONE {
                acls.push(Acl::new(kind.anyone(), AuthId::anyone()));
            }
            for grant in grants {
                let perms = kind.granted(grant.role);
                if perms == Permission::NONE {
                    continue;
                }
                match acls
                    .iter_mut()
                    .find(|a| a.scheme() == grant.scheme && a.id() == grant.id)
                {
                    Some(a) => *a = Acl::new(a.permission() | perms, a.auth_id().clone()),
                    None => acls.push(Acl::new(perms, AuthId::new(&grant.scheme, &grant.id))),
                }
            }
            Box::leak(acls.into_boxed_slice())
        });
        Policy {
            acls: Some(Box::leak(Box::new(acls))),
        }
    }

    pub fn authenticated(self) -> bool {
        self.acls.is_some()
    }

    /// The ACL a znode of `kind` is created with.
    pub fn acl(self, kind: Kind) -> Acls<'static> {
        match self.acls {
            Some(acls) => Acls::new(acls[kind as usize]),
            None => Acls::anyone_all(),
        }
    }

    /// Values, slot maps and exclusion lists.
    pub fn value(self) -> Acls<'static> {
        self.acl(Kind::Value)
    }

    /// Instance nodes.
    pub fn instance(self) -> Acls<'static> {
        self.acl(Kind::Instance)
    }

    /// Election nodes: others may see who leads, not plant or remove a node.
    pub fn election(self) -> Acls<'static> {
        self.acl(Kind::Election)
    }
}

/// Creates directory `path` and its missing ancestors: those at or below `root` with the
/// policy's directory ACL, those above `root` open (they are not herald's).
pub async fn make_dirs(
    client: &zk::Client,
    root: &str,
    path: &str,
    policy: Policy,
) -> Result<(), zk::Error> {
    // The missing directories, deepest first.
    let mut missing: Vec<&str> = Vec::new();
    let mut at = path;
    loop {
        match client.create(at, b"", &mode(root, at, policy)).await {
            Ok(_) | Err(zk::Error::NodeExists) => break,
            Err(zk::Error::NoNode) => {
                missing.push(at);
                match at.rfind('/') {
                    Some(i) if i > 0 => at = &at[..i],
                    // The top itself is missing: a chroot that does not exist.
                    _ => return Err(zk::Error::NoNode),
                }
            }
            Err(err) => return Err(err),
        }
    }
    for dir in missing.into_iter().rev() {
        match client.create(dir, b"", &mode(root, dir, policy)).await {
            Ok(_) | Err(zk::Error::NodeExists) => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

fn mode(root: &str, dir: &str, policy: Policy) -> zk::CreateOptions<'static> {
    CreateMode::Persistent.with_acls(match Kind::of_dir(root, dir) {
        Some(kind) => policy.acl(kind),
        None => Acls::anyone_all(),
    })
}

/// A znode whose ACL differs from the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    pub path: String,
    pub kind: Kind,
    /// Who may do more than the policy allows, e.g. `world:anyone:cdrwa`.
    pub grants: Vec<String>,
    /// Rights the policy grants that the znode lacks, e.g. `digest:director:…:r`.
    pub missing: Vec<String>,
}

/// `perms` as ZooKeeper's letters (`cdrwa`).
fn letters(p: Permission) -> String {
    BITS.iter()
        .filter(|(bit, _)| p.has(*bit))
        .map(|(_, c)| *c)
        .collect()
}

const BITS: [(Permission, char); 5] = [
    (Permission::CREATE, 'c'),
    (Permission::DELETE, 'd'),
    (Permission::READ, 'r'),
    (Permission::WRITE, 'w'),
    (Permission::ADMIN, 'a'),
];

/// The rights in `p` that `allowed` does not have.
fn beyond(p: Permission, allowed: Permission) -> Permission {
    BITS.iter()
        .filter(|(bit, _)| p.has(*bit) && !allowed.has(*bit))
        .fold(Permission::NONE, |acc, (bit, _)| acc | *bit)
}

/// Whether the ACL entry `actual` (as ZooKeeper shows it) names the identity of `wanted`.
/// ZooKeeper shows a digest id's hash only to a session with ADMIN on the znode; to others it
/// shows `user:x`, so a masked id is compared by its user.
fn same_id(actual: &Acl, wanted: &Acl) -> bool {
    if actual.scheme() != wanted.scheme() {
        return false;
    }
    if actual.id() == wanted.id() {
        return true;
    }
    match (actual.id().split_once(':'), wanted.id().split_once(':')) {
        (Some((user, "x")), Some((wanted_user, _))) => {
            actual.scheme() == "digest" && user == wanted_user
        }
        _ => false,
    }
}

impl Policy {
    /// How `acls`, the ACL of a znode of `kind`, differs from the policy for owner `owner`:
    /// the entries that give an id more than the policy does, and the policy's grants the znode
    /// lacks. The owner is herald's identity (digest ids of user `owner`, by name: the hash is of
    /// a password herald does not keep); an identity that may create such a znode may own it
    /// too (all rights).
    pub fn compare(self, acls: &[Acl], kind: Kind, owner: &str) -> (Vec<String>, Vec<String>) {
        let wanted: &[Acl] = &self.acl(kind);
        let allowed = |a: &Acl| -> Permission {
            // `auth` is how an ACL names the creating session before ZooKeeper expands it.
            if a.scheme() == "auth"
                || (a.scheme() == "digest" && a.id().split(':').next() == Some(owner))
                || self.may_create(kind, a)
            {
                return Permission::ALL;
            }
            wanted
                .iter()
                .filter(|w| same_id(a, w))
                .fold(Permission::NONE, |acc, w| acc | w.permission())
        };
        let open = acls
            .iter()
            .filter_map(|a| {
                let extra = beyond(a.permission(), allowed(a));
                (extra != Permission::NONE)
                    .then(|| format!("{}:{}:{}", a.scheme(), a.id(), letters(a.permission())))
            })
            .collect();
        let missing = wanted
            .iter()
            .filter(|w| w.scheme() != "auth")
            .filter_map(|w| {
                let has = acls
                    .iter()
                    .filter(|a| same_id(a, w))
                    .fold(Permission::NONE, |acc, a| acc | a.permission());
                let lacks = beyond(w.permission(), has);
                (lacks != Permission::NONE)
                    .then(|| format!("{}:{}:{}", w.scheme(), w.id(), letters(lacks)))
            })
            .collect();
        (open, missing)
    }

    /// Whether `a`'s identity is granted the create right where znodes of `kind` are made (it
    /// may then be their owner).
    fn may_create(self, kind: Kind, a: &Acl) -> bool {
        let parents: &[Kind] = match kind {
            // Whoever comes first creates the root.
            Kind::Root => &[Kind::Root],
            Kind::ValueDir => &[Kind::Root],
            Kind::Value => &[Kind::ValueDir],
            Kind::ServiceDir => &[Kind::Root, Kind::ServiceDir],
            Kind::Instance => &[Kind::ServiceDir],
            Kind::ElectionDir => &[Kind::Root, Kind::ElectionDir],
            Kind::Election => &[Kind::ElectionDir],
        };
        parents.iter().any(|parent| {
            self.acl(*parent).iter().any(|w| {
                same_id(a, w) && w.scheme() != "world" && w.permission().has(Permission::CREATE)
            })
        })
    }
}

/// The znodes of herald's tree: the directories, and with `deep` every value, slot map,
/// exclusion list, instance and election node in them.
async fn tree(
    client: &zk::Client,
    layout: &Layout,
    deep: bool,
) -> Result<Vec<(String, Kind)>, ZkError> {
    let list = |path: String| async move {
        match client.list_children(&path).await {
            Ok(mut names) => {
                names.sort();
                Ok(names)
            }
            Err(zk::Error::NoNode) => Ok(Vec::new()),
            Err(err) => Err(ZkError::op("list", &path, err)),
        }
    };
    let mut out = vec![(layout.root().to_owned(), Kind::Root)];
    for (dir, kind, children) in [
        (layout.environment(), Kind::ValueDir, None),
        (layout.slots_dir(), Kind::ValueDir, None),
        (layout.excluded_dir(), Kind::ValueDir, None),
        (layout.holds_dir(), Kind::ValueDir, None),
        (layout.services(), Kind::ServiceDir, Some(Kind::Instance)),
        (layout.departures(), Kind::ServiceDir, Some(Kind::Instance)),
        (
            format!("{}/directors", layout.root()),
            Kind::ElectionDir,
            Some(Kind::Election),
        ),
    ] {
        out.push((dir.clone(), kind));
        if !deep {
            continue;
        }
        for name in list(dir.clone()).await? {
            let path = format!("{dir}/{name}");
            match children {
                None => out.push((path, Kind::Value)),
                // services/S and directors/K: directories of instances or election nodes.
                Some(inner) => {
                    out.push((path.clone(), kind));
                    for child in list(path.clone()).await? {
                        out.push((format!("{path}/{child}"), inner));
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Every znode of herald's tree (with `deep`, the data too) more open than the policy for the
/// identity `owner`. Missing znodes are skipped.
pub async fn audit(
    client: &zk::Client,
    layout: &Layout,
    policy: Policy,
    owner: &str,
    deep: bool,
) -> Result<Vec<Open>, ZkError> {
    let mut open = Vec::new();
    for (path, kind) in tree(client, layout, deep).await? {
        match client.get_acl(&path).await {
            Ok((acls, _)) => {
                let (grants, missing) = policy.compare(&acls, kind, owner);
                if !grants.is_empty() || !missing.is_empty() {
                    open.push(Open {
                        path,
                        kind,
                        grants,
                        missing,
                    });
                }
            }
            Err(zk::Error::NoNode) => {}
            // ZooKeeper shows an ACL only to who may read or administer the znode.
            Err(zk::Error::NoAuth) => warn!(
                znode = %path,
                "not checked: this identity may not read its ACL; check with the credentials of its owner or of the director"
            ),
            Err(err) => return Err(ZkError::op("read the ACL of", &path, err)),
        }
    }
    Ok(open)
}

/// Gives each of `open` the policy's ACL (the session must be the identity, and the znode its
/// own: ZooKeeper asks for ADMIN). Returns the paths it could not change, with why.
pub async fn apply(client: &zk::Client, policy: Policy, open: &[Open]) -> Vec<(String, zk::Error)> {
    let mut failed = Vec::new();
    for o in open {
        if let Err(err) = client.set_acl(&o.path, &policy.acl(o.kind), None).await
            && err != zk::Error::NoNode
        {
            failed.push((o.path.clone(), err));
        }
    }
    failed
}

/// At start, with credentials: warns about each of herald's directories that is more open than
/// the policy (a tree made before it, or by a session without credentials), naming the fix.
pub async fn warn_if_open(client: &zk::Client, layout: &Layout, policy: Policy, owner: &str) {
    match audit(client, layout, policy, owner, false).await {
        Ok(open) => {
            for o in &open {
                if !o.grants.is_empty() {
                    warn!(
                        znode = %o.path,
                        grants = %o.grants.join(","),
                        "more open than herald's ACL policy: a client without the granted identities may create or delete here; run `herald acl apply`"
                    );
                }
                if !o.missing.is_empty() {
                    warn!(
                        znode = %o.path,
                        missing = %o.missing.join(","),
                        "lacks rights the ACL policy (--acl) grants: those identities cannot do their part here; run `herald acl apply`"
                    );
                }
            }
        }
        Err(err) => warn!(error = %err, "cannot check the ACLs of herald's directories"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(p: Permission, scheme: &str, id: &str) -> Acl {
        Acl::new(p, AuthId::new(scheme, id))
    }

    fn grant(s: &str) -> Grant {
        s.parse().unwrap()
    }

    const DIRECTOR: &str = "lead=digest:director:AAAAAAAAAAAAAAAAAAAAAAAAAAA=";

    #[test]
    fn directories_of_an_authenticated_session_are_read_only_for_others() {
        let authed = Policy::new(true, &[]);
        let acls: &[Acl] = &authed.acl(Kind::ServiceDir);
        assert_eq!(
            acls,
            [
                acl(Permission::ALL, "auth", ""),
                acl(Permission::READ, "world", "anyone"),
            ]
        );
        let creator_all = [acl(Permission::ALL, "auth", "")];
        assert_eq!(&*authed.value(), creator_all);
        assert_eq!(&*authed.instance(), creator_all);
        let anyone_all = [acl(Permission::ALL, "world", "anyone")];
        assert_eq!(&*Policy::new(false, &[]).acl(Kind::Root), anyone_all);
        assert_eq!(&*Policy::open().value(), anyone_all);
    }

    #[test]
    fn a_granted_role_gets_its_rights_and_no_more() {
        let policy = Policy::new(true, &[grant(DIRECTOR), grant("read=ip:10.0.0.0/8")]);
        let director = |kind| {
            policy
                .acl(kind)
                .iter()
                .find(|a| a.id().starts_with("director:"))
                .map(|a| letters(a.permission()))
        };
        assert_eq!(director(Kind::Root).as_deref(), Some("c"));
        assert_eq!(director(Kind::ValueDir).as_deref(), Some("cd"));
        assert_eq!(director(Kind::Value).as_deref(), Some("rw"));
        assert_eq!(director(Kind::ServiceDir), None);
        assert_eq!(director(Kind::Instance).as_deref(), Some("r"));
        assert_eq!(director(Kind::ElectionDir).as_deref(), Some("cd"));
        let reader: Vec<_> = Kind::ALL
            .iter()
            .filter(|k| policy.acl(**k).iter().any(|a| a.scheme() == "ip"))
            .collect();
        assert_eq!(reader, [&Kind::Value]);
    }

    #[test]
    fn grants_are_checked_for_what_they_name() {
        assert!(DIRECTOR.parse::<Grant>().is_ok());
        for bad in [
            "lead",
            "boss=digest:a:AAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            "lead=digest:director:password",
            "write=world:anyone",
            "read=magic:x",
            "read=",
        ] {
            assert!(bad.parse::<Grant>().is_err(), "{bad}");
        }
        assert!("read=world:anyone".parse::<Grant>().is_ok());
    }

    #[test]
    fn differences_from_the_policy_are_named() {
        let policy = Policy::new(true, &[]);
        let open = [acl(Permission::ALL, "world", "anyone")];
        let (grants, missing) = policy.compare(&open, Kind::ServiceDir, "svc");
        assert_eq!(grants, ["world:anyone:cdrwa"]);
        assert!(missing.is_empty());
        assert_eq!(
            policy.compare(&policy.acl(Kind::ServiceDir), Kind::ServiceDir, "svc"),
            (vec![], vec![])
        );
        let read = [acl(Permission::READ, "world", "anyone")];
        assert_eq!(
            policy.compare(&read, Kind::Value, "svc").0,
            ["world:anyone:r"]
        );
        let ours = [acl(Permission::ALL, "digest", "svc:hash=")];
        assert_eq!(policy.compare(&ours, Kind::Value, "svc"), (vec![], vec![]));
        let theirs = [acl(Permission::ALL, "digest", "eve:hash=")];
        assert_eq!(
            policy.compare(&theirs, Kind::ServiceDir, "svc").0,
            ["digest:eve:hash=:cdrwa"]
        );
    }

    #[test]
    fn a_granted_creator_may_own_what_it_creates_and_missing_grants_are_named() {
        let policy = Policy::new(
            true,
            &[
                grant(DIRECTOR),
                grant("register=digest:agent:BBBBBBBBBBBBBBBBBBBBBBBBBBB="),
            ],
        );
        // An instance the agent created: its own, the director may read.
        let instance = [
            acl(
                Permission::ALL,
                "digest",
                "agent:BBBBBBBBBBBBBBBBBBBBBBBBBBB=",
            ),
            acl(
                Permission::READ,
                "digest",
                "director:AAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            ),
        ];
        assert_eq!(
            policy.compare(&instance, Kind::Instance, "svc"),
            (vec![], vec![])
        );
        // The agent may not own a value; an instance made before the director's grant lacks it.
        assert_eq!(
            policy.compare(&instance[..1], Kind::Value, "svc").0,
            ["digest:agent:BBBBBBBBBBBBBBBBBBBBBBBBBBB=:cdrwa"]
        );
        assert_eq!(
            policy.compare(&instance[..1], Kind::Instance, "svc").1,
            ["digest:director:AAAAAAAAAAAAAAAAAAAAAAAAAAA=:r"]
        );
    }

    #[test]
    fn a_masked_digest_hash_is_compared_by_user() {
        let policy = Policy::new(true, &[grant(DIRECTOR)]);
        // As a session without ADMIN sees an instance the director may read.
        let shown = [
            acl(Permission::ALL, "digest", "svc:x"),
            acl(Permission::READ, "digest", "director:x"),
        ];
        assert_eq!(
            policy.compare(&shown, Kind::Instance, "svc"),
            (vec![], vec![])
        );
        let other = [acl(Permission::READ, "digest", "mallory:x")];
        assert_eq!(
            policy.compare(&other, Kind::Instance, "svc").0,
            ["digest:mallory:x:r"]
        );
    }

    #[test]
    fn directories_are_known_by_their_place() {
        let k = |dir| Kind::of_dir("/h", dir);
        assert_eq!(k("/h"), Some(Kind::Root));
        assert_eq!(k("/h/environment"), Some(Kind::ValueDir));
        assert_eq!(k("/h/services/pg"), Some(Kind::ServiceDir));
        assert_eq!(k("/h/directors/K"), Some(Kind::ElectionDir));
        assert_eq!(k("/"), None);
        assert_eq!(k("/hx"), None);
    }
}
