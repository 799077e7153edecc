//! `herald director` against a real ZooKeeper: instances (written as documents by a plain
//! client, as herald and Curator write them) in, derived values out, one fenced leader.

mod support;

use std::process::Command;
use std::time::Duration;

use support::{Daemon as Director, *};
use zookeeper_client as zkc;

/// How a publish shows in the log (not to be confused with "nothing published").
const PUBLISHED: &str = "published old=";

/// `herald director` for one output over `service`, plus `extra` flags.
fn director(root: &str, key: &str, service: &str, extra: &[&str]) -> Command {
    let mut command = herald(root);
    command
        .args(["director", "--key", key, "--service", service])
        .args(extra);
    command
}

/// Writes an instance document the way herald does.
async fn register(client: &zkc::Client, root: &str, service: &str, id: &str, port: u16) {
    let doc = format!(
        r#"{{"name":"{service}","id":"{id}","address":"10.0.0.{port_lo}","port":{port},"sslPort":null,"payload":{{"labels":{{}},"meta":{{}},"endpoints":{{}},"weight":1}},"registrationTimeUTC":1,"serviceType":"DYNAMIC","uriSpec":null}}"#,
        port_lo = port % 250
    );
    put_node(
        client,
        &format!("{root}/services/{service}/{id}"),
        doc.as_bytes(),
    )
    .await;
}

/// Writes (or rewrites) the instance node at `path`: an ephemeral node of `client`'s session,
/// as a registration is.
async fn put_node(client: &zkc::Client, path: &str, data: &[u8]) {
    let dir = zkc::CreateMode::Persistent.with_acls(zkc::Acls::anyone_all());
    let parent = &path[..path.rfind('/').unwrap()];
    client.mkdir(parent, &dir).await.unwrap();
    let node = zkc::CreateMode::Ephemeral.with_acls(zkc::Acls::anyone_all());
    match client.create(path, data, &node).await {
        Ok(_) => {}
        Err(zkc::Error::NodeExists) => {
            client.set_data(path, data, None).await.unwrap();
        }
        Err(err) => panic!("create {path}: {err}"),
    }
}

/// Removes the instance node as a stopping agent does: with a departure record saying
/// `stopped` written in the same multi-op (an intended departure, never a cliff).
async fn deregister(client: &zkc::Client, root: &str, service: &str, id: &str) {
    let dir = zkc::CreateMode::Persistent.with_acls(zkc::Acls::anyone_all());
    client
        .mkdir(&format!("{root}/departures/{service}"), &dir)
        .await
        .unwrap();
    let mut multi = client.new_multi_writer();
    multi
        .add_delete(&format!("{root}/services/{service}/{id}"), None)
        .unwrap();
    multi
        .add_create(
            &format!("{root}/departures/{service}/{id}"),
            br#"{"at_ms":1,"reason":"stopped"}"#,
            &dir,
        )
        .unwrap();
    multi.commit().await.unwrap();
}

/// Runs `herald ls` until its listing satisfies `ready` (a hold is recorded just after it is
/// logged); returns that listing.
async fn listing_when(root: &str, what: &str, ready: fn(&str) -> bool) -> String {
    let (root, what) = (root.to_owned(), format!("herald ls to show {what}"));
    tokio::task::spawn_blocking(move || {
        wait_for(&what, || {
            let listing =
                String::from_utf8_lossy(&run(herald(&root).arg("ls")).stdout).into_owned();
            ready(&listing).then_some(listing)
        })
    })
    .await
    .unwrap()
}

fn value_path(root: &str, key: &str) -> String {
    format!("{root}/environment/{key}")
}

#[tokio::test]
async fn publishes_on_add_remove_and_data_change() {
    let root = root("dir_basic");
    let client = client().await;
    let path = value_path(&root, "BACKENDS");
    let d = Director::spawn(&mut director(
        &root,
        "BACKENDS",
        "pg",
        &["--preset", "hostports"],
    ));
    register(&client, &root, "pg", "a", 5432).await;
    value_becomes(&client, &path, "10.0.0.182:5432").await;
    register(&client, &root, "pg", "b", 5433).await;
    value_becomes(&client, &path, "10.0.0.182:5432,10.0.0.183:5433").await;
    // A data change counts: the weight drops to 0, so hostports leaves it out.
    let doc = r#"{"address":"10.0.0.183","port":5433,"payload":{"weight":0}}"#;
    put_node(&client, &format!("{root}/services/pg/b"), doc.as_bytes()).await;
    let stat = value_becomes(&client, &path, "10.0.0.182:5432").await;
    // Only the weight-0 instance left: the derived value would be empty, so it is held. (The
    // count is taken once the third publish is logged: every earlier line is in by then.)
    let held = d
        .wait_log(PUBLISHED, 3)
        .await
        .matches("keeping the last value")
        .count();
    client
        .delete(&format!("{root}/services/pg/a"), None)
        .await
        .unwrap();
    let log = d
        .wait_log("the derived value is empty: keeping the last value", 1)
        .await;
    assert_eq!(
        log.matches("keeping the last value").count(),
        held + 1,
        "one hold, said once:\n{log}"
    );
    let (data, now) = client.get_data(&path).await.unwrap();
    assert_eq!(data, b"10.0.0.182:5432", "never empty by accident");
    assert_eq!(now.version, stat.version);
    register(&client, &root, "pg", "c", 5434).await;
    value_becomes(&client, &path, "10.0.0.184:5434").await;
}

#[tokio::test]
async fn curator_written_instances_are_included() {
    let root = root("dir_curator");
    let client = client().await;
    let path = value_path(&root, "CACHE");
    let _d = Director::spawn(&mut director(
        &root,
        "CACHE",
        "cache",
        &["--preset", "hostports"],
    ));
    // Exactly what Curator 5.4 writes (payload with "@class").
    let doc = r#"{"name":"cache","id":"java-1","address":"10.0.0.9","port":11211,"sslPort":null,"payload":{"@class":"java.util.LinkedHashMap","zone":"a"},"registrationTimeUTC":1795639892542,"serviceType":"DYNAMIC","uriSpec":null}"#;
    put_node(
        &client,
        &format!("{root}/services/cache/java-1"),
        doc.as_bytes(),
    )
    .await;
    register(&client, &root, "cache", "herald-1", 11212).await;
    value_becomes(&client, &path, "10.0.0.212:11212,10.0.0.9:11211").await;
}

#[tokio::test]
async fn min_instances_holds_the_last_value_and_allow_empty_opts_out() {
    let root = root("dir_min");
    let client = client().await;
    let path = value_path(&root, "HELD");
    let d = Director::spawn(&mut director(
        &root,
        "HELD",
        "svc",
        &["--preset", "hostports", "--min-instances", "2"],
    ));
    register(&client, &root, "svc", "a", 1001).await;
    register(&client, &root, "svc", "b", 1002).await;
    let stat = value_becomes(&client, &path, "10.0.0.1:1001,10.0.0.2:1002").await;
    let held = d
        .wait_log(PUBLISHED, 1)
        .await
        .matches("fewer instances than min_instances")
        .count();
    client
        .delete(&format!("{root}/services/svc/a"), None)
        .await
        .unwrap();
    d.wait_log("fewer instances than min_instances", held + 1)
        .await;
    let (data, now) = client.get_data(&path).await.unwrap();
    assert_eq!(data, b"10.0.0.1:1001,10.0.0.2:1002", "held");
    assert_eq!(now.version, stat.version, "not rewritten");

    let root2 = support::root("dir_allow_empty");
    let path2 = value_path(&root2, "EMPTY");
    let _d2 = Director::spawn(&mut director(
        &root2,
        "EMPTY",
        "svc",
        &["--preset", "hostports", "--allow-empty"],
    ));
    register(&client, &root2, "svc", "a", 1001).await;
    value_becomes(&client, &path2, "10.0.0.1:1001").await;
    // Stopped (a node gone with no record is a cliff, held by max_drop).
    deregister(&client, &root2, "svc", "a").await;
    value_becomes(&client, &path2, "").await;
}

#[tokio::test]
async fn template_and_exec_errors_publish_nothing() {
    let root = root("dir_errors");
    let client = client().await;
    let d = Director::spawn(&mut director(
        &root,
        "BROKEN",
        "svc",
        &["--template", "{{ instances[0].no_such_field }}"],
    ));
    let d2 = Director::spawn(&mut director(
        &root,
        "FAILING",
        "svc",
        &["--exec", "echo partial; exit 3"],
    ));
    register(&client, &root, "svc", "a", 1001).await;
    d.wait_log("nothing published", 1).await;
    d2.wait_log("nothing published", 1).await;
    for key in ["BROKEN", "FAILING"] {
        assert_eq!(
            client.check_stat(&value_path(&root, key)).await.unwrap(),
            None,
            "{key} was never published"
        );
    }
    let log = d2.stderr();
    assert!(
        !log.contains("partial"),
        "the exec output is not logged:\n{log}"
    );
}

