//! The ACL policy: which identities may read, write, register and lead. One place decides the
//! ACL of every znode herald creates.
//!
//! ZooKeeper checks a create and a delete against the *parent's* ACL, so a value or an instance
//! protected by `creator_all` is still open to replacement when its parent is
//! `world:anyone:cdrwa`: anyone may delete it and create their own. With credentials
//! (`--zk-auth`, digest), every node herald creates gets its own identity's full rights and at
//! most read for everyone else:
//!
//! | znodes | ACL with credentials | without |
//! |---|---|---|
//! | `<root>` and every directory below it (`environment`, `services`, `services/S`, `directors`, `directors/K`, `slots`, `excluded`) | the identity: all; anyone: read (list) | anyone: all |
//! | values, slot maps, exclusion lists | the identity: all | anyone: all |
//! | instance nodes (metadata may hold credentials) | the identity: all | anyone: all |
//! | election nodes | the identity: all; anyone: read | anyone: all |
//!
//! So a client without the identity can list and watch, but cannot create, change or delete
//! anything: no value replaced, no instance injected or removed, no election node planted.
//! The path above `<root>` (a chroot, `/`) is not herald's: a missing part of it is created open
//! (anyone: all), as before; create it yourself with the ACL you want.

use tracing::warn;
use zookeeper_client::{self as zk, Acl, Acls, CreateMode, Permission};

use crate::layout::Layout;
use crate::zk::ZkError;

/// The identity may do everything; anyone may read (list children, read data, watch).
static OWNER_ALL_ANYONE_READ: [Acl; 2] = [
    Acl::new_const(Permission::ALL, "auth", ""),
    Acl::new_const(Permission::READ, "world", "anyone"),
];

/// Which ACLs herald's znodes get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    authenticated: bool,
}

impl Policy {
    /// The policy of a session with (`true`) or without credentials.
    pub fn new(authenticated: bool) -> Policy {
        Policy { authenticated }
    }

    pub fn authenticated(self) -> bool {
        self.authenticated
    }

    /// `<root>` and the directories below it.
    pub fn dirs(self) -> Acls<'static> {
        if self.authenticated {
            Acls::new(&OWNER_ALL_ANYONE_READ)
        } else {
            Acls::anyone_all()
        }
    }

    /// Values, slot maps, exclusion lists and instance nodes: they may carry credentials.
    pub fn data(self) -> Acls<'static> {
        if self.authenticated {
            Acls::creator_all()
        } else {
            Acls::anyone_all()
        }
    }

    /// Election nodes: others may see who leads, not plant or remove a node.
    pub fn election(self) -> Acls<'static> {
        self.dirs()
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
    let ours = dir == root || dir.starts_with(&format!("{root}/"));
    CreateMode::Persistent.with_acls(if ours {
        policy.dirs()
    } else {
        Acls::anyone_all()
    })
}

/// What a znode of herald's tree is, for its ACL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `<root>` and the directories below it: others may read.
    Dir,
    /// Values, slot maps, exclusion lists, instances: others get nothing.
    Data,
    /// Election nodes: others may read.
    Election,
}

impl Kind {
    /// What everyone but the identity may do at most.
    fn others_may(self) -> Permission {
        match self {
            Kind::Dir | Kind::Election => Permission::READ,
            Kind::Data => Permission::NONE,
        }
    }

    /// The policy's ACL for this kind (with credentials).
    fn acl(self) -> &'static [Acl] {
        match self {
            Kind::Dir | Kind::Election => &OWNER_ALL_ANYONE_READ,
            Kind::Data => &CREATOR_ALL,
        }
    }
}

static CREATOR_ALL: [Acl; 1] = [Acl::new_const(Permission::ALL, "auth", "")];

/// A znode more open than the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    pub path: String,
    pub kind: Kind,
    /// Who may do more than the policy allows, e.g. `world:anyone:cdrwa`.
    pub grants: Vec<String>,
}

/// `perms` as ZooKeeper's letters (`cdrwa`).
fn letters(p: Permission) -> String {
    [
        (Permission::CREATE, 'c'),
        (Permission::DELETE, 'd'),
        (Permission::READ, 'r'),
        (Permission::WRITE, 'w'),
        (Permission::ADMIN, 'a'),
    ]
    .iter()
    .filter(|(bit, _)| p.has(*bit))
    .map(|(_, c)| *c)
    .collect()
}

