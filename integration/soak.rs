//! A random soak on a real 3-server ensemble (issue #12): agents with a TCP health check
//! against listeners the test controls, two directors (`--preset hostports`) and a
//! `herald watch --out FILE`, under faults a seeded generator picks one after another. After
//! each fault and a quiet period, the invariant checker waits (under a deadline) until the
//! published value is the hostports derivation of the live, healthy, undrained instances, the
//! registered nodes are exactly theirs, the watched file holds the value, and every herald
//! process that should run does.
//!
//! 60 s by default (CI). `HERALD_SOAK_SECS=N` runs it for N seconds (`scripts/faults soak` runs
//! the long mode, 600 s and more); `HERALD_SOAK_SEED=S` replays the faults of a printed seed.
//! The last line it prints is a summary: faults by kind, checks, violations, the slowest
//! convergence.

mod support;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::*;
use zookeeper_client as zkc;

const ROOT: &str = "/it/soak";
const KEY: &str = "SOAK";
const SERVICE: &str = "soak";
/// Agents, and directors: short enough that a freeze ends a session within seconds, long
/// enough that a ZooKeeper leader election does not.
const SESSION: &str = "3s";
const AGENTS: usize = 4;
/// How long the system may take to converge after a fault: sessions of killed processes
/// expire (3 s), directors settle (1 s), health checks rise (2 × 250 ms); the rest is margin
/// for a loaded 2-core machine.
const CONVERGE: Duration = Duration::from_secs(45);
/// How often the checker looks while the system converges.
const CHECK_EVERY: Duration = Duration::from_millis(50);

/// A fault the generator can pick.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    KillZkLeader,
    KillZkFollower,
    FreezeAgent,
    KillAgent,
    StopAgent,
    StartAgent,
    FlipHealth,
    Drain,
    Undrain,
    KillLeadingDirector,
}

/// splitmix64: a small, seeded, reproducible generator (no dependency for one test).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<T: Copy>(&mut self, from: &[T]) -> Option<T> {
        (!from.is_empty()).then(|| from[self.below(from.len())])
    }
}

/// A TCP listener the test opens and closes: an agent's health check passes while it listens.
struct Health {
    port: u16,
    up: Arc<AtomicBool>,
}

