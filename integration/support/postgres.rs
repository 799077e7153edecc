//! PostgreSQL servers and a pgpool for one test: Debian's `postgresql` and `pgpool2` packages
//! (`scripts/pg install` installs them), run on loopback as the `postgres` user when the tests
//! run as root, in a directory of the test's own under /tmp (the `postgres` user must reach it).
//! Every server is stopped when its value is dropped, however the test ends, and gets SIGKILL
//! from the kernel if the test binary dies first.
#![allow(dead_code)] // each test binary uses a different part of the fixture

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{DEADLINE, free_port};

/// The newest installed PostgreSQL's `bin` directory.
pub fn pg_bin() -> PathBuf {
    let mut versions: Vec<u32> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed: run scripts/pg install")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    versions.sort();
    let version = versions
        .last()
        .expect("no PostgreSQL under /usr/lib/postgresql");
    PathBuf::from(format!("/usr/lib/postgresql/{version}/bin"))
}

pub fn is_root() -> bool {
    // SAFETY: plain syscall.
    unsafe { libc::geteuid() == 0 }
}

/// The argv prefix that runs a program as the `postgres` user (keeping the parent-death
/// signal its parent armed); empty when the tests do not run as root.
pub fn as_postgres() -> Vec<String> {
    if is_root() {
        [
            "setpriv",
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--pdeathsig=keep",
            "--",
        ]
        .map(String::from)
        .to_vec()
    } else {
        Vec::new()
    }
}

/// A command that runs `program args` as the `postgres` user.
pub fn postgres_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let prefix = as_postgres();
    let mut command = match prefix.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(program);
            c
        }
        None => Command::new(program),
    };
    command.stdin(Stdio::null());
    command
}

/// A directory the `postgres` user owns, removed when dropped.
pub struct PgDir(pub PathBuf);

