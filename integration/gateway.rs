//! `herald gateway`: the single-machine case over real HTTP and a real ZooKeeper — what a
//! container POSTs is what `herald resolve` (and every other reader) sees, and back.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;

use support::*;

/// One HTTP/1.1 request (connection closed after it): status and body.
fn http(port: u16, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    exchange(port, method, path, body.len(), body)
}

/// A request declaring `length` bytes of body and sending `body`.
fn exchange(port: u16, method: &str, path: &str, length: usize, body: &[u8]) -> (u16, Vec<u8>) {
    let (status, _, body) = request(port, method, path, &[], length, body);
    (status, body)
}

/// One request with extra header lines (`"Name: value"`): status, response head, body.
fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[&str],
    length: usize,
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the gateway");
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    request_on(stream, method, path, headers, length, body)
}

/// One request on a connected stream.
fn request_on(
    mut stream: impl Read + Write,
    method: &str,
    path: &str,
    headers: &[&str],
    length: usize,
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {length}\r\nConnection: close\r\n"
    );
    for header in headers {
        head.push_str(header);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let (status, head, rest) = split_response(&response);
    (status, head, rest.to_vec())
}

/// A response's status, head and what follows the head.
fn split_response(response: &[u8]) -> (u16, String, &[u8]) {
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| {
            panic!(
                "no HTTP response in {:?}",
                String::from_utf8_lossy(response)
            )
        });
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    (status, head, &response[split + 4..])
}

/// Reads one response head (up to its blank line) from `stream`: status and head.
fn read_head(stream: &mut TcpStream) -> (u16, String) {
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => got.push(byte[0]),
            other => panic!(
                "the response head ended early ({other:?}) after {:?}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
    let (status, head, _) = split_response(&got);
    (status, head)
}

/// A gateway on a free port, ready to serve.
fn gateway(root: &str) -> (Daemon, u16) {
    gateway_with(root, &[], &[])
}

/// A gateway with extra arguments and environment, on a port of its own, ready to serve.
fn gateway_with(root: &str, args: &[&str], env: &[(&str, &str)]) -> (Daemon, u16) {
    gateway_on("127.0.0.1:0", root, args, env)
}

/// A gateway listening on `listen` (port 0: the kernel picks one, so no other test's server can
/// be on it), ready to serve; its port is read from its log.
fn gateway_on(listen: &str, root: &str, args: &[&str], env: &[(&str, &str)]) -> (Daemon, u16) {
    let mut command = herald(root);
    command
        .arg("gateway")
        .args(["--listen", listen])
        .args(args)
        .envs(env.iter().copied());
    let mut daemon = Daemon::spawn(&mut command);
    let port = wait_for("the gateway to listen", || {
        if let Ok(Some(status)) = daemon.child.try_wait() {
            panic!("the gateway exited ({status}): {}", daemon.stderr());
        }
        listening_port(&daemon.stderr(), "serving HTTP")
    });
    wait_for("the gateway to be ready", || {
        (http(port, "GET", "/ready", b"").0 == 200).then_some(())
    });
    (daemon, port)
}

#[test]
fn post_then_get_round_trips_through_zookeeper() {
    let root = root("gw_round_trip");
    let (_gw, port) = gateway(&root);
    let value: Vec<u8> = (0..=255u8).collect();
    assert_eq!(http(port, "POST", "/environment/BLOB", &value).0, 204);
    assert_eq!(
        http(port, "GET", "/environment/BLOB", b""),
        (200, value.clone())
    );
    // The same znode every other reader uses.
    let out = run(herald(&root).args(["resolve", "BLOB"]));
    assert_eq!(out.stdout, value, "{}", describe(&out));
    // And what herald put writes, the gateway serves.
    let out = run_with_input(
        herald(&root).args(["put", "URL", "-"]),
        b"postgresql://db/app",
    );
    assert!(out.status.success());
    assert_eq!(
        http(port, "GET", "/environment/URL", b""),
        (200, b"postgresql://db/app".to_vec())
    );
    assert_eq!(http(port, "PUT", "/environment/URL", b"v2").0, 204);
    assert_eq!(http(port, "GET", "/environment/URL", b"").1, b"v2");
    let (status, listing) = http(port, "GET", "/environment", b"");
    assert_eq!(status, 200);
    let listing: serde_json::Value = serde_json::from_slice(&listing).unwrap();
    assert_eq!(listing, serde_json::json!({"BLOB": 256, "URL": 2}));
    assert_eq!(http(port, "DELETE", "/environment/URL", b"").0, 204);
    assert_eq!(http(port, "GET", "/environment/URL", b"").0, 404);
    assert_eq!(http(port, "DELETE", "/environment/URL", b"").0, 404);
}

#[test]
fn get_with_wait_returns_once_published() {
    let root = root("gw_wait");
    let (_gw, port) = gateway(&root);
    let waiter = std::thread::spawn(move || http(port, "GET", "/environment/LATE?wait=20s", b""));
    wait_for("the gateway's watch on the key", || {
        (!watchers_of(zk(), &format!("{root}/environment/LATE")).is_empty()).then_some(())
    });
    assert_eq!(http(port, "POST", "/environment/LATE", b"here").0, 204);
    assert_eq!(waiter.join().unwrap(), (200, b"here".to_vec()));
    let (status, body) = http(port, "GET", "/environment/NEVER?wait=200ms", b"");
    assert_eq!(status, 504, "{}", String::from_utf8_lossy(&body));
}

#[test]
fn bad_requests_are_refused_and_nothing_is_written() {
    let root = root("gw_bad");
    let (gw, port) = gateway(&root);
    // Refused on the declared length alone, before any of the body is read.
    let (status, body) = exchange(port, "POST", "/environment/BIG", 2 * 1024 * 1024, b"");
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&body));
    assert_eq!(
        http(port, "GET", "/environment/BIG", b"").0,
        404,
        "nothing written"
    );
    let (status, body) = http(port, "POST", "/environment/NOT-A-KEY", b"x");
    let body = String::from_utf8_lossy(&body);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("NOT-A-KEY"), "{body}");
    assert_eq!(http(port, "PATCH", "/environment/A", b"x").0, 405);
    assert_eq!(http(port, "GET", "/nowhere", b"").0, 404);
    assert_eq!(http(port, "GET", "/environment/A?wait=soon", b"").0, 400);
    // Values never reach the log.
    assert_eq!(
        http(port, "POST", "/environment/SECRET", b"s3cret-value").0,
        204
    );
    // The whole log: everything written up to the gateway's exit.
    let mut gw = gw;
    gw.signal(libc::SIGTERM);
    block_on(gw.exited());
    let log = gw.stderr();
    assert!(!log.contains("s3cret-value"), "{log}");
}

