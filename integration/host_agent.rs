//! `herald host`: one ZooKeeper session registers every process of a machine that says
//! `--host-agent SOCKET`. Each process keeps its checks and drain; the nodes are those it would
//! have made itself, owned by the host agent's session, and go as they would: on a failing
//! check (`unhealthy`), a drain (`drained`), a stop (`stopped`), a process that dies (`exited`),
//! and with the host agent's session when the host agent dies.

mod support;

use std::process::Command;

use support::{Daemon, *};
use zookeeper_client as zkc;

fn node(root: &str, id: &str) -> String {
    format!("{root}/services/pg/{id}")
}

/// The departure record's reason for `id`.
async fn departed(client: &zkc::Client, root: &str, id: &str) -> String {
    let path = format!("{root}/departures/pg/{id}");
    let (record, _) = client.get_data(&path).await.unwrap();
    let record: serde_json::Value = serde_json::from_slice(&record).unwrap();
    record["reason"].as_str().unwrap_or_default().to_owned()
}

/// The owner of `path` once it exists.
async fn owner_of(client: &zkc::Client, path: &str) -> i64 {
    eventually(&format!("{path} to be registered"), || async {
        match client.check_stat(path).await {
            Ok(Some(stat)) => Ok(stat.ephemeral_owner),
            other => Err(format!("{other:?}")),
        }
    })
    .await
}

