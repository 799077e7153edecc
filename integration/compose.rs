//! compose.yaml and the Dockerfile, checked without a Docker engine: the YAML parses; every build
//! target, copied or mounted file, service and volume it names exists; every herald command line
//! in it (and in the scripts its containers run) uses only flags herald has; the director's
//! configuration is the demo's and passes `--check-config`; and, against a real ZooKeeper, the
//! mounted /environment and the pgpool template produce what the containers would get.

mod support;

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_yaml_ng::Value;
use support::*;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

fn compose() -> Value {
    let mut value: Value =
        serde_yaml_ng::from_str(&read("compose.yaml")).expect("compose.yaml is YAML");
    // `<<: *anchor` merges, as docker compose applies them.
    value
        .apply_merge()
        .expect("compose.yaml's merge keys apply");
    value
}

fn services(compose: &Value) -> Vec<(String, Value)> {
    compose["services"]
        .as_mapping()
        .expect("compose.yaml has services")
        .iter()
        .map(|(k, v)| (k.as_str().unwrap().to_owned(), v.clone()))
        .collect()
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .map(|seq| {
            seq.iter()
                .map(|v| v.as_str().expect("a string").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The Dockerfile's stages: name → its lines.
fn stages() -> Vec<(String, Vec<String>)> {
    let mut stages: Vec<(String, Vec<String>)> = Vec::new();
    for line in read("Dockerfile").lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() == Some(&"FROM") {
            assert_eq!(words.get(2), Some(&"AS"), "every stage is named: {line}");
            stages.push((words[3].to_owned(), Vec::new()));
        } else if let Some((_, lines)) = stages.last_mut() {
            lines.push(line.to_owned());
        }
    }
    stages
}

/// The JSON-array form of `INSTRUCTION [...]` in a stage.
fn exec_form(lines: &[String], instruction: &str) -> Option<Vec<String>> {
    let line = lines
        .iter()
        .find(|l| l.starts_with(&format!("{instruction} ")))?;
    let json = &line[instruction.len() + 1..];
    Some(serde_json::from_str(json).unwrap_or_else(|e| panic!("{line}: not JSON ({e})")))
}

/// The herald command lines of a shell script (`herald …` or `exec herald …`, with `\`
/// continuations), split on whitespace.
fn herald_lines(script: &str) -> Vec<Vec<String>> {
    let joined = script.replace("\\\n", " ");
    joined
        .lines()
        .map(|l| l.trim().trim_start_matches("exec ").trim())
        .filter(|l| l.starts_with("herald "))
        .map(|l| l.split_whitespace().map(String::from).collect())
        .collect()
}

/// Every `--flag` of `argv` (herald SUBCOMMAND …, up to a lone `--`) is one `herald SUBCOMMAND
/// --help` lists.
fn assert_herald_accepts(argv: &[String], origin: &str) {
    assert_eq!(argv[0], "herald", "{origin}: {argv:?}");
    let sub = &argv[1];
    let help = run(herald("/unused").args([sub, "--help"]));
    assert!(
        help.status.success(),
        "{origin}: herald {sub} --help failed"
    );
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    for flag in argv[2..].iter().take_while(|a| *a != "--") {
        if let Some(name) = flag.strip_prefix("--") {
            let name = name.split('=').next().unwrap();
            assert!(
                help.contains(&format!("--{name} ")) || help.contains(&format!("--{name}\n")),
                "{origin}: herald {sub} has no --{name}"
            );
        }
    }
}

#[test]
fn every_build_target_file_volume_and_dependency_named_exists() {
    let compose = compose();
    let stages = stages();
    let stage_names: BTreeSet<&str> = stages.iter().map(|(n, _)| n.as_str()).collect();
    let services = services(&compose);
    let names: BTreeSet<&str> = services.iter().map(|(n, _)| n.as_str()).collect();
    let volumes: BTreeSet<String> = compose["volumes"]
        .as_mapping()
        .map(|m| m.keys().map(|k| k.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default();
    for (name, service) in &services {
        if let Some(build) = service.get("build") {
            let context = build["context"].as_str().expect("a build context");
            assert!(repo().join(context).is_dir(), "{name}: context {context}");
            let target = build["target"].as_str().expect("a build target");
            assert!(stage_names.contains(target), "{name}: no stage {target}");
        } else {
            assert!(
                service.get("image").is_some(),
                "{name}: neither build nor image"
            );
        }
        for volume in strings(&service["volumes"]) {
            let source = volume.split(':').next().unwrap();
            if source.starts_with("./") {
                assert!(repo().join(source).exists(), "{name}: {source} is missing");
            } else {
                assert!(
                    volumes.contains(source),
                    "{name}: volume {source} is not declared"
                );
            }
        }
        for dependency in strings(&service["depends_on"]) {
            assert!(
                names.contains(dependency.as_str()),
                "{name}: depends on {dependency}"
            );
        }
        if let Some(entrypoint) = service.get("entrypoint") {
            for path in strings(entrypoint)
                .iter()
                .filter(|a| a.starts_with("/etc/herald/"))
            {
                let local = repo()
                    .join("examples/compose/pgpool")
                    .join(path.trim_start_matches("/etc/herald/"));
                assert!(
                    local.is_file(),
                    "{name}: {path} is not copied from the repository"
                );
            }
        }
    }
    for (stage, lines) in &stages {
        for line in lines
            .iter()
            .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
        {
            let words: Vec<&str> = line.split_whitespace().collect();
            for source in &words[1..words.len() - 1] {
                assert!(
                    repo().join(source).exists(),
                    "stage {stage}: {line}: {source} is missing"
                );
            }
        }
    }
    // Scripts the containers run are executable.
    for script in [
        "examples/compose/pgpool/start",
        "examples/compose/pgpool/watch",
        "examples/compose/export-pg/data_directory",
        "examples/environments/test/DATABASE_URL",
    ] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(repo().join(script))
            .unwrap()
            .permissions()
            .mode();
        assert!(mode & 0o111 != 0, "{script} is not executable");
    }
}

#[test]
fn every_herald_command_line_uses_flags_herald_has_and_the_topology_is_the_demos() {
    let compose = compose();
    let stages = stages();
    let stage = |name: &str| -> &Vec<String> { &stages.iter().find(|(n, _)| n == name).unwrap().1 };
    let mut lines: Vec<(String, Vec<String>)> = Vec::new();
    let mut registered = BTreeSet::new();
    for target in ["postgres", "pgpool", "app"] {
        let entrypoint = exec_form(stage(target), "ENTRYPOINT").expect("an ENTRYPOINT");
        assert_eq!(
            &entrypoint[..2],
            ["herald", "run"],
            "{target}: herald run is PID 1"
        );
        assert_eq!(
            entrypoint.last().map(String::as_str),
            Some("--"),
            "{target}"
        );
        if let Some(i) = entrypoint.iter().position(|a| a == "--service") {
            registered.insert(entrypoint[i + 1].clone());
        }
        lines.push((format!("Dockerfile stage {target}"), entrypoint));
    }
    assert_eq!(
        exec_form(stage("herald"), "ENTRYPOINT").unwrap(),
        ["herald"]
    );
    for (name, service) in services(&compose) {
        let target = service["build"]["target"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if target == "herald" {
            let mut argv = vec!["herald".to_owned()];
            argv.extend(strings(&service["command"]));
            lines.push((format!("compose service {name}"), argv));
        }
    }
    for script in [
        "examples/compose/pgpool/start",
        "examples/compose/pgpool/watch",
    ] {
        let found = herald_lines(&read(script));
        assert!(!found.is_empty(), "{script} runs herald");
        lines.extend(found.into_iter().map(|argv| (script.to_owned(), argv)));
    }
    for (origin, argv) in &lines {
        assert_herald_accepts(argv, origin);
    }

    // The director: the demo's own configuration, valid, deriving from the services the
    // containers register, and publishing what pgpool's watch and the application read.
    let director = services(&compose)
        .into_iter()
        .find(|(n, _)| n == "director")
        .expect("a director service")
        .1;
    let config = "examples/compose/director.toml";
    assert!(strings(&director["command"]).contains(&"/etc/herald/director.toml".to_owned()));
    assert!(
        read("scripts/demo").contains(&format!("--config {config}")),
        "scripts/demo runs the same director configuration"
    );
    let checked = run(herald("/unused")
        .args(["director", "--check-config", "--config"])
        .arg(repo().join(config)));
    assert!(checked.status.success(), "{}", describe(&checked));
    let toml: toml::Table = toml::from_str(&read(config)).unwrap();
    let outputs = toml["output"].as_array().unwrap();
    let keys: BTreeSet<&str> = outputs.iter().map(|o| o["key"].as_str().unwrap()).collect();
    let services: BTreeSet<String> = outputs
        .iter()
        .map(|o| o["service"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        services, registered,
        "the director reads what the containers register"
    );
    assert!(
        keys.contains("PGPOOL_BACKENDS") && keys.contains("DATABASE_URL"),
        "{keys:?}"
    );
    assert!(read("examples/compose/pgpool/watch").contains("PGPOOL_BACKENDS"));
    assert!(read("examples/environments/test/DATABASE_URL").contains("resolve --wait"));

    // herald's environment: HERALD_ZK names the ZooKeeper service, on the image's port.
    for (name, service) in services_with_env(&compose) {
        let zk = service["environment"]["HERALD_ZK"].as_str();
        assert_eq!(zk, Some("zookeeper:2181"), "{name}: HERALD_ZK");
    }
}

fn services_with_env(compose: &Value) -> Vec<(String, Value)> {
    services(compose)
        .into_iter()
        .filter(|(_, s)| s.get("build").is_some())
        .collect()
}

#[test]
fn the_mounted_environment_and_the_pgpool_template_work_against_a_real_zookeeper() {
    let root = root("compose");
    let s = Scratch::new("compose");
    let put = |key: &str, value: &str| {
        let out = run_with_input(herald(&root).args(["put", key, "-"]), value.as_bytes());
        assert!(out.status.success(), "put {key}: {}", describe(&out));
    };
    put(
        "DATABASE_URL",
        "postgresql://postgres@10.0.0.9:5432/postgres",
    );
    // As in the image: herald on PATH for the entries that call it.
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_herald"));
    let path = format!(
        "{}:{}",
        bin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let env = run(herald(&root)
        .env("PATH", path)
        .args(["env", "--env-dir"])
        .arg(repo().join("examples/environments/test")));
    assert!(env.status.success(), "{}", describe(&env));
    let env = String::from_utf8_lossy(&env.stdout);
    assert!(
        env.contains("DATABASE_URL=postgresql://postgres@10.0.0.9:5432/postgres"),
        "{env}"
    );
    assert!(env.contains("MEMCACHE_SERVERS=memcached:11211"), "{env}");

    put(
        "PGPOOL_BACKENDS",
        "backend_hostname0 = '10.0.0.5'\nbackend_port0 = 5432",
    );
    let out = s.path("pgpool.conf");
    let rendered = run(herald(&root)
        .args(["watch", "PGPOOL_BACKENDS", "--once", "--template"])
        .arg(repo().join("examples/compose/pgpool/pgpool.conf.j2"))
        .arg("--out")
        .arg(&out));
    assert!(rendered.status.success(), "{}", describe(&rendered));
    let conf = std::fs::read_to_string(&out).unwrap();
    assert!(
        conf.contains("\nbackend_hostname0 = '10.0.0.5'\nbackend_port0 = 5432\n"),
        "{conf}"
    );
    assert!(
        conf.contains("pcp_port = 9898"),
        "the PCP port watch uses:\n{conf}"
    );
    assert_eq!(
        conf.matches("backend_hostname0").count(),
        1,
        "the block once, not also in a comment:\n{conf}"
    );
    assert!(read("examples/compose/pgpool/pcppass").starts_with("pgpool:9898:pcpadmin:"));

    // The data directory declaration the postgres image runs, with its PGDATA.
    let export = run(std::process::Command::new(
        repo().join("examples/compose/export-pg/data_directory"),
    )
    .env("PGDATA", "/var/lib/postgresql/data"));
    assert_eq!(
        String::from_utf8_lossy(&export.stdout),
        "/var/lib/postgresql/data\n"
    );
}
