//! Shared fixture for the integration tests: one real ZooKeeper per test binary (started by
//! `scripts/zk serve` on a free loopback port, killed by the kernel when the test binary exits,
//! even on panic or SIGKILL), the herald binary with a clean environment, and event-based waits.
#![allow(dead_code)] // each test binary uses a different part of the fixture

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long any wait in a test may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

pub struct Zk {
    pub port: u16,
    pub dir: PathBuf,
    pub pid: u32,
}

impl Zk {
    pub fn connect_string(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Sends a four-letter word and returns the answer.
    pub fn four_letter(&self, word: &str) -> String {
        four_letter(self.port, word)
    }
}

pub fn four_letter(port: u16, word: &str) -> String {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = stream.write_all(word.as_bytes());
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
}

pub fn repo_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral loopback port");
    listener.local_addr().expect("local address").port()
}

static ZK: OnceLock<Zk> = OnceLock::new();

/// The test binary's ZooKeeper, started on first use.
pub fn zk() -> &'static Zk {
    ZK.get_or_init(|| {
        let parent = std::env::temp_dir().join("herald-it");
        remove_stale_dirs(&parent);
        let dir = parent.join(std::process::id().to_string());
        let mut last = String::new();
        for _attempt in 0..3 {
            let port = free_port();
            match start_server(&dir, port) {
                Ok(pid) => return Zk { port, dir, pid },
                Err(why) => last = why,
            }
        }
        panic!("could not start ZooKeeper for the tests: {last}");
    })
}

/// Removes the data of earlier test runs whose process is gone.
fn remove_stale_dirs(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let alive = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
            .is_some_and(|pid| unsafe { libc::kill(pid, 0) } == 0);
        if !alive {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Starts `scripts/zk serve` and waits until it serves.
fn start_server(dir: &Path, port: u16) -> Result<u32, String> {
    let (pid, _exited) = spawn_server(dir, port, &[])?;
    wait_serving(dir, port, pid)
}

/// Spawns `scripts/zk serve` (with `extra` arguments; it execs java, so the pid is the
/// server's) from a thread that lives as long as the child: the child gets SIGKILL from the
/// kernel when that thread (so, the test binary) dies. The thread reaps the child and reports
/// its exit on the receiver. The server's output is appended to DIR/zookeeper.log.
pub fn spawn_server(
    dir: &Path,
    port: u16,
    extra: &[String],
) -> Result<(u32, std::sync::mpsc::Receiver<()>), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("zookeeper.log"))
        .map_err(|e| e.to_string())?;
    let mut command = Command::new(repo_dir().join("scripts/zk"));
    command
        .args(["serve", "--dir"])
        .arg(dir)
        .args(["--port", &port.to_string()])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
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
    let (started_tx, started) = std::sync::mpsc::channel();
    let (exited_tx, exited) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(format!("zookeeper-{port}"))
        .spawn(move || match command.spawn() {
            Ok(mut child) => {
                let _ = started_tx.send(Ok(child.id()));
                let _ = child.wait();
                let _ = exited_tx.send(());
            }
            Err(e) => {
                let _ = started_tx.send(Err(format!("spawn scripts/zk: {e}")));
            }
        })
        .map_err(|e| e.to_string())?;
    let pid = started.recv().map_err(|e| e.to_string())??;
    Ok((pid, exited))
}

