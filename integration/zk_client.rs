//! The patched zookeeper-client (vendor/zookeeper-client, see its PATCHES.md) against a real
//! ZooKeeper: a persistent recursive watch still fires after a server restart, a session
//! outlives a server outage that is longer than its client-side deadline used to be, and a
//! session is resumed from a stored id and password, and more watches than one SetWatches carries
//! are re-sent without dropping the connection.

// The restartable server fixture sits next to the shared one; only this binary compiles it.
#[path = "support/standalone.rs"]
mod standalone;
mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use standalone::Standalone;
use support::{DEADLINE, root, zk};
use tokio::time::Instant;
use zookeeper_client::{
    Acls, AddWatchMode, Client, CreateMode, CreateOptions, EventType, PersistentWatcher,
    SessionInfo, SessionState, WatchedEvent,
};

const SESSION_TIMEOUT: Duration = Duration::from_secs(10);

fn persistent() -> CreateOptions<'static> {
    CreateMode::Persistent.with_acls(Acls::anyone_all())
}

fn ephemeral() -> CreateOptions<'static> {
    CreateMode::Ephemeral.with_acls(Acls::anyone_all())
}

/// A client with a 10 s session; fails the test if none within [`DEADLINE`].
async fn connect(connect_string: &str) -> Client {
    let connecting = Client::connector()
        .with_session_timeout(SESSION_TIMEOUT)
        .connect(connect_string);
    match tokio::time::timeout(DEADLINE, connecting).await {
        Ok(Ok(client)) => client,
        Ok(Err(e)) => panic!("connect to {connect_string}: {e}"),
        Err(_) => panic!("no session with {connect_string} within {DEADLINE:?}"),
    }
}

/// The session states a client goes through, each with when it was entered (counted from when
/// the record started), recorded as they happen.
struct States {
    log: Arc<Mutex<Vec<(Duration, SessionState)>>>,
    since: Instant,
    /// How many entries of `log` earlier waits consumed.
    seen: usize,
    task: tokio::task::JoinHandle<()>,
}

impl States {
    fn record(client: &Client) -> States {
        let log = Arc::new(Mutex::new(Vec::new()));
        let since = Instant::now();
        let mut watcher = client.state_watcher();
        let sink = log.clone();
        let task = tokio::spawn(async move {
            loop {
                let state = watcher.changed().await;
                sink.lock().unwrap().push((since.elapsed(), state));
                if state.is_terminated() {
                    return;
                }
            }
        });
        States {
            log,
            since,
            seen: 0,
            task,
        }
    }