#[tokio::test]
async fn services_are_listed_with_their_instances() {
    let root = root("gw_services");
    let (_gw, port) = tokio::task::spawn_blocking({
        let root = root.clone();
        move || gateway(&root)
    })
    .await
    .unwrap();
    let s = Scratch::new("gw_services");
    let agent = Daemon::spawn(
        herald(&root)
            .args([
                "announce",
                "--service",
                "pg",
                "--id",
                "db1",
                "--address",
                "10.0.0.5",
            ])
            .args(["--port", "5432", "--label", "role=primary"])
            .args(["--meta", "password=hunter2-secret", "--control-dir"])
            .arg(s.path("control")),
    );
    agent.wait_log("registered path=", 1).await;
    let (status, body) =
        tokio::task::spawn_blocking(move || http(port, "GET", "/services/pg", b""))
            .await
            .unwrap();
    assert_eq!(status, 200);
    let instances: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(instances[0]["id"], "db1");
    assert_eq!(instances[0]["address"], "10.0.0.5");
    assert_eq!(instances[0]["port"], 5432);
    assert_eq!(instances[0]["labels"]["role"], "primary");
    // Metadata (credentials, often) only when asked, and only with a token.
    assert!(
        !String::from_utf8_lossy(&body).contains("hunter2"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert!(instances[0].get("meta").is_none(), "{instances}");
    let (status, body) =
        tokio::task::spawn_blocking(move || http(port, "GET", "/services/pg?metadata=1", b""))
            .await
            .unwrap();
    let body = String::from_utf8_lossy(&body);
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("token") && !body.contains("hunter2"),
        "{body}"
    );
    let (_with_token, token_port) = tokio::task::spawn_blocking({
        let root = root.clone();
        move || gateway_with(&root, &[], &[("HERALD_GATEWAY_TOKEN", TOKEN)])
    })
    .await
    .unwrap();
    let (status, _, body) = tokio::task::spawn_blocking(move || {
        let bearer = format!("Authorization: Bearer {TOKEN}");
        request(
            token_port,
            "GET",
            "/services/pg?metadata=1",
            &[&bearer],
            0,
            b"",
        )
    })
    .await
    .unwrap();
    assert_eq!(status, 200);
    let instances: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(instances[0]["meta"]["password"], "hunter2-secret");
    let (_, body) = tokio::task::spawn_blocking(move || http(port, "GET", "/services", b""))
        .await
        .unwrap();
    let services: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(services, serde_json::json!({"pg": 1}));
}

/// The gateway's resident memory, in KiB.
fn rss_kib(gw: &Daemon) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", gw.pid())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// Opens and at once resets `n` connections (no TIME_WAIT left behind), with a request after
/// every hundred: the gateway accepts in order, so all before it have been accepted when it is
/// answered (and the accept queue never overflows into SYN retries).
fn churn(port: u16, n: usize) {
    use std::os::fd::AsRawFd;
    for i in 0..n {
        if i % 100 == 99 {
            assert_eq!(http(port, "GET", "/live", b"").0, 200);
        }
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the gateway");
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: a valid socket and a linger struct of the size given.
        unsafe {
            libc::setsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            );
        }
    }
    assert_eq!(http(port, "GET", "/live", b"").0, 200);
}