impl Health {
    fn start() -> Health {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a health port");
        let port = listener.local_addr().expect("local address").port();
        let up = Arc::new(AtomicBool::new(true));
        let want = up.clone();
        std::thread::spawn(move || {
            let mut listener = Some(listener);
            loop {
                let open = want.load(Ordering::SeqCst);
                if !open {
                    listener = None;
                } else if listener.is_none() {
                    // The port was ours a moment ago; another process taking it meanwhile
                    // would show as a check that never passes again (a violation, not a hang).
                    listener = TcpListener::bind(("127.0.0.1", port)).ok();
                }
                if let Some(l) = &listener {
                    l.set_nonblocking(true).expect("non-blocking listener");
                    // Accept and close what the checks opened, so the backlog never fills.
                    while l.accept().is_ok() {}
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Health { port, up }
    }

    fn set(&self, healthy: bool) {
        self.up.store(healthy, Ordering::SeqCst);
    }

    fn healthy(&self) -> bool {
        self.up.load(Ordering::SeqCst)
    }
}

/// One agent: its process (when running), its health listener, whether it is drained.
struct Agent {
    id: String,
    health: Health,
    process: Option<Daemon>,
    drained: bool,
    control: PathBuf,
}

impl Agent {
    fn serving(&self) -> bool {
        self.process.is_some() && self.health.healthy() && !self.drained
    }

    fn spawn(&mut self, connect: &str) {
        let mut command = herald_at(connect, ROOT);
        command
            .args(["--session-timeout", SESSION])
            .args(["announce", "--service", SERVICE, "--id", &self.id])
            .args([
                "--address",
                "127.0.0.1",
                "--port",
                &self.health.port.to_string(),
            ])
            .args(["--check", &format!("tcp:127.0.0.1:{}", self.health.port)])
            .args(["--check-interval", "250ms", "--rise", "2", "--fall", "2"])
            .arg("--control-dir")
            .arg(&self.control);
        self.process = Some(Daemon::spawn(&mut command));
        // A new process starts undrained.
        self.drained = false;
    }
}

struct Soak {
    seed: u64,
    rng: Rng,
    ensemble: Arc<Ensemble>,
    connect: String,
    client: zkc::Client,
    agents: Vec<Agent>,
    directors: Vec<Daemon>,
    watch: Daemon,
    out: PathBuf,
    faults: BTreeMap<Fault, usize>,
    history: Vec<String>,
    checks: usize,
    /// Checks that held at first and had to wait again after the quiet period.
    relapses: Vec<Fault>,
    /// The time from each fault to the state the checker confirmed after it.
    convergence: Vec<(Fault, Duration)>,
}

fn director(connect: &str) -> Daemon {
    let mut command = herald_at(connect, ROOT);
    command
        .args(["--session-timeout", SESSION])
        .args(["director", "--key", KEY, "--service", SERVICE])
        .args(["--preset", "hostports", "--reconcile", "10m"]);
    Daemon::spawn(&mut command)
}

impl Soak {
    /// What the checker expects: the serving agents' ids and their hostports value.
    fn expected(&self) -> (Vec<String>, String) {
        let mut serving: Vec<&Agent> = self.agents.iter().filter(|a| a.serving()).collect();
        serving.sort_by(|a, b| a.id.cmp(&b.id));
        let ids = serving.iter().map(|a| a.id.clone()).collect();
        let value = serving
            .iter()
            .map(|a| format!("127.0.0.1:{}", a.health.port))
            .collect::<Vec<_>>()
            .join(",");
        (ids, value)
    }

    fn serving(&self) -> usize {
        self.agents.iter().filter(|a| a.serving()).count()
    }

    /// The faults that may be injected now: none takes the last serving instance away (the
    /// director then keeps the last value, by its `--min-instances 1`, which is no
    /// derivation of the live instances).
    fn possible(&self) -> Vec<(Fault, usize)> {
        let mut out = vec![
            (Fault::KillZkLeader, 0),
            (Fault::KillZkFollower, 0),
            (Fault::KillLeadingDirector, 0),
        ];
        let spare = self.serving() >= 2;
        for (n, a) in self.agents.iter().enumerate() {
            let running = a.process.is_some();
            // Taking this agent out leaves another serving.
            let may_go = !a.serving() || spare;
            if a.serving() && spare {
                out.push((Fault::FreezeAgent, n));
            }
            if running && may_go {
                out.extend([(Fault::KillAgent, n), (Fault::StopAgent, n)]);
            }
            if !running {
                out.push((Fault::StartAgent, n));
            }
            if running && !a.drained && may_go {
                out.push((Fault::Drain, n));
            }
            if running && a.drained {
                out.push((Fault::Undrain, n));
            }
            if may_go {
                out.push((Fault::FlipHealth, n));
            }
        }
        out
    }

    async fn inject(&mut self, fault: Fault, n: usize) {
        *self.faults.entry(fault).or_default() += 1;
        let what = match fault {
            Fault::KillZkLeader => {
                let ensemble = self.ensemble.clone();
                let killed = tokio::task::spawn_blocking(move || {
                    let killed = ensemble.kill_leader();
                    wait_for("a new ZooKeeper leader", || ensemble.leader());
                    ensemble.restart(killed);
                    killed
                })
                .await
                .expect("the fail-over thread");
                format!("killed ZooKeeper leader {killed} and restarted it")
            }
            Fault::KillZkFollower => {
                let ensemble = self.ensemble.clone();
                let killed = tokio::task::spawn_blocking(move || {
                    let n = wait_for("a ZooKeeper follower", || ensemble.follower());
                    ensemble.kill(n);
                    ensemble.restart(n);
                    n
                })
                .await
                .expect("the fail-over thread");
                format!("killed ZooKeeper follower {killed} and restarted it")
            }
            Fault::FreezeAgent => {
                let path = format!("{ROOT}/services/{SERVICE}/{}", self.agents[n].id);
                let agent = self.agents[n].process.as_ref().expect("running");
                agent.signal(libc::SIGSTOP);
                // Frozen until ZooKeeper has expired its session (its node goes with it).
                let client = &self.client;
                eventually(&format!("{path} to go with the frozen session"), || async {
                    match client.check_stat(&path).await {
                        Ok(None) => Ok(()),
                        other => Err(format!("{other:?}")),
                    }
                })
                .await;
                agent.signal(libc::SIGCONT);
                format!("froze {} past its session", self.agents[n].id)
            }
            Fault::KillAgent => {
                let agent = &mut self.agents[n];
                drop(agent.process.take());
                agent.spawn(&self.connect);
                format!("SIGKILLed {} and started it again", agent.id)
            }
            Fault::StopAgent => {
                let agent = &mut self.agents[n];
                let mut process = agent.process.take().expect("running");
                process.signal(libc::SIGTERM);
                let status = process.exited().await;
                assert!(
                    status.success(),
                    "seed {}: {} stopped with {status}:\n{}",
                    self.seed,
                    agent.id,
                    process.stderr()
                );
                format!("stopped {}", agent.id)
            }
            Fault::StartAgent => {
                let agent = &mut self.agents[n];
                agent.spawn(&self.connect);
                format!("started {}", agent.id)
            }
            Fault::FlipHealth => {
                let health = &self.agents[n].health;
                health.set(!health.healthy());
                format!(
                    "{} {}",
                    self.agents[n].id,
                    if health.healthy() {
                        "healthy"
                    } else {
                        "unhealthy"
                    }
                )
            }
            Fault::Drain | Fault::Undrain => {
                let agent = &mut self.agents[n];
                let verb = if fault == Fault::Drain {
                    "drain"
                } else {
                    "undrain"
                };
                let mut command = herald_at(&self.connect, ROOT);
                command
                    .args([verb, "--id", &agent.id, "--control-dir"])
                    .arg(&agent.control);
                let out = tokio::task::spawn_blocking(move || run(&mut command))
                    .await
                    .expect("the drain thread");
                // 4: the node's removal was not confirmed within drain's own 5 s (the agent
                // took the request; the checker sees to the rest).
                assert!(
                    matches!(out.status.code(), Some(0 | 4)),
                    "seed {}: herald {verb} {}: {}",
                    self.seed,
                    agent.id,
                    describe(&out)
                );
                agent.drained = fault == Fault::Drain;
                format!("{verb} {}", agent.id)
            }
            Fault::KillLeadingDirector => {
                let n = self.leading_director().await;
                self.directors[n] = director(&self.connect);
                format!("SIGKILLed leading director {n} and started it again")
            }
        };
        self.history.push(what);
    }

    /// The index of the director whose election node is first (the leader, or the one about
    /// to lead); it logs the node's name when it leads.
    async fn leading_director(&self) -> usize {
        let election = format!("{ROOT}/directors/{KEY}");
        let client = &self.client;
        let directors = &self.directors;
        eventually("the leading director", || async {
            let mut nodes = client
                .list_children(&election)
                .await
                .map_err(|e| e.to_string())?;
            nodes.sort();
            let first = nodes.first().ok_or("no election node")?;
            directors
                .iter()
                .position(|d| d.stderr().contains(first.as_str()))
                .ok_or(format!("no director logged leading as {first} yet"))
        })
        .await
    }

    /// Waits until the system has converged on the state the test set; returns how long it
    /// took since `since` and whether it held at the first look. A process that should run and
    /// has exited fails at once.
    async fn check(&mut self, since: Instant) -> Result<(Duration, bool), String> {
        let (ids, value) = self.expected();
        let value_path = format!("{ROOT}/environment/{KEY}");
        let services = format!("{ROOT}/services/{SERVICE}");
        let deadline = Instant::now() + CONVERGE;
        let mut last;
        let mut at_once = true;
        loop {
            let mut processes: Vec<(&str, &mut Daemon)> = Vec::new();
            for a in &mut self.agents {
                if let Some(p) = a.process.as_mut() {
                    processes.push((&a.id, p));
                }
            }
            for d in &mut self.directors {
                processes.push(("a director", d));
            }
            processes.push(("the watch", &mut self.watch));
            for (who, p) in processes {
                if let Some(status) = p.child.try_wait().expect("wait for herald") {
                    return Err(format!("{who} exited ({status}):\n{}", p.stderr()));
                }
            }
            let published = self.client.get_data(&value_path).await;
            let mut nodes = self.client.list_children(&services).await;
            if let Ok(nodes) = nodes.as_mut() {
                nodes.sort();
            }
            let file = std::fs::read_to_string(&self.out).unwrap_or_default();
            match (published, nodes) {
                (Ok((data, _)), Ok(nodes))
                    if data == value.as_bytes() && nodes == ids && file.trim_end() == value =>
                {
                    return Ok((since.elapsed(), at_once));
                }
                (published, nodes) => {
                    last = format!(
                        "value {:?}, nodes {nodes:?}, file {file:?}",
                        published.map(|(d, _)| String::from_utf8_lossy(&d).into_owned())
                    );
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "not converged within {CONVERGE:?}: expected value {value:?} and nodes \
                     {ids:?}; last seen: {last}"
                ));
            }
            at_once = false;
            tokio::time::sleep(CHECK_EVERY).await;
        }
    }

    fn summary(&self, secs: u64, violations: usize) -> String {
        let total: usize = self.faults.values().sum();
        let kinds = self
            .faults
            .iter()
            .map(|(k, n)| format!("{k:?}={n}"))
            .collect::<Vec<_>>()
            .join(" ");
        let mut sorted: Vec<Duration> = self.convergence.iter().map(|(_, d)| *d).collect();
        sorted.sort();
        let mut slowest: BTreeMap<Fault, Duration> = BTreeMap::new();
        for (fault, took) in &self.convergence {
            let max = slowest.entry(*fault).or_default();
            *max = (*max).max(*took);
        }
        let slowest = slowest
            .iter()
            .map(|(k, d)| format!("{k:?}={}", d.as_millis()))
            .collect::<Vec<_>>()
            .join(" ");
        format!(
            "soak summary: seed={} secs={secs} faults={total} ({kinds}) checks={} violations={violations} relapses={} (after {:?}) p50_convergence_ms={} max_convergence_ms={} (by kind, ms: {slowest})",
            self.seed,
            self.checks,
            self.relapses.len(),
            self.relapses,
            sorted.get(sorted.len() / 2).map_or(0, Duration::as_millis),
            sorted.last().map_or(0, Duration::as_millis)
        )
    }
}

fn env_number(name: &str) -> Option<u64> {
    let raw = std::env::var(name).ok()?;
    Some(
        raw.parse()
            .unwrap_or_else(|_| panic!("{name} must be a whole number, not {raw:?}")),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_faults_never_break_the_published_value() {
    let secs = env_number("HERALD_SOAK_SECS").unwrap_or(60);
    let seed = env_number("HERALD_SOAK_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("a clock after 1970")
            .as_nanos() as u64
    });
    eprintln!("soak: seed {seed} (HERALD_SOAK_SEED={seed} replays it), {secs} s");
    let ensemble = Arc::new(Ensemble::start("soak"));
    let connect = ensemble.connect_string();
    let s = Scratch::new("soak");
    let client = zkc::Client::connector()
        .with_session_timeout(Duration::from_secs(30))
        .connect(&connect)
        .await
        .expect("connect the checking client to the ensemble");
    let mut agents: Vec<Agent> = (0..AGENTS)
        .map(|n| Agent {
            id: format!("i{n}"),
            health: Health::start(),
            process: None,
            drained: false,
            control: s.path(&format!("control-i{n}")),
        })
        .collect();
    for a in &mut agents {
        a.spawn(&connect);
    }
    let directors = vec![director(&connect), director(&connect)];
    let out = s.path("soak.out");
    let mut command = herald_at(&connect, ROOT);
    command.args(["watch", KEY, "--out"]).arg(&out);
    let watch = Daemon::spawn(&mut command);
    let mut soak = Soak {
        seed,
        rng: Rng(seed),
        ensemble,
        connect,
        client,
        agents,
        directors,
        watch,
        out,
        faults: BTreeMap::new(),
        history: Vec::new(),
        checks: 0,
        relapses: Vec::new(),
        convergence: Vec::new(),
    };
    let started = Instant::now();
    if let Err(why) = soak.check(started).await {
        panic!("seed {seed}: the start did not converge: {why}");
    }

    let end = started + Duration::from_secs(secs);
    while Instant::now() < end {
        // A kind first (each as likely as the others), then whom it hits.
        let possible = soak.possible();
        let mut kinds: Vec<Fault> = possible.iter().map(|(f, _)| *f).collect();
        kinds.sort();
        kinds.dedup();
        let fault = soak
            .rng
            .pick(&kinds)
            .expect("some fault is always possible");
        let whom: Vec<usize> = possible
            .iter()
            .filter(|(f, _)| *f == fault)
            .map(|(_, n)| *n)
            .collect();
        let n = soak.rng.pick(&whom).expect("listed with its kind");
        // The quiet period: no fault for 0.2–2 s. The checker watches from the fault on (it
        // only reads), so the time to converge is measured; at the end of the quiet period it
        // checks again: a change after the first convergence (say, a killed agent's old
        // session expiring after its successor took the node over) counts as a relapse.
        let quiet = Duration::from_millis(200 + soak.rng.below(1800) as u64);
        soak.inject(fault, n).await;
        let injected = Instant::now();
        let violation = |soak: &Soak, why: String| -> ! {
            panic!(
                "seed {seed}: violation after fault {} ({}): {why}\nfaults so far: {:#?}\n{}",
                soak.history.len(),
                soak.history.last().expect("a fault"),
                soak.history,
                soak.summary(secs, 1)
            )
        };
        let first = match soak.check(injected).await {
            Ok((took, _)) => took,
            Err(why) => violation(&soak, why),
        };
        tokio::time::sleep(quiet.saturating_sub(injected.elapsed())).await;
        match soak.check(injected).await {
            Ok((took, at_once)) => {
                soak.checks += 1;
                let took = if at_once {
                    first
                } else {
                    soak.relapses.push(fault);
                    took
                };
                soak.convergence.push((fault, took));
            }
            Err(why) => violation(&soak, why),
        }
    }
    let summary = soak.summary(secs, 0);
    eprintln!("{summary}");
    println!("{summary}");
}
