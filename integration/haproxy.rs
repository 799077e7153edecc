//! HAProxy for real, run exactly as examples/haproxy shows (only the bind address changes):
//! HTTP backends under `herald run --service web`, a director publishing the `server` lines, and
//! `herald watch --template --check 'haproxy -c' --reload --haproxy SOCKET` keeping a real
//! HAProxy's whole configuration, with membership changes made through its Runtime API. After
//! every step, the backends that answer through HAProxy must be exactly the live ones; a client
//! loop running through the graceful steps must see no failed request; and HAProxy's worker
//! must be the one it started with (no reload) unless the change could not be made at runtime.

mod support;

#[path = "support/standalone.rs"]
mod standalone;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use support::*;

const KEY: &str = "HAPROXY_SERVERS";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One HTTP GET through `port`; the body, or why not.
fn get(port: u16) -> Result<String, String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET / HTTP/1.0\r\nHost: web\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("not HTTP: {response:?}"))?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        return Err(head.lines().next().unwrap_or_default().to_owned());
    }
    Ok(body.trim().to_owned())
}

/// herald on the ZooKeeper `zk`.
fn herald_on(root: &str, zk: &str) -> Command {
    let mut command = herald(root);
    command.env("HERALD_ZK", zk);
    command
}

/// `herald run --service web` around a Python HTTP server that answers its own name.
fn backend(root: &str, zk: &str, s: &Scratch, name: &str) -> (Daemon, u16) {
    let dir = s.path(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("index.html"), format!("{name}\n")).unwrap();
    // A free port may be taken by another test before the server binds it: the server exits
    // ("Address already in use"), and so does its herald; then it starts again on another.
    for _attempt in 1..=5 {
        let port = free_port();
        let mut daemon = Daemon::spawn(
            herald_on(root, zk)
                .args([
                    "run",
                    "--service",
                    "web",
                    "--id",
                    name,
                    "--address",
                    "127.0.0.1",
                ])
                .args(["--port", &port.to_string()])
                .args(["--check", &format!("http://127.0.0.1:{port}/")])
                .args(["--rise", "1", "--check-interval", "100ms", "--env-dir"])
                .arg(s.path("environment"))
                .arg("--control-dir")
                .arg(s.path("control"))
                .args(["--", "python3", "-m", "http.server", &port.to_string()])
                .args(["--bind", "127.0.0.1", "--directory"])
                .arg(&dir),
        );
        let registered = wait_until(&format!("{name} to register"), || {
            if daemon.stderr().contains("registered path=") {
                return Ok(true);
            }
            match daemon.child.try_wait() {
                Ok(Some(_)) => Ok(false),
                _ => Err(daemon.stderr()),
            }
        });
        if registered {
            return (daemon, port);
        }
        let said = daemon.stderr();
        assert!(
            said.contains("Address already in use"),
            "{name} exited before it registered:\n{said}"
        );
    }
    panic!("{name}: no free port in 5 attempts");
}

/// The servers of backend `web` in the configuration HAProxy runs, from its stats socket.
fn servers_in_force(socket: &std::path::Path) -> Result<BTreeSet<String>, String> {
    let mut stream = std::os::unix::net::UnixStream::connect(socket).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"show servers state web\n")
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    stream.read_to_string(&mut out).map_err(|e| e.to_string())?;
    // `1` (format version), `# be_id be_name srv_id srv_name …`, then one line per server.
    Ok(out
        .lines()
        .filter(|l| !l.starts_with('#') && l.split_whitespace().count() > 4)
        .filter_map(|l| l.split_whitespace().nth(3).map(str::to_owned))
        .collect())
}