#[test]
fn finished_connections_are_forgotten() {
    let root = root("gw_churn");
    let (gw, port) = gateway(&root);
    churn(port, 2_000);
    let before = rss_kib(&gw);
    churn(port, 20_000);
    let after = rss_kib(&gw);
    eprintln!("resident memory: {before} KiB after 2,000 connections, {after} KiB after 22,000");
    // Keeping each finished connection costs over a KiB: 20,000 of them well over 20 MiB. What
    // is left is allocator noise.
    assert!(
        after < before + 8 * 1024,
        "resident memory grew from {before} KiB to {after} KiB over 20,000 connections"
    );
}

#[test]
fn slow_request_heads_are_cut_off_while_others_are_served() {
    let root = root("gw_slowloris");
    // The default header timeout (10s).
    let (_gw, port) = gateway(&root);
    // Before the connection exists, so before the gateway's timer starts.
    let started = std::time::Instant::now();
    let mut slow = TcpStream::connect(("127.0.0.1", port)).unwrap();
    slow.write_all(b"GET /live HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .unwrap();
    let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // A header line every half second, never the blank line that ends the head.
    let trickle = std::thread::spawn({
        let mut slow = slow.try_clone().unwrap();
        let cut = cut.clone();
        move || {
            while !cut.load(std::sync::atomic::Ordering::SeqCst) {
                if slow.write_all(b"X-Slow: 1\r\n").is_err() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(500));
            }
        }
    });
    // Others are served meanwhile.
    let served = std::thread::spawn({
        let cut = cut.clone();
        move || {
            let mut served = 0;
            while !cut.load(std::sync::atomic::Ordering::SeqCst) {
                assert_eq!(http(port, "GET", "/live", b"").0, 200);
                served += 1;
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            served
        }
    });
    slow.set_read_timeout(Some(std::time::Duration::from_secs(10) + DEADLINE))
        .unwrap();
    let mut got = Vec::new();
    let ended = slow.read_to_end(&mut got);
    cut.store(true, std::sync::atomic::Ordering::SeqCst);
    let waited = started.elapsed();
    assert!(
        match &ended {
            Ok(_) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        },
        "the slow request was not cut off within {waited:?}: {ended:?}"
    );
    assert!(
        got.is_empty() || String::from_utf8_lossy(&got).starts_with("HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    assert!(
        waited >= std::time::Duration::from_secs(10),
        "cut off after {waited:?}, before the 10s header timeout"
    );
    trickle.join().unwrap();
    assert!(served.join().unwrap() > 0, "nothing was served meanwhile");
}

#[test]
fn idle_connections_are_closed_after_the_header_timeout() {
    let root = root("gw_idle");
    let (_gw, port) = gateway_with(&root, &["--header-timeout", "1s"], &[]);
    // Kept alive after a response, then idle.
    let mut kept = TcpStream::connect(("127.0.0.1", port)).unwrap();
    kept.set_read_timeout(Some(DEADLINE)).unwrap();
    kept.write_all(b"GET /live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    assert_eq!(read_head(&mut kept).0, 200);
    // Never a byte sent.
    let mut silent = TcpStream::connect(("127.0.0.1", port)).unwrap();
    silent.set_read_timeout(Some(DEADLINE)).unwrap();
    for (what, stream) in [("kept-alive", &mut kept), ("silent", &mut silent)] {
        let mut rest = Vec::new();
        let ended = stream.read_to_end(&mut rest);
        assert!(
            ended.is_ok()
                || ended
                    .as_ref()
                    .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
            "the {what} connection was not closed: {ended:?}"
        );
    }
}

#[test]
fn connections_past_the_limit_wait_until_one_ends() {
    let root = root("gw_limit");
    let (gw, port) = gateway_with(
        &root,
        &["--max-connections", "3", "--header-timeout", "5m"],
        &[],
    );
    let idle: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    // The fourth is queued, not refused: its request is answered once a slot is free.
    let mut fourth = TcpStream::connect(("127.0.0.1", port)).unwrap();
    fourth
        .write_all(b"GET /live HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    fourth
        .set_read_timeout(Some(std::time::Duration::from_secs(1)))
        .unwrap();
    let mut byte = [0u8; 1];
    let early = fourth.read(&mut byte);
    assert!(
        early.as_ref().is_err_and(|e| matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        )),
        "a fourth connection was served while three were open: {early:?}"
    );
    drop(idle);
    fourth.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut response = Vec::new();
    let _ = fourth.read_to_end(&mut response);
    assert_eq!(split_response(&response).0, 200);
    for _ in 0..5 {
        assert_eq!(http(port, "GET", "/live", b"").0, 200);
    }
    assert!(gw.stderr().contains("max_connections=3"), "{}", gw.stderr());
}

/// Starts an upload of `length` bytes with `Expect: 100-continue`: `Ok(stream)` once the
/// gateway asked for the body (it has reserved room for it), `Err(status)` when it answered at
/// once instead.
fn start_upload(port: u16, key: &str, length: usize) -> Result<TcpStream, (u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let head = format!(
        "POST /environment/{key} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {length}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).unwrap();
    match read_head(&mut stream) {
        (100, _) => Ok(stream),
        (status, _) => {
            let mut body = Vec::new();
            let _ = stream.read_to_end(&mut body);
            Err((status, String::from_utf8_lossy(&body).into_owned()))
        }
    }
}

#[test]
fn stalled_uploads_past_the_budget_get_503_until_they_end() {
    let root = root("gw_budget");
    let (_gw, port) = gateway_with(&root, &["--upload-budget", "2MiB"], &[]);
    const LEN: usize = 1_000_000;
    // Two uploads that send a little and stall hold the whole budget.
    let mut stalled: Vec<TcpStream> = ["A", "B"]
        .iter()
        .map(|key| {
            let mut s = start_upload(port, key, LEN).expect("room for two");
            s.write_all(&[b'x'; 1000]).unwrap();
            s
        })
        .collect();
    let (status, body) = start_upload(port, "C", LEN).map(|_| ()).unwrap_err();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("try again"), "{body}");
    // An upload that ends gives its room back.
    drop(stalled.pop());
    let mut upload = wait_for("room for an upload again", || {
        start_upload(port, "C", LEN).ok()
    });
    upload.write_all(&vec![b'c'; LEN]).unwrap();
    assert_eq!(read_head(&mut upload).0, 204);
    assert_eq!(http(port, "GET", "/environment/C", b"").1.len(), LEN);
    // Small requests are not held up meanwhile.
    assert_eq!(http(port, "POST", "/environment/D", b"d").0, 204);
}

const TOKEN: &str = "gw-test-token-0123456789abcdef";

#[test]
fn a_token_is_required_on_every_route_but_the_probes() {
    let root = root("gw_token");
    let (gw, port) = gateway_with(&root, &[], &[("HERALD_GATEWAY_TOKEN", TOKEN)]);
    let bearer = format!("Authorization: Bearer {TOKEN}");
    for path in ["/live", "/ready"] {
        assert_eq!(http(port, "GET", path, b"").0, 200, "{path}");
    }
    for (method, path, body) in [
        ("GET", "/environment/KEY", &b""[..]),
        ("POST", "/environment/KEY", b"v"),
        ("DELETE", "/environment/KEY", b""),
        ("GET", "/environment", b""),
        ("GET", "/services", b""),
        ("GET", "/services/pg", b""),
        ("GET", "/nowhere", b""),
    ] {
        for headers in [
            &[][..],
            &["Authorization: Bearer wrong-token-0123456789abcdef"],
            &[&format!("Authorization: Basic {TOKEN}")],
            &[&format!("Authorization: Bearer {TOKEN}x")],
        ] {
            let (status, head, _) = request(port, method, path, headers, body.len(), body);
            assert_eq!(status, 401, "{method} {path} {headers:?}");
            assert!(
                head.to_ascii_lowercase()
                    .contains("www-authenticate: bearer"),
                "{head}"
            );
        }
    }
    assert_eq!(
        request(port, "POST", "/environment/KEY", &[&bearer], 1, b"v").0,
        204
    );
    let (status, _, body) = request(port, "GET", "/environment/KEY", &[&bearer], 0, b"");
    assert_eq!((status, body), (200, b"v".to_vec()));
    let mut gw = gw;
    gw.signal(libc::SIGTERM);
    block_on(gw.exited());
    gw.assert_never_logged(&[TOKEN]);
}

#[test]
fn a_token_file_is_read_and_warned_about_when_others_can_read_it() {
    use std::os::unix::fs::PermissionsExt;
    let s = Scratch::new("gw_token_file");
    let file = s.path("token");
    std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let root = root("gw_token_file");
    let (gw, port) = gateway_with(&root, &["--token-file", file.to_str().unwrap()], &[]);
    assert_eq!(http(port, "GET", "/environment", b"").0, 401);
    let bearer = format!("Authorization: Bearer {TOKEN}");
    assert_eq!(
        request(port, "GET", "/environment", &[&bearer], 0, b"").0,
        200
    );
    let log = gw.stderr();
    assert!(
        log.contains("--token-file can be read by group or others") && log.contains("chmod 600"),
        "{log}"
    );
    gw.assert_never_logged(&[TOKEN]);
}

#[test]
fn bad_guards_are_refused_before_serving() {
    let s = Scratch::new("gw_refused");
    let short = s.path("short");
    std::fs::write(&short, "s3cr3t\n").unwrap();
    // Refused before anything is bound: the port is never used.
    let port = 7;
    for (args, env, says) in [
        // Reachable from elsewhere without a token.
        (
            vec!["--listen".to_owned(), format!("0.0.0.0:{port}")],
            vec![],
            vec!["--listen 0.0.0.0", "--token-file"],
        ),
        (
            vec!["--listen".to_owned(), format!("[::]:{port}")],
            vec![],
            vec!["--listen [::]", "--token-file"],
        ),
        (
            vec![
                "--token-file".to_owned(),
                short.to_str().unwrap().to_owned(),
            ],
            vec![],
            vec!["--token-file", "shorter than 16"],
        ),
        (
            vec!["--token-file".to_owned(), "/dev/zero".to_owned()],
            vec![],
            vec!["--token-file /dev/zero", "not a regular file"],
        ),
        (
            vec![],
            vec![("HERALD_GATEWAY_TOKEN", "s3cr3t")],
            vec!["HERALD_GATEWAY_TOKEN", "shorter than 16"],
        ),
        (
            vec!["--upload-budget".to_owned(), "1KiB".to_owned()],
            vec![],
            vec!["--upload-budget", "1MiB"],
        ),
    ] {
        let out = run(herald(&root("gw_refused"))
            .arg("gateway")
            .args(&args)
            .envs(env.iter().copied()));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", describe(&out));
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        for said in says {
            assert!(err.contains(said), "{args:?}: {err}");
        }
        assert!(!err.contains("s3cr3t"), "{err}");
    }
    // With a token, any address.
    let file = s.path("token");
    std::fs::write(&file, TOKEN).unwrap();
    let (mut gw, _) = gateway_on(
        "0.0.0.0:0",
        &root("gw_refused"),
        &["--token-file", file.to_str().unwrap()],
        &[],
    );
    gw.signal(libc::SIGTERM);
    assert!(block_on(gw.exited()).success());
}

#[test]
fn head_answers_like_get_without_a_body() {
    let root = root("gw_head");
    let (_gw, port) = gateway(&root);
    assert_eq!(http(port, "POST", "/environment/KEY", b"value").0, 204);
    for path in ["/environment/KEY", "/environment", "/services", "/live"] {
        let (get, get_head, get_body) = request(port, "GET", path, &[], 0, b"");
        let (head, head_head, head_body) = request(port, "HEAD", path, &[], 0, b"");
        assert_eq!((head, get), (200, 200), "{path}");
        assert!(head_body.is_empty(), "{path}: {head_body:?}");
        let length = format!("content-length: {}", get_body.len());
        assert!(
            get_head.to_ascii_lowercase().contains(&length),
            "{get_head}"
        );
        assert!(
            head_head.to_ascii_lowercase().contains(&length),
            "{head_head}"
        );
    }
    assert_eq!(
        request(port, "HEAD", "/environment/NONE", &[], 0, b"").0,
        404
    );
}

/// A request over the gateway's Unix socket: status and body.
fn over_socket(socket: &std::path::Path, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let stream = std::os::unix::net::UnixStream::connect(socket).expect("connect to the socket");
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let (status, _, body) = request_on(stream, method, path, &[], body.len(), body);
    (status, body)
}

fn mode_of(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

/// The gateway on `unix:PATH`, started with umask 000 (nothing the umask would have hidden).
fn socket_gateway(root: &str, socket: &std::path::Path) -> Daemon {
    use std::os::unix::process::CommandExt;
    let mut command = herald(root);
    command
        .arg("gateway")
        .arg("--listen")
        .arg(format!("unix:{}", socket.display()));
    // SAFETY: umask is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            libc::umask(0);
            Ok(())
        });
    }
    Daemon::spawn(&mut command)
}

#[test]
fn a_unix_socket_serves_its_own_user_only() {
    let root = root("gw_unix");
    let s = Scratch::new("gw_unix");
    let dir = s.path("fresh/gw");
    let socket = dir.join("gateway.sock");
    let mut gw = socket_gateway(&root, &socket);
    wait_for("the gateway's socket to be ready", || {
        if let Ok(Some(status)) = gw.child.try_wait() {
            panic!("the gateway exited ({status}): {}", gw.stderr());
        }
        std::os::unix::net::UnixStream::connect(&socket)
            .ok()
            .and_then(|_| (over_socket(&socket, "GET", "/ready", b"").0 == 200).then_some(()))
    });
    assert_eq!(mode_of(&dir), 0o700, "the socket's directory");
    assert_eq!(mode_of(&socket), 0o600, "the socket");
    // The socket is the credential: no token needed.
    assert_eq!(
        over_socket(&socket, "POST", "/environment/K", b"mine").0,
        204
    );
    assert_eq!(
        over_socket(&socket, "GET", "/environment/K", b""),
        (200, b"mine".to_vec())
    );
    assert!(!gw.stderr().contains("no token"), "{}", gw.stderr());
    // SAFETY: plain syscall.
    if unsafe { libc::geteuid() } == 0 {
        // Opened up by hand, the socket still serves no other user (SO_PEERCRED).
        use std::os::unix::fs::PermissionsExt;
        for dir in [s.path("."), s.path("fresh"), dir.clone()] {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711)).unwrap();
        }
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
        let out = ask_as_nobody(
            &socket,
            "GET /environment/K HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(said.starts_with("HTTP/1.1 403"), "{}", describe(&out));
        assert!(!said.contains("mine"), "{said}");
        assert!(
            gw.stderr()
                .contains("refusing a connection from another user"),
            "{}",
            gw.stderr()
        );
    } else {
        eprintln!("not root: the other-user half of this test needs setpriv as root; skipped");
    }
    gw.signal(libc::SIGTERM);
    assert!(block_on(gw.exited()).success());
    assert!(!socket.exists(), "the socket is removed at exit");
}

