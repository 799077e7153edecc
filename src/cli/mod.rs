//! The command line: global flags (ZooKeeper, root, logging), one file per subcommand, and the
//! second parsing stage that turns what the user typed into validated configuration before any
//! connection is made.

mod acl;
mod announce;
mod confirm;
mod delete;
mod director;
mod docs;
mod drain;
mod env;
mod exit;
mod gateway;
mod harness;
mod host;
mod last_known;
pub mod logging;
mod ls;
mod metrics;
mod put;
mod resolve;
mod run;
mod watch;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use herald::acl::{Grant, Policy};
use herald::announce::Request;
use herald::layout::{DEFAULT_ROOT, EnvKey, Layout};
use herald::values::Values;
use herald::zk::{self, ConnectString, DigestAuth, ZkConfig, ZkTls};

pub use exit::{Exit, Outcome};

const ABOUT: &str = "ZooKeeper-backed service discovery for containers";

const AFTER_HELP: &str = "\
Examples:
  herald put DATABASE_URL - < url.txt          publish a value (read from stdin)
  herald resolve DATABASE_URL                  print it (what an /environment script runs)
  herald resolve --wait --timeout 30s DATABASE_URL
  herald ls
  herald run -- app --port 8080                build the environment from /environment, then exec app
  herald run --service api --port 8080 -- app  … and register app while it runs
  herald announce --service pg --port 5432 --check tcp     the sidecar
  herald director --service pg --key PGPOOL_BACKENDS --preset pgpool
  herald watch PGPOOL_BACKENDS --out backends.conf --reload 'pgpool reload'
  herald gateway                               containers POST/GET /environment/KEY over HTTP

Credentials: HERALD_ZK_AUTH=user:password or --zk-auth-file FILE (never on the command line).
Exit codes: 0 ok, 1 failure, 2 usage, 3 not found, 4 timed out, 5 ZooKeeper unreachable, 6 denied,
7 an /environment or /export entry failed, 8 instance id held by another live session or a persistent node,
9 ZooKeeper unreachable and the last known value older than --max-stale;
`herald run`: 126/127 when CMD cannot run, else CMD's.";

#[derive(Debug, Parser)]
#[command(name = "herald", version, about = ABOUT, after_help = AFTER_HELP)]
pub struct Cli {
    #[command(flatten)]
    pub zk: ZkArgs,
    #[command(flatten)]
    pub log: logging::LogArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Publish a value under <root>/environment/KEY.
    Put(put::PutArgs),
    /// Print a published value exactly as stored.
    Resolve(resolve::ResolveArgs),
    /// Remove a published value.
    Delete(delete::DeleteArgs),
    /// List published keys and registered services.
    Ls(ls::LsArgs),
    /// Build the environment from /environment, run /export, then exec the command.
    Run(run::RunArgs),
    /// Print the environment `herald run` would build (secrets masked).
    Env(env::EnvArgs),
    /// Register a service process (sidecar) while its health checks pass.
    Announce(announce::AnnounceArgs),
    /// The host agent: one ZooKeeper session for every registration of this machine.
    Host(host::HostArgs),
    /// Deregister the agents here (or, --soft, give them weight 0) and keep them running.
    Drain(drain::DrainCommand),
    /// Register drained agents again.
    Undrain(drain::DrainArgs),
    /// Show whether the agents here are drained and registered.
    Status(drain::DrainArgs),
    /// Follow a value: print it, or write it to a file atomically, check, and reload.
    Watch(watch::WatchArgs),
    /// Derive values from the live instances and publish them (one fenced leader per output).
    Director(director::DirectorArgs),
    /// Publish a drop a director holds back (max_drop) now.
    Confirm(confirm::ConfirmArgs),
    /// A local HTTP daemon: containers POST and GET values (the single-machine case).
    Gateway(gateway::GatewayArgs),
    /// Check herald's znodes against its ACL policy, or bring them to it.
    Acl(acl::AclArgs),
    /// Print a shell completion script (bash, zsh, fish).
    Completions(docs::CompletionsArgs),
    /// Write the man pages (herald.1 and one per subcommand).
    Man(docs::ManArgs),
}