/// The entries of `acls` that give an id other than the owner's more than `kind` allows. The
/// owner's entries are the digest ids of user `owner` (by name: the hash is of a password
/// herald does not keep); any other id counts.
pub fn too_open(acls: &[Acl], kind: Kind, owner: &str) -> Vec<String> {
    let allowed = kind.others_may();
    acls.iter()
        // `auth` is how an ACL names the creating session before ZooKeeper expands it.
        .filter(|a| {
            !(a.scheme() == "auth"
                || (a.scheme() == "digest" && a.id().split(':').next() == Some(owner)))
        })
        .filter(|a| {
            let p = a.permission();
            [
                Permission::CREATE,
                Permission::DELETE,
                Permission::READ,
                Permission::WRITE,
                Permission::ADMIN,
            ]
            .iter()
            .any(|bit| p.has(*bit) && !allowed.has(*bit))
        })
        .map(|a| format!("{}:{}:{}", a.scheme(), a.id(), letters(a.permission())))
        .collect()
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
    let mut out = vec![(layout.root().to_owned(), Kind::Dir)];
    for (dir, children) in [
        (layout.environment(), Some(Kind::Data)),
        (layout.slots_dir(), Some(Kind::Data)),
        (layout.excluded_dir(), Some(Kind::Data)),
        (layout.services(), None),
        (format!("{}/directors", layout.root()), None),
    ] {
        out.push((dir.clone(), Kind::Dir));
        if !deep {
            continue;
        }
        for name in list(dir.clone()).await? {
            let path = format!("{dir}/{name}");
            match children {
                Some(kind) => out.push((path, kind)),
                // services/S and directors/K: directories of instances or election nodes.
                None => {
                    out.push((path.clone(), Kind::Dir));
                    let inner = if dir == layout.services() {
                        Kind::Data
                    } else {
                        Kind::Election
                    };
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
    owner: &str,
    deep: bool,
) -> Result<Vec<Open>, ZkError> {
    let mut open = Vec::new();
    for (path, kind) in tree(client, layout, deep).await? {
        match client.get_acl(&path).await {
            Ok((acls, _)) => {
                let grants = too_open(&acls, kind, owner);
                if !grants.is_empty() {
                    open.push(Open { path, kind, grants });
                }
            }
            Err(zk::Error::NoNode) => {}
            Err(err) => return Err(ZkError::op("read the ACL of", &path, err)),
        }
    }
    Ok(open)
}

/// Gives each of `open` the policy's ACL (the session must be the identity, and the znode its
/// own: ZooKeeper asks for ADMIN). Returns the paths it could not change, with why.
pub async fn apply(client: &zk::Client, open: &[Open]) -> Vec<(String, zk::Error)> {
    let mut failed = Vec::new();
    for o in open {
        if let Err(err) = client.set_acl(&o.path, o.kind.acl(), None).await
            && err != zk::Error::NoNode
        {
            failed.push((o.path.clone(), err));
        }
    }
    failed
}

/// At start, with credentials: warns about each of herald's directories that is more open than
/// the policy (a tree made before it, or by a session without credentials), naming the fix.
pub async fn warn_if_open(client: &zk::Client, layout: &Layout, owner: &str) {
    match audit(client, layout, owner, false).await {
        Ok(open) => {
            for o in &open {
                warn!(
                    znode = %o.path,
                    grants = %o.grants.join(","),
                    "more open than herald's ACL policy: a client without credentials may create or delete here; run `herald acl apply`"
                );
            }
        }
        Err(err) => warn!(error = %err, "cannot check the ACLs of herald's directories"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_of_an_authenticated_session_are_read_only_for_others() {
        let authed = Policy::new(true);
        let acls: &[Acl] = &authed.dirs();
        assert!(
            acls.iter()
                .any(|a| a.scheme() == "auth" && a.permission() == Permission::ALL)
        );
        assert!(acls.iter().any(|a| a.scheme() == "world"
            && a.id() == "anyone"
            && a.permission() == Permission::READ));
        assert_eq!(authed.data(), Acls::creator_all());
        assert_eq!(Policy::new(false).dirs(), Acls::anyone_all());
        assert_eq!(Policy::new(false).data(), Acls::anyone_all());
    }

    #[test]
    fn grants_beyond_the_policy_are_named() {
        let open = [Acl::new_const(Permission::ALL, "world", "anyone")];
        assert_eq!(too_open(&open, Kind::Dir, "svc"), ["world:anyone:cdrwa"]);
        assert!(too_open(&OWNER_ALL_ANYONE_READ, Kind::Dir, "svc").is_empty());
        let read = [Acl::new_const(Permission::READ, "world", "anyone")];
        assert_eq!(too_open(&read, Kind::Data, "svc"), ["world:anyone:r"]);
        let ours = [Acl::new_const(Permission::ALL, "digest", "svc:hash=")];
        assert!(too_open(&ours, Kind::Data, "svc").is_empty());
        let theirs = [Acl::new_const(Permission::ALL, "digest", "eve:hash=")];
        assert_eq!(
            too_open(&theirs, Kind::Dir, "svc"),
            ["digest:eve:hash=:cdrwa"]
        );
    }
}