#[tokio::test]
async fn exec_and_template_derive_values() {
    let root = root("dir_derive");
    let client = client().await;
    let _t = Director::spawn(&mut director(
        &root,
        "FIRST",
        "svc",
        &[
            "--template",
            "{% for i in instances %}{{ i.id }}={{ i.port }};{% endfor %}",
        ],
    ));
    let _e = Director::spawn(&mut director(
        &root,
        "COUNT",
        "svc",
        &[
            "--exec",
            "python3 -c 'import json,sys; print(len(json.load(sys.stdin)))'",
        ],
    ));
    register(&client, &root, "svc", "a", 1001).await;
    register(&client, &root, "svc", "b", 1002).await;
    value_becomes(&client, &value_path(&root, "FIRST"), "a=1001;b=1002;").await;
    value_becomes(&client, &value_path(&root, "COUNT"), "2").await;
}

#[tokio::test]
async fn debounce_publishes_a_burst_once() {
    let root = root("dir_debounce");
    let client = client().await;
    let path = value_path(&root, "BURST");
    let d = Director::spawn(&mut director(
        &root,
        "BURST",
        "svc",
        &["--preset", "hostports", "--wait", "1s:5s"],
    ));
    d.wait_log("leading", 1).await;
    for (id, port) in [("a", 1001), ("b", 1002), ("c", 1003)] {
        register(&client, &root, "svc", id, port).await;
    }
    let stat = value_becomes(&client, &path, "10.0.0.1:1001,10.0.0.2:1002,10.0.0.3:1003").await;
    assert_eq!(
        stat.version, 0,
        "one write for the whole burst (created once, never set)"
    );
    // The value is visible before the director logs its publish: wait for the line itself.
    let log = d.wait_log(PUBLISHED, 1).await;
    assert_eq!(log.matches(PUBLISHED).count(), 1, "one publish:\n{log}");
}

#[tokio::test]
async fn two_directors_one_writer_and_the_standby_takes_over() {
    let root = root("dir_ha");
    let client = client().await;
    let path = value_path(&root, "HA");
    // Not spread: the director started first leads, the other stands by behind it.
    let args = [
        "--preset",
        "hostports",
        "--session-timeout",
        "1s",
        "--spread",
        "off",
    ];
    let first = Director::spawn(&mut director(&root, "HA", "svc", &args));
    first.wait_log("leading", 1).await;
    let second = Director::spawn(director(&root, "HA", "svc", &args).arg("-v"));
    let election = format!("{root}/directors/HA");
    eventually("both directors in the election", || async {
        match client.list_children(&election).await {
            Ok(nodes) if nodes.len() == 2 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    // The standby has decided: it waits behind the leader.
    second.wait_log("standing by", 1).await;
    register(&client, &root, "svc", "a", 1001).await;
    value_becomes(&client, &path, "10.0.0.1:1001").await;
    register(&client, &root, "svc", "b", 1002).await;
    value_becomes(&client, &path, "10.0.0.1:1001,10.0.0.2:1002").await;
    assert_eq!(second.count(PUBLISHED), 0, "the standby never writes");
    assert_eq!(
        second.count("election: leading"),
        0,
        "the standby never leads"
    );

    // Kill the leader: the standby leads within the session timeout and publishes changes.
    let mut first = first;
    let _ = first.child.kill();
    let _ = first.child.wait();
    second.wait_log("leading", 1).await;
    register(&client, &root, "svc", "c", 1003).await;
    value_becomes(&client, &path, "10.0.0.1:1001,10.0.0.2:1002,10.0.0.3:1003").await;
}

#[tokio::test]
async fn a_paused_leader_never_overwrites_after_it_resumes() {
    let root = root("dir_fence");
    let client = client().await;
    let path = value_path(&root, "FENCED");
    let args = [
        "--preset",
        "hostports",
        "--session-timeout",
        "1s",
        "--spread",
        "off",
    ];
    let old = Director::spawn(&mut director(&root, "FENCED", "svc", &args));
    old.wait_log("leading", 1).await;
    let standby = Director::spawn(&mut director(&root, "FENCED", "svc", &args));
    register(&client, &root, "svc", "a", 1001).await;
    value_becomes(&client, &path, "10.0.0.1:1001").await;
    // The value is visible before the leader logs its publish: let it finish first.
    old.wait_log(PUBLISHED, 1).await;

    // Freeze the leader past its session timeout; the standby takes over.
    send_signal(old.child.id(), libc::SIGSTOP);
    standby.wait_log("leading", 1).await;
    register(&client, &root, "svc", "b", 1002).await;
    let stat = value_becomes(&client, &path, "10.0.0.1:1001,10.0.0.2:1002").await;
    // The old leader wakes with a stale view and a dead session: it must not write.
    send_signal(old.child.id(), libc::SIGCONT);
    old.wait_log("no longer leading", 1).await;
    client
        .delete(&format!("{root}/services/svc/b"), None)
        .await
        .unwrap();
    let after = value_becomes(&client, &path, "10.0.0.1:1001").await;
    assert_eq!(
        after.version,
        stat.version + 1,
        "exactly one write after the handover: the standby's"
    );
    assert_eq!(
        old.count(PUBLISHED),
        1,
        "the old leader wrote only before the pause"
    );
}

#[tokio::test]
async fn a_leader_whose_election_node_is_gone_never_writes() {
    let root = root("dir_fence_node");
    let client = client().await;
    let path = value_path(&root, "FENCE2");
    let started = s_path(&root);
    // The check announces that it runs, then takes its time: the election node is deleted
    // meanwhile, while the leader's session stays alive.
    let released = format!("{started}.released");
    let check = format!("touch {started}; while [ ! -e {released} ]; do sleep 0.02; done");
    let d = Director::spawn(&mut director(
        &root,
        "FENCE2",
        "svc",
        &["--preset", "hostports", "--check", &check],
    ));
    d.wait_log("election: leading", 1).await;
    register(&client, &root, "svc", "a", 1001).await;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !std::path::Path::new(&started).exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the check never ran"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let election = format!("{root}/directors/FENCE2");
    for node in client.list_children(&election).await.unwrap() {
        client
            .delete(&format!("{election}/{node}"), None)
            .await
            .unwrap();
    }
    std::fs::write(&released, "").unwrap();
    d.wait_log("no longer leading", 1).await;
    // It campaigns again, wins (it is alone) and publishes then — but not before.
    value_becomes(&client, &path, "10.0.0.1:1001").await;
    // The value is visible before the director logs its publish: wait for the line itself.
    let (published, log) = d.wait_log_for("a publish", |log| log.find(PUBLISHED)).await;
    let deposed = log.find("no longer leading");
    assert!(
        deposed.is_some_and(|deposed| deposed < published),
        "deposed before the only publish, not after it:\n{log}"
    );
}

fn s_path(root: &str) -> String {
    let dir = std::env::temp_dir().join("herald-it-fence");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("{}-{}", std::process::id(), root.replace('/', "_")));
    let _ = std::fs::remove_file(&file);
    file.display().to_string()
}

#[tokio::test]
async fn after_a_reconnect_the_director_lists_again() {
    let root = root("dir_relist");
    let client = client().await;
    let path = value_path(&root, "RELIST");
    let proxy = Proxy::start(zk().port);
    let d = Director::spawn(
        director(&root, "RELIST", "svc", &["--preset", "hostports"])
            .env("HERALD_ZK", proxy.connect_string()),
    );
    register(&client, &root, "svc", "a", 1001).await;
    value_becomes(&client, &path, "10.0.0.1:1001").await;
    // Changes made while the director is cut off (its session survives) are seen after.
    proxy.partition();
    register(&client, &root, "svc", "b", 1002).await;
    proxy.heal();
    value_becomes(&client, &path, "10.0.0.1:1001,10.0.0.2:1002").await;
    d.wait_log("listing the instances again where they changed", 1)
        .await;
}

/// A publish whose reply is lost to a connection loss was applied all the same: the director
/// finds its value there after the reconnect and does not write the same bytes again (a second
/// version, a spurious change for every watcher). The leader-kill fault test saw such a write.
#[tokio::test]
async fn a_publish_whose_reply_was_lost_is_not_written_again() {
    let root = root("dir_lost_reply");
    let client = client().await;
    let path = value_path(&root, "LOST");
    let proxy = Proxy::start(zk().port);
    let d = Director::spawn(
        director(&root, "LOST", "svc", &["--preset", "hostports", "-v"])
            .env("HERALD_ZK", proxy.connect_string()),
    );
    register(&client, &root, "svc", "a", 1001).await;
    let before = value_becomes(&client, &path, "10.0.0.1:1001").await;
    d.wait_log(PUBLISHED, 1).await;
    proxy.lose_next_multi_reply();
    register(&client, &root, "svc", "b", 1002).await;
    let both = value_becomes(&client, &path, "10.0.0.1:1001,10.0.0.2:1002").await;
    assert_eq!(both.version, before.version + 1);
    d.wait_log("cannot publish", 1).await;
    // The retry finds the value published, and logs it as the publish it was (so the log has
    // one publish per version).
    let (_, log) = d
        .wait_log_for("the retry after the lost reply", |log| {
            let after = &log[log.find("cannot publish")?..];
            after.contains("reply_lost=true").then_some(())
        })
        .await;
    assert_eq!(
        log.matches(PUBLISHED).count() as i32,
        both.version + 1,
        "one logged publish per version:\n{log}"
    );
    let now = value_becomes(&client, &path, "10.0.0.1:1001,10.0.0.2:1002").await;
    assert_eq!(
        now.version, both.version,
        "the value was written once, not again after the lost reply:\n{log}"
    );
}

#[test]
fn bad_configs_exit_2_naming_the_line() {
    let s = Scratch::new("dir_config");
    let file = s.path("herald.toml");
    std::fs::write(
        &file,
        "[[output]]\nkey = \"A\"\nservice = \"pg\"\npreset = \"pgpol\"\n",
    )
    .unwrap();
    let out = run(herald("/unused")
        .args(["director", "--check-config", "--config"])
        .arg(&file));
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("line 4") && stderr.contains("pgpol"),
        "{stderr}"
    );
    std::fs::write(
        &file,
        "[[output]]\nkey = \"A\"\nservice = \"pg\"\npreset = \"pgpool\"\n",
    )
    .unwrap();
    let out = run(herald("/unused")
        .args(["director", "--check-config", "--config"])
        .arg(&file));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    // A one-output flag beside --config would be ignored: refused, naming it.
    let out = run(herald("/unused")
        .args(["director", "--check-config", "--wait", "1s", "--config"])
        .arg(&file));
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("'--wait <DURATION[:DURATION]>'"),
        "{}",
        describe(&out)
    );
}