/// Waits until the server on `port` answers `srvr` with a mode (it serves clients).
fn wait_serving(dir: &Path, port: u16, pid: u32) -> Result<u32, String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if four_letter(port, "srvr").contains("Mode:") {
            return Ok(pid);
        }
        if unsafe { libc::kill(pid as i32, 0) } != 0 {
            let log = std::fs::read_to_string(dir.join("zookeeper.log")).unwrap_or_default();
            return Err(format!(
                "ZooKeeper on port {port} exited: {}",
                tail(&log, 800)
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    Err(format!("ZooKeeper on port {port} did not serve within 60s"))
}

/// A 3-server ZooKeeper ensemble on loopback for fault tests; its servers die with the test
/// binary.
pub struct Ensemble {
    dir: PathBuf,
    /// Client port, quorum port, election port of servers 1..=3.
    ports: Vec<(u16, u16, u16)>,
    pids: std::sync::Mutex<Vec<u32>>,
}

impl Ensemble {
    pub fn start(name: &str) -> Ensemble {
        let dir = std::env::temp_dir()
            .join("herald-it")
            .join(std::process::id().to_string())
            .join(name);
        // Nine distinct ports: each listener is held until all are picked, or the kernel may
        // hand the same free port out twice (and ZooKeeper refuses a config that repeats one).
        let held: Vec<TcpListener> = (0..9)
            .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral loopback port"))
            .collect();
        let picked: Vec<u16> = held
            .iter()
            .map(|l| l.local_addr().expect("local address").port())
            .collect();
        drop(held);
        let ports: Vec<(u16, u16, u16)> = picked.chunks(3).map(|c| (c[0], c[1], c[2])).collect();
        let ensemble = Ensemble {
            dir,
            ports,
            pids: std::sync::Mutex::new(vec![0; 3]),
        };
        let pids: Vec<u32> = (1..=3)
            .map(|n| ensemble.spawn(n).expect("spawn an ensemble server"))
            .collect();
        for (i, pid) in pids.iter().enumerate() {
            wait_serving(&ensemble.server_dir(i + 1), ensemble.ports[i].0, *pid)
                .expect("the ensemble serves");
        }
        *ensemble.pids.lock().unwrap() = pids;
        ensemble
    }

    fn server_dir(&self, n: usize) -> PathBuf {
        self.dir.join(n.to_string())
    }

    fn spawn(&self, n: usize) -> Result<u32, String> {
        let peers: Vec<String> = self
            .ports
            .iter()
            .enumerate()
            .map(|(i, (_, q, e))| format!("{}=127.0.0.1:{q}:{e}", i + 1))
            .collect();
        let extra = [
            "--id".to_owned(),
            n.to_string(),
            "--peers".to_owned(),
            peers.join(","),
        ];
        spawn_server(&self.server_dir(n), self.ports[n - 1].0, &extra).map(|(pid, _)| pid)
    }

    pub fn connect_string(&self) -> String {
        self.ports
            .iter()
            .map(|(c, _, _)| format!("127.0.0.1:{c}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The number (1..=3) of the server that reports itself leader, if any.
    pub fn leader(&self) -> Option<usize> {
        (0..3)
            .find(|&i| four_letter(self.ports[i].0, "srvr").contains("Mode: leader"))
            .map(|i| i + 1)
    }

    /// The number (1..=3) of a server that reports itself follower, if any.
    pub fn follower(&self) -> Option<usize> {
        (0..3)
            .find(|&i| four_letter(self.ports[i].0, "srvr").contains("Mode: follower"))
            .map(|i| i + 1)
    }

    /// SIGKILLs the leader and returns its number.
    pub fn kill_leader(&self) -> usize {
        let n = wait_for("an ensemble leader", || self.leader());
        self.kill(n);
        n
    }

    /// SIGKILLs server `n` and waits until it no longer serves.
    /// The client port of server `n` (1..=3).
    pub fn client_port(&self, n: usize) -> u16 {
        self.ports[n - 1].0
    }

    pub fn kill(&self, n: usize) {
        let pid = self.pids.lock().unwrap()[n - 1];
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        wait_for(&format!("server {n} to stop serving"), || {
            (!four_letter(self.ports[n - 1].0, "srvr").contains("Mode:")).then_some(())
        });
    }

    /// The number (1..=3) of the server that holds a connection of `session`.
    pub fn server_of(&self, session: i64) -> Option<usize> {
        let needle = format!("sid=0x{session:x}");
        (0..3)
            .find(|&i| four_letter(self.ports[i].0, "cons").contains(&needle))
            .map(|i| i + 1)
    }

    /// Kills the leader, waits for a new one and starts the killed server again, on a blocking
    /// thread (so the test's runtime keeps serving its clients meanwhile); returns its number.
    pub async fn fail_over(self: &std::sync::Arc<Self>) -> usize {
        let ensemble = self.clone();
        tokio::task::spawn_blocking(move || {
            let killed = ensemble.kill_leader();
            wait_for("a new leader", || ensemble.leader());
            ensemble.restart(killed);
            killed
        })
        .await
        .expect("the fail-over thread")
    }

    /// Starts server `n` again and waits until it serves.
    pub fn restart(&self, n: usize) {
        let pid = self.spawn(n).expect("respawn the server");
        wait_serving(&self.server_dir(n), self.ports[n - 1].0, pid).expect("it serves again");
        self.pids.lock().unwrap()[n - 1] = pid;
    }
}

fn tail(s: &str, n: usize) -> &str {
    let start = s.len().saturating_sub(n);
    let start = (start..s.len())
        .find(|i| s.is_char_boundary(*i))
        .unwrap_or(s.len());
    &s[start..]
}

/// A unique root for one test, so tests share the server without seeing each other.
pub fn root(test: &str) -> String {
    format!("/it/{test}")
}

/// The herald binary with a clean environment pointed at the test server and `root`.
pub fn herald(root: &str) -> Command {
    herald_at(&zk().connect_string(), root)
}

/// The herald binary with a clean environment pointed at the connect string `zk` and `root`.
pub fn herald_at(zk: &str, root: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_herald"));
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HERALD_ZK", zk)
        .env("HERALD_ROOT", root)
        .env("HERALD_CONNECT_TIMEOUT", "10s")
        // The long-running commands keep last known values by default (/var/cache/herald for
        // root): each test binary gets a fresh directory instead, so no run sees another's.
        .env(
            "HERALD_CACHE",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("cache-{}", std::process::id())),
        )
        .stdin(Stdio::null());
    command
}

/// Runs a command to completion, failing the test if it outlives [`DEADLINE`].
pub fn run(command: &mut Command) -> Output {
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the herald binary");
    wait_output(child, DEADLINE)
}

/// Runs a command with `input` on stdin.
pub fn run_with_input(command: &mut Command, input: &[u8]) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the herald binary");
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = wait_output(child, DEADLINE);
    let _ = writer.join();
    out
}

/// Waits for a child's exit and output; kills it and fails after `limit`.
pub fn wait_output(mut child: Child, limit: Duration) -> Output {
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(s) = stdout.as_mut() {
            let _ = s.read_to_end(&mut buf);
        }
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(s) = stderr.as_mut() {
            let _ = s.read_to_end(&mut buf);
        }
        buf
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("process {} did not exit within {limit:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    }
}

/// Waits until `probe` returns `Some`, failing the test with `what` after [`DEADLINE`].
/// Sends `request` to the Unix socket at `socket` as user nobody (uid 65534, as root only, by
/// setpriv and Debian's python3: herald's binary may sit where nobody cannot reach) and returns
/// what it printed: the whole answer.
pub fn ask_as_nobody(socket: &Path, request: &str) -> Output {
    let script = format!(
        "import socket,sys;s=socket.socket(socket.AF_UNIX);s.connect(sys.argv[1]);s.sendall({request:?}.encode());print(s.makefile(errors='replace').read())"
    );
    run(Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(["/usr/bin/python3", "-c", &script])
        .arg(socket))
}

/// Whether `pid` is gone (or a zombie nobody has reaped yet).
pub fn process_gone(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

pub fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    wait_until(what, || probe().ok_or_else(|| "not yet".to_owned()))
}

/// Waits until `probe` returns `Ok`; after [`DEADLINE`] the test fails with `what` (the
/// expectation) and the last `Err` (what was seen instead). The way to assert anything that
/// another process writes: never read it once right after waiting for something else.
pub fn wait_until<T>(what: &str, mut probe: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match probe() {
            Ok(found) => return found,
            Err(actual) => assert!(
                Instant::now() < deadline,
                "timed out after {DEADLINE:?} waiting for {what}; last seen: {actual}"
            ),
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Writes the executable shell script `dir/name` (creating `dir`) running `body`.
pub fn script(dir: &std::path::Path, name: &str, body: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join(name);
    // Written whole under another name, then renamed: a script never runs half-written.
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    path
}

/// [`wait_until`] for async probes (ZooKeeper reads, HTTP requests).
pub async fn eventually<T, F>(what: &str, probe: impl FnMut() -> F) -> T
where
    F: std::future::Future<Output = Result<T, String>>,
{
    eventually_within(DEADLINE, what, probe).await
}

/// [`eventually`] with a deadline of its own, for a test whose point is how soon it happens.
pub async fn eventually_within<T, F>(limit: Duration, what: &str, mut probe: impl FnMut() -> F) -> T
where
    F: std::future::Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match probe().await {
            Ok(found) => return found,
            Err(actual) => assert!(
                tokio::time::Instant::now() < deadline,
                "timed out after {limit:?} waiting for {what}; last seen: {actual}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The data of `path` equals `expected` within `limit`: polled, so it holds while the checking
/// client itself reconnects after a fault.
pub async fn data_becomes(
    client: &zookeeper_client::Client,
    path: &str,
    expected: &str,
    limit: Duration,
) -> zookeeper_client::Stat {
    eventually_within(limit, &format!("{path} = {expected:?}"), || async {
        match client.get_data(path).await {
            Ok((data, stat)) if data == expected.as_bytes() => Ok(stat),
            Ok((data, _)) => Err(format!("{:?}", String::from_utf8_lossy(&data))),
            Err(err) => Err(err.to_string()),
        }
    })
    .await
}

/// The session ids (hex, as `wchp` prints them) watching `path` on the server.
pub fn watchers_of(zk: &Zk, path: &str) -> Vec<String> {
    let dump = zk.four_letter("wchp");
    let mut sessions = Vec::new();
    let mut in_path = false;
    for line in dump.lines() {
        if line.starts_with('/') {
            in_path = line == path;
        } else if in_path {
            sessions.push(line.trim().to_owned());
        }
    }
    sessions
}

/// Exit code, stdout and stderr of a finished command, for assertion messages.
pub fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A scratch directory for one test, removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(test: &str) -> Scratch {
        let dir = zk().dir.join("scratch").join(test);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        Scratch(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs a future to completion on a fresh current-thread runtime (for synchronous tests).
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("build a tokio runtime")
        .block_on(future)
}

/// A plain ZooKeeper client for checking what herald wrote (no herald code involved).
pub async fn client() -> zookeeper_client::Client {
    zookeeper_client::Client::connector()
        .with_session_timeout(Duration::from_secs(10))
        .connect(&zk().connect_string())
        .await
        .expect("connect a checking client to the test ZooKeeper")
}

/// A loopback TCP proxy in front of the test ZooKeeper that can cut the network: while
/// partitioned, live connections are shut down and new ones are closed on accept.
pub struct Proxy {
    pub port: u16,
    address: std::net::IpAddr,
    state: std::sync::Arc<std::sync::Mutex<ProxyState>>,
    held: Held,
    lose_multi: Held,
}

#[derive(Default)]
struct ProxyState {
    partitioned: bool,
    live: Vec<TcpStream>,
}

/// While set, bytes from clients to the server are held back (not dropped).
type Held = std::sync::Arc<std::sync::atomic::AtomicBool>;

impl Proxy {
    pub fn start(upstream: u16) -> Proxy {
        Proxy::start_at(std::net::Ipv4Addr::LOCALHOST.into(), upstream)
    }

    /// A proxy listening on `address` (another interface, e.g. a veth towards a network
    /// namespace) that forwards to the test ZooKeeper's loopback port `upstream`.
    pub fn start_at(address: std::net::IpAddr, upstream: u16) -> Proxy {
        let listener = TcpListener::bind((address, 0)).expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let state = std::sync::Arc::new(std::sync::Mutex::new(ProxyState::default()));
        let shared = state.clone();
        let held = Held::default();
        let hold = held.clone();
        let lose_multi = Held::default();
        let lose = lose_multi.clone();
        std::thread::spawn(move || {
            for downstream in listener.incoming().flatten() {
                let mut state = shared.lock().unwrap();
                if state.partitioned {
                    let _ = downstream.shutdown(std::net::Shutdown::Both);
                    continue;
                }
                let Ok(up) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                for stream in [&downstream, &up] {
                    if let Ok(clone) = stream.try_clone() {
                        state.live.push(clone);
                    }
                }
                // Set when a reply is to be lost: the server's bytes are dropped.
                let mute = Held::default();
                requests(
                    downstream.try_clone().unwrap(),
                    up.try_clone().unwrap(),
                    hold.clone(),
                    lose.clone(),
                    mute.clone(),
                );
                pipe(up, downstream, None, Some(mute));
            }
        });
        Proxy {
            port,
            address,
            state,
            held,
            lose_multi,
        }
    }

    /// Holds back every request (connections stay open, nothing is lost) until
    /// [`Proxy::release`].
    pub fn hold(&self) {
        self.held.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// The next multi-op a client sends reaches the server, but its reply does not: the
    /// connection is cut 300 ms later (the client sees a connection loss and reconnects).
    pub fn lose_next_multi_reply(&self) {
        self.lose_multi
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn release(&self) {
        self.held.store(false, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn connect_string(&self) -> String {
        format!("{}:{}", self.address, self.port)
    }

    /// Cuts every connection and refuses new ones until [`Proxy::heal`].
    pub fn partition(&self) {
        let mut state = self.state.lock().unwrap();
        state.partitioned = true;
        for stream in state.live.drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }

    pub fn heal(&self) {
        self.state.lock().unwrap().partitioned = false;
    }
}

/// Client to server, a whole request at a time (ZooKeeper's frames: a 4-byte length, then
/// the xid and the op code after the first, the connect request), so that the reply to a
/// multi-op (op 14) can be lost: `mute` is set before the request is forwarded.
/// Larger than any ZooKeeper request (its jute.maxbuffer is 1 MiB by default).
const MAX_FRAME: usize = 4 << 20;

fn requests(mut from: TcpStream, mut to: TcpStream, held: Held, lose: Held, mute: Held) {
    use std::sync::atomic::Ordering::SeqCst;
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        let mut pending: Vec<u8> = Vec::new();
        let mut first = true;
        let mut raw = false;
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            pending.extend_from_slice(&buf[..n]);
            loop {
                if !raw && pending.len() < 4 {
                    break;
                }
                let len = if raw {
                    0
                } else {
                    u32::from_be_bytes(pending[..4].try_into().unwrap()) as usize
                };
                raw = raw || len > MAX_FRAME;
                if raw {
                    // Not ZooKeeper's plain framing (TLS records): bytes as they come.
                    while held.load(SeqCst) {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    if to.write_all(&pending).is_err() {
                        return;
                    }
                    pending.clear();
                    break;
                }
                if pending.len() < 4 + len {
                    break;
                }
                let frame: Vec<u8> = pending.drain(..4 + len).collect();
                let multi = !first && len >= 8 && frame[8..12] == 14i32.to_be_bytes();
                first = false;
                let cut = multi && lose.swap(false, SeqCst);
                if cut {
                    mute.store(true, SeqCst);
                }
                while held.load(SeqCst) {
                    std::thread::sleep(Duration::from_millis(1));
                }
                if to.write_all(&frame).is_err() {
                    let _ = from.shutdown(std::net::Shutdown::Both);
                    return;
                }
                if cut {
                    std::thread::sleep(Duration::from_millis(300));
                    let _ = to.shutdown(std::net::Shutdown::Both);
                    let _ = from.shutdown(std::net::Shutdown::Both);
                    return;
                }
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Both);
    });
}

fn pipe(mut from: TcpStream, mut to: TcpStream, held: Option<Held>, mute: Option<Held>) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if mute
                .as_ref()
                .is_some_and(|m| m.load(std::sync::atomic::Ordering::SeqCst))
            {
                continue;
            }
            while held
                .as_ref()
                .is_some_and(|h| h.load(std::sync::atomic::Ordering::SeqCst))
            {
                std::thread::sleep(Duration::from_millis(1));
            }
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Both);
    });
}

/// Whether the fault tests run in their long mode (`HERALD_LONG_FAULTS=1`, set by
/// `scripts/faults soak`): longer outages and soaks than CI can afford.
pub fn long_faults() -> bool {
    std::env::var("HERALD_LONG_FAULTS").is_ok_and(|v| v == "1")
}

/// A running child's stdout, read line by line on a thread, so a test can wait for a line.
pub struct Lines {
    rx: std::sync::mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Lines {
    /// Takes `child`'s piped stdout.
    pub fn of(child: &mut Child) -> Lines {
        let stdout = child.stdout.take().expect("the child's stdout is piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Lines {
            rx,
            seen: Vec::new(),
        }
    }

    /// The first line from now on that `matches`, failing the test after [`DEADLINE`].
    pub fn expect(&mut self, what: &str, matches: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if matches(&line) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no line {what} within {DEADLINE:?}; lines seen: {:?}",
                    self.seen
                ),
            }
        }
    }
}

/// Sends `signal` to `pid`.
pub fn send_signal(pid: u32, signal: i32) {
    // SAFETY: plain syscall.
    let rc = unsafe { libc::kill(pid as libc::pid_t, signal) };
    assert_eq!(rc, 0, "kill({pid}, {signal})");
}

/// The port of the first log line holding `marker` and `listen=ADDRESS` (a server started on
/// port 0 says where the kernel put it).
pub fn listening_port(log: &str, marker: &str) -> Option<u16> {
    let line = log.lines().find(|l| l.contains(marker))?;
    let address = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("listen="))?;
    address
        .trim_matches('"')
        .parse::<std::net::SocketAddr>()
        .ok()
        .map(|a| a.port())
}

/// `GET path` on `port`: status and body.
pub fn get(port: u16, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the metrics port");
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, body.to_owned())
}

/// The port in the `serving metrics and status listen=ADDRESS` line.
pub fn metrics_port(daemon: &Daemon) -> u16 {
    wait_for("the metrics listener", || {
        listening_port(&daemon.stderr(), "serving metrics and status")
    })
}

/// The process's `/status.json` on `port`.
pub fn status(port: u16) -> serde_json::Value {
    let (code, body) = get(port, "/status.json");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// A long-running herald process (agent, director, watcher) whose stderr is collected in the
/// background, so a test can wait for a log line; killed when dropped, however the test ends.
pub struct Daemon {
    pub child: Child,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
    /// Set when stderr reached its end: everything the process wrote has been collected.
    eof: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Daemon {
    pub fn spawn(command: &mut Command) -> Daemon {
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn herald");
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let pipe = child.stderr.take().expect("piped stderr");
        let sink = stderr.clone();
        let eof = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done = eof.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            let mut lines = std::io::BufReader::new(pipe);
            let mut line = Vec::new();
            // Whole lines, so a character split between two reads is never mangled.
            while lines.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&line));
                line.clear();
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        Daemon { child, stderr, eof }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, signal: i32) {
        send_signal(self.pid(), signal);
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Fails the test if any of `secrets` appears in the log.
    pub fn assert_never_logged(&self, secrets: &[&str]) {
        let log = self.stderr();
        for secret in secrets {
            assert!(!log.contains(secret), "{secret} logged:\n{log}");
        }
    }

    /// How often `needle` occurs in stderr so far.
    pub fn count(&self, needle: &str) -> usize {
        self.stderr().matches(needle).count()
    }

    /// Waits until stderr holds `needle` at least `n` times; returns the log it saw.
    pub async fn wait_log(&self, needle: &str, n: usize) -> String {
        self.wait_log_for(&format!("{n}× {needle:?} in the log"), |log| {
            (log.matches(needle).count() >= n).then_some(())
        })
        .await
        .1
    }

    /// Waits until `probe` finds what it looks for in stderr; returns that and the log it saw.
    /// On timeout the test fails with `what` and the whole log.
    pub async fn wait_log_for<T>(
        &self,
        what: &str,
        mut probe: impl FnMut(&str) -> Option<T>,
    ) -> (T, String) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let log = self.stderr();
            if let Some(found) = probe(&log) {
                return (found, log);
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {what} within {DEADLINE:?}; the log:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits for the process to exit and for its last log lines to be collected, so the log
    /// read after this is the whole log.
    pub async fn exited(&mut self) -> std::process::ExitStatus {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for herald") {
                // A child of the process may still hold the pipe open: then give up on the
                // end of the stream after a while (what the process itself wrote is read by
                // then).
                let drained = tokio::time::Instant::now() + Duration::from_secs(5);
                while !self.eof.load(std::sync::atomic::Ordering::SeqCst)
                    && tokio::time::Instant::now() < drained
                {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "herald did not exit within {DEADLINE:?}; stderr:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A failing test shows what its daemons said (the test's own output is kept).
        if std::thread::panicking() {
            println!(
                "--- log of herald (pid {}) ---\n{}",
                self.child.id(),
                self.stderr()
            );
        }
    }
}

/// Waits (by watch) until the value at `path` is `expected`; returns its stat.
pub async fn value_becomes(
    client: &zookeeper_client::Client,
    path: &str,
    expected: &str,
) -> zookeeper_client::Stat {
    let mut last = None;
    let waited = tokio::time::timeout(DEADLINE, async {
        loop {
            match client.get_and_watch_data(path).await {
                Ok((data, stat, watcher)) => {
                    if data == expected.as_bytes() {
                        return stat;
                    }
                    last = Some(String::from_utf8_lossy(&data).into_owned());
                    watcher.changed().await;
                }
                Err(zookeeper_client::Error::NoNode) => {
                    let (stat, watcher) = client.check_and_watch_stat(path).await.unwrap();
                    if stat.is_none() {
                        watcher.changed().await;
                    }
                }
                Err(err) => panic!("read {path}: {err}"),
            }
        }
    })
    .await;
    waited.unwrap_or_else(|_| panic!("{path} did not become {expected:?}; last {last:?}"))
}