async fn gone(client: &zkc::Client, path: &str) {
    eventually(&format!("{path} to be deleted"), || async {
        match client.check_stat(path).await {
            Ok(None) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await
}

/// The host agent's session, from its status page once it has one.
fn session_of(port: u16) -> i64 {
    wait_for("the host agent's session", || {
        let page = status(port);
        let id = page["session"]["session_id"].as_str()?;
        i64::from_str_radix(id.trim_start_matches("0x"), 16).ok()
    })
}

/// How many registration attempts (`op="register"` requests) the process at `port` made.
fn register_attempts(port: u16) -> u64 {
    let (code, body) = get(port, "/metrics");
    assert_eq!(code, 200, "{body}");
    body.lines()
        .find(|l| {
            l.starts_with("herald_zk_request_duration_seconds_count")
                && l.contains("op=\"register\"")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map_or(0, |n| n as u64)
}

fn host(root: &str, socket: &std::path::Path) -> Daemon {
    Daemon::spawn(
        herald(root)
            .args(["--session-timeout", "2s", "host", "--socket"])
            .arg(socket)
            .args(["--metrics-listen", "127.0.0.1:0"]),
    )
}

/// `herald announce --host-agent` for pg/`id`, healthy while `flag` exists.
fn agent(root: &str, s: &Scratch, id: &str, flag: &std::path::Path) -> Command {
    let mut command = herald(root);
    command
        .args(["announce", "--service", "pg", "--id", id])
        .args(["--address", "127.0.0.1", "--port", "5432"])
        .arg("--host-agent")
        .arg(s.path("host/host.sock"))
        .arg("--control-dir")
        .arg(s.path(&format!("control-{id}")))
        .arg("--check")
        .arg(format!("exec:test -e {}", flag.display()))
        .args(["--check-interval", "100ms", "--rise", "1", "--fall", "1"]);
    command
}

#[tokio::test]
async fn processes_register_through_one_host_session_and_leave_as_they_would_alone() {
    let root = root("host_agent");
    let s = Scratch::new("host_agent");
    let client = client().await;
    let socket = s.path("host/host.sock");
    let h = host(&root, &socket);
    let port = metrics_port(&h);
    let flags: Vec<_> = ["a", "b", "c", "d"]
        .iter()
        .map(|id| {
            let flag = s.path(&format!("healthy-{id}"));
            std::fs::write(&flag, "").unwrap();
            flag
        })
        .collect();
    let mut agents: Vec<Daemon> = ["a", "b", "c", "d"]
        .iter()
        .zip(&flags)
        .map(|(id, flag)| Daemon::spawn(&mut agent(&root, &s, id, flag)))
        .collect();

    // One session owns all four nodes: the host agent's.
    let session = session_of(port);
    for id in ["a", "b", "c", "d"] {
        assert_eq!(owner_of(&client, &node(&root, id)).await, session, "{id}");
    }
    wait_until("the host agent to count 4 registered", || {
        let (_, text) = get(port, "/metrics");
        if text.contains("herald_registered{service=\"pg\"} 4") {
            Ok(())
        } else {
            Err(text)
        }
    });
    // The node is what the process would have written: its own document.
    let (data, _) = client.get_data(&node(&root, "a")).await.unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&data).unwrap();
    assert_eq!(doc["id"], "a");
    assert_eq!(doc["address"], "127.0.0.1");

    // b's check fails: b goes, recorded unhealthy; healthy again, back.
    std::fs::remove_file(&flags[1]).unwrap();
    gone(&client, &node(&root, "b")).await;
    assert_eq!(departed(&client, &root, "b").await, "unhealthy");
    std::fs::write(&flags[1], "").unwrap();
    owner_of(&client, &node(&root, "b")).await;

    // a is drained with `herald drain`, which answers once the node is gone.
    let out = run(herald("/unused")
        .arg("drain")
        .arg("--control-dir")
        .arg(s.path("control-a")));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "pg/a: drained, not registered"
    );
    assert_eq!(client.check_stat(&node(&root, "a")).await.unwrap(), None);
    assert_eq!(departed(&client, &root, "a").await, "drained");

    // c is stopped: it exits 0 once its node is deleted, recorded stopped.
    agents[2].signal(libc::SIGTERM);
    assert_eq!(agents[2].exited().await.code(), Some(0));
    assert_eq!(client.check_stat(&node(&root, "c")).await.unwrap(), None);
    assert_eq!(departed(&client, &root, "c").await, "stopped");

    // d dies: the host agent sees its connection close and deletes the node, recorded exited.
    agents[3].signal(libc::SIGKILL);
    gone(&client, &node(&root, "d")).await;
    assert_eq!(departed(&client, &root, "d").await, "exited");

    // The host agent dies: b goes with its session; a new host agent on the same socket, and b
    // (still running) registers again through it, on the new session.
    let mut h = h;
    h.signal(libc::SIGKILL);
    h.exited().await;
    gone(&client, &node(&root, "b")).await;
    let h2 = host(&root, &socket);
    let port2 = metrics_port(&h2);
    let owner = owner_of(&client, &node(&root, "b")).await;
    assert_ne!(owner, session);
    assert_eq!(session_of(port2), owner);

    // The host agent stops: every node it holds is deleted (recorded stopped) before it exits.
    let mut h2 = h2;
    h2.signal(libc::SIGTERM);
    assert_eq!(h2.exited().await.code(), Some(0));
    assert_eq!(client.check_stat(&node(&root, "b")).await.unwrap(), None);
    assert_eq!(departed(&client, &root, "b").await, "stopped");
    drop(agents);
}

#[tokio::test]
async fn a_second_process_with_the_same_id_is_refused_as_a_duplicate() {
    let root = root("host_dup");
    let s = Scratch::new("host_dup");
    let client = client().await;
    let _h = host(&root, &s.path("host/host.sock"));
    let flag = s.path("healthy");
    std::fs::write(&flag, "").unwrap();
    let _first = Daemon::spawn(&mut agent(&root, &s, "x", &flag));
    owner_of(&client, &node(&root, "x")).await;
    let mut second = agent(&root, &s, "x", &flag);
    let out = tokio::task::spawn_blocking(move || run(&mut second))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(8), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("registered by another live session"),
        "{}",
        describe(&out)
    );
}

/// Issue #14: after the host agent's session expired, every node it held is created again on
/// the new session, at `--register-rate` (4 a second here: 8 creations span at least 1.5 s),
/// not in one burst.
#[tokio::test]
async fn after_a_new_session_the_host_agent_registers_again_at_its_rate() {
    let root = root("host_rate");
    let s = Scratch::new("host_rate");
    let client = client().await;
    let socket = s.path("host/host.sock");
    let mut h = Daemon::spawn(
        herald(&root)
            .args(["--session-timeout", "2s", "--rejoin-spread", "0s", "host"])
            .args(["--register-rate", "4", "--socket"])
            .arg(&socket)
            .args(["--metrics-listen", "127.0.0.1:0"]),
    );
    let port = metrics_port(&h);
    let first = session_of(port);
    let ids: Vec<String> = (0..8).map(|i| format!("r{i}")).collect();
    let flag = s.path("healthy");
    std::fs::write(&flag, "").unwrap();
    let _agents: Vec<Daemon> = ids
        .iter()
        .map(|id| Daemon::spawn(&mut agent(&root, &s, id, &flag)))
        .collect();
    for id in &ids {
        assert_eq!(owner_of(&client, &node(&root, id)).await, first);
    }
    let attempts = register_attempts(port);
    // Frozen past its session timeout: ZooKeeper expires the session and deletes every node.
    h.signal(libc::SIGSTOP);
    for id in &ids {
        gone(&client, &node(&root, id)).await;
    }
    h.signal(libc::SIGCONT);
    // The processes hear that their nodes went with the session: registered again one by one
    // over 2 s (4/s), all but the first say "not registered" for a quarter of a second or more.
    wait_until(
        "a process behind the host agent to say it is not registered",
        || {
            let mut said = String::new();
            for id in &ids {
                let out = run(herald("/unused")
                    .args(["status", "--control-dir"])
                    .arg(s.path(&format!("control-{id}"))));
                said.push_str(&String::from_utf8_lossy(&out.stdout));
            }
            if said.contains("not registered") {
                Ok(())
            } else {
                Err(said)
            }
        },
    );
    let second = wait_until("a new session", || {
        let now = session_of(port);
        if now != first {
            Ok(now)
        } else {
            Err(format!("still {now:#x}"))
        }
    });
    let mut created = Vec::new();
    for id in &ids {
        assert_eq!(owner_of(&client, &node(&root, id)).await, second, "{id}");
        let stat = client.check_stat(&node(&root, id)).await.unwrap().unwrap();
        created.push(stat.ctime);
    }
    created.sort();
    let span = created[7] - created[0];
    assert!(
        span >= 1500,
        "8 registrations at 4/s took {span} ms: {created:?}"
    );
    // One attempt each in the new session, not one more on the expired one each (16 before):
    // only an attempt sent before the client heard of the expiry can still be spent there.
    // (An attempt is counted once its reply is in: just after the node shows.)
    let made = wait_until("every registration's attempt counted", || {
        let made = register_attempts(port) - attempts;
        if made >= 8 {
            Ok(made)
        } else {
            Err(format!("{made} so far"))
        }
    });
    assert!(made <= 10, "{made} attempts for 8 registrations");
    h.signal(libc::SIGTERM);
    assert_eq!(h.exited().await.code(), Some(0));
}

/// Another local user cannot register through the host agent (its registrations would be
/// written with the host agent's ZooKeeper identity): even with the socket opened up by hand,
/// the host agent refuses the peer (SO_PEERCRED) and the process exits 6; nothing is written.
#[tokio::test]
async fn another_user_cannot_register_through_the_host_agent() {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: plain syscall.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("not root: this test needs setpriv as root to run as another user; skipped");
        return;
    }
    let root = root("host_other_user");
    let s = Scratch::new("host_other_user");
    let client = client().await;
    let socket = s.path("host/host.sock");
    let h = host(&root, &socket);
    session_of(metrics_port(&h));
    // Opened up by hand: every directory on the way, and the socket.
    let mut dir = socket.parent().map(std::path::Path::to_path_buf);
    while let Some(d) = dir {
        if d == std::path::Path::new("/tmp") || d.parent().is_none() {
            break;
        }
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o711)).unwrap();
        dir = d.parent().map(std::path::Path::to_path_buf);
    }
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let control = std::path::PathBuf::from(format!("/tmp/herald-other-{}", std::process::id()));
    let mut command = Command::new("setpriv");
    command
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_herald"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HERALD_ZK", zk().connect_string())
        .env("HERALD_ROOT", &root)
        .args(["announce", "--service", "pg", "--id", "intruder"])
        .args(["--address", "127.0.0.1", "--port", "5432"])
        .arg("--host-agent")
        .arg(&socket)
        .arg("--control-dir")
        .arg(&control);
    let out = tokio::task::spawn_blocking(move || run(&mut command))
        .await
        .unwrap();
    let _ = std::fs::remove_dir_all(&control);
    assert_eq!(out.status.code(), Some(6), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("registers only for its own user or root"),
        "{}",
        describe(&out)
    );
    assert!(
        h.stderr()
            .contains("refused a registration from another user"),
        "{}",
        h.stderr()
    );
    assert_eq!(
        client.check_stat(&node(&root, "intruder")).await.unwrap(),
        None
    );
}

