//! Registration against a real ZooKeeper: `herald announce` and `herald run --service`, with a
//! second client watching the instance node throughout.

mod support;

use std::process::Command;
use std::time::Duration;

use support::{Daemon as Agent, *};
use zookeeper_client as zkc;

fn node(root: &str, service: &str, id: &str) -> String {
    format!("{root}/services/{service}/{id}")
}

/// `herald announce` for `service` with a fixed id and address, plus `extra` flags.
fn announce(root: &str, scratch: &Scratch, service: &str, id: &str, extra: &[&str]) -> Command {
    let mut command = herald(root);
    command
        .args(["announce", "--service", service, "--id", id])
        .args(["--address", "127.0.0.1", "--port", "5432"])
        .arg("--control-dir")
        .arg(scratch.path("control"))
        .args(extra);
    command
}

/// `herald run --service api --id web1` around `sh -c body`, with an empty /environment and
/// `export` as /export when given.
fn run_service(root: &str, s: &Scratch, export: Option<&std::path::Path>, body: &str) -> Command {
    let env_dir = s.path("env");
    std::fs::create_dir_all(&env_dir).unwrap();
    let mut command = herald(root);
    command
        .args(["run", "--service", "api", "--id", "web1", "--port", "8080"])
        .args(["--address", "127.0.0.1", "--env-dir"])
        .arg(&env_dir)
        .arg("--control-dir")
        .arg(s.path("control"));
    if let Some(export) = export {
        command.arg("--export-dir").arg(export);
    }
    command.args(["--", "sh", "-c", body]);
    command
}