#[tokio::test]
async fn sigterm_resigns_every_output_and_exits_0() {
    let root = root("dir_sigterm");
    let s = Scratch::new("dir_sigterm");
    let client = client().await;
    let config = s.path("director.toml");
    let outputs: String = (0..5)
        .map(|n| {
            format!("[[output]]\nkey = \"K{n}\"\nservice = \"svc{n}\"\npreset = \"hostports\"\n\n")
        })
        .collect();
    std::fs::write(&config, outputs).unwrap();
    let mut d = Director::spawn(herald(&root).arg("director").arg("--config").arg(&config));
    d.wait_log("election: leading", 5).await;
    send_signal(d.child.id(), libc::SIGTERM);
    let status = d.exited().await;
    assert_eq!(status.code(), Some(0), "{}", d.stderr());
    for n in 0..5 {
        let election = format!("{root}/directors/K{n}");
        assert_eq!(
            client.list_children(&election).await.unwrap(),
            Vec::<String>::new(),
            "K{n}: resigned, so a standby leads at once"
        );
    }
}

/// Issue #9: after a new session the director sees the instances come back one by one (a mass
/// session loss: every agent re-registers within a second). It publishes once they are quiet,
/// never one of the partial lists on the way.
#[tokio::test]
async fn after_a_new_session_the_director_settles_before_publishing() {
    let root = root("dir_settle");
    let client = client().await;
    let path = value_path(&root, "SETTLED");
    let proxy = Proxy::start(zk().port);
    let d = Director::spawn(
        director(
            &root,
            "SETTLED",
            "svc",
            &[
                "--preset",
                "hostports",
                "--session-timeout",
                "1s",
                "--settle",
                "2s:10s",
            ],
        )
        .env("HERALD_ZK", proxy.connect_string()),
    );
    let ids = ["i1", "i2", "i3", "i4", "i5"];
    for (n, id) in ids.iter().enumerate() {
        register(&client, &root, "svc", id, 1001 + n as u16).await;
    }
    let all = "10.0.0.1:1001,10.0.0.2:1002,10.0.0.3:1003,10.0.0.4:1004,10.0.0.5:1005";
    let before = value_becomes(&client, &path, all).await;
    d.wait_log(PUBLISHED, 1).await;

    // The director is cut off until ZooKeeper expires its session; meanwhile every instance
    // goes, as in a mass session loss.
    proxy.partition();
    let election = format!("{root}/directors/SETTLED");
    eventually("the director's session to expire", || async {
        match client.list_children(&election).await {
            Ok(nodes) if nodes.is_empty() => Ok(()),
            other => Err(format!("election nodes {other:?}")),
        }
    })
    .await;
    for id in ids {
        client
            .delete(&format!("{root}/services/svc/{id}"), None)
            .await
            .unwrap();
    }
    proxy.heal();
    d.wait_log("election: leading", 2).await;
    // They come back one by one, 200ms apart.
    for (n, id) in ids.iter().enumerate() {
        register(&client, &root, "svc", id, 1001 + n as u16).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A last change after the others: once it is published, the director has handled them.
    register(&client, &root, "svc", "i6", 1006).await;
    let after = value_becomes(&client, &path, &format!("{all},10.0.0.6:1006")).await;
    let log = d.stderr();
    assert_eq!(
        after.version,
        before.version + 1,
        "one publish after the new session (the last change), no partial list on the way:\n{log}"
    );
}

/// A director that starts while its instances are still registering (everything starting at
/// once) publishes the whole list once, not each partial list on the way. Registrations 100 ms
/// apart against 3 s of quiet: a 30× margin for a loaded machine (the default 1 s failed once in
/// 10 runs with a benchmark saturating both CPUs beside the suite).
#[tokio::test]
async fn a_director_starting_amid_registrations_publishes_once() {
    let root = root("dir_cold");
    let client = client().await;
    let path = value_path(&root, "COLD");
    let d = Director::spawn(&mut director(
        &root,
        "COLD",
        "svc",
        &["--preset", "hostports", "--settle", "3s:30s"],
    ));
    d.wait_log("election: leading", 1).await;
    for n in 1..=5u16 {
        register(&client, &root, "svc", &format!("i{n}"), 1000 + n).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all = "10.0.0.1:1001,10.0.0.2:1002,10.0.0.3:1003,10.0.0.4:1004,10.0.0.5:1005";
    let stat = value_becomes(&client, &path, all).await;
    let log = d.wait_log(PUBLISHED, 1).await;
    assert_eq!(
        stat.version, 0,
        "created once with all five, never set:\n{log}"
    );
}

/// The pgpool backend block for `(slot, id, port)` as `register` writes them.
fn pgpool_block(backends: &[(u32, &str, u16)]) -> String {
    backends
        .iter()
        .map(|(n, id, port)| {
            format!(
                "backend_hostname{n} = '10.0.0.{}'\nbackend_port{n} = {port}\nbackend_weight{n} = 1\n\
                 backend_data_directory{n} = '/var/lib/postgresql/data'\n\
                 backend_application_name{n} = '{id}'\nbackend_flag{n} = 'ALLOW_TO_FAILOVER'\n",
                port % 250
            )
        })
        .collect()
}

#[tokio::test]
async fn pgpool_backends_keep_their_numbers_through_removals_and_a_director_failover() {
    let root = root("dir_slots");
    let client = client().await;
    let path = value_path(&root, "PGPOOL_BACKENDS");
    let args = [
        "--preset",
        "pgpool",
        "--session-timeout",
        "1s",
        "--settle",
        "0s",
        "--spread",
        "off",
    ];
    let first = Director::spawn(&mut director(&root, "PGPOOL_BACKENDS", "pg", &args));
    first.wait_log("leading", 1).await;
    let second = Director::spawn(director(&root, "PGPOOL_BACKENDS", "pg", &args).arg("-v"));
    second.wait_log("standing by", 1).await;
    for (id, port) in [("a", 5432), ("b", 5433), ("c", 5434)] {
        register(&client, &root, "pg", id, port).await;
    }
    value_becomes(
        &client,
        &path,
        &pgpool_block(&[(0, "a", 5432), (1, "b", 5433), (2, "c", 5434)]),
    )
    .await;

    // Backend 0 goes: the others keep their numbers (pgpool ignores a new address for a slot
    // it has loaded, but would apply the weight and flag by number).
    client
        .delete(&format!("{root}/services/pg/a"), None)
        .await
        .unwrap();
    value_becomes(
        &client,
        &path,
        &pgpool_block(&[(1, "b", 5433), (2, "c", 5434)]),
    )
    .await;

    // The leader dies; the new one reads the numbers from ZooKeeper and goes on with them.
    let mut first = first;
    let _ = first.child.kill();
    let _ = first.child.wait();
    second.wait_log("leading", 1).await;
    // A new server never takes the number a different server had…
    register(&client, &root, "pg", "d", 5435).await;
    value_becomes(
        &client,
        &path,
        &pgpool_block(&[(1, "b", 5433), (2, "c", 5434), (3, "d", 5435)]),
    )
    .await;
    // …but the same server back gets its own number again.
    register(&client, &root, "pg", "a", 5432).await;
    value_becomes(
        &client,
        &path,
        &pgpool_block(&[
            (0, "a", 5432),
            (1, "b", 5433),
            (2, "c", 5434),
            (3, "d", 5435),
        ]),
    )
    .await;
    let (map, _) = client
        .get_data(&format!("{root}/slots/PGPOOL_BACKENDS"))
        .await
        .unwrap();
    let map: serde_json::Value = serde_json::from_slice(&map).unwrap();
    assert_eq!(map["slots"]["3"]["instance"], "pg/d", "{map}");
    assert!(map["slots"]["0"].get("retired_ms").is_none(), "{map}");
}

/// PostgreSQL's md5 password hash, from coreutils: `md5` + md5(password + user).
fn md5_of(user: &str, password: &str) -> String {
    let out = run(Command::new("sh").args([
        "-c",
        &format!("printf %s '{password}{user}' | md5sum | cut -d' ' -f1"),
    ]));
    format!("md5{}", String::from_utf8_lossy(&out.stdout).trim())
}

#[tokio::test]
async fn pool_passwd_follows_a_password_rotation_by_sighup_and_refuses_disagreement() {
    let root = root("dir_pool_passwd");
    let s = Scratch::new("dir_pool_passwd");
    let client = client().await;
    let path = value_path(&root, "POOL_PASSWD");
    let d = Director::spawn(&mut director(
        &root,
        "POOL_PASSWD",
        "pg",
        &["--preset", "pool_passwd", "--settle", "0s"],
    ));
    let meta = |id: &str, password: &str| {
        let file = s.path(&format!("{id}.json"));
        std::fs::write(
            &file,
            format!(r#"{{"user":"app","password":"{password}"}}"#),
        )
        .unwrap();
        file
    };
    let agent = |id: &str, port: &str| {
        Director::spawn(
            herald(&root)
                .args(["announce", "--service", "pg", "--id", id])
                .args(["--address", "127.0.0.1", "--port", port])
                .arg("--control-dir")
                .arg(s.path("control"))
                .arg("--meta-file")
                .arg(meta(id, "apppw")),
        )
    };
    let a = agent("a", "5432");
    let b = agent("b", "5433");
    // The hash PostgreSQL stores for app/apppw under md5.
    value_becomes(&client, &path, "app:md5f44ca69ffd2494f6d3e571acf7a949aa\n").await;
    a.wait_log("meta password looks secret", 1).await;
    d.wait_log("publishes password hashes", 1).await;

    // a rotates first: the two disagree, so the value stays and the director names both.
    meta("a", "rotated");
    a.signal(libc::SIGHUP);
    let log = d.wait_log("give user \"app\" different passwords", 1).await;
    assert!(log.contains("pg/a") && log.contains("pg/b"), "{log}");
    let (data, _) = client.get_data(&path).await.unwrap();
    assert_eq!(data, b"app:md5f44ca69ffd2494f6d3e571acf7a949aa\n");
    // b follows: one new hash.
    meta("b", "rotated");
    b.signal(libc::SIGHUP);
    value_becomes(
        &client,
        &path,
        &format!("app:{}\n", md5_of("app", "rotated")),
    )
    .await;
    for daemon in [&d, &a, &b] {
        daemon.assert_never_logged(&["apppw", "rotated"]);
    }
}

/// HAProxy reloads on every change: the haproxy preset waits for a burst to end by default.
#[tokio::test]
async fn the_haproxy_preset_coalesces_a_burst_by_default() {
    let root = root("dir_haproxy_burst");
    let client = client().await;
    let path = value_path(&root, "HAPROXY_SERVERS");
    let d = Director::spawn(&mut director(
        &root,
        "HAPROXY_SERVERS",
        "web",
        &["--preset", "haproxy", "--settle", "0s"],
    ));
    d.wait_log("leading", 1).await;
    // Two registrations 20 ms apart, as a scale-up's would be: one value, one reload.
    register(&client, &root, "web", "a", 1001).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    register(&client, &root, "web", "b", 1002).await;
    let stat = value_becomes(
        &client,
        &path,
        "server a 10.0.0.1:1001 weight 1 check\nserver b 10.0.0.2:1002 weight 1 check\n",
    )
    .await;
    assert_eq!(
        stat.version, 0,
        "one write for the burst (created once, never set)"
    );
}

/// SIGHUP makes the director read --config again: unchanged, nothing happens; broken, the
/// running outputs stay (and it says why); changed, the new outputs are published and the old
/// ones still follow their instances. It never exits on SIGHUP.
#[tokio::test]
async fn sighup_applies_a_changed_config_and_never_a_broken_one() {
    let root = root("dir_hup");
    let s = Scratch::new("dir_hup");
    let client = client().await;
    register(&client, &root, "svc", "i1", 1001).await;
    let config = s.path("director.toml");
    let one =
        "[[output]]\nkey = \"A\"\nservice = \"svc\"\npreset = \"hostports\"\nsettle = \"0s\"\n";
    std::fs::write(&config, one).unwrap();
    let mut d = Director::spawn(herald(&root).arg("director").arg("--config").arg(&config));
    value_becomes(&client, &value_path(&root, "A"), "10.0.0.1:1001").await;

    send_signal(d.child.id(), libc::SIGHUP);
    d.wait_log("the configuration is unchanged", 1).await;
    std::fs::write(&config, "[[output]]\nkey = \"B\"\n").unwrap();
    send_signal(d.child.id(), libc::SIGHUP);
    d.wait_log("the running configuration stays", 1).await;
    let two = format!(
        "{one}\n[[output]]\nkey = \"B\"\nservice = \"svc\"\npreset = \"url\"\nurl = \"http://{{address}}:{{port}}/\"\nsettle = \"0s\"\n"
    );
    std::fs::write(&config, two).unwrap();
    send_signal(d.child.id(), libc::SIGHUP);
    value_becomes(&client, &value_path(&root, "B"), "http://10.0.0.1:1001/").await;
    register(&client, &root, "svc", "i2", 1002).await;
    value_becomes(
        &client,
        &value_path(&root, "A"),
        "10.0.0.1:1001,10.0.0.2:1002",
    )
    .await;
    send_signal(d.child.id(), libc::SIGTERM);
    assert_eq!(d.exited().await.code(), Some(0), "{}", d.stderr());
}

/// One instance the preset cannot render (a '#' in its address: written by hand, or by a
/// client with the register right) once froze the whole value; it is left out, said once, and
/// tried again when its registration changes.
#[tokio::test]
async fn an_instance_the_preset_cannot_render_is_left_out_not_freezing_the_value() {
    let root = root("dir_unrenderable");
    let client = client().await;
    let path = value_path(&root, "HAPROXY");
    let d = Director::spawn(&mut director(
        &root,
        "HAPROXY",
        "web",
        &["--preset", "haproxy", "--wait", "0s"],
    ));
    register(&client, &root, "web", "a", 8080).await;
    value_becomes(&client, &path, "server a 10.0.0.80:8080 weight 1 check\n").await;
    let bad = r#"{"address":"10.0.0.9#x","port":8081,"payload":{"weight":1}}"#;
    put_node(&client, &format!("{root}/services/web/bad"), bad.as_bytes()).await;
    register(&client, &root, "web", "c", 8082).await;
    value_becomes(
        &client,
        &path,
        "server a 10.0.0.80:8080 weight 1 check\nserver c 10.0.0.82:8082 weight 1 check\n",
    )
    .await;
    let log = d.wait_log("it is left out of the value", 1).await;
    assert!(log.contains("instance=bad"), "{log}");
    // Fixed, it comes back.
    let fixed = r#"{"address":"10.0.0.9","port":8081,"payload":{"weight":1}}"#;
    put_node(
        &client,
        &format!("{root}/services/web/bad"),
        fixed.as_bytes(),
    )
    .await;
    value_becomes(
        &client,
        &path,
        "server a 10.0.0.80:8080 weight 1 check\nserver bad 10.0.0.9:8081 weight 1 check\nserver c 10.0.0.82:8082 weight 1 check\n",
    )
    .await;
    let log = d.wait_log(PUBLISHED, 3).await;
    assert_eq!(
        log.matches("it is left out of the value").count(),
        1,
        "said once:\n{log}"
    );
}

/// A `herald put` (or a gateway POST, or a client by hand) to a key a director leads was never
/// corrected: the leader now notices the write, says who made it (mzxid, version), and puts the
/// derived value back; a deleted value comes back too.
#[tokio::test]
async fn a_write_by_another_writer_is_noticed_and_undone() {
    let root = root("dir_outside");
    let client = client().await;
    let path = value_path(&root, "HOSTS");
    let d = Director::spawn(&mut director(
        &root,
        "HOSTS",
        "pg",
        &["--preset", "hostports", "--wait", "0s"],
    ));
    register(&client, &root, "pg", "a", 5432).await;
    value_becomes(&client, &path, "10.0.0.182:5432").await;
    let put = tokio::task::spawn_blocking({
        let root = root.clone();
        move || run(herald(&root).args(["put", "HOSTS", "6.6.6.6:5432"]))
    })
    .await
    .unwrap();
    assert!(put.status.success(), "{}", describe(&put));
    value_becomes(&client, &path, "10.0.0.182:5432").await;
    let log = d.wait_log("restoring the derived value", 1).await;
    assert!(log.contains("mzxid=0x"), "{log}");
    assert!(
        !log.contains("6.6.6.6"),
        "values never reach the log:\n{log}"
    );
    client.delete(&path, None).await.unwrap();
    value_becomes(&client, &path, "10.0.0.182:5432").await;
    d.wait_log("restoring the derived value", 2).await;
    // The director's own publishes are not taken for another writer's.
    register(&client, &root, "pg", "b", 5433).await;
    value_becomes(&client, &path, "10.0.0.182:5432,10.0.0.183:5433").await;
    let log = d.wait_log(PUBLISHED, 4).await;
    assert_eq!(
        log.matches("restoring the derived value").count(),
        2,
        "{log}"
    );
}

/// `max_drop`: a value that loses more than the share of instances is held until the drop has
/// lasted `drop_confirm`; a drop that recovers first (a mass session loss, agents registering
/// again) is never published.
#[tokio::test]
async fn a_cliff_is_held_until_it_lasts_and_never_published_when_it_recovers() {
    let root = root("dir_cliff");
    let client = client().await;
    let path = value_path(&root, "HOSTS");
    let d = Director::spawn(&mut director(
        &root,
        "HOSTS",
        "pg",
        &[
            "--preset",
            "hostports",
            "--settle",
            "0s",
            // Each burst of changes below is one value.
            "--wait",
            "500ms:2s",
            "--max-drop",
            "50%",
            "--drop-confirm",
            "4s",
        ],
    ));
    for (id, port) in [("a", 5001), ("b", 5002), ("c", 5003), ("d", 5004)] {
        register(&client, &root, "pg", id, port).await;
    }
    let all = "10.0.0.1:5001,10.0.0.2:5002,10.0.0.3:5003,10.0.0.4:5004";
    value_becomes(&client, &path, all).await;
    let remove = |id: &'static str| {
        let client = &client;
        let node = format!("{root}/services/pg/{id}");
        async move { client.delete(&node, None).await.unwrap() }
    };
    // Three of four gone: held.
    for id in ["b", "c", "d"] {
        remove(id).await;
    }
    d.wait_log("reason=max_drop", 1).await;
    let (held, _) = client.get_data(&path).await.unwrap();
    assert_eq!(held, all.as_bytes(), "the last value is kept");
    // `herald ls` shows the hold, and stops showing it once it ends.
    let listing = listing_when(&root, "the hold", |l| l.contains("HELD since")).await;
    assert!(
        listing.contains("the instances fell from 4 to 1, more than max_drop allows"),
        "{listing}"
    );
    // They come back before drop_confirm: nothing was published meanwhile.
    for (id, port) in [("b", 5002), ("c", 5003), ("d", 5004)] {
        register(&client, &root, "pg", id, port).await;
    }
    d.wait_log("no longer held", 1).await;
    listing_when(&root, "no hold", |l| !l.contains("HELD")).await;
    let (data, stat) = client.get_data(&path).await.unwrap();
    assert_eq!(data, all.as_bytes());
    // A drop that lasts is published once drop_confirm has passed.
    for id in ["b", "c", "d"] {
        remove(id).await;
    }
    d.wait_log("reason=max_drop", 2).await;
    let after = value_becomes(&client, &path, "10.0.0.1:5001").await;
    assert_eq!(
        after.version,
        stat.version + 1,
        "one write: the confirmed drop"
    );
    d.wait_log("the drop is confirmed", 1).await;
}

/// The cliff guard is on by default, and the departure record's reason tells intent from
/// failure: agents stopped (a scale-down) or drained out leave the value at once whatever their
/// share; agents whose checks fail are a drop held (the last value kept) until it recovers.
#[tokio::test]
async fn by_default_a_drop_of_failing_agents_is_held_but_a_scale_down_or_a_drain_is_not() {
    let root = root("dir_cliff_intent");
    let s = Scratch::new("dir_cliff_intent");
    let client = client().await;
    let path = value_path(&root, "HOSTS");
    let d = Director::spawn(&mut director(
        &root,
        "HOSTS",
        "pg",
        // No --max-drop: the default. A long confirmation, so a held drop stays held.
        &[
            "--preset",
            "hostports",
            "--settle",
            "0s",
            "--wait",
            "300ms:2s",
            "--drop-confirm",
            "10m",
        ],
    ));
    let flag = |n: usize| s.path(&format!("healthy{n}"));
    let agents: Vec<Director> = (1..=7)
        .map(|n| {
            std::fs::write(flag(n), "").unwrap();
            Director::spawn(
                herald(&root)
                    .args(["announce", "--service", "pg", "--id", &format!("i{n}")])
                    .args(["--address", &format!("10.0.0.{n}"), "--port", "5432"])
                    .arg("--check")
                    .arg(format!("exec:test -e {}", flag(n).display()))
                    .args(["--check-interval", "100ms", "--control-dir"])
                    .arg(s.path("control")),
            )
        })
        .collect();
    let hosts = |ns: &[usize]| {
        ns.iter()
            .map(|n| format!("10.0.0.{n}:5432"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let agent = |n: usize| &agents[n - 1];
    value_becomes(&client, &path, &hosts(&[1, 2, 3, 4, 5, 6, 7])).await;

    // A scale-down: 4 of 7 stopped (a stop signal each) leave at once.
    for n in 1..=4 {
        agent(n).signal(libc::SIGTERM);
    }
    value_becomes(&client, &path, &hosts(&[5, 6, 7])).await;
    // A drain of 2 of the 3 left: at once too.
    for n in [5, 6] {
        agent(n).signal(libc::SIGUSR1);
    }
    value_becomes(&client, &path, &hosts(&[7])).await;
    for n in [5, 6] {
        agent(n).signal(libc::SIGUSR2);
    }
    let before = value_becomes(&client, &path, &hosts(&[5, 6, 7])).await;
    assert_eq!(d.count("reason=max_drop"), 0, "{}", d.stderr());

    // Their checks fail (a bad deploy): a drop nobody asked for is held, the value kept.
    for n in [5, 6] {
        std::fs::remove_file(flag(n)).unwrap();
    }
    for n in [5, 6] {
        agent(n).wait_log("reason=unhealthy", 1).await;
    }
    let log = d.wait_log("reason=max_drop", 1).await;
    assert!(
        log.contains("the instances fell from 3 to 1"),
        "against the 3 left after the scale-down: {log}"
    );
    // Healthy again before drop_confirm: nothing was published meanwhile.
    for n in [5, 6] {
        std::fs::write(flag(n), "").unwrap();
    }
    d.wait_log("no longer held", 1).await;
    let (data, stat) = client.get_data(&path).await.unwrap();
    assert_eq!(data, hosts(&[5, 6, 7]).as_bytes());
    assert_eq!(
        stat.version, before.version,
        "the held drop was never written"
    );
}

/// `herald confirm KEY`: an operator publishes a held drop at once instead of after
/// `drop_confirm`; with nothing held it exits 3.
#[tokio::test]
async fn an_operator_confirms_a_held_drop() {
    let root = root("dir_confirm");
    let client = client().await;
    let path = value_path(&root, "HOSTS");
    let confirm = |root: &str| {
        let root = root.to_owned();
        tokio::task::spawn_blocking(move || run(herald(&root).args(["confirm", "HOSTS"])))
    };
    let out = confirm(&root).await.unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "nothing held: {}",
        describe(&out)
    );
    let d = Director::spawn(&mut director(
        &root,
        "HOSTS",
        "pg",
        &[
            "--preset",
            "hostports",
            "--settle",
            "0s",
            "--wait",
            "500ms:2s",
            "--max-drop",
            "50%",
            "--drop-confirm",
            "10m",
        ],
    ));
    for (id, port) in [("a", 5001), ("b", 5002), ("c", 5003)] {
        register(&client, &root, "pg", id, port).await;
    }
    value_becomes(&client, &path, "10.0.0.1:5001,10.0.0.2:5002,10.0.0.3:5003").await;
    for id in ["b", "c"] {
        client
            .delete(&format!("{root}/services/pg/{id}"), None)
            .await
            .unwrap();
    }
    d.wait_log("reason=max_drop", 1).await;
    // The hold is recorded just after it is logged: confirm once it is there.
    let out = tokio::task::spawn_blocking({
        let root = root.clone();
        move || {
            wait_for("herald confirm to find the hold", || {
                let out = run(herald(&root).args(["confirm", "HOSTS"]));
                out.status.success().then_some(out)
            })
        }
    })
    .await
    .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("HOSTS: confirmed (the instances fell from 3 to 1"),
        "{}",
        describe(&out)
    );
    value_becomes(&client, &path, "10.0.0.1:5001").await;
    d.wait_log("an operator confirmed the drop", 1).await;
}

/// A value its check refuses, with nobody to leave out, is a hold like the guards' own: recorded
/// for `herald ls`, and cleared by the next value published.
#[tokio::test]
async fn a_failed_check_shows_as_a_hold_until_a_value_passes() {
    let root = root("dir_check_hold");
    let s = Scratch::new("dir_check_hold");
    let client = client().await;
    let path = value_path(&root, "HOSTS");
    let gate = s.path("refuse");
    std::fs::write(&gate, "").unwrap();
    let check = format!("test ! -e {}", gate.display());
    // Two instances, every value refused: nobody is to blame, so nothing is left out.
    register(&client, &root, "pg", "a", 5001).await;
    register(&client, &root, "pg", "b", 5002).await;
    let d = Director::spawn(&mut director(
        &root,
        "HOSTS",
        "pg",
        &["--preset", "hostports", "--check", &check],
    ));
    d.wait_log("failed its check", 1).await;
    let listing = listing_when(&root, "the failed check", |l| l.contains("HELD since")).await;
    assert!(
        listing.contains("HOSTS") && listing.contains("failed its check"),
        "{listing}"
    );
    std::fs::remove_file(&gate).unwrap();
    value_becomes(&client, &path, "10.0.0.1:5001,10.0.0.2:5002").await;
    listing_when(&root, "no hold", |l| !l.contains("HELD")).await;
}

/// `--removal-delay`: an instance whose session is lost (its node goes with no departure
/// record) stays in the value for the delay, and one back within it was never out of it; an
/// agent that deregisters (herald announce stopped) is removed at once, leaving its record.
#[tokio::test]
async fn a_lost_session_is_held_for_the_removal_delay_a_deregistration_is_not() {
    let root = root("dir_limbo");
    let scratch = Scratch::new("dir_limbo");
    let client = client().await;
    let path = value_path(&root, "BACKENDS");
    let d = Director::spawn(&mut director(
        &root,
        "BACKENDS",
        "pg",
        &[
            "--preset",
            "hostports",
            "--removal-delay",
            "4s",
            "--settle",
            "0s",
        ],
    ));
    let mut agent_command = herald(&root);
    agent_command
        .args(["announce", "--service", "pg", "--id", "a"])
        .args(["--address", "10.0.0.1", "--port", "5432", "--control-dir"])
        .arg(scratch.path("control"));
    let agent = Director::spawn(&mut agent_command);
    let lost = support::client().await;
    register(&lost, &root, "pg", "b", 5433).await;
    let both = "10.0.0.1:5432,10.0.0.183:5433";
    value_becomes(&client, &path, both).await;

    // b's session ends without a deregistration: its ephemeral node goes, and nothing else.
    drop(lost);
    d.wait_log("vanished without deregistering", 1).await;
    let (data, _) = client.get_data(&path).await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&data),
        both,
        "held for the removal delay"
    );
    value_becomes(&client, &path, "10.0.0.1:5432").await;
    d.wait_log("did not come back: removed", 1).await;

    // Back within the delay: the value never changed.
    let lost = support::client().await;
    register(&lost, &root, "pg", "b", 5433).await;
    let stat = value_becomes(&client, &path, both).await;
    drop(lost);
    d.wait_log("vanished without deregistering", 2).await;
    let again = support::client().await;
    register(&again, &root, "pg", "b", 5433).await;
    d.wait_log("is back", 1).await;
    let (data, now) = client.get_data(&path).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&data), both);
    assert_eq!(now.version, stat.version, "no publish while b was away");

    // A deregistration: gone at once (well within the 4 s delay), its record left.
    agent.signal(libc::SIGTERM);
    value_becomes(&client, &path, "10.0.0.183:5433").await;
    assert!(
        client
            .check_stat(&format!("{root}/departures/pg/a"))
            .await
            .unwrap()
            .is_some(),
        "the departure record"
    );
    let log = d.stderr();
    assert_eq!(
        log.matches("vanished without deregistering").count(),
        2,
        "a deregistration is not held:\n{log}"
    );
    drop(again);
}

