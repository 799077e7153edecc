//! `--metrics-listen`: each long-running command serves Prometheus metrics and a status page.
//! The exposition is read with the Python `prometheus_client` OpenMetrics parser (a real
//! scraper's), and the counters and gauges must move as the command's work does.

mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};

use support::{Daemon, *};

/// One sample: its name and labels (sorted), as the parser gives them.
type Samples = BTreeMap<String, f64>;

/// Scrapes `/metrics` and parses it with `prometheus_client`'s OpenMetrics parser; each sample
/// is keyed `name{label="value",…}` (labels sorted).
fn scrape(port: u16) -> Samples {
    let (status, text) = get(port, "/metrics");
    assert_eq!(status, 200, "{text}");
    const PARSE: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        labels = ",".join('%s="%s"' % (k, v) for k, v in sorted(s.labels.items()))
        out["%s{%s}" % (s.name, labels)] = s.value
print(json.dumps(out))
"#;
    let mut python = Command::new("python3")
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    python
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = python.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the OpenMetrics parser refused the exposition: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Scrapes until `sample` has `value`; returns the scrape.
fn scrape_until(port: u16, sample: &str, value: f64) -> Samples {
    wait_until(&format!("{sample} = {value}"), || {
        let samples = scrape(port);
        match samples.get(sample) {
            Some(v) if *v == value => Ok(samples),
            other => Err(format!("{sample} is {other:?}")),
        }
    })
}

#[tokio::test]
async fn a_director_counts_its_publishes_and_holds() {
    let root = root("tm_director");
    let client = client().await;
    let d = Daemon::spawn(
        herald(&root)
            .args(["director", "--key", "HOSTS", "--service", "pg"])
            .args(["--preset", "hostports", "--settle", "0s"])
            .args(["--metrics-listen", "127.0.0.1:0"]),
    );
    let port = metrics_port(&d);
    let samples = scrape_until(port, r#"herald_director_leading{key="HOSTS"}"#, 1.0);
    assert_eq!(samples.get("herald_zk_connected{}"), Some(&1.0));
    assert!(
        samples
            .keys()
            .any(|k| k.starts_with("herald_build_info{") && k.contains(r#"command="director""#)),
        "{samples:?}"
    );
    let dir =
        zookeeper_client::CreateMode::Persistent.with_acls(zookeeper_client::Acls::anyone_all());
    client
        .mkdir(&format!("{root}/services/pg"), &dir)
        .await
        .unwrap();
    let node =
        zookeeper_client::CreateMode::Ephemeral.with_acls(zookeeper_client::Acls::anyone_all());
    for (id, n) in [("a", 1), ("b", 2)] {
        let doc = format!(
            r#"{{"name":"pg","id":"{id}","address":"10.0.0.{n}","port":5432,"payload":{{"weight":1}},"serviceType":"DYNAMIC"}}"#
        );
        client
            .create(&format!("{root}/services/pg/{id}"), doc.as_bytes(), &node)
            .await
            .unwrap();
    }
    value_becomes(
        &client,
        &format!("{root}/environment/HOSTS"),
        "10.0.0.1:5432,10.0.0.2:5432",
    )
    .await;
    // The director counts the publish once ZooKeeper's reply reaches it, which may be after the
    // watcher above saw the value: wait for the count, not for the value.
    let samples = scrape_until(
        port,
        r#"herald_director_value_bytes{key="HOSTS"}"#,
        "10.0.0.1:5432,10.0.0.2:5432".len() as f64,
    );
    assert_eq!(samples[r#"herald_director_instances{key="HOSTS"}"#], 2.0);
    assert!(
        samples[r#"herald_director_publishes_total{key="HOSTS",result="published"}"#] >= 1.0,
        "{samples:?}"
    );
    for op in ["multi", "list_service", "get_data"] {
        let count = format!(r#"herald_zk_request_duration_seconds_count{{op="{op}"}}"#);
        assert!(samples.get(&count) >= Some(&1.0), "{count}: {samples:?}");
    }
    assert!(samples[r#"herald_director_convergence_seconds_count{key="HOSTS"}"#] >= 1.0);
    assert!(samples[r#"herald_director_last_publish_timestamp_seconds{key="HOSTS"}"#] > 1.7e9);

    // Both gone (their sessions, as far as the director knows): held by min_instances, one hold
    // more than before (the director also held while nothing was registered yet).
    let holds = r#"herald_director_holds_total{key="HOSTS",reason="min_instances"}"#;
    let before = samples.get(holds).copied().unwrap_or(0.0);
    for id in ["a", "b"] {
        client
            .delete(&format!("{root}/services/pg/{id}"), None)
            .await
            .unwrap();
    }
    let samples = scrape_until(port, r#"herald_director_held{key="HOSTS"}"#, 1.0);
    assert_eq!(samples.get(holds), Some(&(before + 1.0)), "{samples:?}");
    let page = status(port);
    let output = &page["outputs"]["HOSTS"];
    assert_eq!(output["leading"], true, "{page}");
    assert_eq!(output["hold"]["reason"], "min_instances", "{page}");
    assert_eq!(page["session"]["state"], "connected", "{page}");
    // Digests and sizes only: the value itself is never on the page.
    let (_, body) = get(port, "/status.json");
    assert!(!body.contains("10.0.0.1"), "{body}");
    let (code, html) = get(port, "/status");
    assert_eq!(code, 200);
    assert!(html.contains("<title>herald status</title>"), "{html}");
}

#[tokio::test]
async fn an_agent_counts_registrations_checks_and_drains() {
    let root = root("tm_announce");
    let s = Scratch::new("tm_announce");
    let flag = s.path("healthy");
    std::fs::write(&flag, "").unwrap();
    let agent = Daemon::spawn(
        herald(&root)
            .args(["announce", "--service", "pg", "--id", "db1"])
            .args(["--address", "127.0.0.1", "--port", "5432"])
            .arg("--check")
            .arg(format!("exec:test -e {}", flag.display()))
            .args(["--check-interval", "100ms", "--rise", "1", "--fall", "1"])
            .arg("--control-dir")
            .arg(s.path("control"))
            .args(["--metrics-listen", "127.0.0.1:0"]),
    );
    let port = metrics_port(&agent);
    let samples = scrape_until(port, r#"herald_registered{service="pg"}"#, 1.0);
    assert_eq!(samples[r#"herald_registrations_total{service="pg"}"#], 1.0);
    assert!(
        samples[r#"herald_check_duration_seconds_count{check="exec:test",service="pg"}"#] >= 1.0,
        "{samples:?}"
    );
    assert_eq!(
        samples[r#"herald_check_transitions_total{check="exec:test",direction="up",service="pg"}"#],
        1.0
    );

    // The check fails: deregistered as unhealthy.
    std::fs::remove_file(&flag).unwrap();
    let samples = scrape_until(port, r#"herald_registered{service="pg"}"#, 0.0);
    assert_eq!(
        samples.get(r#"herald_deregistrations_total{reason="unhealthy",service="pg"}"#),
        Some(&1.0),
        "{samples:?}"
    );
    assert_eq!(
        samples[r#"herald_check_transitions_total{check="exec:test",direction="down",service="pg"}"#],
        1.0
    );
    let page = status(port);
    let reg = &page["registrations"]["pg/db1"];
    assert_eq!(reg["registered"], false, "{page}");
    assert_eq!(reg["last_departure"], "unhealthy", "{page}");
    assert_eq!(reg["checks"]["exec:test"]["passing"], false, "{page}");

    // Healthy again, then drained out by SIGUSR1.
    std::fs::write(&flag, "").unwrap();
    scrape_until(port, r#"herald_registered{service="pg"}"#, 1.0);
    agent.signal(libc::SIGUSR1);
    let samples = scrape_until(port, r#"herald_drained{service="pg"}"#, 1.0);
    let samples = if samples.get(r#"herald_deregistrations_total{reason="drained",service="pg"}"#)
        == Some(&1.0)
    {
        samples
    } else {
        scrape_until(
            port,
            r#"herald_deregistrations_total{reason="drained",service="pg"}"#,
            1.0,
        )
    };
    assert_eq!(samples[r#"herald_registrations_total{service="pg"}"#], 2.0);
    // Two registrations and two deregistrations, each timed.
    for op in ["register", "deregister"] {
        let count = format!(r#"herald_zk_request_duration_seconds_count{{op="{op}"}}"#);
        assert!(samples.get(&count) >= Some(&2.0), "{count}: {samples:?}");
    }
}

#[test]
fn a_watch_counts_its_applies_and_a_failed_reload() {
    let root = root("tm_watch");
    let s = Scratch::new("tm_watch");
    let out = s.path("app.conf");
    let flag = s.path("reload-ok");
    std::fs::write(&flag, "").unwrap();
    let put = |value: &str| {
        let done = run(herald(&root).args(["put", "CONF", value]));
        assert!(done.status.success(), "{}", describe(&done));
    };
    put("v1");
    let watch = Daemon::spawn(
        herald(&root)
            .args(["watch", "CONF", "--no-cache", "--reload"])
            .arg(format!("test -e {}", flag.display()))
            .arg("--out")
            .arg(&out)
            .args(["--metrics-listen", "127.0.0.1:0"]),
    );
    let port = metrics_port(&watch);
    let file = out.display().to_string();
    let applied = format!(r#"herald_watch_applies_total{{file="{file}",result="applied"}}"#);
    let samples = scrape_until(port, &applied, 1.0);
    assert!(
        samples[&format!(r#"herald_watch_last_success_timestamp_seconds{{file="{file}"}}"#)]
            > 1.7e9
    );
    let age = samples[&format!(r#"herald_watch_value_age_seconds{{file="{file}"}}"#)];
    assert!((0.0..60.0).contains(&age), "{age}");

    // The program refuses to reload: the failure is counted, the status says so.
    std::fs::remove_file(&flag).unwrap();
    put("v2");
    let samples = wait_until("a failed reload counted", || {
        let samples = scrape(port);
        let failed: f64 = samples
            .iter()
            .filter(|(k, _)| {
                k.starts_with("herald_watch_applies_total{")
                    && (k.contains(r#"result="reload_failed""#)
                        || k.contains(r#"result="rolled_back""#))
            })
            .map(|(_, v)| v)
            .sum();
        if failed >= 1.0 {
            Ok(samples)
        } else {
            Err(format!("{samples:?}"))
        }
    });
    assert_eq!(samples[&applied], 1.0, "{samples:?}");
    let page = status(port);
    let view = &page["watches"][file.as_str()];
    assert!(
        matches!(
            view["last_result"].as_str(),
            Some("reload_failed" | "rolled_back")
        ),
        "{page}"
    );
    assert_eq!(view["keys"][0], "CONF", "{page}");
}

#[test]
fn run_service_serves_its_registration() {
    let root = root("tm_run");
    let s = Scratch::new("tm_run");
    let env_dir = s.path("env");
    std::fs::create_dir_all(&env_dir).unwrap();
    let mut run_ = Daemon::spawn(
        herald(&root)
            .args(["run", "--service", "api", "--id", "web1", "--port", "8080"])
            .args(["--address", "127.0.0.1", "--env-dir"])
            .arg(&env_dir)
            .arg("--control-dir")
            .arg(s.path("control"))
            .args(["--metrics-listen", "127.0.0.1:0", "--stop-delay", "0s"])
            .args(["--", "sleep", "600"]),
    );
    let port = metrics_port(&run_);
    let samples = scrape_until(port, r#"herald_registered{service="api"}"#, 1.0);
    assert!(
        samples
            .keys()
            .any(|k| k.starts_with("herald_build_info{") && k.contains(r#"command="run""#)),
        "{samples:?}"
    );
    let page = status(port);
    assert_eq!(
        page["registrations"]["api/web1"]["registered"], true,
        "{page}"
    );
    run_.signal(libc::SIGTERM);
    block_on(run_.exited());
}

#[test]
fn run_without_service_or_supervise_refuses_the_flag() {
    let s = Scratch::new("tm_run_exec");
    let env_dir = s.path("env");
    std::fs::create_dir_all(&env_dir).unwrap();
    let out = run(herald("/unused")
        .args(["run", "--env-dir"])
        .arg(&env_dir)
        .args(["--metrics-listen", "9464", "--", "true"]));
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("--metrics-listen needs --service or --supervise"),
        "{}",
        describe(&out)
    );
}

#[test]
fn the_gateway_counts_requests_and_where_answers_came_from() {
    let root = root("tm_gateway");
    let gw = Daemon::spawn(
        herald(&root)
            .arg("gateway")
            .args(["--listen", "127.0.0.1:0"]),
    );
    let port = wait_for("the gateway to listen", || {
        listening_port(&gw.stderr(), "serving HTTP")
    });
    wait_for("the gateway to be ready", || {
        (get(port, "/ready").0 == 200).then_some(())
    });
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(
        stream,
        "POST /environment/GREETING HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
    )
    .unwrap();
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    assert!(reply.starts_with("HTTP/1.1 204"), "{reply}");
    for _ in 0..3 {
        assert_eq!(
            get(port, "/environment/GREETING"),
            (200, "hello".to_owned())
        );
    }
    let samples = scrape(port);
    assert_eq!(
        samples.get(r#"herald_gateway_requests_total{code="204",method="POST"}"#),
        Some(&1.0),
        "{samples:?}"
    );
    assert!(samples[r#"herald_gateway_requests_total{code="200",method="GET"}"#] >= 3.0);
    let answered: f64 = ["memory", "zookeeper"]
        .iter()
        .filter_map(|s| {
            samples.get(&format!(
                r#"herald_gateway_value_answers_total{{source="{s}"}}"#
            ))
        })
        .sum();
    assert_eq!(answered, 3.0, "{samples:?}");
    assert!(samples[r#"herald_zk_request_duration_seconds_count{op="set_data"}"#] >= 1.0);
    let page = status(port);
    assert_eq!(page["gateway"]["ready"], true, "{page}");
    assert_eq!(page["session"]["state"], "connected", "{page}");
}

/// Debian's Chromium, headless, with what keeps it off the network; `args` are its own.
fn chromium(profile: &std::path::Path, args: &[&str], url: &str) -> std::process::Output {
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .output()
        .expect("chromium (Debian's package; scripts/test installs it)");
    assert!(out.status.success(), "chromium failed: {}", describe(&out));
    out
}

/// What the page printed to the browser's console (Chromium logs each message as `CONSOLE`).
fn console_lines(stderr: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(stderr)
        .lines()
        .filter(|l| l.contains(":CONSOLE"))
        .map(str::to_owned)
        .collect()
}

/// The page at `url` as the browser made it once its script ran; fails on script errors or
/// anything in the console.
async fn rendered(s: &Scratch, url: &str) -> String {
    let page = tokio::task::spawn_blocking({
        let (profile, url) = (s.path("profile"), url.to_owned());
        move || {
            chromium(
                &profile,
                &["--virtual-time-budget=3000", "--dump-dom"],
                &url,
            )
        }
    })
    .await
    .unwrap();
    let dom = String::from_utf8_lossy(&page.stdout).into_owned();
    assert!(
        dom.contains("data-rendered="),
        "the script never rendered: {dom}"
    );
    assert!(!dom.contains("data-errors="), "script errors: {dom}");
    assert_eq!(
        console_lines(&page.stderr),
        Vec::<String>::new(),
        "the console"
    );
    dom
}

/// The status page in a real browser: its script renders `/status.json` (the text a person
/// reads), nothing goes wrong in the console, and a screenshot is taken.
#[tokio::test]
async fn the_status_page_renders_in_a_browser() {
    let root = root("tm_browser");
    let s = Scratch::new("tm_browser");
    let client = client().await;
    let d = Daemon::spawn(
        herald(&root)
            .args(["director", "--key", "HOSTS", "--service", "pg"])
            .args(["--preset", "hostports", "--settle", "0s"])
            .args(["--metrics-listen", "127.0.0.1:0"]),
    );
    let port = metrics_port(&d);
    let dir =
        zookeeper_client::CreateMode::Persistent.with_acls(zookeeper_client::Acls::anyone_all());
    client
        .mkdir(&format!("{root}/services/pg"), &dir)
        .await
        .unwrap();
    let node =
        zookeeper_client::CreateMode::Ephemeral.with_acls(zookeeper_client::Acls::anyone_all());
    let doc = r#"{"name":"pg","id":"a","address":"10.9.8.7","port":5432,"payload":{"weight":1},"serviceType":"DYNAMIC"}"#;
    client
        .create(&format!("{root}/services/pg/a"), doc.as_bytes(), &node)
        .await
        .unwrap();
    value_becomes(
        &client,
        &format!("{root}/environment/HOSTS"),
        "10.9.8.7:5432",
    )
    .await;
    scrape_until(
        port,
        r#"herald_director_publishes_total{key="HOSTS",result="published"}"#,
        1.0,
    );
    let output = status(port)["outputs"]["HOSTS"].clone();
    let digest = output["digest"].as_str().unwrap().to_owned();
    // The mzxid ZooKeeper holds for the value, as its tools write it.
    let (_, stat) = client
        .get_data(&format!("{root}/environment/HOSTS"))
        .await
        .unwrap();
    let mzxid = format!("{:#x}", stat.mzxid);
    assert_eq!(output["mzxid"], mzxid.as_str(), "{output}");

    let url = format!("http://127.0.0.1:{port}/status");
    let page = tokio::task::spawn_blocking({
        let (profile, url) = (s.path("profile"), url.clone());
        move || {
            chromium(
                &profile,
                &["--virtual-time-budget=3000", "--dump-dom"],
                &url,
            )
        }
    })
    .await
    .unwrap();
    let dom = String::from_utf8_lossy(&page.stdout);
    assert!(
        dom.contains("data-rendered="),
        "the script never rendered: {dom}"
    );
    assert!(!dom.contains("data-errors="), "script errors: {dom}");
    for text in [
        "herald",
        "director",
        "HOSTS",
        "leading",
        "connected",
        &digest,
        &mzxid,
        &format!("tcp://{}", zk().connect_string()),
    ] {
        assert!(dom.contains(text), "{text:?} not on the page: {dom}");
    }
    assert!(!dom.contains("10.9.8.7"), "the value is on the page: {dom}");
    assert_eq!(
        console_lines(&page.stderr),
        Vec::<String>::new(),
        "the console"
    );

    let shot = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    let taken = tokio::task::spawn_blocking({
        let (profile, shot) = (s.path("profile"), shot.clone());
        move || {
            chromium(
                &profile,
                &[
                    "--virtual-time-budget=3000",
                    "--window-size=1280,800",
                    "--hide-scrollbars",
                    &format!("--screenshot={}", shot.display()),
                ],
                &url,
            )
        }
    })
    .await
    .unwrap();
    assert_eq!(
        console_lines(&taken.stderr),
        Vec::<String>::new(),
        "the console"
    );
    let png = std::fs::read(&shot).expect("the screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
}

/// An agent's page: its registration, the check that fails and why, the drain reason.
#[tokio::test]
async fn an_agent_s_page_shows_its_checks_and_drain_in_a_browser() {
    let root = root("tm_browser_agent");
    let s = Scratch::new("tm_browser_agent");
    let flag = s.path("healthy");
    std::fs::write(&flag, "").unwrap();
    let agent = Daemon::spawn(
        herald(&root)
            .args(["announce", "--service", "pg", "--id", "db1"])
            .args(["--address", "127.0.0.1", "--port", "5432"])
            .arg("--check")
            .arg(format!("exec:test -e {}", flag.display()))
            .args(["--check-interval", "100ms", "--rise", "1", "--fall", "1"])
            .arg("--control-dir")
            .arg(s.path("control"))
            .args(["--metrics-listen", "127.0.0.1:0"]),
    );
    let port = metrics_port(&agent);
    scrape_until(port, r#"herald_registered{service="pg"}"#, 1.0);
    let drained = run(herald("/unused")
        .args([
            "drain",
            "--soft",
            "--reason",
            "kernel upgrade",
            "--control-dir",
        ])
        .arg(s.path("control")));
    assert!(drained.status.success(), "{}", describe(&drained));
    scrape_until(port, r#"herald_drained{service="pg"}"#, 1.0);
    let dom = rendered(&s, &format!("http://127.0.0.1:{port}/status")).await;
    for text in [
        "pg/db1",
        "registered",
        "drained soft",
        "kernel upgrade",
        "passing",
        "exec:test",
    ] {
        assert!(dom.contains(text), "{text:?} not on the page: {dom}");
    }
    std::fs::remove_file(&flag).unwrap();
    scrape_until(port, r#"herald_registered{service="pg"}"#, 0.0);
    let dom = rendered(&s, &format!("http://127.0.0.1:{port}/status")).await;
    for text in ["not registered", "failing", "— exit 1"] {
        assert!(dom.contains(text), "{text:?} not on the page: {dom}");
    }
}