/// Waits until HAProxy runs exactly the `live` servers (its stats socket says so, and the worker
/// of any older configuration is gone), then until every one of them has answered; no answer
/// may come from anyone else.
async fn answered_by(
    port: u16,
    live: &[&str],
    watch: &Daemon,
    director: &Daemon,
    dir: &std::path::Path,
) {
    let want: BTreeSet<String> = live.iter().map(|s| s.to_string()).collect();
    let socket = dir.join("haproxy.sock");
    let pidfile = dir.join("haproxy.pid");
    let log = dir.join("haproxy.log");
    eventually(&format!("HAProxy running {want:?}"), || {
        let servers = servers_in_force(&socket);
        let workers = workers(&pidfile);
        let result = if servers.as_ref() == Ok(&want) && workers == 1 {
            Ok(())
        } else {
            Err(format!(
                "{servers:?} in {workers} worker(s); watch said:\n{}\ndirector said:\n{}\nHAProxy said:\n{}",
                watch.stderr(),
                director.stderr(),
                std::fs::read_to_string(&log).unwrap_or_default()
            ))
        };
        async move { result }
    })
    .await;
    let mut seen = BTreeSet::new();
    eventually("every live server to answer", || {
        let answer = get(port);
        if let Ok(name) = &answer {
            assert!(want.contains(name), "{name} answered; live: {want:?}");
            seen.insert(name.clone());
        }
        let result = if seen == want {
            Ok(())
        } else {
            Err(format!("{seen:?}; last {answer:?}"))
        };
        async move { result }
    })
    .await;
}

/// How many worker processes the HAProxy master (pid in `pidfile`) has.
fn workers(pidfile: &std::path::Path) -> usize {
    worker_pids(pidfile).len()
}

/// The worker processes of the HAProxy master whose pid is in `pidfile`.
fn worker_pids(pidfile: &std::path::Path) -> BTreeSet<u32> {
    let Some(master) = std::fs::read_to_string(pidfile)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
    else {
        return BTreeSet::new();
    };
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return BTreeSet::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse::<u32>().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // pid (comm) state ppid …: comm may hold spaces, so read after the last ')'.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())?;
            (ppid == master).then_some(pid)
        })
        .collect()
}

/// Requests through HAProxy in a loop on a thread until stopped; counts them and the failures.
struct Client {
    stop: Arc<AtomicBool>,
    requests: Arc<AtomicUsize>,
    failures: Arc<std::sync::Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Client {
    fn start(port: u16) -> Client {
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
        let thread = std::thread::spawn({
            let (stop, requests, failures) = (stop.clone(), requests.clone(), failures.clone());
            move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Err(e) = get(port) {
                        failures.lock().unwrap().push(e);
                    }
                    requests.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        });
        Client {
            stop,
            requests,
            failures,
            thread: Some(thread),
        }
    }

    /// Stops the loop: (requests, failures).
    fn finish(mut self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
        let failures = std::mem::take(&mut *self.failures.lock().unwrap());
        (self.requests.load(Ordering::Relaxed), failures)
    }
}

struct Haproxy(Child);

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Everything of one deployment: the director, HAProxy, the watch keeping it, and where they are.
struct Deployment {
    director: Daemon,
    _haproxy: Haproxy,
    watch: Daemon,
    /// HAProxy's port.
    port: u16,
    dir: PathBuf,
}

impl Deployment {
    fn socket(&self) -> PathBuf {
        self.dir.join("haproxy.sock")
    }

    fn pidfile(&self) -> PathBuf {
        self.dir.join("haproxy.pid")
    }