/// What the key `key` prefers, as README documents it: the first 8 bytes of
/// SHA-256(key · 0x00 · identity), the higher the better.
fn score(key: &str, identity: &[u8]) -> [u8; 8] {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(key.as_bytes())
        .chain_update([0u8])
        .chain_update(identity)
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    first
}

/// The keys each director's status page says it leads, by director index.
fn leading(ports: &[u16]) -> Vec<std::collections::BTreeSet<String>> {
    ports
        .iter()
        .map(|&port| {
            let page = status(port);
            page["outputs"]
                .as_object()
                .map(|outputs| {
                    outputs
                        .iter()
                        .filter(|(_, o)| o["leading"] == true)
                        .map(|(key, _)| key.clone())
                        .collect()
                })
                .unwrap_or_default()
        })
        .collect()
}

/// Issue #14: three directors run the same 30 outputs. Each output is led by the director its
/// key prefers (rendezvous hashing over the identities in line), so each leads about a third;
/// a director that stops moves only the outputs it led, each to the one of the two left that
/// its key prefers, and no other output changes hands.
#[tokio::test]
async fn leadership_is_spread_and_a_stopped_director_moves_only_its_outputs() {
    const KEYS: usize = 30;
    let root = root("dir_spread");
    let s = Scratch::new("dir_spread");
    let config = s.path("director.toml");
    let outputs: String = (0..KEYS)
        .map(|n| {
            format!("[[output]]\nkey = \"S{n}\"\nservice = \"svc\"\npreset = \"hostports\"\n\n")
        })
        .collect();
    std::fs::write(&config, outputs).unwrap();
    let mut directors: Vec<Director> = (0..3)
        .map(|_| {
            Director::spawn(
                herald(&root)
                    .arg("director")
                    .arg("--config")
                    .arg(&config)
                    .args(["--metrics-listen", "127.0.0.1:0"]),
            )
        })
        .collect();
    let ports: Vec<u16> = directors.iter().map(metrics_port).collect();
    let host = herald::announce::hostname().unwrap_or_default();
    let identities: Vec<String> = directors
        .iter()
        .map(|d| format!("{host} {}", d.child.id()))
        .collect();
    let keys: Vec<String> = (0..KEYS).map(|n| format!("S{n}")).collect();
    let prefers = |key: &str, among: &[usize]| -> usize {
        *among
            .iter()
            .max_by_key(|&&i| score(key, identities[i].as_bytes()))
            .unwrap()
    };
    let expected = |among: &[usize]| -> Vec<std::collections::BTreeSet<String>> {
        let mut sets = vec![std::collections::BTreeSet::new(); 3];
        for key in &keys {
            sets[prefers(key, among)].insert(key.clone());
        }
        sets
    };

    let all = expected(&[0, 1, 2]);
    let before = wait_until("every output led by the director its key prefers", || {
        let now = leading(&ports);
        if now == all {
            Ok(now)
        } else {
            Err(format!("leading {now:?}, preferred {all:?}"))
        }
    });
    for (i, keys) in before.iter().enumerate() {
        assert!(!keys.is_empty(), "director {i} leads nothing: {before:?}");
    }
    // The election nodes of the outputs that stay where they are.
    let client = client().await;
    let leader_node = |key: String| {
        let client = client.clone();
        let dir = format!("{root}/directors/{key}");
        async move {
            let mut line = client.list_children(&dir).await.unwrap();
            line.sort();
            line.first().cloned()
        }
    };
    let mut nodes = std::collections::BTreeMap::new();
    for key in before[0].iter().chain(&before[1]) {
        nodes.insert(key.clone(), leader_node(key.clone()).await);
    }
    let handed_before: Vec<f64> = ports[..2].iter().map(|&p| handovers(p)).collect();

    // Director 2 stops: its outputs move, each to the one its key prefers of the two left.
    send_signal(directors[2].child.id(), libc::SIGTERM);
    assert_eq!(directors[2].exited().await.code(), Some(0));
    let two = expected(&[0, 1]);
    wait_until("director 2's outputs led by the directors left", || {
        let now = leading(&ports[..2]);
        if now[..] == two[..2] {
            Ok(())
        } else {
            Err(format!("leading {now:?}, preferred {:?}", &two[..2]))
        }
    });
    for i in 0..2 {
        assert!(
            before[i].is_subset(&two[i]),
            "director {i} lost an output it led: {before:?} -> {two:?}"
        );
    }
    // No output of the two left changed hands on the way: same election node, no handover.
    for (key, node) in &nodes {
        assert_eq!(&leader_node(key.clone()).await, node, "{key}");
    }
    let handed_after: Vec<f64> = ports[..2].iter().map(|&p| handovers(p)).collect();
    assert_eq!(
        handed_before, handed_after,
        "handovers counted by directors 0 and 1"
    );
}