/// Waits (by watch, with a deadline) until `path` exists; returns its data and stat.
async fn appears(client: &zkc::Client, path: &str) -> (Vec<u8>, zkc::Stat) {
    tokio::time::timeout(DEADLINE, async {
        loop {
            let (stat, watcher) = client.check_and_watch_stat(path).await.unwrap();
            if stat.is_some() {
                match client.get_data(path).await {
                    Ok(found) => return found,
                    Err(zkc::Error::NoNode) => continue,
                    Err(err) => panic!("read {path}: {err}"),
                }
            }
            watcher.changed().await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{path} did not appear within {DEADLINE:?}"))
}

/// Waits (by watch, with a deadline) until `path` is gone.
async fn vanishes(client: &zkc::Client, path: &str) {
    tokio::time::timeout(DEADLINE, async {
        loop {
            let (stat, watcher) = client.check_and_watch_stat(path).await.unwrap();
            if stat.is_none() {
                return;
            }
            watcher.changed().await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{path} was not deleted within {DEADLINE:?}"))
}

fn document(data: &[u8]) -> serde_json::Value {
    serde_json::from_slice(data).expect("the instance document is JSON")
}

#[tokio::test]
async fn lifecycle_registers_with_metadata_and_sigterm_deletes_before_exit() {
    let root = root("lifecycle");
    let s = Scratch::new("lifecycle");
    let meta_file = s.path("meta.json");
    std::fs::write(&meta_file, r#"{"password":"s3cret-meta"}"#).unwrap();
    let path = node(&root, "pg", "db1");
    let watcher = client().await;
    let mut agent = Agent::spawn(
        announce(&root, &s, "pg", "db1", &["--label", "role=primary"])
            .args([
                "--meta",
                "user=app",
                "--endpoint",
                "metrics=9187",
                "--weight",
                "3",
            ])
            .arg("--meta-file")
            .arg(&meta_file)
            .arg("-vv"),
    );
    let (data, stat) = appears(&watcher, &path).await;
    assert_ne!(stat.ephemeral_owner, 0, "the node is ephemeral");
    let doc = document(&data);
    assert_eq!(doc["name"], "pg");
    assert_eq!(doc["id"], "db1");
    assert_eq!(doc["address"], "127.0.0.1");
    assert_eq!(doc["port"], 5432);
    assert_eq!(doc["serviceType"], "DYNAMIC");
    assert_eq!(doc["payload"]["labels"]["role"], "primary");
    assert_eq!(doc["payload"]["meta"]["user"], "app");
    assert_eq!(doc["payload"]["meta"]["password"], "s3cret-meta");
    assert_eq!(doc["payload"]["endpoints"]["metrics"], 9187);
    assert_eq!(doc["payload"]["weight"], 3);
    assert!(doc.get("enabled").is_none(), "Curator hides enabled:null");

    // SIGTERM: the node is deleted first, then herald exits 0.
    let (_, _, deleted) = watcher.get_and_watch_data(&path).await.unwrap();
    agent.signal(libc::SIGTERM);
    let status = agent.exited().await;
    assert_eq!(status.code(), Some(0), "stderr:\n{}", agent.stderr());
    assert_eq!(
        watcher.check_stat(&path).await.unwrap(),
        None,
        "the node is gone when herald has exited"
    );
    let event = tokio::time::timeout(DEADLINE, deleted.changed())
        .await
        .unwrap();
    assert_eq!(event.event_type, zkc::EventType::NodeDeleted);
    assert!(
        agent.stderr().contains("deregistered"),
        "deleted explicitly, not only by the session's close:\n{}",
        agent.stderr()
    );
    assert!(
        !agent.stderr().contains("s3cret-meta"),
        "metadata never reaches the logs:\n{}",
        agent.stderr()
    );
}

#[tokio::test]
async fn sigkill_leaves_the_node_until_the_session_times_out() {
    let root = root("sigkill");
    let s = Scratch::new("sigkill");
    let path = node(&root, "pg", "db1");
    let watcher = client().await;
    // Long enough that the node is certainly still there when the test looks right after the
    // kill, short enough to wait out.
    let mut agent =
        Agent::spawn(announce(&root, &s, "pg", "db1", &[]).args(["--session-timeout", "3s"]));
    let (_, stat) = appears(&watcher, &path).await;
    agent.signal(libc::SIGKILL);
    agent.exited().await;
    let still = watcher.check_stat(&path).await.unwrap();
    assert_eq!(
        still.map(|s| s.ephemeral_owner),
        Some(stat.ephemeral_owner),
        "a killed agent cannot deregister: its node stays until the session expires"
    );
    vanishes(&watcher, &path).await;
}

#[tokio::test]
async fn a_duplicate_id_is_refused_and_the_first_keeps_its_node() {
    let root = root("duplicate");
    let s = Scratch::new("duplicate");
    let path = node(&root, "pg", "db1");
    let watcher = client().await;
    let _first = Agent::spawn(&mut announce(&root, &s, "pg", "db1", &[]));
    let (_, stat) = appears(&watcher, &path).await;
    let other = Scratch::new("duplicate-second");
    let mut second =
        Agent::spawn(announce(&root, &other, "pg", "db1", &[]).args(["--session-timeout", "1s"]));
    let status = second.exited().await;
    assert_eq!(status.code(), Some(8), "stderr:\n{}", second.stderr());
    let errors: Vec<String> = second
        .stderr()
        .lines()
        .filter(|l| l.starts_with("herald: "))
        .map(str::to_owned)
        .collect();
    assert_eq!(errors.len(), 1, "one error line: {errors:?}");
    assert!(
        errors[0].contains("registered by another live session") && errors[0].contains("--id"),
        "{errors:?}"
    );
    let (_, now) = watcher.get_data(&path).await.unwrap();
    assert_eq!(
        now.ephemeral_owner, stat.ephemeral_owner,
        "never taken over"
    );
    assert_eq!(now.czxid, stat.czxid, "never deleted and re-created");
}

#[tokio::test]
async fn a_node_deleted_by_someone_else_is_recreated() {
    let root = root("recreate");
    let s = Scratch::new("recreate");
    let path = node(&root, "pg", "db1");
    let watcher = client().await;
    let _agent = Agent::spawn(&mut announce(&root, &s, "pg", "db1", &[]));
    let (_, stat) = appears(&watcher, &path).await;
    watcher.delete(&path, None).await.unwrap();
    let (_, again) = appears(&watcher, &path).await;
    assert_eq!(again.ephemeral_owner, stat.ephemeral_owner, "same session");
    assert_ne!(again.czxid, stat.czxid, "a new node");
}

#[tokio::test]
async fn after_a_forced_session_expiry_the_instance_is_registered_again() {
    let root = root("expiry");
    let s = Scratch::new("expiry");
    let path = node(&root, "pg", "db1");
    let proxy = Proxy::start(zk().port);
    let watcher = client().await;
    let _agent = Agent::spawn(
        announce(&root, &s, "pg", "db1", &[])
            .args(["--session-timeout", "1s"])
            .env("HERALD_ZK", proxy.connect_string()),
    );
    let (_, first) = appears(&watcher, &path).await;
    let (_, _, gone) = watcher.get_and_watch_data(&path).await.unwrap();
    proxy.partition();
    let event = tokio::time::timeout(DEADLINE, gone.changed())
        .await
        .unwrap();
    assert_eq!(
        event.event_type,
        zkc::EventType::NodeDeleted,
        "the session expired"
    );
    proxy.heal();
    let (_, second) = appears(&watcher, &path).await;
    assert_ne!(
        second.ephemeral_owner, first.ephemeral_owner,
        "registered again by the new session"
    );
}

#[tokio::test]
async fn health_checks_gate_the_registration_with_rise_and_fall() {
    let root = root("health");
    let s = Scratch::new("health");
    let path = node(&root, "pg", "db1");
    let flag = s.path("healthy");
    let runs = s.path("runs");
    // Each run of the check records its verdict and when (ms since the epoch), so the test can
    // count the verdicts that came before a registration or a deregistration.
    let check = format!(
        "exec:t=$(date +%s%3N); if test -e {flag}; then echo pass $t >> {runs}; else echo fail $t >> {runs}; exit 1; fi",
        flag = flag.display(),
        runs = runs.display()
    );
    let verdicts = || std::fs::read_to_string(&runs).unwrap_or_default();
    let watcher = client().await;
    let agent = Agent::spawn(&mut announce(
        &root,
        &s,
        "pg",
        "db1",
        &[
            "--check",
            &check,
            "--check-interval",
            "200ms",
            "--rise",
            "3",
            "--fall",
            "3",
        ],
    ));
    // Unhealthy from the start: the agent is up (its status says so) but not registered.
    let status = wait_for("the agent's control socket", || {
        let out = run(herald("/unused")
            .arg("status")
            .arg("--control-dir")
            .arg(s.path("control")));
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    });
    assert_eq!(status.trim(), "pg/db1: serving, not registered");
    assert_eq!(watcher.check_stat(&path).await.unwrap(), None);

    // The verdicts in a row that came before `until` (ms since the epoch): at least three
    // passes (rise) before the node's creation, three failures (fall) before its deletion —
    // one if rise/fall were ignored.
    let trailing = |word: &str, until: u64| {
        let text = verdicts();
        let runs: Vec<(&str, u64)> = text
            .lines()
            .filter_map(|l| l.split_once(' '))
            .filter_map(|(w, t)| Some((w, t.trim().parse().ok()?)))
            .filter(|(_, t)| *t <= until)
            .collect();
        runs.iter().rev().take_while(|(w, _)| *w == word).count()
    };
    std::fs::write(&flag, "").unwrap();
    let (_, created) = appears(&watcher, &path).await;
    let passes = trailing("pass", created.ctime as u64);
    assert!(
        passes >= 3,
        "registered after {passes} passes, not --rise 3: {}",
        verdicts()
    );
    std::fs::remove_file(&flag).unwrap();
    vanishes(&watcher, &path).await;
    // The agent logs the deletion once it is done: its time bounds the deletion's.
    let (deleted, log) = agent
        .wait_log_for("the deregistration", |log| {
            log.lines()
                .find(|l| l.contains("deregistered"))
                .and_then(|l| l.split_whitespace().next())
                .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
        })
        .await;
    let deleted = deleted
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let failures = trailing("fail", deleted);
    assert!(
        failures >= 3,
        "deregistered after {failures} failures, not --fall 3: {}\n{log}",
        verdicts()
    );
    std::fs::write(&flag, "").unwrap();
    appears(&watcher, &path).await;
}

#[tokio::test]
async fn drain_and_undrain_by_signal_and_by_command() {
    let root = root("drain");
    let s = Scratch::new("drain");
    let path = node(&root, "pg", "db1");
    let watcher = client().await;
    let agent = Agent::spawn(&mut announce(&root, &s, "pg", "db1", &[]));
    appears(&watcher, &path).await;
    agent.signal(libc::SIGUSR1);
    vanishes(&watcher, &path).await;
    agent.signal(libc::SIGUSR2);
    appears(&watcher, &path).await;

    let control = |verb: &str| {
        run(herald("/unused")
            .arg(verb)
            .arg("--control-dir")
            .arg(s.path("control")))
    };
    let out = control("drain");
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "pg/db1: drained, not registered"
    );
    assert_eq!(
        watcher.check_stat(&path).await.unwrap(),
        None,
        "`herald drain` returns once the node is gone"
    );
    let out = control("undrain");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "pg/db1: serving, registered",
        "{}",
        describe(&out)
    );
    assert!(watcher.check_stat(&path).await.unwrap().is_some());
    let out = run(herald("/unused")
        .args(["drain", "--service", "nope", "--control-dir"])
        .arg(s.path("control")));
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
}

/// The instance document at `path` once `accept` holds for it.
async fn document_becomes(
    client: &zkc::Client,
    path: &str,
    what: &str,
    accept: impl Fn(&serde_json::Value) -> bool,
) -> (serde_json::Value, zkc::Stat) {
    eventually(what, || async {
        match client.get_data(path).await {
            Ok((data, stat)) => {
                let doc = document(&data);
                if accept(&doc) {
                    Ok((doc, stat))
                } else {
                    Err(doc["payload"].to_string())
                }
            }
            Err(err) => Err(err.to_string()),
        }
    })
    .await
}

#[tokio::test]
async fn a_soft_drain_and_sighup_rewrite_the_node_in_place() {
    let root = root("soft_drain");
    let s = Scratch::new("soft_drain");
    let path = node(&root, "pg", "db1");
    let secret = s.path("secret");
    std::fs::write(&secret, "first-secret").unwrap();
    let export = s.path("export");
    let declaration = format!("cat {}", secret.display());
    script(&export, "password", &declaration);
    let watcher = client().await;
    let mut agent = Agent::spawn(
        announce(&root, &s, "pg", "db1", &["--weight", "2", "-v"])
            .arg("--export-dir")
            .arg(&export),
    );
    let (data, first) = appears(&watcher, &path).await;
    assert_eq!(
        document(&data)["payload"]["meta"]["password"],
        "first-secret"
    );
    let control = |args: &[&str]| {
        run(herald("/unused")
            .args(args)
            .arg("--control-dir")
            .arg(s.path("control")))
    };

    let out = control(&["drain", "--soft"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "pg/db1: drained softly (weight 0), registered"
    );
    let (data, stat) = watcher.get_data(&path).await.unwrap();
    assert_eq!(
        document(&data)["payload"]["weight"],
        0,
        "`herald drain --soft` returns once the node says weight 0"
    );
    assert_eq!(stat.czxid, first.czxid, "the same node, rewritten");
    let out = control(&["undrain"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "pg/db1: serving, registered",
        "{}",
        describe(&out)
    );
    assert_eq!(
        document(&watcher.get_data(&path).await.unwrap().0)["payload"]["weight"],
        2
    );

    // Credential rotation: the declaration prints something new; SIGHUP declares again.
    std::fs::write(&secret, "rotated-secret").unwrap();
    agent.signal(libc::SIGHUP);
    let (doc, stat) = document_becomes(&watcher, &path, "the rotated password", |d| {
        d["payload"]["meta"]["password"] == "rotated-secret"
    })
    .await;
    assert_eq!(doc["payload"]["weight"], 2);
    assert_eq!(
        stat.czxid, first.czxid,
        "rewritten in place, not re-registered"
    );

    // A declaration that fails leaves the node as it is.
    script(&export, "password", "echo half; exit 1");
    agent.signal(libc::SIGHUP);
    agent
        .wait_log("the instance keeps the metadata it has", 1)
        .await;
    let (data, _) = watcher.get_data(&path).await.unwrap();
    assert_eq!(
        document(&data)["payload"]["meta"]["password"],
        "rotated-secret"
    );

    assert_eq!(
        agent.stderr().matches("registered").count()
            - agent.stderr().matches("deregistered").count(),
        1,
        "registered once, never re-created:\n{}",
        agent.stderr()
    );
    agent.signal(libc::SIGTERM);
    assert_eq!(agent.exited().await.code(), Some(0), "{}", agent.stderr());
    agent.assert_never_logged(&["first-secret", "rotated-secret"]);
}

#[tokio::test]
async fn run_service_passes_sighup_to_cmd_and_declares_again() {
    sighup_passes_to_cmd_and_declares_again("run_sighup", false).await;
}

/// As PID 1 herald reaps every child: the declarations SIGHUP runs must be claimed through its
/// reaper (they were not: their status was lost and the metadata never changed).
#[tokio::test]
async fn as_pid_1_run_service_declares_again_on_sighup() {
    sighup_passes_to_cmd_and_declares_again("run_sighup_pid1", true).await;
}

async fn sighup_passes_to_cmd_and_declares_again(name: &str, pid1: bool) {
    let root = root(name);
    let s = Scratch::new(name);
    let path = node(&root, "api", "web1");
    let version = s.path("version");
    std::fs::write(&version, "1").unwrap();
    let export = s.path("export");
    script(
        &export,
        "CONFIG_VERSION",
        &format!("cat {}", version.display()),
    );
    let got_hup = s.path("got-hup");
    let body = format!(
        "trap 'touch {got}' HUP; while :; do sleep 0.01; done",
        got = got_hup.display()
    );
    let watcher = client().await;
    let mut command = run_service(&root, &s, Some(&export), &body);
    if pid1 {
        // herald as PID 1 of a new PID namespace; signals go to it, not to unshare.
        let mut unshare = std::process::Command::new("unshare");
        // SAFETY: plain syscall.
        if unsafe { libc::geteuid() } != 0 {
            unshare.args(["--user", "--map-root-user"]);
        }
        unshare
            .args(["--pid", "--fork", "--mount-proc", "--kill-child"])
            .arg(command.get_program())
            .args(command.get_args())
            .env_clear()
            .envs(command.get_envs().filter_map(|(k, v)| Some((k, v?))));
        command = unshare;
    }
    let mut agent = Agent::spawn(&mut command);
    let (data, first) = appears(&watcher, &path).await;
    assert_eq!(document(&data)["payload"]["meta"]["CONFIG_VERSION"], "1");
    let herald_pid = if pid1 {
        let children =
            std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", agent.pid())).unwrap();
        children.trim().parse::<u32>().expect("unshare's one child")
    } else {
        agent.pid()
    };
    std::fs::write(&version, "2").unwrap();
    send_signal(herald_pid, libc::SIGHUP);
    let (_, stat) = document_becomes(&watcher, &path, "CONFIG_VERSION 2", |d| {
        d["payload"]["meta"]["CONFIG_VERSION"] == "2"
    })
    .await;
    assert_eq!(stat.czxid, first.czxid, "rewritten in place");
    eventually("CMD to get the SIGHUP", || async {
        got_hup.exists().then_some(()).ok_or("not yet".to_owned())
    })
    .await;
    send_signal(herald_pid, libc::SIGTERM);
    vanishes(&watcher, &path).await;
    agent.exited().await;
}

#[tokio::test]
async fn run_service_registers_the_child_and_deregisters_when_it_exits() {
    let root = root("run_service");
    let s = Scratch::new("run_service");
    let path = node(&root, "api", "web1");
    let export_dir = s.path("export");
    script(&export_dir, "DB_USER", "echo app");
    let done = s.path("done");
    let body = format!(
        "while [ ! -e {} ]; do sleep 0.02; done; exit 3",
        done.display()
    );
    let watcher = client().await;
    let mut agent = Agent::spawn(&mut run_service(&root, &s, Some(&export_dir), &body));
    let (data, _) = appears(&watcher, &path).await;
    assert_eq!(document(&data)["payload"]["meta"]["DB_USER"], "app");
    std::fs::write(&done, "").unwrap();
    let status = agent.exited().await;
    assert_eq!(status.code(), Some(3), "CMD's code: {}", agent.stderr());
    assert_eq!(
        watcher.check_stat(&path).await.unwrap(),
        None,
        "deregistered before herald exits"
    );
    assert!(
        agent.stderr().contains("deregistered"),
        "{}",
        agent.stderr()
    );
}

#[tokio::test]
async fn run_service_deregisters_before_forwarding_sigterm() {
    let root = root("run_sigterm");
    let s = Scratch::new("run_sigterm");
    let path = node(&root, "api", "web1");
    let got_term = s.path("got-term");
    let body = format!(
        "trap 'touch {got}; exit 0' TERM; while :; do sleep 0.01; done",
        got = got_term.display()
    );
    let proxy = Proxy::start(zk().port);
    let watcher = client().await;
    let mut agent =
        Agent::spawn(run_service(&root, &s, None, &body).env("HERALD_ZK", proxy.connect_string()));
    appears(&watcher, &path).await;
    // Hold herald's requests: its delete cannot complete, so CMD must not hear of the SIGTERM.
    proxy.hold();
    agent.signal(libc::SIGTERM);
    let window = tokio::time::Instant::now() + Duration::from_millis(300);
    while tokio::time::Instant::now() < window {
        assert!(
            !got_term.exists(),
            "CMD got SIGTERM while its instance was still registered"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(watcher.check_stat(&path).await.unwrap().is_some());
    proxy.release();
    vanishes(&watcher, &path).await;
    let status = agent.exited().await;
    assert_eq!(status.code(), Some(0), "{}", agent.stderr());
    assert!(got_term.exists(), "SIGTERM reached CMD after the deletion");
}

#[test]
fn bad_registration_flags_exit_2_naming_the_flag() {
    let s = Scratch::new("badflags");
    let cases: [(&[&str], &str); 7] = [
        (&["--service", "pg"], "--port"),
        (&["--service", "pg", "--port", "0"], "--port 0"),
        (&["--service", "p/g", "--port", "1"], "service name"),
        (
            &["--service", "pg", "--port", "1", "--meta", "novalue"],
            "--meta",
        ),
        (
            &["--service", "pg", "--port", "1", "--endpoint", "m=x"],
            "--endpoint",
        ),
        (
            &["--service", "pg", "--port", "1", "--check", "ftp://x"],
            "--check",
        ),
        (
            &["--service", "pg", "--port", "1", "--uri-spec", "{x"],
            "--uri-spec",
        ),
    ];
    for (args, named) in cases {
        let out = run(herald("/it/badflags")
            .arg("announce")
            .args(["--address", "127.0.0.1", "--id", "x", "--control-dir"])
            .arg(s.path("control"))
            .args(args));
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", describe(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{args:?}: one line: {stderr}");
        assert!(stderr.contains(named), "{args:?} names {named}: {stderr}");
    }
}

/// A typo in --address must not register an instance nobody can reach (HAProxy's check would
/// then refuse every value that contains it, freezing the pool for everyone).
#[tokio::test]
async fn an_address_that_does_not_resolve_is_refused_before_registering() {
    let root = root("bad_address");
    let s = Scratch::new("bad_address");
    let watcher = client().await;
    let mut announce = herald(&root);
    announce.args([
        "announce",
        "--service",
        "web",
        "--id",
        "w1",
        "--port",
        "8080",
    ]);
    let mut run = herald(&root);
    run.args(["run", "--service", "web", "--id", "w2", "--port", "8080"])
        .arg("--env-dir")
        .arg(s.path("."));
    for command in [&mut announce, &mut run] {
        command
            .args(["--address", "db-typo.invalid", "--control-dir"])
            .arg(s.path("control"));
    }
    run.args(["--", "sleep", "30"]);
    for command in [announce, run] {
        let mut command = command;
        let mut agent = Agent::spawn(&mut command);
        let status = agent.exited().await;
        assert_eq!(status.code(), Some(2), "{}", agent.stderr());
        let stderr = agent.stderr();
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(
            stderr.contains("--address") && stderr.contains("db-typo.invalid"),
            "{stderr}"
        );
    }
    assert_eq!(
        watcher
            .check_stat(&format!("{root}/services/web"))
            .await
            .unwrap(),
        None,
        "nothing was registered"
    );
}

/// `herald drain --for D --reason R` (hacheck's downtimes): the reason shows in `herald status`,
/// and for a soft drain in the node (so in `herald ls`); the drain ends by itself after D, and a
/// later request is not undone by an earlier drain's expiry.
#[tokio::test]
async fn a_drain_with_a_reason_and_an_expiry_ends_by_itself() {
    let root = root("drain_for");
    let s = Scratch::new("drain_for");
    let path = node(&root, "pg", "db1");
    let watcher = client().await;
    let mut agent = Agent::spawn(&mut announce(&root, &s, "pg", "db1", &[]));
    appears(&watcher, &path).await;
    let control = |args: &[&str]| {
        run(herald(&root)
            .args(args)
            .arg("--control-dir")
            .arg(s.path("control")))
    };
    let out = control(&[
        "drain",
        "--keep-registered",
        "--for",
        "3s",
        "--reason",
        "kernel upgrade",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        said.starts_with(
            "pg/db1: drained softly (weight 0), registered; reason: kernel upgrade, until "
        ),
        "{said}"
    );
    let doc = document(&watcher.get_data(&path).await.unwrap().0);
    assert_eq!(doc["payload"]["weight"], 0);
    assert_eq!(doc["payload"]["drain"]["reason"], "kernel upgrade");
    let ls = run(herald(&root).args(["ls", "pg"]));
    assert!(
        String::from_utf8_lossy(&ls.stdout).contains("DRAINED reason: kernel upgrade, until"),
        "{}",
        describe(&ls)
    );
    // After 3s it serves again by itself, and the node loses the note.
    agent
        .wait_log("the drain's time is up: serving again", 1)
        .await;
    document_becomes(&watcher, &path, "weight 1 again", |d| {
        d["payload"]["weight"] == 1 && d["payload"].get("drain").is_none()
    })
    .await;
    let out = control(&["status"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "pg/db1: serving, registered"
    );
    // A drain out for 2s, then a plain drain: the first one's expiry leaves it drained.
    assert!(control(&["drain", "--for", "2s"]).status.success());
    vanishes(&watcher, &path).await;
    let out = control(&["drain", "--reason", "for good"]);
    assert!(out.status.success(), "{}", describe(&out));
    let out = control(&["drain", "--reason", "\u{7}bell"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    agent
        .wait_log("an earlier drain's time is up; the later request stands", 1)
        .await;
    let out = control(&["status"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "pg/db1: drained, not registered; reason: for good",
        "{}",
        describe(&out)
    );
    agent.signal(libc::SIGTERM);
    agent.exited().await;
}

/// The departure record says why the node went: `exited` when the command `herald run
/// --service` runs ended by itself, `stopped` when herald was asked to stop.
#[tokio::test]
async fn the_departure_record_says_why_the_instance_went() {
    let root = root("departure_reason");
    let s = Scratch::new("departure_reason");
    let watcher = client().await;
    let path = node(&root, "api", "web1");
    let record = format!("{root}/departures/api/web1");
    let flag = s.path("running");
    std::fs::write(&flag, "").unwrap();
    let body = format!(
        "while test -e {}; do sleep 0.05; done; exit 3",
        flag.display()
    );
    let mut first = Agent::spawn(&mut run_service(&root, &s, None, &body));
    appears(&watcher, &path).await;
    // The command ends by itself.
    std::fs::remove_file(&flag).unwrap();
    assert_eq!(first.exited().await.code(), Some(3));
    let (data, _) = watcher.get_data(&record).await.unwrap();
    assert!(
        String::from_utf8_lossy(&data).contains(r#""reason":"exited""#),
        "{}",
        String::from_utf8_lossy(&data)
    );
    // Asked to stop: a registration removes the old record, the stop writes `stopped`.
    std::fs::write(&flag, "").unwrap();
    let second = Agent::spawn(&mut run_service(&root, &s, None, &body));
    appears(&watcher, &path).await;
    second.signal(libc::SIGTERM);
    eventually("a departure record saying stopped", || {
        let (watcher, record) = (&watcher, &record);
        async move {
            match watcher.get_data(record).await {
                Ok((data, _)) => {
                    let data = String::from_utf8_lossy(&data).into_owned();
                    if data.contains(r#""reason":"stopped""#) {
                        Ok(())
                    } else {
                        Err(data)
                    }
                }
                Err(err) => Err(err.to_string()),
            }
        }
    })
    .await;
}