    async fn answered_by(&self, live: &[&str]) {
        answered_by(self.port, live, &self.watch, &self.director, &self.dir).await;
    }
}

/// One command on HAProxy's admin socket; its answer.
fn ask(socket: &std::path::Path, command: &str) -> String {
    let mut stream = std::os::unix::net::UnixStream::connect(socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(format!("{command}\n").as_bytes()).unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).unwrap();
    out
}

/// The director, the example's configuration (on a port and socket of the test's own, with
/// `edits` made to it) rendered once, HAProxy started on it, and `herald watch` keeping both as
/// the example runs it (checks every second instead of every 5 s).
fn start_haproxy(
    root: &str,
    zk: &str,
    s: &Scratch,
    edits: &[(&str, &str)],
    director_args: &[&str],
) -> Deployment {
    let director = Daemon::spawn(
        herald_on(root, zk)
            .args([
                "director",
                "--key",
                KEY,
                "--service",
                "web",
                "--preset",
                "haproxy",
            ])
            .args(["--settle", "0s"])
            .args(director_args),
    );
    let example = std::fs::read_to_string(repo().join("examples/haproxy/haproxy.cfg.j2")).unwrap();
    // A free port may be taken by another test before HAProxy binds it: then HAProxy exits
    // ("cannot bind socket") and is started again on another port.
    for attempt in 1.. {
        let port = free_port();
        let socket = s.path("haproxy.sock");
        let mut ours = example.clone();
        let mut replacements = vec![
            (
                "    bind *:8080\n".to_owned(),
                format!("    bind 127.0.0.1:{port}\n"),
            ),
            (
                "stats socket /run/haproxy/admin.sock ".to_owned(),
                format!("stats socket {} ", socket.display()),
            ),
        ];
        replacements.extend(
            edits
                .iter()
                .map(|(a, b)| ((*a).to_owned(), (*b).to_owned())),
        );
        for (theirs, mine) in replacements {
            assert!(ours.contains(&theirs), "{theirs:?} is in the example");
            ours = ours.replace(&theirs, &mine);
        }
        let template = s.path("haproxy.cfg.j2");
        std::fs::write(&template, ours).unwrap();
        let conf = s.path("haproxy.cfg");
        let pidfile = s.path("haproxy.pid");
        let haproxy_log = s.path("haproxy.log");
        let once = run(herald_on(root, zk)
            .args(["watch", KEY, "--once", "--out"])
            .arg(&conf)
            .arg("--template")
            .arg(&template));
        assert!(once.status.success(), "{}", describe(&once));
        let haproxy = Haproxy(
            Command::new("haproxy")
                .args(["-W", "-db", "-f"])
                .arg(&conf)
                .arg("-p")
                .arg(&pidfile)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&haproxy_log).unwrap())
                .spawn()
                .expect("run haproxy (scripts/haproxy install)"),
        );
        let mut haproxy = haproxy;
        // Started after HAProxy listens, as a service manager would order them (a watch that finds
        // no socket falls back to the reload, which the tests tell apart).
        let listening = wait_until("HAProxy's admin socket", || {
            if let Ok(Some(status)) = haproxy.0.try_wait() {
                return Ok(Err(status));
            }
            std::os::unix::net::UnixStream::connect(&socket)
                .map(|_| Ok(()))
                .map_err(|e| e.to_string())
        });
        if let Err(status) = listening {
            let said = std::fs::read_to_string(&haproxy_log).unwrap_or_default();
            assert!(
                said.contains("cannot bind socket") && attempt < 5,
                "HAProxy exited ({status}):\n{said}"
            );
            continue;
        }
        let reload = format!("kill -USR2 \"$(cat {})\"", pidfile.display());
        let watch = Daemon::spawn(
            herald_on(root, zk)
                .args(["watch", KEY, "--out"])
                .arg(&conf)
                .arg("--template")
                .arg(&template)
                .args(["--check", "haproxy -c -q -f \"$1\"", "--reload", &reload])
                .arg("--haproxy")
                .arg(&socket)
                .args(["--haproxy-backend", "web", "--sync-every", "1s"]),
        );
        return Deployment {
            director,
            _haproxy: haproxy,
            watch,
            port,
            dir: s.path("."),
        };
    }
    unreachable!("the loop returns or panics")
}