/// `herald_director_handovers_total`, summed over the keys, from `/metrics`.
fn handovers(port: u16) -> f64 {
    let (code, text) = get(port, "/metrics");
    assert_eq!(code, 200, "{text}");
    text.lines()
        .filter(|l| l.starts_with("herald_director_handovers_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Issue #14: a value over the output's `max_value` is held, not published: the last value
/// stays (same version), the log and the hold record say why, and a value back under the
/// limit is published. A limit over what a znode takes is refused at start.
#[tokio::test]
async fn a_value_over_max_value_is_held_and_the_last_one_kept() {
    let root = root("dir_max_value");
    let client = client().await;
    let path = value_path(&root, "SIZED");
    let d = Director::spawn(&mut director(
        &root,
        "SIZED",
        "svc",
        &[
            "--preset",
            "hostports",
            "--settle",
            "0s",
            "--max-value",
            "20",
        ],
    ));
    register(&client, &root, "svc", "a", 1001).await;
    let stat = value_becomes(&client, &path, "10.0.0.1:1001").await;
    // Two instances make 27 bytes: over the limit.
    register(&client, &root, "svc", "b", 1002).await;
    d.wait_log("over the 20-byte limit (max_value)", 1).await;
    // The record is written just after the log line.
    let record = eventually("the hold record", || async {
        let (record, _) = client
            .get_data(&format!("{root}/holds/SIZED"))
            .await
            .map_err(|e| e.to_string())?;
        let record: serde_json::Value =
            serde_json::from_slice(&record).map_err(|e| e.to_string())?;
        if record["reason"] == "too_large" {
            Ok(record)
        } else {
            Err(record.to_string())
        }
    })
    .await;
    assert_eq!(record["instances"], 2, "{record}");
    let (data, now) = client.get_data(&path).await.unwrap();
    assert_eq!(data, b"10.0.0.1:1001", "held");
    assert_eq!(now.version, stat.version, "not rewritten");
    // Back under the limit: published, and the hold ends.
    client
        .delete(&format!("{root}/services/svc/a"), None)
        .await
        .unwrap();
    value_becomes(&client, &path, "10.0.0.2:1002").await;

    let out = run(herald("/unused").args([
        "director",
        "--check-config",
        "--key",
        "K",
        "--service",
        "svc",
        "--preset",
        "hostports",
        "--max-value",
        "2MiB",
    ]));
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("max_value \"2MiB\" is not a size"),
        "{}",
        describe(&out)
    );
}

/// `n` ephemeral instances of `service` (ids `i00000`…, addresses `10.1.x.y`, port 80), sent at
/// once (the client writes each request as it is made) and awaited in order; returns their
/// `host:port`s in id order, as `hostports` publishes them.
async fn register_many(client: &zkc::Client, root: &str, service: &str, n: usize) -> Vec<String> {
    let parent = format!("{root}/services/{service}");
    client
        .mkdir(
            &parent,
            &zkc::CreateMode::Persistent.with_acls(zkc::Acls::anyone_all()),
        )
        .await
        .unwrap();
    let node = zkc::CreateMode::Ephemeral.with_acls(zkc::Acls::anyone_all());
    let mut hostports = Vec::new();
    let mut docs = Vec::new();
    for i in 0..n {
        let id = format!("i{i:05}");
        let address = format!("10.1.{}.{}", i / 250, i % 250);
        docs.push((
            format!("{parent}/{id}"),
            format!(
                r#"{{"name":"{service}","id":"{id}","address":"{address}","port":80,"payload":{{"weight":1}},"serviceType":"DYNAMIC"}}"#
            ),
        ));
        hostports.push(format!("{address}:80"));
    }
    let sent: Vec<_> = docs
        .iter()
        .map(|(path, doc)| client.create(path, doc.as_bytes(), &node))
        .collect();
    for done in sent {
        done.await.unwrap();
    }
    hostports
}

/// Issue #14: a service of 10,000 instances is near what one ZooKeeper listing carries: the
/// director publishes it and warns, naming the service and what to do.
#[tokio::test]
async fn a_crowded_service_is_published_and_warned_about() {
    const N: usize = 10_000;
    let root = root("dir_crowded");
    let client = client().await;
    register_many(&client, &root, "crowd", N).await;
    let d = Director::spawn(&mut director(
        &root,
        "CROWD",
        "crowd",
        &["--preset", "hostports", "--settle", "0s"],
    ));
    d.wait_log(PUBLISHED, 1).await;
    let (value, _) = client.get_data(&value_path(&root, "CROWD")).await.unwrap();
    assert_eq!(value.split(|b| *b == b',').count(), N);
    let said = d.stderr();
    let warning = said
        .lines()
        .find(|l| l.contains("near what one ZooKeeper listing carries"))
        .unwrap_or_else(|| panic!("no warning: {said}"));
    assert!(
        warning.contains("service=crowd") && warning.contains("instances=10000"),
        "{warning}"
    );
    assert!(
        warning.contains("split it into several services"),
        "{warning}"
    );
}

/// The `took_ms` of the `n`th "listed every instance" line of `log` (1-based), with its count.
fn listing(log: &str, what: &str, n: usize) -> Option<(u64, usize)> {
    let line = log.lines().filter(|l| l.contains(what)).nth(n - 1)?;
    let field = |name: &str| -> Option<u64> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name))?
            .parse()
            .ok()
    };
    Some((field("took_ms=")?, field("instances=")? as usize))
}

