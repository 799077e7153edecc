//! Registration across ZooKeeper faults on a real 3-server ensemble: the leader is killed again
//! and again, the session moves between servers, and the instance node must never disappear.

#[path = "support/standalone.rs"]
mod standalone;
mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use standalone::Standalone;
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
        let before = reconnects(&agent);
        ensemble.fail_over().await;
        // herald lost its server (every follower drops its clients when the leader goes) and
        // is back on the same session.
        agent.wait_log("reconnected to ZooKeeper", before + 1).await;
        let stat = stat_of(&watcher, path)
            .await
            .unwrap_or_else(|| panic!("round {round}: the instance node is gone"));
        assert_eq!(stat.czxid, first.czxid, "round {round}: never re-created");
        assert_eq!(
            stat.ephemeral_owner, first.ephemeral_owner,
            "round {round}: the same session holds it"
        );
    }
    // Once the agent says it is registered after the last reconnect, it has done whatever it
    // was going to do about it: the node is still the first one.
    let control = s.path("control");
    let status = eventually("the agent to report itself registered", || {
        let mut command = herald("/unused");
        command.arg("status").arg("--control-dir").arg(&control);
        async move {
            let out = tokio::task::spawn_blocking(move || run(&mut command))
                .await
                .map_err(|e| e.to_string())?;
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            stdout
                .contains("registered")
                .then_some(stdout.clone())
                .filter(|s| !s.contains("not registered"))
                .ok_or(describe(&out))
        }
    })
    .await;
    assert!(status.contains("pg/db1"), "{status}");
    let stat = stat_of(&watcher, path)
        .await
        .expect("the instance node is there");
    assert_eq!(stat.czxid, first.czxid, "never re-created");
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

/// How soon a change must reach the published value after a fault: far below the director's
/// `--reconcile` (10 minutes here), so only its watch can deliver it in time (it takes
/// milliseconds; RELIABILITY.md has the figures).
const FOLLOWS: Duration = Duration::from_secs(5);

/// `herald announce` for `api` on 127.0.0.1:PORT with id `id`, against `connect`.
fn api_agent(root: &str, connect: &str, s: &Scratch, id: &str, port: u16) -> Daemon {
    let mut command = herald(root);
    command
        .env("HERALD_ZK", connect)
        .args(["announce", "--service", "api", "--id", id])
        .args(["--address", "127.0.0.1", "--port", &port.to_string()])
        .arg("--control-dir")
        .arg(s.path(id));
    Daemon::spawn(&mut command)
}

/// Writes (or rewrites) a persistent instance document for `api`, retrying while the client
/// reconnects. It must outlive the checking client's sessions through the faults, so it is a
/// static registration, as Curator writes one (`serviceType` `STATIC`).
async fn put_instance(client: &zkc::Client, root: &str, id: &str, port: u16) {
    let path = format!("{root}/services/api/{id}");
    let doc = format!(
        r#"{{"name":"api","id":"{id}","address":"127.0.0.1","port":{port},"payload":{{"weight":1}},"serviceType":"STATIC"}}"#
    );
    let acl = zkc::CreateMode::Persistent.with_acls(zkc::Acls::anyone_all());
    eventually(&format!("write {path}"), || async {
        client
            .mkdir(&format!("{root}/services/api"), &acl)
            .await
            .map_err(|e| e.to_string())?;
        match client.create(&path, doc.as_bytes(), &acl).await {
            Ok(_) => Ok(()),
            Err(zkc::Error::NodeExists) => client
                .set_data(&path, doc.as_bytes(), None)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Err(err) => Err(err.to_string()),
        }
    })
    .await;
}