/// HAProxy's one worker, once it has one.
async fn the_worker(d: &Deployment) -> u32 {
    let pidfile = d.pidfile();
    eventually("one HAProxy worker", || {
        let pids = worker_pids(&pidfile);
        async move {
            match pids.iter().collect::<Vec<_>>()[..] {
                [one] => Ok(*one),
                _ => Err(format!("{pids:?}")),
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_serves_exactly_the_live_backends_and_graceful_changes_fail_no_request() {
    let root = root("haproxy");
    let s = Scratch::new("haproxy");
    std::fs::create_dir_all(s.path("environment")).unwrap();
    let zk = zk().connect_string();
    let (mut web0, port0) = backend(&root, &zk, &s, "web0");
    let _web1 = backend(&root, &zk, &s, "web1");
    let d = start_haproxy(&root, &zk, &s, &[], &[]);
    d.answered_by(&["web0", "web1"]).await;
    let worker = the_worker(&d).await;

    // Graceful changes, with a client loop that must see no failed request.
    let loop_client = Client::start(d.port);
    let (mut web2, _) = backend(&root, &zk, &s, "web2");
    d.answered_by(&["web0", "web1", "web2"]).await;
    let drain = |id: &str, verb: &str| {
        let out = run(herald(&root)
            .args([verb, "--id", id, "--control-dir"])
            .arg(s.path("control")));
        assert!(out.status.success(), "{verb} {id}: {}", describe(&out));
    };
    drain("web1", "drain");
    d.answered_by(&["web0", "web2"]).await;
    drain("web1", "undrain");
    d.answered_by(&["web0", "web1", "web2"]).await;
    // A graceful leave: herald run deregisters before passing SIGTERM on.
    web2.signal(libc::SIGTERM);
    web2.exited().await;
    d.answered_by(&["web0", "web1"]).await;
    let (requests, failures) = loop_client.finish();
    assert!(requests > 50, "the client loop ran: {requests} requests");
    assert!(
        failures.is_empty(),
        "{} of {requests} requests failed during graceful changes: {failures:?}",
        failures.len()
    );

    // A crash: web0's server dies; its sidecar deregisters it and HAProxy stops sending there.
    let killed = run(Command::new("pkill").args([
        "-KILL",
        "-f",
        &format!("^[^ ]*python3 -m http.server {port0} "),
    ]));
    assert!(killed.status.success(), "{}", describe(&killed));
    assert_eq!(web0.exited().await.code(), Some(137), "{}", web0.stderr());
    d.answered_by(&["web1"]).await;

    // Every change went through the socket: the worker HAProxy started with still serves.
    assert_eq!(
        worker_pids(&d.pidfile()),
        BTreeSet::from([worker]),
        "HAProxy was reloaded; watch said:\n{}",
        d.watch.stderr()
    );
    assert!(
        d.watch.count("without a reload") >= 5,
        "each change was made through the socket: {}",
        d.watch.stderr()
    );
    d.watch.assert_never_logged(&["reloading HAProxy instead"]);
}

/// A burst of registrations and leaves within a second: HAProxy ends with exactly the live
/// servers, still without a reload; and a HAProxy changed by hand is put back to the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_changes_ends_with_exactly_the_live_servers_and_no_reload() {
    let root = root("haproxy_burst");
    let s = Scratch::new("haproxy_burst");
    std::fs::create_dir_all(s.path("environment")).unwrap();
    let zk = zk().connect_string();
    let _web0 = backend(&root, &zk, &s, "web0");
    let d = start_haproxy(&root, &zk, &s, &[], &[]);
    d.answered_by(&["web0"]).await;
    let worker = the_worker(&d).await;
    let mut burst: Vec<Daemon> = (1..=6)
        .map(|n| backend(&root, &zk, &s, &format!("web{n}")).0)
        .collect();
    // Two of them leave again at once.
    for leaver in burst.drain(4..) {
        let mut leaver = leaver;
        leaver.signal(libc::SIGTERM);
        leaver.exited().await;
    }
    let live = ["web0", "web1", "web2", "web3", "web4"];
    d.answered_by(&live).await;
    assert_eq!(worker_pids(&d.pidfile()), BTreeSet::from([worker]));
    // Servers added through the socket keep idle connections to their backend for reuse, as
    // web0 (read from the file) does: HAProxy 2.6's own default for them is none, a new
    // connection per request.
    let conns = ask(&d.socket(), "show servers conn web");
    let reuse = |server: &str| {
        let line = conns
            .lines()
            .find(|l| l.starts_with(&format!("web/{server} ")))
            .unwrap_or_else(|| panic!("{server} in {conns}"));
        // purge_delay and idle_lim
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields[5].to_owned(), fields[11].to_owned())
    };
    assert_eq!(
        reuse("web0"),
        ("5000".to_owned(), "-1".to_owned()),
        "{conns}"
    );
    for added in ["web1", "web2", "web3", "web4"] {
        assert_eq!(reuse(added), reuse("web0"), "{added}: {conns}");
    }

    // By hand: web1 taken away and web0 sent elsewhere. The next check (every second here)
    // puts both back through the socket.
    let socket = d.socket();
    let moved = ask(&socket, "set server web/web0 addr 127.0.0.9");
    assert!(moved.contains("IP changed"), "{moved}");
    ask(&socket, "set server web/web1 state maint");
    assert_eq!(
        ask(&socket, "del server web/web1").trim(),
        "Server deleted."
    );
    d.watch
        .wait_log_for("web1 added and web0 moved back through the socket", |log| {
            let applied: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("without a reload"))
                .collect();
            // web1 was added once in the burst, and again after its deletion by hand.
            (applied.iter().filter(|l| l.contains("added web1")).count() >= 2
                && applied.iter().any(|l| l.contains("moved web0")))
            .then_some(())
        })
        .await;
    d.answered_by(&live).await;
    assert_eq!(worker_pids(&d.pidfile()), BTreeSet::from([worker]));
    d.watch.assert_never_logged(&["reloading HAProxy instead"]);
}

/// A change HAProxy cannot make at runtime (here: `init-addr` in default-server, which 2.6
/// refuses for a server added through the socket) falls back to the reload, and still ends with
/// exactly the live servers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_the_socket_cannot_make_falls_back_to_a_reload() {
    let root = root("haproxy_fallback");
    let s = Scratch::new("haproxy_fallback");
    std::fs::create_dir_all(s.path("environment")).unwrap();
    let zk = zk().connect_string();
    let _web0 = backend(&root, &zk, &s, "web0");
    let d = start_haproxy(
        &root,
        &zk,
        &s,
        &[(
            "default-server inter 200ms rise 1 fall 1",
            "default-server inter 200ms rise 1 fall 1 init-addr last,libc,none",
        )],
        &[],
    );
    d.answered_by(&["web0"]).await;
    let worker = the_worker(&d).await;
    let _web1 = backend(&root, &zk, &s, "web1");
    d.answered_by(&["web0", "web1"]).await;
    d.watch
        .wait_log("'init-addr' option is not accepted for dynamic server", 1)
        .await;
    d.watch
        .wait_log("HAProxy reloaded and runs the file", 1)
        .await;
    let reloaded = the_worker(&d).await;
    assert_ne!(reloaded, worker, "the change was made by a reload");
}

/// One bad registration (an address that does not resolve, written by a registrant that did not
/// check it) never freezes the pool: the director's check (examples/haproxy/check-servers, i.e.
/// `haproxy -c`) refuses every value with it, the director finds it by bisection, leaves it out
/// and publishes the others; `herald ls` says so; once its registration is corrected it is
/// tried again and served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_registration_is_left_out_and_the_others_changes_go_on() {
    let root = root("haproxy_typo");
    let s = Scratch::new("haproxy_typo");
    std::fs::create_dir_all(s.path("environment")).unwrap();
    let zk = zk().connect_string();
    let _web0 = backend(&root, &zk, &s, "web0");
    let check = repo().join("examples/haproxy/check-servers");
    let d = start_haproxy(&root, &zk, &s, &[], &["--check", check.to_str().unwrap()]);
    d.answered_by(&["web0"]).await;

    // web9 is registered by hand with a typo in its address (on a session of the test's own).
    let registrant = client().await;
    let path = format!("{root}/services/web/web9");
    let document = |address: &str, port: u16| {
        format!(
            r#"{{"name":"web","id":"web9","address":"{address}","port":{port},"sslPort":null,"payload":{{"labels":{{}},"meta":{{}},"endpoints":{{}},"weight":1}},"registrationTimeUTC":1,"serviceType":"DYNAMIC","uriSpec":null}}"#
        )
    };
    registrant
        .create(
            &path,
            document("db-typo.invalid", 80).as_bytes(),
            &zookeeper_client::CreateMode::Ephemeral
                .with_acls(zookeeper_client::Acls::anyone_all()),
        )
        .await
        .unwrap();
    let (_web1, _) = backend(&root, &zk, &s, "web1");
    d.answered_by(&["web0", "web1"]).await;
    d.director
        .wait_log("every value with this instance fails the check", 1)
        .await;
    assert_eq!(
        d.director
            .count("every value with this instance fails the check"),
        1,
        "only web9 is left out: {}",
        d.director.stderr()
    );
    assert!(
        d.director.stderr().contains("instance=web9"),
        "{}",
        d.director.stderr()
    );
    let ls = run(herald(&root).args(["ls", "web"]));
    assert!(ls.status.success(), "{}", describe(&ls));
    let listed = String::from_utf8_lossy(&ls.stdout).into_owned();
    let web9 = listed
        .lines()
        .find(|l| l.starts_with("web9 "))
        .unwrap_or_else(|| panic!("web9 listed: {listed}"));
    assert!(
        web9.contains("EXCLUDED from HAPROXY_SERVERS: check exited with status 1"),
        "{listed}"
    );
    assert!(
        !listed
            .lines()
            .any(|l| l.starts_with("web1 ") && l.contains("EXCLUDED")),
        "{listed}"
    );

    // Corrected: web9 now points at a real server, is tried again and serves.
    let port9 = free_port();
    let dir9 = s.path("web9");
    std::fs::create_dir_all(&dir9).unwrap();
    std::fs::write(dir9.join("index.html"), "web9\n").unwrap();
    let server9 = Haproxy(
        Command::new("python3")
            .args([
                "-m",
                "http.server",
                &port9.to_string(),
                "--bind",
                "127.0.0.1",
                "--directory",
            ])
            .arg(&dir9)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until("web9's server", || {
        TcpStream::connect(("127.0.0.1", port9))
            .map(drop)
            .map_err(|e| e.to_string())
    });
    registrant
        .set_data(&path, document("127.0.0.1", port9).as_bytes(), None)
        .await
        .unwrap();
    d.answered_by(&["web0", "web1", "web9"]).await;
    d.director
        .wait_log("an excluded instance changed or left", 1)
        .await;
    let ls = run(herald(&root).args(["ls", "web"]));
    assert!(
        !String::from_utf8_lossy(&ls.stdout).contains("EXCLUDED"),
        "{}",
        describe(&ls)
    );
    drop(server9);
}

/// ZooKeeper stops for a while: HAProxy keeps its servers and serves every request; once it is
/// back, a new backend is added as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zookeeper_outage_costs_no_request_and_changes_go_on_after_it() {
    let server = standalone::Standalone::start("haproxy_outage").await;
    let zk = server.connect_string();
    let root = root("haproxy_outage");
    let s = Scratch::new("haproxy_outage");
    std::fs::create_dir_all(s.path("environment")).unwrap();
    let _web0 = backend(&root, &zk, &s, "web0");
    let _web1 = backend(&root, &zk, &s, "web1");
    let d = start_haproxy(&root, &zk, &s, &[], &[]);
    d.answered_by(&["web0", "web1"]).await;

    let loop_client = Client::start(d.port);
    server.stop(libc::SIGKILL).await;
    // Requests go on through the outage (the client loop), for at least a second of it.
    let during = loop_client.requests.load(Ordering::Relaxed);
    eventually("requests during the outage", || {
        let n = loop_client.requests.load(Ordering::Relaxed);
        async move {
            if n >= during + 100 {
                Ok(())
            } else {
                Err(format!("{n}"))
            }
        }
    })
    .await;
    d.answered_by(&["web0", "web1"]).await;
    server.restart().await;
    let _web2 = backend(&root, &zk, &s, "web2");
    d.answered_by(&["web0", "web1", "web2"]).await;
    let (requests, failures) = loop_client.finish();
    assert!(
        failures.is_empty(),
        "{} of {requests} requests failed around the outage: {failures:?}",
        failures.len()
    );
}