/// How to reach ZooKeeper and where herald's znodes live.
#[derive(Debug, Args)]
#[command(next_help_heading = "ZooKeeper")]
pub struct ZkArgs {
    /// ZooKeeper connect string: host:port[,host:port…][/chroot].
    #[arg(
        long,
        env = "HERALD_ZK",
        default_value = "127.0.0.1:2181",
        global = true
    )]
    pub zk: String,
    /// herald's base znode path (below the chroot, if any).
    #[arg(long, env = "HERALD_ROOT", default_value = DEFAULT_ROOT, global = true)]
    pub root: String,
    /// Session timeout to ask of ZooKeeper (e.g. 10s, 500ms).
    #[arg(long, env = "HERALD_SESSION_TIMEOUT", default_value = "10s", value_parser = parse_duration, global = true)]
    pub session_timeout: Duration,
    /// How long to try to establish a session before giving up (exit 5).
    #[arg(long, env = "HERALD_CONNECT_TIMEOUT", default_value = "5s", value_parser = parse_duration, global = true)]
    pub connect_timeout: Duration,
    /// After a session expired, establish the new one after a random delay below this (0s:
    /// at once), so that every client of an ensemble that lost its sessions does not come back
    /// (and register again) in the same instant.
    #[arg(long, env = "HERALD_REJOIN_SPREAD", default_value = "1s", value_parser = parse_duration_or_zero, global = true)]
    pub rejoin_spread: Duration,
    /// File holding digest credentials `user:password` (HERALD_ZK_AUTH holds them directly).
    #[arg(long, env = "HERALD_ZK_AUTH_FILE", global = true)]
    pub zk_auth_file: Option<PathBuf>,
    /// CA bundle (PEM) that signed the ZooKeeper servers' certificates; needed for
    /// tcp+tls://HOST:PORT hosts in --zk.
    #[arg(long, env = "HERALD_ZK_TLS_CA", value_name = "FILE", global = true)]
    pub zk_tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) to present to ZooKeeper over TLS (with --zk-tls-key); the
    /// session's identity is then x509:<its subject>.
    #[arg(long, env = "HERALD_ZK_TLS_CERT", value_name = "FILE", global = true)]
    pub zk_tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --zk-tls-cert; keep it chmod 600.
    #[arg(long, env = "HERALD_ZK_TLS_KEY", value_name = "FILE", global = true)]
    pub zk_tls_key: Option<PathBuf>,
    /// Grant another identity a role in the znodes this process creates: ROLE=SCHEME:ID with
    /// ROLE read, write, register or lead, e.g. lead=digest:director:HASH (`herald acl id`
    /// prints an identity's). Repeat it, or list them in HERALD_ZK_ACL separated by spaces.
    #[arg(
        long = "acl",
        env = "HERALD_ZK_ACL",
        value_name = "ROLE=SCHEME:ID",
        value_delimiter = ' ',
        global = true
    )]
    pub acl: Vec<String>,
}

/// The longest duration accepted anywhere: far beyond any sensible timeout, and far from the
/// overflows of instant arithmetic.
const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);

/// A duration like `10s`, `500ms`, `1m 30s`; zero and more than 30 days are refused.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d =
        humantime::parse_duration(s).map_err(|e| format!("{e} (write e.g. 10s, 500ms or 2m)"))?;
    if d.is_zero() {
        return Err("must be more than zero".to_owned());
    }
    if d > MAX_DURATION {
        return Err("must be at most 30 days".to_owned());
    }
    Ok(d)
}

/// [`parse_duration`] where 0 is allowed (it turns something off).
pub fn parse_duration_or_zero(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if d.is_zero() => Ok(d),
        _ => parse_duration(s),
    }
}

/// Validated connection settings and layout, built before any connection is made.
pub struct Target {
    pub config: ZkConfig,
    pub values: Values,
}

impl ZkArgs {
    fn target(&self) -> anyhow::Result<Target> {
        let connect: ConnectString = self
            .zk
            .parse()
            .map_err(|e| Outcome::Usage(format!("--zk/HERALD_ZK: {e}")))?;
        let layout = Layout::new(connect.chroot(), &self.root)?;
        let auth = self.auth()?;
        let policy = Policy::new(auth.is_some(), &self.grants(auth.is_some())?);
        let tls = self.tls(&connect)?;
        let config = ZkConfig {
            connect,
            session_timeout: self.session_timeout,
            connect_timeout: self.connect_timeout,
            auth,
            tls,
            rejoin_spread: self.rejoin_spread,
        };
        Ok(Target {
            config,
            values: Values::new(layout, policy),
        })
    }

