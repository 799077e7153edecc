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
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the gateway");
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP response");
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    (status, response[split + 4..].to_vec())
}

/// A gateway on a free port, ready to serve.
fn gateway(root: &str) -> (Daemon, u16) {
    let port = free_port();
    let daemon = Daemon::spawn(
        herald(root)
            .arg("gateway")
            .args(["--listen", &format!("127.0.0.1:{port}")]),
    );
    wait_for("the gateway to be ready", || {
        TcpStream::connect(("127.0.0.1", port))
            .ok()
            .and_then(|_| (http(port, "GET", "/ready", b"").0 == 200).then_some(()))
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
            .args(["--port", "5432", "--label", "role=primary", "--control-dir"])
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
    let (_, body) = tokio::task::spawn_blocking(move || http(port, "GET", "/services", b""))
        .await
        .unwrap();
    let services: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(services, serde_json::json!({"pg": 1}));
}
