//! The proposal's headline deployment, for real: PostgreSQL servers under `herald run
//! --service`, a director publishing the pgpool backend block, and a real pgpool kept equal to
//! the live servers by `herald watch --pgpool` through additions, a crash, a drain and a pgpool
//! restart with a stale pgpool_status. After every step, pgpool's own node table must equal the
//! live instances and fresh client sessions must be answered by exactly the live servers.

mod support;

#[path = "support/postgres.rs"]
mod postgres;

use std::collections::BTreeSet;
use std::path::Path;

use postgres::{Cluster, PgDir, Pgpool, pgpool_base_conf, psql};
use support::*;

const KEY: &str = "PGPOOL_BACKENDS";

/// herald's health check for a server: `pg_isready`, which passes only once it accepts sessions.
fn ready_check(cluster: &Cluster) -> String {
    format!(
        "exec:{} -q -h 127.0.0.1 -p {}",
        postgres::pg_bin().join("pg_isready").display(),
        cluster.port
    )
}

/// `herald run --service pg` around one PostgreSQL server, registered while it accepts
/// queries, with its data directory declared in /export (and, with `declare_role`, its
/// role: a data directory with standby.signal is a standby).
fn server(root: &str, dir: &PgDir, cluster: &Cluster, id: &str, declare_role: bool) -> Daemon {
    let export = dir.path(&format!("export-{id}"));
    let data = cluster.data.display();
    script(&export, "data_directory", &format!("echo {data}"));
    if declare_role {
        script(
            &export,
            "role",
            &format!("if [ -e {data}/standby.signal ]; then echo standby; else echo primary; fi"),
        );
    }
    let port = cluster.port.to_string();
    Daemon::spawn(
        herald(root)
            .args([
                "run",
                "--service",
                "pg",
                "--id",
                id,
                "--address",
                "127.0.0.1",
            ])
            // Registered once it answers queries: a tcp check passes while PostgreSQL is still
            // starting up (and refusing sessions).
            .args(["--port", &port, "--check", &ready_check(cluster)])
            .args(["--rise", "1", "--check-interval", "100ms"])
            .arg("--control-dir")
            .arg(dir.path("control"))
            .arg("--export-dir")
            .arg(&export)
            .arg("--env-dir")
            .arg(dir.path("environment"))
            .arg("--")
            .args(cluster.argv()),
    )
}

/// Waits until pgpool's node table has exactly `live` (slot, port) up and every other loaded
/// slot down, and fresh sessions are answered by every live server and by no other.
async fn routes_exactly(pgpool: &Pgpool, live: &[(u32, u16)], watch: &Daemon) {
    let answering: Vec<u16> = live.iter().map(|&(_, port)| port).collect();
    routes(pgpool, live, &answering, watch).await;
}