    /// Waits until the session enters `want` (after what earlier waits saw) and returns when;
    /// fails on a terminal state or after `within`.
    async fn expect(&mut self, want: SessionState, within: Duration) -> Duration {
        let deadline = Instant::now() + within;
        loop {
            {
                let log = self.log.lock().unwrap();
                let history = log
                    .iter()
                    .map(|(at, state)| format!("{state} at +{at:.1?}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                for (i, &(at, state)) in log.iter().enumerate().skip(self.seen) {
                    if state == want {
                        self.seen = i + 1;
                        return at;
                    }
                    assert!(
                        !state.is_terminated(),
                        "expected session state {want}; got {state} at +{at:.1?} (states: {history})"
                    );
                }
                assert!(
                    Instant::now() < deadline,
                    "expected session state {want} within {within:?}; states until +{:.1?}: {history}",
                    self.since.elapsed()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for States {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits for a `kind` event on `path`; session events on the way are collected for the
/// failure message.
async fn expect_node_event(
    watcher: &mut PersistentWatcher,
    kind: EventType,
    path: &str,
    within: Duration,
) {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, watcher.changed()).await {
            Ok(event) if event.event_type == kind && event.path == path => return,
            Ok(event) => seen.push(format!(
                "{:?} {:?} {}",
                event.event_type, event.session_state, event.path
            )),
            Err(_) => panic!("expected {kind:?} {path} within {within:?}; got only {seen:?}"),
        }
    }
}

/// The next session event of `watcher` entering `state` (node events on the way are passed
/// over); fails after [`DEADLINE`].
async fn session_event(watcher: &mut PersistentWatcher, state: SessionState) -> WatchedEvent {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let event = tokio::time::timeout_at(deadline, watcher.changed())
            .await
            .unwrap_or_else(|_| panic!("no {state} event within {DEADLINE:?}"));
        if event.event_type == EventType::Session && event.session_state == state {
            return event;
        }
    }
}

/// The server holds `path` as an ephemeral of `client`'s session (a read through `reader`).
async fn assert_owned(reader: &Client, path: &str, client: &Client) {
    let stat = tokio::time::timeout(DEADLINE, reader.check_stat(path))
        .await
        .unwrap_or_else(|_| panic!("no answer to a stat of {path} within {DEADLINE:?}"))
        .unwrap_or_else(|e| panic!("stat {path}: {e}"));
    let owner = stat.map(|stat| stat.ephemeral_owner);
    assert_eq!(
        owner,
        Some(client.session_id().0),
        "ephemeral owner of {path}: expected session {}, got {owner:x?}",
        client.session_id()
    );
}

/// The client's connection is on its original session: an ephemeral it creates now is owned
/// by that session id.
async fn assert_same_session(client: &Client, path: &str) {
    let created = tokio::time::timeout(DEADLINE, client.create(path, b"", &ephemeral())).await;
    match created {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => panic!("create {path} after the reconnect: {e}"),
        Err(_) => panic!("create {path} after the reconnect: no answer within {DEADLINE:?}"),
    }
    assert_owned(client, path, client).await;
}

/// Persistent watches are re-registered with SetWatches2 when the client reconnects: a
/// recursive watch fires for a change made after the server restarted.
#[tokio::test]
async fn recursive_watch_fires_after_a_server_restart() {
    let server = Standalone::start("recursive_watch").await;
    let client = connect(&server.connect_string()).await;
    client
        .create("/t", b"", &persistent())
        .await
        .expect("create /t");
    let mut watcher = client
        .watch("/t", AddWatchMode::PersistentRecursive)
        .await
        .expect("a recursive watch on /t");
    client.create("/t/a", b"", &persistent()).await.unwrap();
    expect_node_event(
        &mut watcher,
        EventType::NodeCreated,
        "/t/a",
        Duration::from_secs(5),
    )
    .await;

    let mut states = States::record(&client);
    server.stop(libc::SIGTERM).await;
    states.expect(SessionState::Disconnected, DEADLINE).await;
    server.restart().await;
    states.expect(SessionState::SyncConnected, DEADLINE).await;
    assert_same_session(&client, "/owner").await;

    let other = connect(&server.connect_string()).await;
    other.create("/t/b", b"", &persistent()).await.unwrap();
    expect_node_event(
        &mut watcher,
        EventType::NodeCreated,
        "/t/b",
        Duration::from_secs(5),
    )
    .await;
}

/// An outage of the only server for `outage`: the server restores the session (with a fresh
/// timeout) when it serves again, so the client must get it back with its ephemeral.
async fn session_survives_outage(name: &str, outage: Duration) {
    let server = Standalone::start(name).await;
    let client = connect(&server.connect_string()).await;
    assert_eq!(
        client.session_timeout(),
        SESSION_TIMEOUT,
        "negotiated session timeout"
    );
    client
        .create("/e", b"", &ephemeral())
        .await
        .expect("create /e");
    // Nothing from the server for 1.4 s when it goes away (pings go every 1.5 s): zookeeper-client
    // 0.11.2 then gives up at 7/5 of the session timeout from its last read, about +12.6 s.
    tokio::time::sleep(Duration::from_millis(1400)).await;

    // Times from here on count from the stop of the server.
    let mut states = States::record(&client);
    server.stop(libc::SIGKILL).await;
    states.expect(SessionState::Disconnected, DEADLINE).await;
    // The length of the outage is the test input.
    tokio::time::sleep_until(states.since + outage).await;
    let restarted = states.since.elapsed();
    server.restart().await;
    let serving = states.since.elapsed();
    let back = states.expect(SessionState::SyncConnected, DEADLINE).await;
    eprintln!(
        "{name}: restarted at +{restarted:.1?}, serving at +{serving:.1?}, \
         SyncConnected at +{back:.1?}"
    );
    assert!(
        back >= restarted,
        "SyncConnected at +{back:.1?}, before the server was started again at +{restarted:.1?}"
    );
    assert_owned(&client, "/e", &client).await;
    assert_same_session(&client, "/after").await;
}

#[tokio::test]
async fn session_survives_an_8s_outage() {
    session_survives_outage("outage_8s", Duration::from_secs(8)).await;
}

#[tokio::test]
async fn session_survives_a_15s_outage() {
    session_survives_outage("outage_15s", Duration::from_secs(15)).await;
}

/// A detached session is resumed from its id and password alone (as another process would,
/// having stored them): same session, its ephemeral still its own.
#[tokio::test]
async fn session_is_resumed_from_id_and_password() {
    let dir = root("zk_client_resume");
    let server = zk().connect_string();
    let bystander = connect(&server).await;
    bystander.mkdir(&dir, &persistent()).await.unwrap();
    let node = format!("{dir}/e");

    let first = Client::connector()
        .with_detached()
        .with_session_timeout(SESSION_TIMEOUT)
        .connect(&server)
        .await
        .expect("a detached client");
    first.create(&node, b"", &ephemeral()).await.unwrap();
    let id = first.session_id();
    let password = first.session().password().to_vec();
    drop(first);

    let resuming = Client::connector()
        .with_session(SessionInfo::from_parts(id, password))
        .with_session_timeout(SESSION_TIMEOUT)
        .connect(&server);
    let resumed = match tokio::time::timeout(DEADLINE, resuming).await {
        Ok(Ok(client)) => client,
        Ok(Err(e)) => panic!("resume session {id}: {e}"),
        Err(_) => panic!("resume session {id}: no answer within {DEADLINE:?}"),
    };
    assert_eq!(resumed.session_id(), id, "session id after resuming");
    assert_owned(&bystander, &node, &resumed).await;
    assert_same_session(&resumed, &format!("{dir}/after")).await;
}

/// Requests in flight when the server dies fail with `ConnectionLoss` (which callers retry),
/// never with the I/O error that broke the connection (0.11.2 passed a reset on as
/// `Error::Custom("Connection reset by peer")`).
#[tokio::test]
async fn requests_in_flight_when_the_server_dies_fail_with_connection_loss() {
    let server = Standalone::start("in_flight").await;
    let client = connect(&server.connect_string()).await;
    let path = "/in-flight".to_owned();
    // A large node keeps replies in flight, and requests queued on the server, at any moment.
    client
        .create(&path, &vec![7u8; 512 * 1024], &persistent())
        .await
        .expect("create the node");
    let readers: Vec<_> = (0..16)
        .map(|_| {
            let client = client.clone();
            let path = path.clone();
            tokio::spawn(async move {
                loop {
                    if let Err(err) = client.get_data(&path).await {
                        return err;
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await; // let the readers get going
    server.stop(libc::SIGKILL).await;
    for reader in readers {
        let err = tokio::time::timeout(DEADLINE, reader)
            .await
            .expect("every reader's request fails once the server is gone")
            .expect("the reader task");
        assert_eq!(
            err,
            zookeeper_client::Error::ConnectionLoss,
            "a request in flight when the connection broke"
        );
    }
}

/// `Client::server` names the server the session is on: with a dead address first in the
/// connect string, the live one; the same after the server restarts and the session reconnects.
#[tokio::test]
async fn the_client_names_the_server_its_session_is_on() {
    let server = Standalone::start("server_name").await;
    let dead = format!("127.0.0.1:{}", support::free_port());
    let client = connect(&format!("{dead},{}", server.connect_string())).await;
    let live = format!("tcp://{}", server.connect_string());
    assert_eq!(client.server().as_deref(), Some(live.as_str()));
    let chrooted = client.clone().chroot("/").unwrap_or_else(|c| c);
    assert_eq!(chrooted.server().as_deref(), Some(live.as_str()));

    let mut states = States::record(&client);
    server.stop(libc::SIGTERM).await;
    states.expect(SessionState::Disconnected, DEADLINE).await;
    server.restart().await;
    states.expect(SessionState::SyncConnected, DEADLINE).await;
    assert_eq!(client.server().as_deref(), Some(live.as_str()));
}

/// A session event carries the last zxid the session had seen: a `Disconnected` says up to
/// which transaction every watch notification was delivered, so what a persistent watch may
/// have missed while disconnected (ZOOKEEPER-4698) is what changed after it.
#[tokio::test]
async fn a_disconnection_carries_the_last_zxid_the_session_saw() {
    let server = Standalone::start("disconnect_zxid").await;
    let client = connect(&server.connect_string()).await;
    let other = connect(&server.connect_string()).await;
    client.create("/t", b"", &persistent()).await.unwrap();
    let mut watcher = client
        .watch("/t", AddWatchMode::PersistentRecursive)
        .await
        .unwrap();
    // The last reply this session gets before the server stops: its zxid is that create's.
    let (mine, _) = client.create("/t/a", b"", &persistent()).await.unwrap();
    // A later change by another session is notified, but no reply to this one says so.
    let (theirs, _) = other.create("/t/b", b"", &persistent()).await.unwrap();
    assert!(theirs.czxid > mine.czxid);
    expect_node_event(
        &mut watcher,
        EventType::NodeCreated,
        "/t/b",
        Duration::from_secs(5),
    )
    .await;

    server.stop(libc::SIGTERM).await;
    let disconnected = session_event(&mut watcher, SessionState::Disconnected).await;
    assert_eq!(disconnected.event_type, EventType::Session);
    assert_eq!(
        disconnected.zxid, mine.czxid,
        "the zxid of the last reply (the create of /t/a), not of a notification"
    );

    server.restart().await;
    let connected = session_event(&mut watcher, SessionState::SyncConnected).await;
    assert!(connected.zxid >= mine.czxid, "{}", connected.zxid);
}

/// Watches re-sent after a reconnect in more than one SetWatches (over 128 KiB of paths: here
/// 4,000 exist watches on 40-byte paths) are all answered: the session stays connected and a
/// watch of the second batch still fires. Before, the second batch's reply was taken for a
/// reply to nothing and the connection was dropped, on every reconnect again: a host agent
/// with 4,000 registrations never came back after a leader election.
#[tokio::test]
async fn watches_resent_in_several_batches_keep_the_connection() {
    let server = Standalone::start("many_watches").await;
    let client = connect(&server.connect_string()).await;
    let mut watchers = Vec::new();
    for i in 0..4000 {
        let path = format!("/watched/instance-{i:021}");
        let (stat, watcher) = client.check_and_watch_stat(&path).await.unwrap();
        assert!(stat.is_none());
        watchers.push(watcher);
    }
    let mut states = States::record(&client);
    server.stop(libc::SIGTERM).await;
    states.expect(SessionState::Disconnected, DEADLINE).await;
    server.restart().await;
    states.expect(SessionState::SyncConnected, DEADLINE).await;

    let other = connect(&server.connect_string()).await;
    other.create("/watched", b"", &persistent()).await.unwrap();
    let last = format!("/watched/instance-{:021}", 3999);
    other.create(&last, b"", &persistent()).await.unwrap();
    let event = tokio::time::timeout(DEADLINE, watchers.pop().unwrap().changed())
        .await
        .expect("the watch of the last path (second batch) fires");
    assert_eq!(event.event_type, EventType::NodeCreated);
    assert_eq!(event.path, last);
    assert_same_session(&client, "/owner").await;
    let history = states.log.lock().unwrap().len();
    assert_eq!(
        history,
        2,
        "one disconnection and one reconnection, no more: {:?}",
        states.log.lock().unwrap()
    );
}
