//! The session layer against a real ZooKeeper: a forced session expiry is survived, both by
//! the library's `Session` and by a `herald resolve --wait` process.

mod support;

use std::process::Stdio;
use std::time::Duration;

use herald::layout::{EnvKey, Layout};
use herald::telemetry::Telemetry;
use herald::values::Values;
use herald::zk::{Session, ZkConfig};
use support::*;
use tokio_util::sync::CancellationToken;
use zookeeper_client as zkc;

/// Settings for a session to `connect` (the test server, or a proxy in front of it).
fn config(connect: String, session_timeout: Duration) -> ZkConfig {
    let mut cfg = ZkConfig::new(connect.parse().unwrap());
    cfg.session_timeout = session_timeout;
    cfg
}

#[tokio::test]
async fn session_is_rebuilt_after_expiry_and_announces_the_new_generation() {
    let proxy = Proxy::start(zk().port);
    let session = Session::open(
        config(proxy.connect_string(), Duration::from_secs(1)),
        &Telemetry::new("test"),
        CancellationToken::new(),
    )
    .await
    .expect("open a session");
    let first = session.live();
    assert_eq!(first.generation, 1);
    let updates = session.subscribe();

    // An ephemeral node of the session tells a bystander when the server expires it.
    let marker = format!("{}/marker", root("session_rebuilt"));
    let bystander = client().await;
    let dir = zkc::CreateMode::Persistent.with_acls(zkc::Acls::anyone_all());
    bystander
        .mkdir(&root("session_rebuilt"), &dir)
        .await
        .unwrap();
    let eph = zkc::CreateMode::Ephemeral.with_acls(zkc::Acls::anyone_all());
    first
        .client
        .create(&marker, b"", &eph)
        .await
        .expect("create the marker");
    let (_, _, gone) = bystander.get_and_watch_data(&marker).await.unwrap();

    // Cut the network past the session timeout; heal once the server has expired the session.
    proxy.partition();
    let event = tokio::time::timeout(DEADLINE, gone.changed())
        .await
        .expect("the server expires the session");
    assert_eq!(event.event_type, zkc::EventType::NodeDeleted);
    proxy.heal();

    let renewed = tokio::time::timeout(DEADLINE, session.renewed(first.generation))
        .await
        .expect("a new session within the deadline")
        .expect("the session layer rebuilds by itself");
    assert_eq!(renewed.generation, 2);
    assert_ne!(renewed.client.session_id(), first.client.session_id());
    assert!(
        updates.has_changed().unwrap_or(false),
        "subscribers are told of the new session"
    );

    // The new client works: write and read back through it.
    let values = Values::new(
        Layout::new(None, &root("session_rebuilt")).unwrap(),
        herald::acl::Policy::open(),
    );
    let key: EnvKey = "AFTER_EXPIRY".parse().unwrap();
    values
        .put(&renewed.client, &key, b"ok")
        .await
        .expect("write after expiry");
    assert_eq!(
        values.get(&renewed.client, &key).await.unwrap(),
        Some(b"ok".to_vec())
    );
    session.close().await;
}

#[tokio::test]
async fn closing_a_session_ends_it_on_the_server_at_once() {
    let session = Session::open(
        config(zk().connect_string(), Duration::from_secs(30)),
        &Telemetry::new("test"),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let id = format!("{:#x}", session.live().client.session_id().0);
    let listed = |id: &str| zk().four_letter("cons").contains(&format!("sid={id},"));
    assert!(listed(&id), "the open session is listed by cons");
    session.close().await;
    // Well before the 30 s session timeout (DEADLINE is 20 s): the server ended it on close.
    wait_for("the server to drop the closed session", || {
        (!listed(&id)).then_some(())
    });
}

#[test]
fn resolve_wait_survives_session_expiry() {
    let root = root("wait_expiry");
    let path = format!("{root}/environment/AFTER_EXPIRY");
    let waiter = herald(&root)
        .args([
            "--session-timeout",
            "1s",
            "resolve",
            "--wait",
            "AFTER_EXPIRY",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = waiter.id() as i32;
    let first = wait_for("the waiter's watch", || watchers_of(zk(), &path).pop());

    // Freeze the process past its session timeout: the server expires the session and drops
    // its watch.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    wait_for("the server to expire the frozen session", || {
        (!watchers_of(zk(), &path).contains(&first)).then_some(())
    });
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let second = wait_for("a watch from a new session", || {
        watchers_of(zk(), &path).into_iter().find(|s| *s != first)
    });
    assert_ne!(first, second);

    let out = run(herald(&root).args(["put", "AFTER_EXPIRY", "still here"]));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let out = wait_output(waiter, DEADLINE);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(out.stdout, b"still here");
}

#[tokio::test]
async fn a_short_partition_keeps_the_same_session() {
    let proxy = Proxy::start(zk().port);
    let session = Session::open(
        config(proxy.connect_string(), Duration::from_secs(4)),
        &Telemetry::new("test"),
        CancellationToken::new(),
    )
    .await
    .expect("open a session");
    let first = session.live();
    let mut states = first.client.state_watcher();

    proxy.partition();
    tokio::time::timeout(DEADLINE, async {
        while states.changed().await != zkc::SessionState::Disconnected {}
    })
    .await
    .expect("the client notices the partition");
    proxy.heal();
    tokio::time::timeout(DEADLINE, async {
        while states.changed().await != zkc::SessionState::SyncConnected {}
    })
    .await
    .expect("the client reconnects within its session");

    let now = session.live();
    assert_eq!(now.generation, 1, "no new session for a reconnect");
    assert_eq!(now.client.session_id(), first.client.session_id());
    now.client
        .list_children("/")
        .await
        .expect("the session still works");
    session.close().await;
}
