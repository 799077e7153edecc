//! `herald put / resolve / delete / ls` as a user runs them, against a real ZooKeeper.

mod support;

use std::process::Stdio;

use support::*;

fn code(out: &std::process::Output) -> Option<i32> {
    out.status.code()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn put_and_resolve_round_trip_bytes_exactly() {
    let root = root("round_trip");
    let all_bytes: Vec<u8> = (0..=255u8).collect();
    let cases: &[(&str, &[u8])] = &[
        ("MULTI_LINE", b"line one\nline two\n\n"),
        ("BINARY", &all_bytes),
        ("EMPTY", b""),
        ("URL", b"postgresql://u:p@db.example:5432/app"),
    ];
    for (key, value) in cases {
        let out = run_with_input(herald(&root).args(["put", key, "-"]), value);
        assert_eq!(code(&out), Some(0), "put {key}: {}", describe(&out));
        let out = run(herald(&root).args(["resolve", key]));
        assert_eq!(code(&out), Some(0), "resolve {key}: {}", describe(&out));
        assert_eq!(out.stdout, *value, "value of {key} changed on the way");
    }
    // From argv and from a file, and overwriting an existing key.
    let scratch = Scratch::new("round_trip");
    std::fs::write(scratch.path("v"), b"from a file\n").unwrap();
    let out = run(herald(&root)
        .args(["put", "URL", "--file"])
        .arg(scratch.path("v")));
    assert_eq!(code(&out), Some(0), "{}", describe(&out));
    assert_eq!(
        run(herald(&root).args(["resolve", "URL"])).stdout,
        b"from a file\n"
    );
    let out = run(herald(&root).args(["put", "URL", "from argv"]));
    assert_eq!(code(&out), Some(0), "{}", describe(&out));
    assert_eq!(
        run(herald(&root).args(["resolve", "URL"])).stdout,
        b"from argv"
    );
}

#[test]
fn resolve_missing_key_exits_3_or_prints_default() {
    let root = root("missing");
    let out = run(herald(&root).args(["resolve", "ABSENT"]));
    assert_eq!(code(&out), Some(3), "{}", describe(&out));
    assert!(out.stdout.is_empty());
    assert!(
        stderr(&out).contains("ABSENT is not published"),
        "{}",
        describe(&out)
    );

    let out = run(herald(&root).args(["resolve", "--default", "fallback", "ABSENT"]));
    assert_eq!(code(&out), Some(0), "{}", describe(&out));
    assert_eq!(out.stdout, b"fallback");
}

#[test]
fn resolve_wait_returns_once_a_later_put_lands() {
    let root = root("wait");
    let path = format!("{root}/environment/LATE");
    let waiter = herald(&root)
        .args(["resolve", "--wait", "LATE"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The waiter has set its watch on the server: only now publish.
    wait_for("resolve --wait to watch the key", || {
        (!watchers_of(zk(), &path).is_empty()).then_some(())
    });
    let out = run(herald(&root).args(["put", "LATE", "arrived"]));
    assert_eq!(code(&out), Some(0), "{}", describe(&out));
    let out = wait_output(waiter, DEADLINE);
    assert_eq!(code(&out), Some(0), "{}", describe(&out));
    assert_eq!(out.stdout, b"arrived");
}

#[test]
fn resolve_wait_times_out_with_exit_4_or_default() {
    let root = root("wait_timeout");
    let out = run(herald(&root).args(["resolve", "--wait", "--timeout", "300ms", "NEVER"]));
    assert_eq!(code(&out), Some(4), "{}", describe(&out));
    assert!(
        stderr(&out).contains("NEVER was not published within 300ms"),
        "{}",
        describe(&out)
    );

    let out = run(herald(&root).args([
        "resolve",
        "--wait",
        "--timeout",
        "300ms",
        "--default",
        "d",
        "NEVER",
    ]));
    assert_eq!(code(&out), Some(0), "{}", describe(&out));
    assert_eq!(out.stdout, b"d");
}

#[test]
fn invalid_keys_are_refused_and_nothing_is_written() {
    let root = root("invalid_keys");
    for key in [
        "1ABC",
        "FOO-BAR",
        "FOO.BAR",
        "A/B",
        "..",
        "",
        "A\u{1}B",
        "DATA BASE",
    ] {
        let out = run(herald(&root).args(["put", key, "value"]));
        assert_eq!(code(&out), Some(2), "put {key:?}: {}", describe(&out));
        let err = stderr(&out);
        assert!(err.contains("invalid key"), "put {key:?}: {err}");
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "one-line error for {key:?}: {err}"
        );
        let out = run(herald(&root).args(["resolve", key]));
        assert_eq!(code(&out), Some(2), "resolve {key:?}: {}", describe(&out));
    }
    block_on(async {
        let client = client().await;
        assert_eq!(
            client.check_stat(&root).await.unwrap(),
            None,
            "something was written under {root}"
        );
    });
}

#[test]
fn oversized_values_are_refused_before_sending() {
    let root = root("oversized");
    let scratch = Scratch::new("oversized");
    let limit = herald::values::MAX_VALUE_LEN;
    std::fs::write(scratch.path("big"), vec![b'x'; limit + 1]).unwrap();
    let out = run(herald(&root)
        .args(["put", "BIG", "--file"])
        .arg(scratch.path("big")));
    assert_eq!(code(&out), Some(2), "{}", describe(&out));
    assert!(stderr(&out).contains("BIG"), "{}", describe(&out));
    let out = run_with_input(
        herald(&root).args(["put", "BIG", "-"]),
        &vec![b'y'; 2 * 1024 * 1024],
    );
    assert_eq!(code(&out), Some(2), "{}", describe(&out));
    let out = run(herald(&root).args(["resolve", "BIG"]));
    assert_eq!(
        code(&out),
        Some(3),
        "nothing may be written: {}",
        describe(&out)
    );

    // Exactly the limit fits in ZooKeeper's default jute.maxbuffer.
    std::fs::write(scratch.path("max"), vec![b'z'; limit]).unwrap();
    let out = run(herald(&root)
        .args(["put", "MAX", "--file"])
        .arg(scratch.path("max")));
    assert_eq!(code(&out), Some(0), "{}", describe(&out));
    let out = run(herald(&root).args(["resolve", "MAX"]));
    assert_eq!(out.stdout.len(), limit, "{}", describe(&out));
}

#[test]
fn unreachable_zookeeper_fails_within_the_connect_timeout() {
    // Nothing listens: connections are refused.
    let refused = free_port();
    // Something listens but never speaks ZooKeeper.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    for port in [refused, silent_port] {
        let zk = format!("127.0.0.1:{port}");
        let started = std::time::Instant::now();
        let out = run(herald("/herald").env("HERALD_ZK", &zk).args([
            "--connect-timeout",
            "1s",
            "resolve",
            "KEY",
        ]));
        let took = started.elapsed();
        assert_eq!(code(&out), Some(5), "{}", describe(&out));
        let want = format!("cannot reach ZooKeeper at {zk} within 1s");
        assert!(stderr(&out).contains(&want), "{}", describe(&out));
        assert!(
            took < std::time::Duration::from_secs(5),
            "gave up only after {took:?}"
        );
    }
}

#[test]
fn a_dead_host_in_the_connect_string_is_skipped() {
    let root = root("dead_host");
    let hosts = format!("127.0.0.1:{},{}", free_port(), zk().connect_string());
    for args in [&["put", "K", "v"][..], &["resolve", "K"][..]] {
        let out = run(herald(&root).env("HERALD_ZK", &hosts).args(args));
        assert_eq!(code(&out), Some(0), "{args:?}: {}", describe(&out));
    }
}

#[test]
fn chroot_in_the_connect_string_is_created_and_honoured() {
    let chroot = "/it/chroot_tenant";
    let with_chroot = format!("{}{chroot}", zk().connect_string());
    let out =
        run(herald("/herald")
            .env("HERALD_ZK", &with_chroot)
            .args(["put", "IN_CHROOT", "yes"]));
    assert_eq!(code(&out), Some(0), "{}", describe(&out));
    let out = run(herald("/herald")
        .env("HERALD_ZK", &with_chroot)
        .args(["resolve", "IN_CHROOT"]));
    assert_eq!(out.stdout, b"yes", "{}", describe(&out));
    block_on(async {
        let client = client().await;
        let (data, _) = client
            .get_data(&format!("{chroot}/herald/environment/IN_CHROOT"))
            .await
            .expect("the value lives below the chroot");
        assert_eq!(data, b"yes");
    });
}

#[test]
fn delete_removes_and_reports_missing_keys() {
    let root = root("delete");
    assert_eq!(
        code(&run(herald(&root).args(["put", "GONE", "v"]))),
        Some(0)
    );
    let out = run(herald(&root).args(["delete", "GONE"]));
    assert_eq!(code(&out), Some(0), "{}", describe(&out));
    assert_eq!(code(&run(herald(&root).args(["resolve", "GONE"]))), Some(3));
    let out = run(herald(&root).args(["delete", "GONE"]));
    assert_eq!(code(&out), Some(3), "{}", describe(&out));
    let out = run(herald(&root).args(["delete", "--missing-ok", "GONE"]));
    assert_eq!(code(&out), Some(0), "{}", describe(&out));
}

#[test]
fn ls_lists_keys_with_sizes_and_services_with_instance_counts() {
    let root = root("ls");
    assert_eq!(
        code(&run(herald(&root).args(["put", "B_KEY", "12345"]))),
        Some(0)
    );
    assert_eq!(
        code(&run(herald(&root).args(["put", "A_KEY", "1"]))),
        Some(0)
    );
    // Two instances of pg and one of cache, as registrations will write them.
    let _client = block_on(async {
        use zookeeper_client::{Acls, CreateMode};
        let client = client().await;
        let dir = CreateMode::Persistent.with_acls(Acls::anyone_all());
        let eph = CreateMode::Ephemeral.with_acls(Acls::anyone_all());
        for (svc, id) in [("pg", "a"), ("pg", "b"), ("cache", "c")] {
            client
                .mkdir(&format!("{root}/services/{svc}"), &dir)
                .await
                .unwrap();
            client
                .create(&format!("{root}/services/{svc}/{id}"), b"{}", &eph)
                .await
                .unwrap();
        }
        client
    });
    let out = run(herald(&root).args(["ls", "--json"]));
    assert_eq!(code(&out), Some(0), "{}", describe(&out));
    let listed: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("ls --json prints JSON");
    assert_eq!(
        listed,
        serde_json::json!({
            "root": root,
            "environment": {"A_KEY": 1, "B_KEY": 5},
            "services": {"cache": 1, "pg": 2},
            "holds": {},
        })
    );
    let out = run(herald(&root).args(["ls"]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("A_KEY") && text.contains("pg") && text.contains("2 instances"),
        "{text}"
    );
    assert!(!text.contains("12345"), "ls must not print values: {text}");
}

#[test]
fn digest_auth_protects_values_and_stays_out_of_logs() {
    let root = root("auth");
    let secret_value = "postgresql://app:hunter2@db/app";
    let out = run(herald(&root).env("HERALD_ZK_AUTH", "svc:pa55word").args([
        "-vv",
        "put",
        "DB",
        secret_value,
    ]));
    assert_eq!(code(&out), Some(0), "{}", describe(&out));
    let logs = stderr(&out);
    assert!(
        !logs.contains("hunter2") && !logs.contains("pa55word"),
        "a secret reached the logs: {logs}"
    );

    // Another identity, or none, is refused by the value's ACL.
    let out = run(herald(&root).args(["resolve", "DB"]));
    assert_eq!(code(&out), Some(6), "{}", describe(&out));
    assert!(
        stderr(&out).contains("not authorized"),
        "{}",
        describe(&out)
    );
    let out = run(herald(&root)
        .env("HERALD_ZK_AUTH", "svc:wrong")
        .args(["resolve", "DB"]));
    assert_eq!(code(&out), Some(6), "{}", describe(&out));

    // The same identity, from a file, reads it.
    let scratch = Scratch::new("auth");
    std::fs::write(scratch.path("auth"), "svc:pa55word\n").unwrap();
    let out = run(herald(&root)
        .arg("--zk-auth-file")
        .arg(scratch.path("auth"))
        .args(["-vv", "resolve", "DB"]));
    assert_eq!(code(&out), Some(0), "{}", describe(&out));
    assert_eq!(out.stdout, secret_value.as_bytes());
    assert!(!stderr(&out).contains("pa55word"), "{}", describe(&out));

    // Malformed credentials are a usage error naming where they came from.
    let out = run(herald(&root)
        .env("HERALD_ZK_AUTH", "nocolon")
        .args(["resolve", "DB"]));
    assert_eq!(code(&out), Some(2), "{}", describe(&out));
    assert!(
        stderr(&out).contains("HERALD_ZK_AUTH"),
        "{}",
        describe(&out)
    );
}

#[test]
fn bad_flags_are_usage_errors_naming_the_flag() {
    let cases: &[(&[&str], &str)] = &[
        (&["--session-timeout", "0s", "ls"], "--session-timeout"),
        (&["--connect-timeout", "soon", "ls"], "--connect-timeout"),
        (&["--zk", "", "ls"], "--zk"),
        (&["--zk", "h1:notaport", "ls"], "--zk"),
        (&["--root", "relative", "ls"], "--root"),
        (&["resolve", "--timeout", "1s", "K"], "--wait"),
        (&["put", "K"], "VALUE"),
    ];
    for (args, names) in cases {
        let out = run(herald("/herald").args(*args));
        assert_eq!(code(&out), Some(2), "{args:?}: {}", describe(&out));
        assert!(
            stderr(&out).contains(names),
            "{args:?} should name {names}: {}",
            describe(&out)
        );
    }
}