/// [`routes_exactly`] where only the servers on the `answering` ports get sessions (pgpool
/// holds the others up with weight 0).
async fn routes(pgpool: &Pgpool, live: &[(u32, u16)], answering: &[u16], watch: &Daemon) {
    let want: BTreeSet<(u32, u16)> = live.iter().copied().collect();
    eventually(
        &format!("pgpool's node table = {want:?} up, the rest down"),
        || async {
            let nodes = pgpool.nodes()?;
            let up: BTreeSet<(u32, u16)> = nodes
                .iter()
                .filter(|n| n.status == 1 || n.status == 2)
                .map(|n| (n.slot, n.port))
                .collect();
            let weightless = nodes
                .iter()
                .filter(|n| up.contains(&(n.slot, n.port)))
                .all(|n| (n.weight == 0.0) != answering.contains(&n.port));
            if up == want && weightless {
                Ok(())
            } else {
                Err(format!(
                    "{nodes:?}; herald watch said:\n{}\npgpool's log ends:\n{}",
                    watch.stderr(),
                    pgpool.log()
                ))
            }
        },
    )
    .await;
    let ports: BTreeSet<String> = answering.iter().map(u16::to_string).collect();
    let mut seen = BTreeSet::new();
    let mut sessions = 0;
    // Load balancing picks a backend per session, by weight: sessions until every live server
    // answered, then as many again. Any answer from another port fails at once.
    eventually("every live server answers through pgpool", || {
        let answer = psql(pgpool.port, "select inet_server_port()");
        sessions += 1;
        let seen_now = match &answer {
            Ok(port) => {
                assert!(
                    ports.contains(port),
                    "a session went to {port}, which is not live (live: {ports:?})"
                );
                seen.insert(port.clone());
                seen.clone()
            }
            Err(_) => seen.clone(),
        };
        let result = if seen_now == ports {
            Ok(())
        } else {
            Err(format!(
                "{seen_now:?} after {sessions} sessions; last {answer:?}"
            ))
        };
        async move { result }
    })
    .await;
    for _ in 0..sessions.max(10) {
        let port = psql(pgpool.port, "select inet_server_port()")
            .unwrap_or_else(|e| panic!("a query through pgpool failed: {e}\n{}", pgpool.log()));
        assert!(
            ports.contains(&port),
            "a session went to {port}; live: {ports:?}"
        );
    }
}

fn backend_hosts(value: &str) -> Vec<String> {
    value
        .lines()
        .filter(|l| l.starts_with("backend_port"))
        .map(str::to_owned)
        .collect()
}

async fn value_of(client: &zookeeper_client::Client, root: &str) -> String {
    match client.get_data(&format!("{root}/environment/{KEY}")).await {
        Ok((data, _)) => String::from_utf8_lossy(&data).into_owned(),
        Err(err) => format!("({err})"),
    }
}

