//! Interoperability with Apache Curator's service discovery (curator-x-discovery 5.4, Debian's
//! jars), proven with the real library: a small Java program (integration/curator/) lists what
//! herald registered through `ServiceDiscovery.queryForInstances`, and registers an instance that
//! herald then reads.

mod support;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use support::*;

/// The compiled probe, built once per test binary with `scripts/curator build`.
fn probe_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = repo_dir().join("target/curator-probe");
        let out = run(Command::new(repo_dir().join("scripts/curator"))
            .arg("build")
            .arg(&dir));
        assert!(
            out.status.success(),
            "build the Curator probe: {}",
            describe(&out)
        );
        dir
    })
}

fn probe(args: &[&str]) -> Command {
    let mut command = Command::new(repo_dir().join("scripts/curator"));
    command.arg("run").arg(probe_dir()).args(args);
    command
}

/// Curator's view of `service`: one JSON object per instance.
fn curator_lists(mode: &str, base: &str, service: &str) -> Vec<serde_json::Value> {
    let out = run(&mut probe(&[mode, &zk().connect_string(), base, service]));
    assert!(out.status.success(), "Curator {mode}: {}", describe(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("the probe prints JSON lines"))
        .collect()
}

#[test]
fn curator_discovers_what_herald_registers() {
    let root = root("curator_reads");
    let base = format!("{root}/services");
    let s = Scratch::new("curator_reads");
    let mut agent = herald(&root)
        .args([
            "announce",
            "--service",
            "pg",
            "--id",
            "db1",
            "--address",
            "10.0.0.5",
        ])
        .args([
            "--port",
            "5432",
            "--label",
            "role=primary",
            "--meta",
            "user=app",
        ])
        .args([
            "--endpoint",
            "metrics=9187",
            "--uri-spec",
            "{scheme}://{address}:{port}",
        ])
        .arg("--control-dir")
        .arg(s.path("control"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let listed = wait_for("Curator to list herald's instance", || {
        let listed = curator_lists("list", &base, "pg");
        (!listed.is_empty()).then_some(listed)
    });
    let _ = agent.kill();
    let _ = agent.wait();
    assert_eq!(listed.len(), 1, "{listed:?}");
    let i = &listed[0];
    assert_eq!(i["id"], "db1");
    assert_eq!(i["name"], "pg");
    assert_eq!(i["address"], "10.0.0.5");
    assert_eq!(i["port"], 5432);
    assert_eq!(i["serviceType"], "DYNAMIC");
    assert_eq!(i["payload"]["labels"]["role"], "primary");
    assert_eq!(i["payload"]["meta"]["user"], "app");
    assert_eq!(i["payload"]["endpoints"]["metrics"], 9187);
    assert_eq!(i["payload"]["weight"], 1);
}

#[test]
fn curator_service_provider_does_not_hide_herald_instances() {
    let root = root("curator_provider");
    let base = format!("{root}/services");
    let s = Scratch::new("curator_provider");
    let mut agent = herald(&root)
        .args([
            "announce",
            "--service",
            "api",
            "--id",
            "web1",
            "--address",
            "10.0.0.6",
        ])
        .args(["--port", "8080", "--control-dir"])
        .arg(s.path("control"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the instance is registered (as a plain client sees it), then ask the provider.
    wait_for("herald's instance", || {
        let out = run(herald(&root).args(["ls", "api"]));
        String::from_utf8_lossy(&out.stdout)
            .starts_with("web1 ")
            .then_some(())
    });
    let provided = curator_lists("provider", &base, "api");
    let _ = agent.kill();
    let _ = agent.wait();
    assert_eq!(
        provided.len(),
        1,
        "the provider's enabled filter keeps it: {provided:?}"
    );
    assert_eq!(provided[0]["address"], "10.0.0.6");
}

#[test]
fn herald_reads_what_curator_registers() {
    let root = root("curator_writes");
    let base = format!("{root}/services");
    let mut curator = probe(&[
        "register",
        &zk().connect_string(),
        &base,
        "cache",
        "java-1",
        "10.0.0.9",
        "11211",
        "zone=a",
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let mut lines = Lines::of(&mut curator);
    lines.expect("Curator registered", |l| l == "registered");

    let out = run(herald(&root).args(["ls", "cache", "--json"]));
    assert!(out.status.success(), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let listed: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(listed.len(), 1, "{stdout}");
    assert_eq!(listed[0]["id"], "java-1");
    assert_eq!(listed[0]["address"], "10.0.0.9");
    assert_eq!(listed[0]["port"], 11211);
    assert_eq!(listed[0]["metaKeys"], serde_json::json!(["zone"]));
    let out = run(herald(&root).arg("ls"));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("cache  1 instance"),
        "{}",
        describe(&out)
    );

    // Closing its stdin makes the probe unregister and exit.
    drop(curator.stdin.take());
    let out = wait_output(curator, DEADLINE);
    assert!(out.status.success(), "{}", describe(&out));
}
