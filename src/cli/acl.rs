//! `herald acl check|apply`: compare herald's tree with its ACL policy (see `herald::acl`), and
//! bring a tree made before the policy (or by a session without credentials) to it.

use anyhow::Context;
use clap::{Args, Subcommand};
use herald::{acl, zk};

use super::{Outcome, ZkArgs};

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  HERALD_ZK_AUTH_FILE=/run/secrets/zk herald acl check
  HERALD_ZK_AUTH_FILE=/run/secrets/zk herald acl apply
  HERALD_ZK_AUTH_FILE=/run/secrets/director herald acl id
  herald --acl lead=digest:director:HASH --acl read=digest:app:HASH acl apply

Directories (the root, environment, services, services/S, directors, directors/K, slots,
excluded) give anyone read; values, slot maps, exclusion lists and instances give anyone
nothing; election nodes, read. Identities granted a role with --acl get that role's rights (see
README). check lists every znode whose ACL differs (more open, or lacking a grant) and exits 1
when there is one; apply gives each the policy's ACL (it needs the credentials that own them:
exit 6 for a znode this identity may not change). id prints the digest id of the configured
credentials, for --acl.")]
pub struct AclArgs {
    #[command(subcommand)]
    pub action: Action,
}

#[derive(Debug, Subcommand)]
pub enum Action {
    /// List the znodes more open than the policy (exit 1 when there are any).
    Check,
    /// Give every znode whose ACL differs from the policy the policy's ACL.
    Apply,
    /// Print the digest id of the configured credentials (USER:HASH), as --acl names it.
    Id,
}

pub async fn run(zk_args: &ZkArgs, args: AclArgs) -> anyhow::Result<()> {
    let target = zk_args.target()?;
    let Some(auth) = target.config.auth.clone() else {
        return Err(Outcome::Usage(
            "herald acl needs the credentials herald's znodes belong to: set HERALD_ZK_AUTH or HERALD_ZK_AUTH_FILE"
                .to_owned(),
        )
        .into());
    };
    if let Action::Id = args.action {
        println!("digest:{}", auth.id());
        return Ok(());
    }
    let layout = target.values.layout().clone();
    let policy = target.values.policy();
    let client = zk::connect(&target.config).await?;
    let audited = zk::bounded(
        &target.config,
        acl::audit(&client, &layout, policy, auth.user(), true),
    )
    .await;
    let open = match audited {
        Ok(Ok(open)) => open,
        Ok(Err(err)) => {
            zk::close(client).await;
            return Err(err)
                .with_context(|| format!("cannot read the ACLs under {}", layout.root()));
        }
        Err(err) => {
            zk::close(client).await;
            return Err(err.into());
        }
    };
    for o in &open {
        let mut diff: Vec<String> = o.grants.clone();
        diff.extend(o.missing.iter().map(|m| format!("lacks {m}")));
        println!("{}  {}", o.path, diff.join(","));
    }
    let outcome = match args.action {
        Action::Check if open.is_empty() => Ok(()),
        Action::Check => Err(anyhow::anyhow!(
            "{} znode(s) differ from herald's ACL policy; run herald acl apply",
            open.len()
        )),
        Action::Id => Ok(()),
        Action::Apply => {
            let failed = acl::apply(&client, policy, &open).await;
            for (path, err) in &failed {
                eprintln!("herald: cannot set the ACL of {path}: {err}");
            }
            match failed.into_iter().next() {
                None => {
                    if !open.is_empty() {
                        println!("{} znode(s) now follow the policy", open.len());
                    }
                    Ok(())
                }
                Some((path, err)) => {
                    Err(herald::zk::ZkError::op("set the ACL of", &path, err).into())
                }
            }
        }
    };
    zk::close(client).await;
    outcome
}