impl PgDir {
    pub fn new(test: &str) -> PgDir {
        let dir = std::env::temp_dir().join(format!("herald-pg-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the test's PostgreSQL dir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        chown_postgres(&dir);
        PgDir(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes `content` to `name` in the directory, owned by `postgres`, with `mode`.
    pub fn write(&self, name: &str, content: &str, mode: u32) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        chown_postgres(&path);
        path
    }
}

impl Drop for PgDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn chown_postgres(path: &Path) {
    if is_root() {
        let status = Command::new("chown")
            .arg("postgres:postgres")
            .arg(path)
            .status()
            .expect("chown");
        assert!(status.success(), "chown postgres {}", path.display());
    }
}

/// Runs a command to completion; its output on failure.
fn check(command: &mut Command, what: &str) {
    let out = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An initialised PostgreSQL data directory (trust authentication on loopback, no fsync) and
/// the port it is to serve on. It is not started: the test decides how (e.g. under herald).
pub struct Cluster {
    /// Also its `cluster_name`: what its walreceiver says as application_name when it is a
    /// standby.
    pub name: String,
    pub data: PathBuf,
    pub port: u16,
    /// Where its Unix socket goes.
    pub socket_dir: PathBuf,
}

impl Cluster {
    pub fn init(dir: &PgDir, name: &str) -> Cluster {
        let data = dir.path(name);
        check(
            postgres_command(pg_bin().join("initdb"))
                .args(["-D"])
                .arg(&data)
                .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"]),
            "initdb",
        );
        Cluster {
            name: name.to_owned(),
            data,
            port: free_port(),
            socket_dir: dir.0.clone(),
        }
    }

    /// A streaming standby of `primary` (which must be running): `pg_basebackup -R`, which
    /// writes standby.signal and primary_conninfo.
    pub fn standby_of(dir: &PgDir, name: &str, primary: &Cluster) -> Cluster {
        let data = dir.path(name);
        check(
            postgres_command(pg_bin().join("pg_basebackup"))
                .args(["-h", "127.0.0.1", "-p", &primary.port.to_string()])
                .args(["-U", "postgres", "-R", "-X", "stream", "--no-sync", "-D"])
                .arg(&data),
            "pg_basebackup",
        );
        Cluster {
            name: name.to_owned(),
            data,
            port: free_port(),
            socket_dir: dir.0.clone(),
        }
    }

    /// The argv that runs this server in the foreground, as the `postgres` user.
    pub fn argv(&self) -> Vec<String> {
        let mut argv = as_postgres();
        argv.push(pg_bin().join("postgres").display().to_string());
        argv.extend(
            [
                "-D",
                &self.data.display().to_string(),
                "-p",
                &self.port.to_string(),
                "-k",
                &self.socket_dir.display().to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "max_connections=40",
                "-c",
                &format!("cluster_name={}", self.name),
            ]
            .map(String::from),
        );
        argv
    }

    /// The postmaster's pid, from postmaster.pid, once it has written it.
    pub fn postmaster_pid(&self) -> Option<i32> {
        let text = std::fs::read_to_string(self.data.join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// Stops the server at once if it runs (the test's processes die with the test anyway).
    pub fn kill(&self) {
        if let Some(pid) = self.postmaster_pid() {
            // SAFETY: plain syscall; SIGQUIT is PostgreSQL's immediate shutdown.
            unsafe { libc::kill(pid, libc::SIGQUIT) };
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `psql -Atc SQL` against 127.0.0.1:`port` as `postgres`; stdout, or the error.
pub fn psql(port: u16, sql: &str) -> Result<String, String> {
    let out = Command::new(pg_bin().join("psql"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
        .args(["-d", "postgres", "-X", "-Atc", sql])
        .env("PGCONNECT_TIMEOUT", "5")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// A pgpool running in the foreground as `postgres` in `dir`, with a PCP user `pcpadmin`
/// whose password file is [`Pgpool::passfile`]. Its output goes to DIR/pgpool.log.
pub struct Pgpool {
    pub port: u16,
    pub pcp_port: u16,
    pub conf: PathBuf,
    pub passfile: PathBuf,
    pub dir: PathBuf,
    child: Option<Child>,
}

/// pgpool.conf without backends, for a test's directory and ports, in `streaming_replication`
/// mode with load balancing: SELECTs go to every backend, by weight. No health check: herald's
/// registrations say who is live. `sr_check_period` 0 is for independent servers (no
/// replication to check); a real standby wants a period so pgpool shows its state.
pub fn pgpool_base_conf(dir: &Path, port: u16, pcp_port: u16, sr_check_period: u32) -> String {
    let dir = dir.display();
    // pgpool 4.3 calls the socket directory socket_dir (4.4: unix_socket_directories); an
    // unknown name is ignored, so both are written.
    format!(
        "backend_clustering_mode = 'streaming_replication'\n\
         listen_addresses = '127.0.0.1'\nport = {port}\n\
         socket_dir = '{dir}'\nunix_socket_directories = '{dir}'\n\
         pcp_listen_addresses = '127.0.0.1'\npcp_port = {pcp_port}\npcp_socket_dir = '{dir}'\n\
         pid_file_name = '{dir}/pgpool.pid'\nlogdir = '{dir}'\n\
         pool_passwd = ''\nenable_pool_hba = off\n\
         num_init_children = 8\nmax_pool = 2\nload_balance_mode = on\n\
         sr_check_period = {sr_check_period}\nsr_check_user = 'postgres'\n\
         health_check_period = 0\nhealth_check_user = 'postgres'\n\
         search_primary_node_timeout = 1\n"
    )
}

impl Pgpool {
    /// Writes pcp.conf and the password file (conf itself is the test's: it is herald's
    /// output); nothing is started yet.
    pub fn prepare(dir: &PgDir) -> Pgpool {
        let port = free_port();
        let pcp_port = free_port();
        let md5 = Command::new("pg_md5")
            .arg("pcp-secret")
            .output()
            .expect("pg_md5");
        let md5 = String::from_utf8_lossy(&md5.stdout).trim().to_owned();
        dir.write("pcp.conf", &format!("pcpadmin:{md5}\n"), 0o600);
        // Read by herald's PCP tools, which run as the test's user.
        let passfile = dir.path("pcppass");
        std::fs::write(
            &passfile,
            format!("127.0.0.1:{pcp_port}:pcpadmin:pcp-secret\n"),
        )
        .unwrap();
        std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o600)).unwrap();
        dir.write("pool_hba.conf", "host all all 127.0.0.1/32 trust\n", 0o644);
        Pgpool {
            port,
            pcp_port,
            conf: dir.path("pgpool.conf"),
            passfile,
            dir: dir.0.clone(),
            child: None,
        }
    }

    /// Starts pgpool on `conf` (keeping pgpool_status, as Debian's unit does) and waits until
    /// PCP answers.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "pgpool already runs");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("pgpool.log"))
            .unwrap();
        let mut command = postgres_command("pgpool");
        command
            .args(["-n", "-f"])
            .arg(&self.conf)
            .arg("-F")
            .arg(self.dir.join("pcp.conf"))
            .arg("-a")
            .arg(self.dir.join("pool_hba.conf"))
            .current_dir(&self.dir)
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        // SAFETY: only an async-signal-safe syscall between fork and exec.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        self.child = Some(command.spawn().expect("spawn pgpool"));
        let deadline = Instant::now() + DEADLINE;
        loop {
            if self.pcp("pcp_node_count", &[]).is_ok() {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("pgpool exited ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "pgpool's PCP did not answer:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops pgpool (fast shutdown) and waits for it to exit; pgpool_status stays.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGINT: pgpool's fast shutdown; setpriv execs pgpool, so the pid is pgpool's.
            // SAFETY: plain syscall on our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            let deadline = Instant::now() + DEADLINE;
            while child.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.wait();
        }
    }

    pub fn log(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("pgpool.log")).unwrap_or_default();
        let start = log.len().saturating_sub(4000);
        log[log
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| i >= start)
            .unwrap_or(0)..]
            .to_owned()
    }

    /// Runs a PCP tool against this pgpool; stdout, or stderr as the error.
    pub fn pcp(&self, tool: &str, args: &[&str]) -> Result<String, String> {
        // Bounded: a wedged pgpool must fail the test, not hang it.
        let out = Command::new("timeout")
            .args(["10", tool])
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.pcp_port.to_string(),
                "-U",
                "pcpadmin",
                "-w",
            ])
            .args(args)
            .env("PCPPASSFILE", &self.passfile)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| e.to_string())?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if out.status.success() && !stderr.contains("ERROR") {
            Ok(stdout)
        } else {
            Err(format!("{tool}: {}", stderr.trim()))
        }
    }

    /// pgpool's node table: every loaded slot, from the plain `pcp_node_info -n N` line
    /// (`host port status weight status_name …`).
    pub fn nodes(&self) -> Result<Vec<Node>, String> {
        let count: u32 = self
            .pcp("pcp_node_count", &[])?
            .trim()
            .parse()
            .map_err(|e| format!("pcp_node_count: {e}"))?;
        let mut nodes = Vec::new();
        for slot in 0..count {
            let line = self.pcp("pcp_node_info", &["-n", &slot.to_string()])?;
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() >= 10
                && let (Ok(port), Ok(status), Ok(weight)) =
                    (fields[1].parse(), fields[2].parse(), fields[3].parse())
            {
                nodes.push(Node {
                    slot,
                    port,
                    status,
                    weight,
                    role: fields[6].to_owned(),
                    replication: fields[9].to_owned(),
                });
            }
        }
        Ok(nodes)
    }
}

/// One slot of pgpool's node table.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub slot: u32,
    pub port: u16,
    /// 1 up (no connection yet), 2 up, 3 down.
    pub status: u32,
    /// Its share of load balancing (weights normalised to a sum of 1).
    pub weight: f64,
    /// `primary` or `standby` (SR mode), as pgpool sees it.
    pub role: String,
    /// A standby's replication state (`streaming`), `none` when unknown.
    pub replication: String,
}

impl Drop for Pgpool {
    fn drop(&mut self) {
        // A fast shutdown, so that pgpool's own children go too.
        self.stop();
    }
}