    /// The `--acl` grants; they need credentials (without, every znode is open anyway).
    fn grants(&self, authenticated: bool) -> anyhow::Result<Vec<Grant>> {
        let grants = self
            .acl
            .iter()
            .filter(|g| !g.is_empty())
            .map(|g| {
                g.parse::<Grant>()
                    .map_err(|e| Outcome::Usage(format!("--acl/HERALD_ZK_ACL: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if !grants.is_empty() && !authenticated {
            return Err(Outcome::Usage(
                "--acl/HERALD_ZK_ACL grants rights in znodes only a session with credentials can protect: set HERALD_ZK_AUTH or HERALD_ZK_AUTH_FILE too".to_owned(),
            )
            .into());
        }
        Ok(grants)
    }

    fn auth(&self) -> anyhow::Result<Option<DigestAuth>> {
        if let Some(file) = &self.zk_auth_file {
            let text = herald::input::read_text("--zk-auth-file", file, MAX_AUTH_FILE)
                .map_err(|e| Outcome::Usage(e.to_string()))?;
            let auth = DigestAuth::parse(&text).map_err(|reason| {
                Outcome::Usage(format!("--zk-auth-file {}: {reason}", file.display()))
            })?;
            herald::input::warn_if_others_can_read(
                file,
                "--zk-auth-file",
                "act as herald in ZooKeeper",
            );
            return Ok(Some(auth));
        }
        match std::env::var("HERALD_ZK_AUTH") {
            Ok(text) if !text.is_empty() => DigestAuth::parse(&text)
                .map(Some)
                .map_err(|reason| Outcome::Usage(format!("HERALD_ZK_AUTH: {reason}")).into()),
            _ => Ok(None),
        }
    }

    /// The TLS files, read and checked; `None` when no host is `tcp+tls://`.
    fn tls(&self, connect: &ConnectString) -> anyhow::Result<Option<ZkTls>> {
        let usage = |msg: String| -> anyhow::Error { Outcome::Usage(msg).into() };
        let given = [&self.zk_tls_ca, &self.zk_tls_cert, &self.zk_tls_key]
            .iter()
            .any(|f| f.is_some());
        if !given && !connect.has_tls_hosts() {
            return Ok(None);
        }
        if !zk::TLS_BUILT {
            let what = if connect.has_tls_hosts() {
                "a tcp+tls:// host in --zk/HERALD_ZK"
            } else {
                "--zk-tls-ca/--zk-tls-cert/--zk-tls-key"
            };
            return Err(usage(format!(
                "{what} needs TLS, but {}",
                zk::REBUILD_WITH_TLS
            )));
        }
        if !connect.has_tls_hosts() {
            // A TLS flag with only plaintext hosts would send everything in clear.
            return Err(usage(format!(
                "--zk-tls-* is given but no host in --zk/HERALD_ZK {connect} is tcp+tls://, so nothing would use TLS; write the secure ports as tcp+tls://HOST:PORT"
            )));
        }
        let Some(ca_file) = &self.zk_tls_ca else {
            return Err(usage(format!(
                "the tcp+tls:// hosts in --zk/HERALD_ZK {connect} need --zk-tls-ca/HERALD_ZK_TLS_CA FILE: the CA bundle (PEM) that signed the servers' certificates"
            )));
        };
        let read = |file: zk::TlsFile, path: &Path| -> anyhow::Result<Vec<u8>> {
            Ok(herald::input::read(file.flag(), path, MAX_PEM_FILE)
                .map_err(|e| Outcome::Usage(e.to_string()))?)
        };
        let ca = read(zk::TlsFile::Ca, ca_file)?;
        let identity = match (&self.zk_tls_cert, &self.zk_tls_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => {
                let cert_pem = read(zk::TlsFile::Cert, cert)?;
                let key_pem = read(zk::TlsFile::Key, key)?;
                herald::input::warn_if_others_can_read(
                    key,
                    zk::TlsFile::Key.flag(),
                    "present herald's client certificate to ZooKeeper",
                );
                Some(((cert, cert_pem), (key, key_pem)))
            }
            _ => {
                return Err(usage(
                    "--zk-tls-cert and --zk-tls-key go together: give the client certificate and its private key, or neither".to_owned(),
                ));
            }
        };
        let tls = ZkTls::from_pem(
            (ca_file, &ca),
            identity.as_ref().map(|((c, cr), (k, kr))| {
                ((c.as_path(), cr.as_slice()), (k.as_path(), kr.as_slice()))
            }),
        )
        .map_err(|e| usage(e.to_string()))?;
        Ok(Some(tls))
    }
}

/// The largest `--zk-auth-file` read (a `user:password` line).
const MAX_AUTH_FILE: usize = 64 * 1024;
/// The largest TLS PEM file read (a CA bundle with many certificates fits).
const MAX_PEM_FILE: usize = 1024 * 1024;

/// `KEY=VALUE` arguments as a map; a missing `=` or empty key is a usage error naming the flag.
pub fn pairs(flag: &str, args: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    args.iter()
        .map(|arg| match arg.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
            _ => {
                // Never echo the argument: it may be a secret.
                let shown = arg.split_once('=').map_or("", |(k, _)| k);
                Err(Outcome::Usage(format!(
                    "{flag} needs KEY=VALUE (got an argument without a key or '=' {shown}); e.g. {flag} role=primary"
                ))
                .into())
            }
        })
        .collect()
}

/// An environment for programs herald runs (checks, reloads, derivations): everything but the
/// ZooKeeper credentials, which they have no use for.
pub fn without_credentials(
    env: impl IntoIterator<Item = (OsString, OsString)>,
) -> BTreeMap<OsString, OsString> {
    env.into_iter()
        .filter(|(k, _)| !k.to_string_lossy().starts_with("HERALD_ZK_AUTH"))
        .collect()
}

/// Parses a KEY argument; an invalid one is a usage error naming the key.
fn parse_key(key: &str) -> anyhow::Result<EnvKey> {
    Ok(key.parse::<EnvKey>()?)
}

/// Runs the command; the exit code is 0 unless it is a supervised command's own.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let done = match cli.command {
        Command::Put(args) => put::run(&cli.zk, args).await,
        Command::Resolve(args) => resolve::run(&cli.zk, args).await,
        Command::Delete(args) => delete::run(&cli.zk, args).await,
        Command::Ls(args) => ls::run(&cli.zk, args).await,
        Command::Run(args) => return run::run(&cli.zk, args).await,
        Command::Env(args) => env::run(args).await,
        Command::Announce(args) => announce::run(&cli.zk, args).await,
        Command::Host(args) => host::run(&cli.zk, args).await,
        Command::Drain(args) => drain::drain(args).await,
        Command::Undrain(args) => drain::run(args, Request::Undrain).await,
        Command::Status(args) => drain::run(args, Request::Status).await,
        Command::Watch(args) => watch::run(&cli.zk, args).await,
        Command::Director(args) => director::run(&cli.zk, args).await,
        Command::Confirm(args) => confirm::run(&cli.zk, args).await,
        Command::Gateway(args) => gateway::run(&cli.zk, args).await,
        Command::Acl(args) => acl::run(&cli.zk, args).await,
        Command::Completions(args) => docs::completions(args),
        Command::Man(args) => docs::man(args),
    };
    done.map(|()| ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn clap_definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_command_help_shows_an_example() {
        let mut cli = Cli::command();
        for sub in cli.get_subcommands_mut() {
            let help = sub.render_long_help().to_string();
            assert!(
                help.contains("Example"),
                "help of {} has no example",
                sub.get_name()
            );
        }
    }

    /// A build without the `tls` feature says so for each way TLS can be asked for, and how to
    /// get a binary that has it (`cargo test --no-default-features`).
    #[cfg(not(feature = "tls"))]
    #[test]
    fn a_build_without_tls_refuses_tls_and_says_how_to_rebuild() {
        for args in [
            &["herald", "--zk", "tcp+tls://h1:2281", "ls"][..],
            &["herald", "--zk", "h1:2181", "--zk-tls-ca", "/ca.pem", "ls"][..],
        ] {
            let cli = Cli::try_parse_from(args).unwrap();
            let err = cli.zk.target().err().expect("refused");
            assert_eq!(Exit::of(&err), Exit::Usage, "{args:?}");
            let said = err.to_string();
            assert!(
                said.contains("built without TLS") && said.contains("--features tls"),
                "{said}"
            );
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("500000000000y").is_err());
        assert!(parse_duration("soon").is_err());
    }
}