/// Issue #14: `--relist-rate` paces the director's listings: at 200 requests a second, the
/// listing of 400 instances (401 requests, 21 of them at once) takes at least 1.9 s at start
/// and again after a reconnect (its service changed meanwhile), and the value is published
/// from it.
#[tokio::test]
async fn relist_rate_paces_the_listing_at_start_and_after_a_reconnect() {
    const N: usize = 400;
    let root = root("dir_paced");
    let client = client().await;
    let expected = register_many(&client, &root, "paced", N).await;
    let proxy = Proxy::start(zk().port);
    let d = Director::spawn(
        director(
            &root,
            "PACED",
            "paced",
            &[
                "--preset",
                "hostports",
                "--settle",
                "0s",
                "--relist-rate",
                "200",
            ],
        )
        .env("HERALD_ZK", proxy.connect_string()),
    );
    d.wait_log(PUBLISHED, 1).await;
    let (value, _) = client.get_data(&value_path(&root, "PACED")).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&value), expected.join(","));
    let (took, listed) =
        listing(&d.stderr(), "listed every instance", 1).expect("the listing is logged");
    assert_eq!(listed, N);
    assert!(took >= 1900, "paced at 200/s, 401 requests took {took} ms");

    // Cut, one instance more meanwhile, healed: the session stays, and the listing of the
    // service that changed is paced too.
    proxy.partition();
    d.wait_log("lost the connection to ZooKeeper", 1).await;
    register(&client, &root, "paced", "late", 1001).await;
    proxy.heal();
    let changed = "listed the instances of the services that changed";
    d.wait_log(changed, 1).await;
    let (took, listed) = listing(&d.stderr(), changed, 1).unwrap();
    assert_eq!(listed, N + 1);
    assert!(took >= 1900, "after the reconnect: {took} ms");
}