/// Registers, deregisters and changes an instance; each must reach the value within FOLLOWS.
/// `live` is the agent registered before the fault; returns the one registered now.
async fn changes_reach_the_value(
    client: &zkc::Client,
    root: &str,
    connect: &str,
    s: &Scratch,
    mut live: Daemon,
    round: u16,
) -> Daemon {
    let path = format!("{root}/environment/API_HOSTS");
    let old_port = 9000 + round - 1;
    let new_port = 9000 + round;
    let static_port = 9100 + round;
    let agent = api_agent(root, connect, s, &format!("a{new_port}"), new_port);
    agent.wait_log("registered path=", 1).await;
    let both = format!("127.0.0.1:{old_port},127.0.0.1:{new_port},127.0.0.1:9100");
    data_becomes(client, &path, &both, FOLLOWS).await;

    live.signal(libc::SIGTERM);
    let status = live.exited().await;
    assert!(
        status.success(),
        "the agent deregistered: {}",
        live.stderr()
    );
    let one = format!("127.0.0.1:{new_port},127.0.0.1:9100");
    data_becomes(client, &path, &one, FOLLOWS).await;

    put_instance(client, root, "static", static_port).await;
    let changed = format!("127.0.0.1:{new_port},127.0.0.1:{static_port}");
    data_becomes(client, &path, &changed, FOLLOWS).await;
    put_instance(client, root, "static", 9100).await;
    data_becomes(client, &path, &one, FOLLOWS).await;
    agent
}