/// Waits until the published value names exactly these `backend_portN = P` lines.
async fn published(client: &zookeeper_client::Client, root: &str, live: &[(u32, u16)]) {
    let want: Vec<String> = live
        .iter()
        .map(|(slot, port)| format!("backend_port{slot} = {port}"))
        .collect();
    eventually(&format!("{KEY} with {want:?}"), || async {
        let got = backend_hosts(&value_of(client, root).await);
        if got == want {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    })
    .await;
}

fn herald_in(root: &str, dir: &Path) -> std::process::Command {
    let mut command = herald(root);
    command.current_dir(dir);
    command
}

/// The director publishing the pgpool backend block of the `pg` instances.
fn director(root: &str) -> Daemon {
    Daemon::spawn(
        herald(root)
            .args([
                "director",
                "--key",
                KEY,
                "--service",
                "pg",
                "--preset",
                "pgpool",
            ])
            .args(["--settle", "200ms"]),
    )
}

/// pgpool.conf rendered by herald from the published value (embedded in the rest of pgpool's
/// settings), pgpool started on it, and `herald watch --pgpool` keeping both right.
fn start_pgpool(root: &str, dir: &PgDir, sr_check_period: u32) -> (Pgpool, Daemon) {
    // The file exists before herald writes it, owned by pgpool's user, so herald keeps its
    // owner and mode.
    let mut pgpool = Pgpool::prepare(dir);
    let template = dir.write(
        "pgpool.conf.j2",
        &format!(
            "{}{{{{ value }}}}\n",
            pgpool_base_conf(&dir.0, pgpool.port, pgpool.pcp_port, sr_check_period)
        ),
        0o644,
    );
    dir.write("pgpool.conf", "", 0o600);
    let out = run(herald_in(root, &dir.0)
        .args(["watch", KEY, "--once", "--out"])
        .arg(&pgpool.conf)
        .arg("--template")
        .arg(&template));
    assert!(out.status.success(), "watch --once: {}", describe(&out));
    pgpool.start();
    let watch = Daemon::spawn(
        herald_in(root, &dir.0)
            .args(["watch", KEY, "--out"])
            .arg(&pgpool.conf)
            .arg("--template")
            .arg(&template)
            .args(["--pgpool", &format!("127.0.0.1:{}", pgpool.pcp_port)])
            .args(["--pcp-user", "pcpadmin", "--sync-every", "300ms"])
            .arg("--pcp-passfile")
            .arg(&pgpool.passfile),
    );
    (pgpool, watch)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgpool_follows_additions_a_crash_a_drain_and_its_own_restart() {
    let root = root("pgpool_follows");
    let client = client().await;
    let dir = PgDir::new("follows");
    std::fs::create_dir_all(dir.path("control")).unwrap();
    std::fs::create_dir_all(dir.path("environment")).unwrap();
    let clusters: Vec<Cluster> = (0..3)
        .map(|n| Cluster::init(&dir, &format!("pg{n}")))
        .collect();
    let port = |n: usize| clusters[n].port;

    let _director = director(&root);
    // Two servers, one after the other (so their numbers are known: oldest first).
    let mut servers = vec![server(&root, &dir, &clusters[0], "pg0", false)];
    published(&client, &root, &[(0, port(0))]).await;
    servers.push(server(&root, &dir, &clusters[1], "pg1", false));
    published(&client, &root, &[(0, port(0)), (1, port(1))]).await;
    let value = value_of(&client, &root).await;
    assert!(
        value.contains(&format!(
            "backend_data_directory0 = '{}'",
            clusters[0].data.display()
        )),
        "/export's data_directory is in the value:\n{value}"
    );

    let (mut pgpool, watch) = start_pgpool(&root, &dir, 0);
    routes_exactly(&pgpool, &[(0, port(0)), (1, port(1))], &watch).await;

    // A third server: loaded by the reload, attached by herald (pgpool alone keeps it down).
    servers.push(server(&root, &dir, &clusters[2], "pg2", false));
    published(&client, &root, &[(0, port(0)), (1, port(1)), (2, port(2))]).await;
    routes_exactly(&pgpool, &[(0, port(0)), (1, port(1)), (2, port(2))], &watch).await;

    // Backend 0 crashes: its sidecar deregisters it, nobody is renumbered, pgpool stops
    // routing to it.
    // SAFETY: plain syscall on the test's own server.
    unsafe { libc::kill(clusters[0].postmaster_pid().unwrap(), libc::SIGKILL) };
    servers[0].exited().await;
    published(&client, &root, &[(1, port(1)), (2, port(2))]).await;
    routes_exactly(&pgpool, &[(1, port(1)), (2, port(2))], &watch).await;

    // A soft drain: pg1 stays attached with weight 0, so it gets no new session via pgpool.
    let soft = run(herald(&root)
        .args(["drain", "--soft", "--id", "pg1", "--control-dir"])
        .arg(dir.path("control")));
    assert!(soft.status.success(), "drain --soft: {}", describe(&soft));
    eventually("backend_weight1 = 0 in the value", || async {
        let value = value_of(&client, &root).await;
        value
            .contains("backend_weight1 = 0\n")
            .then_some(())
            .ok_or(value)
    })
    .await;
    routes(&pgpool, &[(1, port(1)), (2, port(2))], &[port(2)], &watch).await;

    // A drain: pg1 keeps running (and answering directly) but leaves pgpool.
    let drained = run(herald(&root)
        .args(["drain", "--id", "pg1", "--control-dir"])
        .arg(dir.path("control")));
    assert!(drained.status.success(), "drain: {}", describe(&drained));
    published(&client, &root, &[(2, port(2))]).await;
    routes_exactly(&pgpool, &[(2, port(2))], &watch).await;
    assert_eq!(
        psql(port(1), "select 1").as_deref(),
        Ok("1"),
        "pg1 still runs"
    );

    // pgpool restarts while pg1 is undrained: its pgpool_status says backend 1 is down, so it
    // comes back down, and herald attaches it without anyone's help.
    pgpool.stop();
    let undrained = run(herald(&root)
        .args(["undrain", "--id", "pg1", "--control-dir"])
        .arg(dir.path("control")));
    assert!(
        undrained.status.success(),
        "undrain: {}",
        describe(&undrained)
    );
    published(&client, &root, &[(1, port(1)), (2, port(2))]).await;
    let status = std::fs::read_to_string(dir.path("pgpool_status")).unwrap_or_default();
    assert_eq!(
        status.lines().nth(1),
        Some("down"),
        "the stale status file this step is about:\n{status}"
    );
    pgpool.start();
    routes_exactly(&pgpool, &[(1, port(1)), (2, port(2))], &watch).await;
    drop(servers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_and_its_streaming_standby_behind_pgpool() {
    let root = root("pgpool_sr");
    let client = client().await;
    let dir = PgDir::new("sr");
    std::fs::create_dir_all(dir.path("control")).unwrap();
    std::fs::create_dir_all(dir.path("environment")).unwrap();
    let _director = director(&root);
    let primary = Cluster::init(&dir, "pg0");
    let mut servers = vec![server(&root, &dir, &primary, "pg0", true)];
    published(&client, &root, &[(0, primary.port)]).await;
    // Registered once it accepts connections: pg_basebackup can copy it.
    let standby = Cluster::standby_of(&dir, "pg1", &primary);
    servers.push(server(&root, &dir, &standby, "pg1", true));
    published(&client, &root, &[(0, primary.port), (1, standby.port)]).await;
    let value = value_of(&client, &root).await;
    for line in [
        "backend_flag0 = 'ALLOW_TO_FAILOVER|ALWAYS_PRIMARY'\n",
        "backend_flag1 = 'ALLOW_TO_FAILOVER'\n",
        "backend_application_name1 = 'pg1'\n",
    ] {
        assert!(
            value.contains(line),
            "{line:?} is not in the value:\n{value}"
        );
    }

    let (pgpool, watch) = start_pgpool(&root, &dir, 1);
    eventually(
        "pgpool: slot 0 the primary, slot 1 a streaming standby",
        || async {
            let nodes = pgpool.nodes()?;
            let seen: Vec<(u32, u16, &str, &str)> = nodes
                .iter()
                .filter(|n| n.status == 1 || n.status == 2)
                .map(|n| (n.slot, n.port, n.role.as_str(), n.replication.as_str()))
                .collect();
            if seen
                == [
                    (0, primary.port, "primary", "none"),
                    (1, standby.port, "standby", "streaming"),
                ]
            {
                Ok(())
            } else {
                Err(format!("{nodes:?}\n{}\n{}", watch.stderr(), pgpool.log()))
            }
        },
    )
    .await;
    // Writes go to the primary (the standby would refuse them); reads are balanced over both.
    psql(
        pgpool.port,
        "create table t (x int); insert into t values (42)",
    )
    .unwrap_or_else(|e| panic!("a write through pgpool failed: {e}\n{}", pgpool.log()));
    routes_exactly(&pgpool, &[(0, primary.port), (1, standby.port)], &watch).await;
    eventually("the standby to have replayed the write", || async {
        match psql(standby.port, "select x from t") {
            Ok(x) if x == "42" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    // The standby crashes: detached; writes and reads go on, on the primary.
    // SAFETY: plain syscall on the test's own server.
    unsafe { libc::kill(standby.postmaster_pid().unwrap(), libc::SIGKILL) };
    servers[1].exited().await;
    published(&client, &root, &[(0, primary.port)]).await;
    routes_exactly(&pgpool, &[(0, primary.port)], &watch).await;
    psql(pgpool.port, "insert into t values (43)")
        .unwrap_or_else(|e| panic!("a write through pgpool failed: {e}\n{}", pgpool.log()));
    assert_eq!(
        psql(pgpool.port, "select count(*) from t").as_deref(),
        Ok("2")
    );
    drop(servers);
}
