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

use zookeeper_client::{self as zk, Acl, Acls, CreateMode, Permission};

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
}