/// Issue #9: after a reconnect within its session (a ZooKeeper leader election, a restart of
/// its own server) the director still sees every registration, deregistration and change at
/// once, not at its next reconcile.
#[tokio::test]
async fn the_director_follows_changes_after_a_leader_kill_and_a_restart_of_its_server() {
    let ensemble = Arc::new(Ensemble::start("director_failover"));
    let connect = ensemble.connect_string();
    let root = "/it/director_failover";
    let s = Scratch::new("director_failover");
    let client = zkc::Client::connector()
        .with_session_timeout(Duration::from_secs(20))
        .connect(&connect)
        .await
        .expect("connect the checking client to the ensemble");
    let mut command = herald(root);
    command.env("HERALD_ZK", &connect).args([
        "director",
        "--key",
        "API_HOSTS",
        "--service",
        "api",
        "--preset",
        "hostports",
        "--reconcile",
        "10m",
    ]);
    let director = Daemon::spawn(&mut command);
    put_instance(&client, root, "static", 9100).await;
    let mut agent = api_agent(root, &connect, &s, "a9000", 9000);
    let path = format!("{root}/environment/API_HOSTS");
    data_becomes(&client, &path, "127.0.0.1:9000,127.0.0.1:9100", DEADLINE).await;
    let relists = |d: &Daemon| d.count("listing the instances again");

    // 1. The ZooKeeper leader is killed: every follower drops its clients.
    ensemble.fail_over().await;
    director.wait_log("listing the instances again", 1).await;
    agent = changes_reach_the_value(&client, root, &connect, &s, agent, 1).await;

    // 2. The director's own server is restarted.
    let election = format!("{root}/directors/API_HOSTS");
    let session = eventually("the director's election node", || async {
        let nodes = client
            .list_children(&election)
            .await
            .map_err(|e| e.to_string())?;
        let node = nodes.first().ok_or("no election node")?;
        match client.check_stat(&format!("{election}/{node}")).await {
            Ok(Some(stat)) => Ok(stat.ephemeral_owner),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let before = relists(&director);
    let driver = ensemble.clone();
    tokio::task::spawn_blocking(move || {
        let n = wait_for("the director's server", || driver.server_of(session));
        driver.kill(n);
        driver.restart(n);
    })
    .await
    .unwrap();
    director
        .wait_log("listing the instances again", before + 1)
        .await;
    let _agent = changes_reach_the_value(&client, root, &connect, &s, agent, 2).await;
    assert_eq!(
        director.count("election: leading"),
        1,
        "one term throughout (the session was kept):\n{}",
        director.stderr()
    );
}

/// The session timeout of every herald process in the outage test.
const OUTAGE_SESSION: Duration = Duration::from_secs(3);

/// Issue #9: ZooKeeper stopped for 0.8×, 1.2× and 3× the session timeout. A restarted server
/// restores its sessions and gives each client one more timeout to come back, so every herald
/// process resumes its own session: no instance node changes owner, nothing is published, the
/// watched file is not rewritten.
#[tokio::test]
async fn after_a_zookeeper_outage_every_process_keeps_its_session_and_nothing_flaps() {
    let server = Standalone::start("outage").await;
    let connect = server.connect_string();
    let root = "/it/outage";
    let s = Scratch::new("outage");
    let timeout = format!("{}s", OUTAGE_SESSION.as_secs());
    let spawn = |args: &[&str]| {
        let mut command = herald(root);
        command
            .env("HERALD_ZK", &connect)
            .args(["--session-timeout", &timeout])
            .args(args);
        Daemon::spawn(&mut command)
    };
    let agent = |id: &str, port: &str| {
        let control = s.path(id).display().to_string();
        spawn(&[
            "announce",
            "--service",
            "svc",
            "--id",
            id,
            "--address",
            "127.0.0.1",
            "--port",
            port,
            "--control-dir",
            &control,
        ])
    };
    let agents: Vec<Daemon> = [("a1", "7001"), ("a2", "7002"), ("a3", "7003")]
        .iter()
        .map(|(id, port)| agent(id, port))
        .collect();
    let director = spawn(&[
        "director",
        "--key",
        "BACKENDS",
        "--service",
        "svc",
        "--preset",
        "hostports",
    ]);
    let out = s.path("backends");
    let reloads = s.path("reloads");
    let reload = format!("echo >> {}", reloads.display());
    let out_arg = out.display().to_string();
    let watch = spawn(&["watch", "BACKENDS", "--out", &out_arg, "--reload", &reload]);
    let everyone: Vec<&Daemon> = agents.iter().chain([&director, &watch]).collect();

    // A checking client whose own session outlives the outages.
    let client = zkc::Client::connector()
        .with_session_timeout(Duration::from_secs(60))
        .connect(&connect)
        .await
        .expect("connect the checking client");
    let value = format!("{root}/environment/BACKENDS");
    let three = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003";
    let published = data_becomes(&client, &value, three, DEADLINE).await;
    watch.wait_log("wrote the new value", 1).await;
    let owners = || async {
        let mut owners = Vec::new();
        for id in ["a1", "a2", "a3"] {
            let path = format!("{root}/services/svc/{id}");
            let stat = eventually(&format!("{path} to be readable"), || async {
                client.check_stat(&path).await.map_err(|e| e.to_string())
            })
            .await;
            owners.push(stat.map(|s| (s.ephemeral_owner, s.czxid)));
        }
        owners
    };
    let before = owners().await;
    assert!(before.iter().all(Option::is_some), "{before:?}");

    for factor in [0.8, 1.2, 3.0] {
        let outage = OUTAGE_SESSION.mul_f64(factor);
        let relists = director.count("listing the instances again");
        let reconnected: Vec<usize> = everyone
            .iter()
            .map(|d| d.count("reconnected to ZooKeeper"))
            .collect();
        server.stop(libc::SIGKILL).await;
        // The outage's length is what this test is about.
        tokio::time::sleep(outage).await;
        server.restart().await;
        for (d, before) in everyone.iter().zip(&reconnected) {
            let (resumed, log) = d
                .wait_log_for("a reconnect or a new session", |log| {
                    if log.matches("reconnected to ZooKeeper").count() > *before {
                        Some(true)
                    } else if log.contains("session expired") {
                        Some(false)
                    } else {
                        None
                    }
                })
                .await;
            assert!(
                resumed && !log.contains("session expired"),
                "{factor}× the session timeout: back on the same session, not a new one:\n{log}"
            );
        }
        // The director has listed again (and found nothing new).
        director
            .wait_log("listing the instances again", relists + 1)
            .await;
        assert_eq!(
            owners().await,
            before,
            "{factor}× the session timeout: every instance node kept by its own session"
        );
    }

    // One change after the outages: once it is in the file, everything before it was handled.
    let _fourth = agent("a4", "7004");
    let four = format!("{three},127.0.0.1:7004");
    let now = data_becomes(&client, &value, &four, DEADLINE).await;
    assert_eq!(
        now.version,
        published.version + 1,
        "nothing was published during the outages, not even the same list:\n{}",
        director.stderr()
    );
    let log = watch.wait_log("wrote the new value", 2).await;
    assert_eq!(
        log.matches("wrote the new value").count(),
        2,
        "the file was written once before and once after, never for the outages:\n{log}"
    );
    assert_eq!(std::fs::read_to_string(&out).unwrap().trim_end(), four);
    // The file is written (and logged) before its reload runs: wait for the reload itself.
    let reloaded = eventually("the second reload", || async {
        let reloaded = std::fs::read_to_string(&reloads).unwrap_or_default();
        if reloaded.lines().count() >= 2 {
            Ok(reloaded)
        } else {
            Err(format!("{reloaded:?}"))
        }
    })
    .await;
    assert_eq!(reloaded.lines().count(), 2, "two reloads: {reloaded:?}");
}
