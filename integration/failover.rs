//! Registration across ZooKeeper faults on a real 3-server ensemble: the leader is killed again
//! and again, the session moves between servers, and the instance node must never disappear.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::*;
use zookeeper_client as zkc;

#[tokio::test]
async fn killing_the_leader_repeatedly_never_deletes_the_instance() {
    let ensemble = Ensemble::start("failover");
    let connect = ensemble.connect_string();
    let path = "/it/failover/services/pg/db1";
    let s = Scratch::new("failover");
    let mut command = herald("/it/failover");
    command
        .env("HERALD_ZK", &connect)
        .args([
            "announce",
            "--service",
            "pg",
            "--id",
            "db1",
            "--address",
            "127.0.0.1",
        ])
        .args(["--port", "5432", "--control-dir"])
        .arg(s.path("control"));
    let mut agent = Daemon::spawn(&mut command);
    let reconnects = |agent: &Daemon| agent.count("reconnected to ZooKeeper");

    let watcher = zkc::Client::connector()
        .with_session_timeout(Duration::from_secs(20))
        .connect(&connect)
        .await
        .expect("connect the watching client to the ensemble");
    let first = tokio::time::timeout(DEADLINE, async {
        loop {
            let (stat, w) = watcher.check_and_watch_stat(path).await.unwrap();
            if let Some(stat) = stat {
                return stat;
            }
            w.changed().await;
        }
    })
    .await
    .expect("the instance is registered");

    // A watch on the node, re-armed after every event, records each event it sees.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorder = tokio::spawn({
        let watcher = watcher.clone();
        let seen = seen.clone();
        async move {
            loop {
                match watcher.check_and_watch_stat(path).await {
                    Ok((_, w)) => {
                        let event = w.changed().await;
                        seen.lock().unwrap().push(event.event_type);
                    }
                    // Reconnecting: the client re-registers its watches; ask again.
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        }
    });

    let ensemble = Arc::new(ensemble);
    for round in 1..=3 {
        // The ensemble is driven from a blocking thread, so this runtime keeps serving the
        // watching client meanwhile.
        let driver = ensemble.clone();
        tokio::task::spawn_blocking(move || {
            let killed = driver.kill_leader();
            wait_for("a new leader", || driver.leader());
            driver.restart(killed);
        })
        .await
        .unwrap();
        // herald lost its server (every follower drops its clients when the leader goes) and
        // is back on the same session.
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while reconnects(&agent) < round {
            assert!(
                tokio::time::Instant::now() < deadline,
                "round {round}: herald did not reconnect:\n{}",
                agent.stderr()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let stat = stat_of(&watcher, path)
            .await
            .unwrap_or_else(|| panic!("round {round}: the instance node is gone"));
        assert_eq!(stat.czxid, first.czxid, "round {round}: never re-created");
        assert_eq!(
            stat.ephemeral_owner, first.ephemeral_owner,
            "round {round}: the same session holds it"
        );
    }
    recorder.abort();
    let events = seen.lock().unwrap().clone();
    assert!(
        !events.contains(&zkc::EventType::NodeDeleted),
        "the watcher saw the node deleted: {events:?}"
    );
    assert_eq!(
        agent.child.try_wait().unwrap(),
        None,
        "the agent keeps running through the faults"
    );
    let log = agent.stderr();
    assert_eq!(
        log.matches("registered path=").count() - log.matches("deregistered path=").count(),
        1,
        "registered once, never again:\n{log}"
    );
}

/// The node's stat, asking again while the watching client itself reconnects after a fault.
async fn stat_of(client: &zkc::Client, path: &str) -> Option<zkc::Stat> {
    tokio::time::timeout(DEADLINE, async {
        loop {
            match client.check_stat(path).await {
                Ok(stat) => return stat,
                Err(zkc::Error::ConnectionLoss | zkc::Error::Timeout) => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(err) => panic!("stat {path}: {err}"),
            }
        }
    })
    .await
    .expect("the watching client reconnects")
}