/// The reconcile lists beside the event loop: with a listing of 100 instances every few
/// hundred milliseconds (paced at 200 requests a second), while instances come and go, every
/// change still reaches the value, and once the churn stops further reconciles publish nothing
/// (a listing older than the events it raced never wins).
#[tokio::test]
async fn reconciling_beside_the_events_loses_no_change_and_publishes_nothing_more() {
    let root = root("dir_reconcile");
    let client = client().await;
    let path = value_path(&root, "RECON");
    let mut present = register_many(&client, &root, "recon", 100).await;
    let d = Director::spawn(
        director(
            &root,
            "RECON",
            "recon",
            &[
                "--preset",
                "hostports",
                "--settle",
                "0s",
                "--max-drop",
                "100%",
            ],
        )
        .args(["--reconcile", "100ms", "--reconcile-rate", "200", "-v"]),
    );
    value_becomes(&client, &path, &present.join(",")).await;
    // 60 changes, a few milliseconds apart: delete and re-create instances in turn.
    let node = zkc::CreateMode::Ephemeral.with_acls(zkc::Acls::anyone_all());
    for round in 0..60 {
        let i = (round * 37) % 100;
        let id = format!("i{i:05}");
        let child = format!("{root}/services/recon/{id}");
        let address = format!("10.1.{}.{}", i / 250, i % 250);
        if present[i].is_empty() {
            let doc = format!(
                r#"{{"name":"recon","id":"{id}","address":"{address}","port":80,"payload":{{"weight":1}},"serviceType":"DYNAMIC"}}"#
            );
            client.create(&child, doc.as_bytes(), &node).await.unwrap();
            present[i] = format!("{address}:80");
        } else {
            client.delete(&child, None).await.unwrap();
            present[i].clear();
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let truth: Vec<&String> = present.iter().filter(|p| !p.is_empty()).collect();
    let want = truth
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let stat = value_becomes(&client, &path, &want).await;
    // Five more reconciles of the (now quiet) service: nothing more is published.
    let seen = d.count("reconciling the instance cache");
    d.wait_log("reconciling the instance cache", seen + 5).await;
    let (data, now) = client.get_data(&path).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&data), want);
    assert_eq!(now.version, stat.version, "a reconcile published again");
}