#[test]
fn a_socket_directory_others_can_write_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let s = Scratch::new("gw_unix_open");
    let open = s.path("open");
    std::fs::create_dir_all(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = run(herald(&root("gw_unix_open"))
        .arg("gateway")
        .arg("--listen")
        .arg(format!("unix:{}", open.join("gateway.sock").display())));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("--listen unix:") && err.contains("writable by group or others (mode 777)"),
        "{err}"
    );
    assert!(!open.join("gateway.sock").exists());
}

#[test]
fn slow_bodies_and_unread_responses_are_cut_off() {
    let root = root("gw_body_timeout");
    let (_gw, port) = gateway_with(
        &root,
        &["--body-timeout", "1s", "--max-connections", "1"],
        &[],
    );
    // A body that stops arriving: 408, nothing written.
    let mut slow = TcpStream::connect(("127.0.0.1", port)).unwrap();
    slow.set_read_timeout(Some(DEADLINE)).unwrap();
    slow.write_all(
        b"POST /environment/SLOW HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 10\r\n\r\nabc",
    )
    .unwrap();
    let mut response = Vec::new();
    let _ = slow.read_to_end(&mut response);
    let (status, _, body) = split_response(&response);
    let body = String::from_utf8_lossy(body);
    assert_eq!(status, 408, "{body}");
    assert!(body.contains("within 1s"), "{body}");
    assert_eq!(http(port, "GET", "/environment/SLOW", b"").0, 404);
    // A client that asks for megabytes and reads none of them holds the only connection slot
    // until its responses stall for the timeout.
    let big = vec![b'b'; 1_000_000];
    assert_eq!(http(port, "POST", "/environment/BIG", &big).0, 204);
    let mut greedy = TcpStream::connect(("127.0.0.1", port)).unwrap();
    for _ in 0..40 {
        greedy
            .write_all(b"GET /environment/BIG HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .unwrap();
    }
    assert_eq!(http(port, "GET", "/live", b"").0, 200);
    greedy.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut taken = 0;
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = greedy.read(&mut buf) {
        if n == 0 {
            break;
        }
        taken += n;
    }
    assert!(
        taken < 40 * 1_000_000,
        "all {taken} bytes were sent: the connection was not cut off"
    );
}

/// The `Age` header of a response head, if any.
fn age_of(head: &str) -> Option<u64> {
    head.lines()
        .find_map(|l| l.strip_prefix("age: ").or_else(|| l.strip_prefix("Age: ")))
        .and_then(|v| v.trim().parse().ok())
}

/// A gateway reaching the test ZooKeeper through `proxy`, keeping its last known values in
/// `cache`, ready to serve.
fn gateway_behind(
    proxy: &Proxy,
    root: &str,
    cache: &std::path::Path,
    session_timeout: &str,
) -> (Daemon, u16) {
    let mut command = herald_at(&proxy.connect_string(), root);
    command
        .env("HERALD_CACHE", cache)
        .env("HERALD_SESSION_TIMEOUT", session_timeout)
        .env("HERALD_LOG", "herald=debug")
        .args(["gateway", "--listen", "127.0.0.1:0"]);
    let mut daemon = Daemon::spawn(&mut command);
    let port = wait_for("the gateway to listen", || {
        if let Ok(Some(status)) = daemon.child.try_wait() {
            panic!("the gateway exited ({status}): {}", daemon.stderr());
        }
        listening_port(&daemon.stderr(), "serving HTTP")
    });
    (daemon, port)
}

/// A value read once is served from memory: with every request to ZooKeeper held back, GETs
/// of it are still answered (fresh, no `Age`), while a key never read waits for ZooKeeper.
/// Writes are seen: through the gateway at once, through another client once its watch event
/// arrives, and at once with `Cache-Control: no-cache`.
#[test]
fn values_are_served_from_memory_and_every_write_is_seen() {
    let root = root("gateway_memory");
    let scratch = Scratch::new("gateway_memory");
    let proxy = Proxy::start(zk().port);
    // Held-back pings make the client give up on the connection after 2/3 of the session
    // timeout: long enough here for every request while held.
    let (gateway, port) = gateway_behind(&proxy, &root, &scratch.path("cache"), "30s");
    wait_for("the gateway to be ready", || {
        (http(port, "GET", "/ready", b"").0 == 200).then_some(())
    });
    let put = |value: &str| {
        let out = run(herald(&root).args(["put", "K", value]));
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    };
    put("v1");
    // The first GET reads ZooKeeper and keeps the value (unless the put's own event arrives
    // during that read: then the next one does).
    wait_until("K to be served from memory", || {
        let (status, head, body) = request(port, "GET", "/environment/K", &[], 0, b"");
        match (status, body.as_slice()) {
            (200, b"v1") if head.contains("x-herald-source: memory") => Ok(()),
            (200, b"v1") => Err(head),
            _ => panic!("{status} {head}"),
        }
    });

    proxy.hold();
    for _ in 0..20 {
        let (status, head, body) = request(port, "GET", "/environment/K", &[], 0, b"");
        assert_eq!(
            (status, body.as_slice()),
            (200, &b"v1"[..]),
            "{head}\n{}",
            gateway.stderr()
        );
        assert_eq!(age_of(&head), None, "{head}\n{}", gateway.stderr());
    }
    // A key not held needs ZooKeeper: it is not answered while requests are held back.
    let mut probe = TcpStream::connect(("127.0.0.1", port)).unwrap();
    probe
        .set_read_timeout(Some(std::time::Duration::from_millis(300)))
        .unwrap();
    probe
        .write_all(b"GET /environment/OTHER HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut byte = [0u8; 1];
    assert!(
        probe.read(&mut byte).is_err(),
        "a key never read was answered without ZooKeeper"
    );
    proxy.release();
    probe.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut answer = Vec::new();
    let _ = probe.read_to_end(&mut answer);
    assert_eq!(split_response(&answer).0, 404);

    // Another writer: seen once the event arrives.
    put("v2");
    wait_until("the gateway to serve v2", || {
        match http(port, "GET", "/environment/K", b"") {
            (200, body) if body == b"v2" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    // With no-cache: at once, every time.
    for n in 3..13 {
        let value = format!("v{n}");
        put(&value);
        let (status, _, body) = request(
            port,
            "GET",
            "/environment/K",
            &["Cache-Control: no-cache"],
            0,
            b"",
        );
        assert_eq!((status, body), (200, value.into_bytes()));
    }
    // Through the gateway: its writer's next GET sees it at once.
    for n in 0..10 {
        let value = format!("posted {n}");
        assert_eq!(
            http(port, "POST", "/environment/K", value.as_bytes()).0,
            204
        );
        assert_eq!(
            http(port, "GET", "/environment/K", b""),
            (200, value.into_bytes())
        );
    }
    // A deletion is seen too.
    let out = run(herald(&root).args(["delete", "K"]));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    wait_until("the gateway to answer 404", || {
        match http(port, "GET", "/environment/K", b"") {
            (404, _) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
}

/// ZooKeeper unreachable: a value held in memory, then (after a restart of the gateway) the
/// last known value on disk, is answered with its `Age`; a key with none and every write get
/// 503; past --max-stale, 503 too. When ZooKeeper is back, fresh answers without `Age`.
#[test]
fn while_zookeeper_cannot_be_reached_gets_are_answered_with_their_age() {
    let root = root("gateway_offline");
    let scratch = Scratch::new("gateway_offline");
    let cache = scratch.path("cache");
    let proxy = Proxy::start(zk().port);
    let out = run(herald(&root).args(["put", "DATABASE_URL", "postgres://db/app"]));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let (gateway, port) = gateway_behind(&proxy, &root, &cache, "4s");
    wait_for("the gateway to be ready", || {
        (http(port, "GET", "/ready", b"").0 == 200).then_some(())
    });
    let (status, head, body) = request(port, "GET", "/environment/DATABASE_URL", &[], 0, b"");
    assert_eq!((status, body.as_slice()), (200, &b"postgres://db/app"[..]));
    assert!(head.contains("x-herald-source: zookeeper"), "{head}");

    proxy.partition();
    let head = wait_until("an answer with an Age", || {
        let (status, head, body) = request(port, "GET", "/environment/DATABASE_URL", &[], 0, b"");
        match (status, age_of(&head)) {
            (200, Some(_)) if body == b"postgres://db/app" => Ok(head),
            _ => Err(head),
        }
    });
    assert!(age_of(&head).is_some_and(|age| age < 60), "{head}");
    assert_eq!(http(port, "GET", "/ready", b"").0, 503);
    let (status, body) = http(port, "GET", "/environment/NEVER_READ", b"");
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("no last known value of NEVER_READ"));
    assert_eq!(http(port, "POST", "/environment/X", b"x").0, 503);

    // Started while ZooKeeper cannot be reached: the disk answers.
    let first_log = gateway.stderr();
    drop(gateway);
    let (gateway, port) = gateway_behind(&proxy, &root, &cache, "4s");
    let (status, head, body) = request(port, "GET", "/environment/DATABASE_URL", &[], 0, b"");
    assert_eq!(
        (status, body.as_slice()),
        (200, &b"postgres://db/app"[..]),
        "{head}\nfirst gateway:\n{first_log}\nsecond:\n{}",
        gateway.stderr()
    );
    assert_eq!(
        (status, body.as_slice()),
        (200, &b"postgres://db/app"[..]),
        "{head}"
    );
    assert!(age_of(&head).is_some(), "{head}");
    assert!(head.contains("x-herald-source: cache"), "{head}");
    assert_eq!(http(port, "GET", "/ready", b"").0, 503);
    assert_eq!(
        http(port, "DELETE", "/environment/DATABASE_URL", b"").0,
        503
    );
    // Older than --max-stale (24h by default): refused.
    let kept = std::fs::read_dir(&cache)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
        .join("DATABASE_URL");
    std::fs::File::options()
        .write(true)
        .open(&kept)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(2 * 86400))
        .unwrap();
    let (status, body) = http(port, "GET", "/environment/DATABASE_URL", b"");
    assert_eq!(status, 503);
    assert!(String::from_utf8_lossy(&body).contains("--max-stale"));

    proxy.heal();
    wait_for("the gateway to be ready", || {
        (http(port, "GET", "/ready", b"").0 == 200).then_some(())
    });
    let (status, head, body) = request(port, "GET", "/environment/DATABASE_URL", &[], 0, b"");
    assert_eq!(
        (status, body.as_slice()),
        (200, &b"postgres://db/app"[..]),
        "{head}"
    );
    assert_eq!(age_of(&head), None, "{head}");
}