/// `herald run --service … --host-agent`: the command's instance is registered through the
/// host agent; when the command ends by itself its node goes, recorded `exited`, and herald
/// exits with the command's status.
#[tokio::test]
async fn run_service_registers_through_the_host_agent() {
    let root = root("host_run");
    let s = Scratch::new("host_run");
    let client = client().await;
    let socket = s.path("host/host.sock");
    let h = host(&root, &socket);
    let session = session_of(metrics_port(&h));
    let done = s.path("done");
    let mut run_service = Daemon::spawn(
        herald(&root)
            .args(["run", "--service", "pg", "--id", "r1"])
            .args(["--address", "127.0.0.1", "--port", "5432"])
            .arg("--host-agent")
            .arg(&socket)
            .arg("--control-dir")
            .arg(s.path("control"))
            .args(["--", "sh", "-c"])
            .arg(format!(
                "while [ ! -e {} ]; do sleep 0.05; done; exit 3",
                done.display()
            )),
    );
    assert_eq!(owner_of(&client, &node(&root, "r1")).await, session);
    std::fs::write(&done, "").unwrap();
    assert_eq!(run_service.exited().await.code(), Some(3));
    gone(&client, &node(&root, "r1")).await;
    assert_eq!(departed(&client, &root, "r1").await, "exited");
}