/// An output's quiet period (`wait`) is the quiet of its own services: another service of the
/// same director changing all the time neither pushes its publish out to the `wait` maximum
/// nor wakes it.
#[tokio::test]
async fn churn_in_another_service_does_not_hold_back_an_outputs_quiet_period() {
    let root = root("dir_own_quiet");
    let s = Scratch::new("dir_own_quiet");
    let config = s.path("director.toml");
    std::fs::write(
        &config,
        "[[output]]\nkey = \"QUIET\"\nservice = \"calm\"\npreset = \"hostports\"\nwait = \"3s:60s\"\nsettle = \"0s\"\n\n\
         [[output]]\nkey = \"BUSY\"\nservice = \"busy\"\npreset = \"hostports\"\nsettle = \"0s\"\n",
    )
    .unwrap();
    let d = Director::spawn(herald(&root).arg("director").arg("--config").arg(&config));
    d.wait_log("leading", 2).await;
    let client = client().await;
    register(&client, &root, "busy", "x", 2000).await;
    value_becomes(&client, &value_path(&root, "BUSY"), "10.0.0.0:2000").await;

    // The busy service changes every 100 ms (its one instance's port flips) until told to stop.
    let stop = tokio_util::sync::CancellationToken::new();
    let churn = tokio::spawn({
        let (client, root, stop) = (client.clone(), root.clone(), stop.clone());
        async move {
            let mut changes = 0u32;
            while !stop.is_cancelled() {
                changes += 1;
                register(&client, &root, "busy", "x", 2000 + (changes % 2) as u16).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            changes
        }
    });
    let started = std::time::Instant::now();
    register(&client, &root, "calm", "a", 1001).await;
    value_becomes(&client, &value_path(&root, "QUIET"), "10.0.0.1:1001").await;
    let took = started.elapsed();
    stop.cancel();
    let changes = churn.await.unwrap();
    assert!(
        changes >= 5,
        "the other service changed all along ({changes} changes)"
    );
    assert!(
        took >= Duration::from_millis(2900),
        "published after its own quiet period of 3s, not before ({took:?})"
    );
}

/// Issue #14: after a reconnect in the same session, only the services that changed while the
/// director was cut off are listed again: one gained an instance, one lost one (deregistered),
/// one had an instance soft-drained in place by a real `herald announce` (its rewrite marks
/// the service). Each change reaches its value; the service that did not change costs a stat,
/// not a listing of its 50 instances.
#[tokio::test]
async fn after_a_reconnect_only_the_services_that_changed_are_listed_again() {
    let root = root("dir_relist_changed");
    let s = Scratch::new("dir_relist_changed");
    let client = client().await;
    let still = register_many(&client, &root, "still", 50).await;
    register(&client, &root, "grow", "a", 1001).await;
    register(&client, &root, "shrink", "a", 1001).await;
    register(&client, &root, "shrink", "b", 1002).await;
    register(&client, &root, "soft", "a0", 1000).await;
    let _agent = Director::spawn(
        herald(&root)
            .args(["announce", "--service", "soft", "--id", "db1"])
            .args(["--address", "10.9.0.1", "--port", "5432", "--control-dir"])
            .arg(s.path("control")),
    );
    let config = s.path("director.toml");
    let outputs: String = ["STILL", "GROW", "SHRINK", "SOFT"]
        .iter()
        .map(|key| {
            format!(
                "[[output]]\nkey = \"{key}\"\nservice = \"{}\"\npreset = \"hostports\"\nsettle = \"0s\"\n\n",
                key.to_lowercase()
            )
        })
        .collect();
    std::fs::write(&config, outputs).unwrap();
    let proxy = Proxy::start(zk().port);
    let d = Director::spawn(
        herald(&root)
            .arg("director")
            .arg("--config")
            .arg(&config)
            .env("HERALD_ZK", proxy.connect_string()),
    );
    value_becomes(&client, &value_path(&root, "STILL"), &still.join(",")).await;
    value_becomes(
        &client,
        &value_path(&root, "SOFT"),
        "10.0.0.0:1000,10.9.0.1:5432",
    )
    .await;
    value_becomes(
        &client,
        &value_path(&root, "SHRINK"),
        "10.0.0.1:1001,10.0.0.2:1002",
    )
    .await;

    proxy.partition();
    d.wait_log("lost the connection to ZooKeeper", 1).await;
    register(&client, &root, "grow", "b", 1002).await;
    deregister(&client, &root, "shrink", "b").await;
    let out = run(herald("/unused")
        .args(["drain", "--soft", "--control-dir"])
        .arg(s.path("control")));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    proxy.heal();

    value_becomes(
        &client,
        &value_path(&root, "GROW"),
        "10.0.0.1:1001,10.0.0.2:1002",
    )
    .await;
    value_becomes(&client, &value_path(&root, "SHRINK"), "10.0.0.1:1001").await;
    value_becomes(&client, &value_path(&root, "SOFT"), "10.0.0.0:1000").await;
    let log = d
        .wait_log("listed the instances of the services that changed", 1)
        .await;
    let line = log
        .lines()
        .find(|l| l.contains("looked for what changed while disconnected"))
        .expect("the stats are logged");
    assert!(line.contains("services=3 of=4"), "{line}");
    let line = log
        .lines()
        .find(|l| l.contains("listed the instances of the services that changed"))
        .unwrap();
    // grow's 2, shrink's 1 and soft's 2: never still's 50.
    assert!(line.contains("services=3 instances=5"), "{line}");
    assert_eq!(
        log.matches("listed every instance").count(),
        1,
        "one whole listing, at start:\n{log}"
    );
}

/// Issue #14: an output publishes as soon as its own services are listed, not after the whole
/// view: with the listing paced at 100 requests a second, a service of 300 instances takes
/// three seconds to list, and the output over a service of one is published before that
/// listing ends.
#[tokio::test]
async fn an_output_publishes_once_its_own_services_are_listed() {
    let root = root("dir_own_listing");
    let s = Scratch::new("dir_own_listing");
    let client = client().await;
    register_many(&client, &root, "large", 300).await;
    register(&client, &root, "small", "a", 1001).await;
    let config = s.path("director.toml");
    std::fs::write(
        &config,
        "[[output]]\nkey = \"LARGE\"\nservice = \"large\"\npreset = \"hostports\"\nsettle = \"0s\"\n\n\
         [[output]]\nkey = \"SMALL\"\nservice = \"small\"\npreset = \"hostports\"\nsettle = \"0s\"\n",
    )
    .unwrap();
    let d = Director::spawn(
        herald(&root)
            .arg("director")
            .arg("--config")
            .arg(&config)
            .args(["--relist-rate", "100"]),
    );
    value_becomes(&client, &value_path(&root, "SMALL"), "10.0.0.1:1001").await;
    let log = d.wait_log("listed every instance", 1).await;
    let small = log
        .lines()
        .position(|l| l.contains("key=SMALL") && l.contains(PUBLISHED))
        .expect("SMALL's publish is logged");
    let listed = log
        .lines()
        .position(|l| l.contains("listed every instance"))
        .unwrap();
    assert!(
        small < listed,
        "SMALL was published before the large service's listing ended:\n{log}"
    );
    // And the large one once its listing is done.
    d.wait_log(PUBLISHED, 2).await;
}
