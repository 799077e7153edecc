"""scripts/bench scale: herald director at 100,000 instances on one machine, beside the
Synapse-style baseline and Curator's ServiceCache.

One local standalone ZooKeeper (scripts/zk; its heap raised with _JAVA_OPTIONS, which the JVM
applies after the command line, since scripts/zk has no heap option). A kazoo client that stays
connected owns every instance: --instances ephemeral znodes in --services services under
`<root>/services/svcNNNN/ID`, service svc0000 holding --big of them and the others sharing the
rest, created pipelined (create_async, up to 1000 in flight). Two `herald director --config`
processes with one `[[output]]` per service (`key = "S_NNNN"`, preset `hostports`), started
together; leadership is spread over them (--spread on, the default). Measured:

  initial sync      from starting both to every key's value seen by a kazoo exists-watch (the
                    values then checked against the expected hostports); each director's CPU and
                    ZooKeeper's over that interval; VmRSS/VmHWM after the sync and at the end
  leadership        outputs each director leads (GET /status.json on --metrics-listen) and
                    herald_director_handovers_total (/metrics)
  one change        --changes per mode: one ephemeral instance `x` added or removed in one
                    service, from the create/delete to a kazoo data watch on the key firing; back
                    to back and after 100 ms idle; every --big-every-th round in svc0000
  requests/change   ZooKeeper's zk_packets_received (mntr) over a batch of registrations and one
                    of deregistrations, less this program's own requests and the idle rate
  reconnect         ZooKeeper stopped (SIGSTOP) for --pause s, longer than herald's connection
                    timeout (0.4 × the 10 s session timeout) and shorter than the session: both
                    directors reconnect in their sessions and list everything again; packets
                    from SIGCONT until both logged the relist and the rate is back to idle
  baseline          the Synapse-style kazoo program of scripts/bench (children watch, a get of
                    every child on each event) over the first services of an identical tree under
                    its own root, as many as it reads within --baseline-budget s (estimated from
                    this program's own sequential reads), or --baseline-services
  Curator           Apache Curator's ServiceCache (Debian's curator-x-discovery 5.4, the jars the
                    interop tests use; scripts/bench.d/ServiceCacheProbe.java, compiled into
                    target/bench/curator): one JVM, one CuratorFramework, one ServiceDiscovery at
                    `<its root>/services`, one ServiceCache per service, over all --services (or
                    --curator-services) of an identical tree under a third root of its own. Its
                    own tree, not the Synapse-style baseline's, although both only read the
                    instances: then every change is timed with one reader reacting to it, as
                    herald's are (on 2 cores a second reader re-reading svc0000's 10,000
                    children would be timed into the other's figures), and the cache follows
                    every service while the Synapse-style baseline may be capped. Initial sync:
                    from spawning the JVM to every cache started and holding its instances
                    (counts checked); one change: from the create/delete to the cache listener's
                    callback (System.nanoTime, the clock of time.perf_counter) reporting the new
                    count; the same changes as the others, interleaved with them; requests per
                    change counted as the directors' are, in phase 2; VmRSS/VmHWM from /proc and
                    the JVM's heap in use after a System.gc(). --no-curator leaves it out

Prints Markdown tables and writes the raw figures to target/bench/scale-TIMESTAMP.json. This file
is both the driver (imported by scripts/bench) and, run by the bench venv's python (kazoo), the
program that measures.
"""
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from benchlib import pct, service_sizes, four_letter, memory, cpu_ms, iso_s, records, free_port

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
ROOT = "/bench-scale"      # herald's tree and keys
BASE = "/bench-synapse"    # the baseline's own tree and keys (the same shape, fewer services)
CUR = "/bench-curator"     # Curator's ServiceCache's own tree (the same shape; it writes nothing)
IDLE = 0.1
MODES = {"back to back": 0.0, f"after {IDLE * 1000:.0f} ms idle": IDLE}
TIMEOUT = 60               # one change, one stop
SYNC_TIMEOUT = 1200        # an initial sync
RELISTED = ("reconnected; listing the instances again where they changed while disconnected", "reconnected; listing the instances again", "connected again; listing the instances again")


def log(msg):
    print(f"bench scale: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# The driver: starts ZooKeeper, runs the measuring program in the venv, prints the tables.


def add_arguments(parser):
    """The options of `scripts/bench scale`."""
    parser.add_argument("--services", type=int, default=1000, help="services, one output each (1000)")
    parser.add_argument("--instances", type=int, default=100_000, help="instances in all (100000)")
    parser.add_argument("--big", type=int, default=10_000, help="instances of svc0000, the big service (10000)")
    parser.add_argument("--changes", type=int, default=200, help="changes per tool and mode (200)")
    parser.add_argument("--big-every", type=int, default=10,
                        help="one change round in this many is in svc0000 (10; 0: never)")
    parser.add_argument("--batch", type=int, default=100,
                        help="registrations, then deregistrations, counted for requests per change (100)")
    parser.add_argument("--pause", type=float, default=6.0,
                        help="seconds ZooKeeper is stopped for the reconnect (6: over herald's 4 s connection "
                             "timeout, under its 10 s session)")
    parser.add_argument("--reconcile", default="60s",
                        help="the first pair of directors' --reconcile (60s, herald's default); the second "
                             "pair, which the requests are counted on, runs with 24h")
    parser.add_argument("--baseline-services", type=int,
                        help="the baseline follows the first N services (default: as many as it reads within "
                             "--baseline-budget)")
    parser.add_argument("--baseline-budget", type=float, default=180.0,
                        help="seconds the baseline's initial sync may take, estimated (180)")
    parser.add_argument("--no-curator", action="store_true",
                        help="leave Curator's ServiceCache (the second baseline, a JVM) out")
    parser.add_argument("--curator-services", type=int,
                        help="Curator's ServiceCache follows the first N services (default: all of them)")
    parser.add_argument("--curator-heap", default="1g", help="the ServiceCache JVM's -Xmx (1g)")
    parser.add_argument("--zk-heap", default="1g",
                        help="ZooKeeper's -Xmx, through _JAVA_OPTIONS (1g; empty: scripts/zk's 256m)")
    parser.add_argument("--no-build", action="store_true",
                        help="use target/release/herald as it is (no cargo build --release)")
    parser.add_argument("--herald", metavar="PATH",
                        help="run this herald binary (e.g. one built from a clean export of a commit); no build")


def problems(opts):
    """What is wrong with the options, or None."""
    if not 2 <= opts.services <= 10_000:
        return "--services must be from 2 to 10000 (svc0000…svc9999)"
    if opts.big < 1 or opts.instances - opts.big < opts.services - 1:
        return "--big must be at least 1 and leave at least one instance for each other service"
    if opts.big > 99_999 or opts.instances > 10_000_000:
        return "--big at most 99999, --instances at most 10000000"
    if opts.big_every < 0 or opts.batch < 1 or opts.pause <= 0 or opts.baseline_budget <= 0:
        return "--big-every ≥ 0, --batch ≥ 1, --pause > 0 and --baseline-budget > 0"
    if opts.baseline_services is not None and opts.baseline_services < 1:
        return "--baseline-services must be at least 1"
    if opts.curator_services is not None and opts.curator_services < 1:
        return "--curator-services must be at least 1"
    try:
        if parse_duration(opts.reconcile) <= 0:
            raise ValueError
    except ValueError:
        return "--reconcile takes a duration such as 60s, 5m or 500ms"
    return None


def curator_java(heap):
    """The java command line (less its arguments) of ServiceCacheProbe, compiled into
    target/bench/curator when the .class is missing or older than the .java; the classpath of
    `scripts/curator classpath` (Debian's jars)."""
    src = os.path.join(HERE, "ServiceCacheProbe.java")
    out = os.path.join(REPO, "target", "bench", "curator")
    cls = os.path.join(out, "ServiceCacheProbe.class")
    curator = os.path.join(REPO, "scripts", "curator")
    found = subprocess.run([curator, "classpath"], capture_output=True, text=True)
    if found.returncode != 0:
        raise SystemExit(f"bench scale: {found.stderr.strip()} (or run with --no-curator)")
    cp = found.stdout.strip()
    if not os.path.exists(cls) or os.stat(cls).st_mtime < os.stat(src).st_mtime:
        if not shutil.which("javac"):
            raise SystemExit("bench scale: javac not found (scripts/curator install, or --no-curator)")
        os.makedirs(out, exist_ok=True)
        subprocess.run(["javac", "--release", "17", "-nowarn", "-cp", cp, "-d", out, src], check=True)
    # The JVM's own defaults otherwise (G1 on this size of machine); warnings only, as scripts/curator.
    return ["java", f"-Xmx{heap}", "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
            "-Dorg.slf4j.simpleLogger.log.org.apache.zookeeper.ClientCnxn=error",
            "-cp", f"{cp}:{out}", "ServiceCacheProbe"]


def run(opts, machine, python, baseline_program):
    """`opts`: the parsed `scripts/bench scale` options."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "?"
    herald = os.path.abspath(opts.herald) if opts.herald else os.path.join(REPO, "target", "release", "herald")
    if opts.herald:
        mtime = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(os.stat(herald).st_mtime))
        built = f"{herald} of {mtime} (--herald; HEAD is now {head})"
    elif not opts.no_build:
        changed = (" with uncommitted changes"
                   if git("status", "--porcelain", "--", "src", "vendor", "Cargo.toml", "Cargo.lock") else "")
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=REPO, check=True)
        built = f"{head}{changed}"
    else:
        mtime = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(os.stat(herald).st_mtime))
        built = f"the target/release/herald of {mtime} (--no-build; HEAD is now {head})"
    java = None if opts.no_curator else curator_java(opts.curator_heap)
    workdir = tempfile.mkdtemp(prefix="herald-bench-scale-")
    port = free_port()
    zk_env = dict(os.environ)
    if opts.zk_heap:
        zk_env["_JAVA_OPTIONS"] = f"-Xmx{opts.zk_heap}"
    load_before = os.getloadavg()
    subprocess.run([os.path.join(REPO, "scripts", "zk"), "start", "--dir", workdir, "--port", str(port)],
                   check=True, stdout=subprocess.DEVNULL, env=zk_env)
    ok = False
    try:
        baseline = os.path.join(workdir, "synapse_baseline.py")
        with open(baseline, "w") as f:
            f.write(baseline_program)
        logs = os.path.join(workdir, "logs")
        os.mkdir(logs)
        with open(os.path.join(workdir, "pid")) as f:
            zk_pid = int(f.read().strip())  # the server's own (scripts/zk serve execs java)
        params = {
            "herald": herald, "python": python, "baseline": baseline, "zk": f"127.0.0.1:{port}",
            "zk_port": port, "zk_pid": zk_pid, "workdir": logs, "services": opts.services,
            "instances": opts.instances, "big": opts.big, "changes": opts.changes,
            "big_every": opts.big_every, "batch": opts.batch, "pause": opts.pause,
            "baseline_services": opts.baseline_services, "baseline_budget": opts.baseline_budget,
            "reconcile": opts.reconcile, "curator": java, "curator_services": opts.curator_services,
        }
        proc = subprocess.run([python, os.path.abspath(__file__), json.dumps(params)], stdout=subprocess.PIPE)
        if proc.returncode != 0:
            raise SystemExit(f"bench scale: the measuring program failed (exit {proc.returncode}); logs in {logs}")
        result = json.loads(proc.stdout)
        ok = True
    finally:
        subprocess.run([os.path.join(REPO, "scripts", "zk"), "stop", "--dir", workdir], stdout=subprocess.DEVNULL)
        if ok:
            subprocess.run(["rm", "-rf", workdir])
        else:
            subprocess.run(["rm", "-rf", os.path.join(workdir, "data")])
    result["machine"] = machine
    result["built_from"] = built
    result["load_before"] = load_before
    result["load_after"] = os.getloadavg()
    result["options"] = {k: v for k, v in vars(opts).items() if k != "bench"}
    out_dir = os.path.join(REPO, "target", "bench")
    os.makedirs(out_dir, exist_ok=True)
    out = os.path.join(out_dir, time.strftime("scale-%Y%m%d-%H%M%S.json"))
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    report(result, opts)
    print()
    print(f"raw figures: {os.path.relpath(out, REPO)}")


def report(r, opts):
    S, I, B = r["services"], r["instances"], r["big"]
    others = r["sizes"][1:]
    base, zk, d, d2 = r["baseline"], r["zk"], r["directors"], r["second"]
    M = base["services"]
    pair = ("director 1", "director 2")

    def ms(v):
        return f"{v:,.0f}"

    def mib(kib):
        return f"{kib / 1024:,.1f}"

    def p(values, q):
        return f"{pct(values, q):.2f}" if values else "n/a"

    def row(label, *cells):
        print(f"| {label} | " + " | ".join(str(c) for c in cells) + " |")

    cur = r.get("curator")
    C = cur["services"] if cur else 0
    print(
        f"scale: {S:,} services, {I:,} ephemeral instances (svc0000: {B:,}; the {S - 1:,} others "
        f"{min(others)}–{max(others)} each), created in {r['created_s']:.1f} s by one kazoo client "
        f"(create_async, 1000 in flight); two `herald director --config` processes with {S:,} outputs "
        f"each (preset hostports, --spread on, --settle at its default 1s:10s, --reconcile {r['reconcile']}), "
        f"started together; herald built from {r['built_from']}; ZooKeeper {zk['version']} standalone "
        f"(scripts/zk, heap {zk['heap']}); the Synapse-style baseline (kazoo) over svc0000–svc{M - 1:04d} "
        f"({base['instances']:,} instances) under its own root{base['why']}"
        + (f"; Curator's ServiceCache (curator-x-discovery 5.4, one JVM, {C:,} caches, "
           f"{' '.join(a for a in cur['argv'][1:] if a.startswith('-X'))}) over svc0000–svc{C - 1:04d} "
           f"({cur['instances']:,} instances) under a third root" if cur else "; Curator's ServiceCache left out (--no-curator)")
    )
    print(f"machine: {r['machine']}")
    lb, la = r["load_before"], r["load_after"]
    print(f"load average (1, 5, 15 min): {lb[0]:.2f} {lb[1]:.2f} {lb[2]:.2f} before, "
          f"{la[0]:.2f} {la[1]:.2f} {la[2]:.2f} after")
    if zk.get("live_heap_mib") is not None:
        print(f"ZooKeeper's heap in use after creating the znodes and a full GC: {zk['live_heap_mib']:,.0f} MiB "
              f"({zk['znodes']:,} znodes)")
    print()
    hc, bc = r["changes"]["herald"], base["changes"]
    cc = cur["changes"] if cur else []

    def x(value, of):
        """A baseline's figure as a multiple of herald's."""
        return f"{value / of:,.2f}×".replace("-0.00", "0.00") if value is not None and of else ""

    def line(label, h, b, c=None):
        """h, b, c: (text, number or None) for herald, the Synapse-style baseline and Curator."""
        cells = [h[0], b[0], x(b[1], h[1])]
        if cur:
            cells += [c[0], x(c[1], h[1])] if c else ["", ""]
        row(label, *cells)

    def also(text):
        """A label's words about Curator's column, when there is one."""
        return f" ({text})" if cur else ""

    def q(values, p_):
        return (p(values, p_), pct(values, p_) if values else None)

    heads = [f"herald director (2 processes, {S:,} outputs each)",
             f"Synapse-style baseline (kazoo, 1 process, {M:,} services)", "÷ herald"]
    if cur:
        heads += [f"Curator ServiceCache (1 JVM, {C:,} caches)", "÷ herald"]
    row("measure", *heads)
    print("|---|" + "---:|" * len(heads))
    line("instances followed", (f"{I:,}", I), (f"{base['instances']:,}", base["instances"]),
         (f"{cur['instances']:,}", cur["instances"]) if cur else None)
    line(f"initial sync: start → all values seen{also('Curator: every cache started')}, ms",
         (ms(r["sync"]["sync_ms"]), r["sync"]["sync_ms"]), (ms(base["sync_ms"]), base["sync_ms"]),
         (ms(cur["sync_ms"]), cur["sync_ms"]) if cur else None)
    line(f"start → first value seen{also('Curator: first cache started')}, ms",
         (ms(r["sync"]["first_ms"]), r["sync"]["first_ms"]), (ms(base["first_ms"]), base["first_ms"]),
         (ms(cur["first_ms"]), cur["first_ms"]) if cur else None)
    if cur:
        line("… of which the JVM's start and connect, ms", ("", None), ("", None),
             (ms(cur["connected_ms"]), None))
        line("… spawn → every cache's startImmediate() returned (the caches load meanwhile), ms",
             ("", None), ("", None), (ms(cur["started_ms"]), None))
    cpu = [d[n]["sync_cpu_ms"] for n in pair]
    line("CPU of the process, start → synced, ms (÷: per process)",
         (f"{ms(cpu[0])} + {ms(cpu[1])} = {ms(sum(cpu))}", sum(cpu) / 2), (ms(base["cpu_ms"]), base["cpu_ms"]),
         (ms(cur["cpu_ms"]), cur["cpu_ms"]) if cur else None)
    line("ZooKeeper's CPU meanwhile, ms", (ms(r["sync"]["zk_cpu_ms"]), r["sync"]["zk_cpu_ms"]),
         (ms(base["zk_cpu_ms"]), base["zk_cpu_ms"]), (ms(cur["zk_cpu_ms"]), cur["zk_cpu_ms"]) if cur else None)
    for mode in MODES:
        h = [v["ms"] for v in hc if v["mode"] == mode]
        b = [v["ms"] for v in bc if v["mode"] == mode]
        c = [v["ms"] for v in cc if v["mode"] == mode]
        for label, n in (("p50", 50), ("p99", 99), ("max", 100)):
            line(f"one change → new value seen{also('Curator: listener called')} ({mode}), every service, {label} ms",
                 q(h, n), q(b, n), q(c, n) if cur else None)
    for mode in MODES:
        for which, big in ((f"svc0000 ({B:,} instances)", True), (f"the other services ({min(others)}–{max(others)})", False)):
            h = [v["ms"] for v in hc if v["mode"] == mode and v["big"] == big]
            b = [v["ms"] for v in bc if v["mode"] == mode and v["big"] == big]
            c = [v["ms"] for v in cc if v["mode"] == mode and v["big"] == big]

            def cell(values):
                return (f"{p(values, 50)} / {p(values, 99)} ({len(values)})", pct(values, 50) if values else None)

            line(f"one change ({mode}), {which}: p50 / p99 ms (changes); ÷: p50", cell(h), cell(b),
                 cell(c) if cur else None)
    for label, when, field in (("VmRSS after sync", "after_sync", "rss_kib"), ("VmHWM after sync", "after_sync", "hwm_kib"),
                               ("VmRSS at end", "at_end", "rss_kib"), ("VmHWM at end", "at_end", "hwm_kib")):
        hv = [d[n][when][field] for n in pair]
        line(f"{label}, MiB (÷: the larger director)", (f"{mib(hv[0])} / {mib(hv[1])}", max(hv)),
             (mib(base[when][field]), base[when][field]),
             (mib(cur[when][field]), cur[when][field]) if cur else None)
    if cur:
        for label, when in (("after sync", "after_sync"), ("at end", "at_end")):
            hp = cur[when]["heap"]
            line(f"JVM heap in use after System.gc(), {label}, MiB (committed; -Xmx)", ("", None), ("", None),
                 (f"{hp['used'] / 2**20:,.1f} ({hp['committed'] / 2**20:,.0f}; {hp['max'] / 2**20:,.0f})", None))
    line("threads", (f"{d[pair[0]]['after_sync']['threads']} / {d[pair[1]]['after_sync']['threads']}", None),
         (str(base["after_sync"]["threads"]), None), (str(cur["after_sync"]["threads"]), None) if cur else None)
    if cur and cur.get("packets"):
        for kind in ("registration", "deregistration"):
            herald_per = r["packets"][kind]["per_change"] / 2
            cp_ = cur["packets"][kind]
            line(f"ZooKeeper requests per {kind} (herald: per director, phase 2; ÷: per process)",
                 (f"{herald_per:.2f}", herald_per), ("not counted", None),
                 (f"{cp_['per_change'] + 0.0:.2f}".replace("-0.00", "0.00"), cp_["per_change"]))
    print()
    print("÷ herald: the baseline's figure over herald's in the same row; for CPU, memory and requests against "
          "one director (each director follows every instance on its own), elsewhere against the pair.")
    own = r["own_latency"]
    if own:
        print(f"herald's own latency_ms over its {len(own)} change publishes (both directors, warm-up included): "
              f"p50 {statistics.median(own):.2f}, p99 {pct(own, 99):.2f}, max {max(own):.2f}")
    print(f"baseline: {stopped_line(base['stopped'])} (before the figures below)")
    if cur:
        changes = len(cc) + 5 + sum(v["changes"] for v in cur.get("packets", {}).values())
        print(f"Curator's ServiceCache: {cur['events']:,} listener callbacks for {changes:,} changes "
              f"({cur['unexpected_events']} not awaited); connection states after the start: "
              f"{', '.join(s for s, _ in cur['states']) or 'none'}; closed (stdin at EOF, before the reconnect), "
              f"exit {cur['stopped']['exit']}" + ("" if cur["stopped"]["exit"] == 0 else
                                                   " (NOT 0): " + " / ".join(cur["stopped"]["tail"])))
        for kind in ("registration", "deregistration"):
            b = cur.get("packets", {}).get(kind)
            if b:
                print(f"Curator's requests per {kind}: over {b['changes']} {kind}s in its own tree in "
                      f"{b['elapsed_s']:.2f} s ZooKeeper received {b['received']:,} packets: the writer's "
                      f"{b['changes']}, the closing mntr read 1, {b['idle']:.1f} at the idle rate: "
                      f"{b['per_change']:.2f} per change from the ServiceCache.".replace("-0.00", "0.00"))
    print()

    ri, rs, rc, pk = r["reconcile_idle"], r["restart"], r["reconnect"], r["packets"]
    row("the directors", "director 1", "director 2", "both")
    print("|---|---:|---:|---:|")

    def three(label, values, fmt=lambda v: f"{v:,.0f}", total=True):
        row(label, *(fmt(v) for v in values), fmt(sum(values)) if total else "")

    lead = r["leadership"]
    for label, when in (("outputs led after sync", "after_sync"), ("outputs led at end", "at_end")):
        cells = [d[n]["leading"][when] for n in pair]
        both = lead[when]
        extra = "" if both["unled"] == 0 and both["twice"] == 0 else f" ({both['unled']} unled, {both['twice']} led twice)"
        row(f"first pair: {label}", f"{cells[0]:,}", f"{cells[1]:,}", f"{sum(cells):,}{extra}")
    three("first pair: handovers (herald_director_handovers_total)",
          [d[n]["metrics_end"].get("herald_director_handovers_total", 0) for n in pair])
    three("first pair: CPU over the initial sync, ms", cpu)
    three(f"first pair at rest ({ri['window_s']:.0f} s, --reconcile {r['reconcile']}): CPU, ms",
          [ri["cpu_ms"][n] for n in pair])
    three(f"first pair at rest: service listings (list_service count increase)",
          [ri["ops"][n].get("list_service", 0) for n in pair])
    row("first pair: exit after SIGTERM", *(d[n]["stopped"]["exit"] for n in pair), "")
    three("second pair (--reconcile 24h): outputs led once listed", [d2[n]["leading"]["after_start"] for n in pair])
    three("second pair: CPU, start → listed and quiet, ms", [rs["cpu_ms"][n] for n in pair])
    row("second pair: VmRSS / VmHWM once listed, MiB",
        *(f"{mib(d2[n]['after_start']['rss_kib'])} / {mib(d2[n]['after_start']['hwm_kib'])}" for n in pair), "")
    three("reconnect: CPU, resume → quiet, ms", [rc["cpu_ms"][n] for n in pair])
    row("reconnect: relist logged, s after ZooKeeper resumed", *(fmt_s(rc["relisted_s"][n]) for n in pair), "")
    for op in ("stat_service", "list_service", "get_data"):
        three(f"reconnect: {op} count increase (herald_zk_request_duration_seconds_count)",
              [rc["ops"][n].get(op, 0) for n in pair])
    for key, label in (("herald_zk_reconnects_total", "reconnects"),
                       ("herald_zk_session_expirations_total", "session expirations")):
        three(f"reconnect: {label}", [rc["metrics_delta"][n].get(key, 0) for n in pair])
    row("second pair: VmRSS / VmHWM at end (after the relist), MiB",
        *(f"{mib(d2[n]['at_end']['rss_kib'])} / {mib(d2[n]['at_end']['hwm_kib'])}" for n in pair), "")
    three("second pair: outputs led at end", [d2[n]["leading"]["at_end"] for n in pair])
    row("second pair: exit after SIGTERM", *(d2[n]["stopped"]["exit"] for n in pair), "")
    print()

    row("ZooKeeper (zk_packets_received from mntr, less the mntr reads)", "value")
    print("|---|---:|")
    per_director = ri["received"] / ri["window_s"] / 2
    row(f"at rest, first pair (--reconcile {r['reconcile']}), over {ri['window_s']:.0f} s: packets/s", f"{ri['rate']:,.1f}")
    row("… ZooKeeper's CPU meanwhile, % of one core", f"{ri['zk_cpu_ms'] / ri['window_s'] / 10:.1f}")
    row("… response bytes/s (zk_response_bytes), MiB/s", f"{ri['response_bytes'] / ri['window_s'] / 2**20:.2f}")
    row("second pair, start over the published values → listed, leading, quiet: packets",
        f"{rs['directors']:,} in {rs['quiet_s']:.1f} s")
    row("at rest, second pair (--reconcile 24h): packets/s (pings)", f"{pk['idle_rate']:.2f}")
    for kind in ("registration", "deregistration"):
        b = pk[kind]
        row(f"{b['changes']} {kind}s back to back: packets received", f"{b['received']:,}")
        row(f"**requests per {kind}, both directors**", f"**{b['per_change']:.2f}**")
    row("reconnect: ZooKeeper stopped (SIGSTOP) for, s", f"{rc['pause_s']:.1f}")
    row("reconnect: resume → both relists logged, s", fmt_s(rc["relisted_all_s"]))
    row("reconnect: resume → quiet again, s", f"{rc['quiet_s']:.2f}")
    row("reconnect: packets received, SIGSTOP → quiet", f"{rc['received']:,}")
    row("**requests per reconnect, both directors**", f"**{rc['directors']:,.0f}**")
    row("… per director, per instance it follows", f"{rc['directors'] / 2 / I:.3f}")
    row("reconnect: packets sent by ZooKeeper (zk_packets_sent)", f"{rc['sent']:,}")
    row("reconnect: response bytes (zk_response_bytes), MiB", f"{rc['response_bytes'] / 2**20:,.1f}")
    row("reconnect: ZooKeeper's CPU, resume → quiet, ms", ms(rc["zk_cpu_ms"]))
    print()
    listings = [ri["ops"][n].get("list_service", 0) for n in pair]
    print(
        f"At rest: with --reconcile {r['reconcile']} each director re-lists one service every "
        f"{parse_duration(r['reconcile']) / S * 1000:.0f} ms (reconcile / services), so over {ri['window_s']:.0f} s "
        f"the two made {listings[0]:,.0f} + {listings[1]:,.0f} listings and ZooKeeper received {ri['received']:,} "
        f"packets ({per_director:,.0f}/s per director; a full pass is {S:,} lists + {I:,} gets + {S:,} lists of "
        f"departure records = {2 * S + I:,} per director per reconcile period). The request counts and the "
        f"reconnect are therefore measured on a second pair started with --reconcile 24h."
    )
    for kind in ("registration", "deregistration"):
        b = pk[kind]
        verb = "creates" if kind == "registration" else "deletes"
        print(
            f"Requests per {kind}: over {b['changes']} {kind}s in {b['elapsed_s']:.2f} s ZooKeeper received "
            f"{b['received']:,} packets: this program's {3 * b['changes']:,} ({b['changes']} {verb} by the writer, "
            f"and per change the watcher's get that arms the data watch and its get of the new value), the closing "
            f"mntr read 1, and {b['idle']:.1f} at the idle rate: ({b['received']:,} − {3 * b['changes']:,} − 1 − "
            f"{b['idle']:.1f}) / {b['changes']} = {b['per_change']:.2f} per change, both directors together."
        )
    print(
        f"Requests per reconnect: from the mntr read before SIGSTOP until the rate was back to idle "
        f"({rc['quiet_s']:.2f} s after SIGCONT, then {rc['quiet_window_s']:.0f} s quiet) ZooKeeper received "
        f"{rc['received']:,} packets, less {rc['polls']} mntr reads (one every {rc['poll_s']:.1f} s) and "
        f"{rc['idle']:.0f} at the idle rate: {rc['directors']:,.0f} for both directors, {rc['directors'] / 2:,.0f} "
        f"each, against a full relist of {S:,} lists + {I:,} gets = {S + I:,} each."
    )
    for n in pair:
        print(f"{n} (first pair): {stopped_line(d[n]['stopped'])}; (second pair): {stopped_line(d2[n]['stopped'])}")
    for line in r.get("notes", []):
        print(line)


def fmt_s(v):
    return "none" if v is None else f"{v:.2f}"


def stopped_line(stopped):
    if stopped["exit"] == 0:
        return "exited 0 after SIGTERM"
    return f"exited {stopped['exit']} after SIGTERM (NOT 0); its log ends: " + " / ".join(stopped["tail"])


# ---------------------------------------------------------------------------------------------
# The measuring program (the venv's python, kazoo): prints its figures as JSON on stdout.


live = []  # every process started and not yet reaped: killed on the way out, whatever happens


def document(service, ident, addr, port):
    """An instance document as herald and Curator write it (README: the instance document)."""
    return json.dumps({
        "name": service, "id": ident, "address": addr, "port": port, "sslPort": None,
        "payload": {"labels": {}, "meta": {}, "endpoints": {}, "weight": 1},
        "registrationTimeUTC": int(time.time() * 1000), "serviceType": "DYNAMIC", "uriSpec": None,
    }, separators=(",", ":")).encode()


class Changed:
    """A one-shot data watch on an existing node, set now; records perf_counter() at its event."""

    def __init__(self, client, path):
        self.at, self.type = None, None
        self.done = threading.Event()
        self.before, _ = client.get(path, watch=self._fire)

    def _fire(self, event):
        self.at = time.perf_counter()
        self.type = event.type
        self.done.set()

    def wait(self, what, expect="CHANGED"):
        if not self.done.wait(TIMEOUT):
            raise SystemExit(f"bench scale: no watch event within {TIMEOUT}s for {what}")
        if self.type != expect:
            raise SystemExit(f"bench scale: {what}: the watch saw {self.type}, not {expect}")
        return self.at


class Created:
    """A one-shot exists-watch on a node that does not exist yet."""

    def __init__(self, client, path):
        self.at = None
        self.done = threading.Event()
        if client.exists(path, watch=self._fire) is not None:
            raise SystemExit(f"bench scale: {path} exists before the run")

    def _fire(self, event):
        self.at = time.perf_counter()
        self.done.set()


class ServiceCacheJvm:
    """ServiceCacheProbe running, its stdout read by a thread: its lines (see the .java) as they
    come, their times (System.nanoTime) in seconds on the clock of time.perf_counter()."""

    def __init__(self, argv, log_path):
        with open(log_path, "wb") as stderr:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                                         text=True, bufsize=1)
        live.append(self.proc)
        self.log_path = log_path
        self.cond = threading.Condition()
        self.connected = self.started = self.synced = None
        self.total = None
        self.ready = {}      # service → (count, at)
        self.expected = {}   # (service, count) → at, or None while awaited
        self.events = 0      # cacheChanged callbacks
        self.unexpected = 0  # callbacks no change was waiting for
        self.states = []
        self.heap = None
        self.eof = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            word, *rest = line.split()
            with self.cond:
                if word == "event":
                    key, at = (rest[0], int(rest[1])), int(rest[2]) / 1e9
                    self.events += 1
                    if key in self.expected and self.expected[key] is None:
                        self.expected[key] = at
                    else:
                        self.unexpected += 1
                elif word == "ready":
                    self.ready[rest[0]] = (int(rest[1]), int(rest[2]) / 1e9)
                elif word == "synced":
                    self.synced, self.total = int(rest[0]) / 1e9, int(rest[1])
                elif word in ("connected", "started"):
                    setattr(self, word, int(rest[0]) / 1e9)
                elif word == "state":
                    self.states.append((rest[0], int(rest[1]) / 1e9))
                elif word == "heap":
                    self.heap = {"used": int(rest[0]), "committed": int(rest[1]), "max": int(rest[2])}
                elif word == "threads":
                    self.heap["threads"] = int(rest[0])
                self.cond.notify_all()
        with self.cond:
            self.eof = True
            self.cond.notify_all()

    def wait(self, done, timeout, what):
        with self.cond:
            self.cond.wait_for(lambda: done() or self.eof, timeout)
            if not done():
                why = "it exited" if self.eof else f"not within {timeout}s"
                raise SystemExit(f"bench scale: Curator's ServiceCache: {what}: {why}; see {self.log_path}")

    def expect(self, service, count):
        with self.cond:
            self.expected[(service, count)] = None

    def seen(self, service, count, what):
        key = (service, count)
        self.wait(lambda: self.expected.get(key) is not None, TIMEOUT, what)
        with self.cond:
            return self.expected.pop(key)

    def heap_after_gc(self):
        with self.cond:
            self.heap = None
        self.proc.stdin.write("gc\n")
        self.proc.stdin.flush()
        self.wait(lambda: self.heap is not None and "threads" in self.heap, TIMEOUT, "heap")
        return dict(self.heap)

    def stop(self):
        """stdin closed: the caches, the discovery and the client closed, exit."""
        self.proc.stdin.close()
        watchdog = threading.Timer(TIMEOUT, self.proc.kill)
        watchdog.start()
        code = self.proc.wait()
        watchdog.cancel()
        live.remove(self.proc)
        tail = []
        if code != 0:
            with open(self.log_path, errors="replace") as f:
                tail = [line.rstrip("\n")[:300] for line in f.readlines()[-3:]]
        return {"exit": code, "tail": tail}


def spawn(argv, env, log_path):
    with open(log_path, "wb") as stderr:
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)
    live.append(proc)
    return proc


def stop(proc, log_path):
    """SIGTERM, then waits: the exit code, and the log's last lines when it is not 0."""
    proc.send_signal(signal.SIGTERM)
    watchdog = threading.Timer(TIMEOUT, proc.kill)
    watchdog.start()
    code = proc.wait()
    watchdog.cancel()
    live.remove(proc)
    tail = []
    if code != 0:
        with open(log_path, errors="replace") as f:
            for line in f.readlines()[-3:]:
                try:
                    record = json.loads(line)
                    tail.append(f"{record['level']} {record['fields'].get('message', '')}")
                except (ValueError, KeyError, TypeError):
                    tail.append(line.rstrip("\n")[:300])
    return {"exit": code, "tail": tail}


def mntr(port):
    """ZooKeeper's counters (mntr; scripts/zk allows every four-letter word). Each read is itself
    counted as one received packet."""
    out = {}
    for line in four_letter(port, "mntr").splitlines():
        key, _, value = line.partition("\t")
        try:
            out[key] = int(value)
        except ValueError:
            out[key] = value
    return out


def http_get(addr, path):
    with urllib.request.urlopen(f"http://{addr}{path}", timeout=30) as reply:
        return reply.read()


def metrics(addr):
    """OpenMetrics text: name{labels} → value, and sums per name over labels."""
    out = {}
    for line in http_get(addr, "/metrics").decode().splitlines():
        if not line or line.startswith("#"):
            continue
        try:
            series, value = line.rsplit(" ", 1)
            value = float(value)
        except ValueError:
            continue
        out[series] = value
        name = series.split("{", 1)[0]
        if "{" in series:
            out[name] = out.get(name, 0.0) + value
    return out


def ops(sample):
    """herald_zk_request_duration_seconds_count by op."""
    out = {}
    prefix = 'herald_zk_request_duration_seconds_count{op="'
    for series, value in sample.items():
        if series.startswith(prefix):
            out[series[len(prefix):].split('"', 1)[0]] = value
    return out


def delta(after, before):
    return {k: v - before.get(k, 0) for k, v in after.items() if isinstance(v, (int, float))}


def bulk_create(client, items, ephemeral=True):
    """Pipelined creates, up to 1000 in flight."""
    pending = []
    for path, data in items:
        pending.append(client.create_async(path, data, ephemeral=ephemeral))
        if len(pending) >= 1000:
            for p in pending:
                p.get(timeout=TIMEOUT)
            pending = []
    for p in pending:
        p.get(timeout=TIMEOUT)


def parse_duration(text):
    """Seconds of a duration as herald writes it (500ms, 60s, 5m, 1h)."""
    for unit, factor in (("ms", 0.001), ("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * factor
    return float(text)


def until_quiet(zk_port, first, idle_rate, ready, limit=900.0, poll_s=0.2, window_s=2.0):
    """Polls mntr every poll_s from `first` (a reading (perf_counter, received, sent,
    response_bytes)) until `ready()` holds and, over the last window_s, ZooKeeper received no more
    than the idle rate plus 5 packets/s besides the polls themselves. Returns the first reading of
    that quiet window, and how many polls were made up to it."""
    polls = [first]
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        time.sleep(poll_s)
        m = mntr(zk_port)
        polls.append((time.perf_counter(), m["zk_packets_received"], m["zk_packets_sent"],
                      m.get("zk_response_bytes", 0)))
        if not ready():
            continue
        # The window starts at the last reading at least window_s old.
        older = [i for i, p in enumerate(polls) if p[0] <= polls[-1][0] - window_s]
        if not older:
            continue
        window = polls[older[-1]:]
        span = window[-1][0] - window[0][0]
        extra = window[-1][1] - window[0][1] - (len(window) - 1) - idle_rate * span
        if extra <= 5 * span:
            return window[0], sum(1 for p in polls[1:] if p[0] <= window[0][0]), polls
    raise SystemExit(f"bench scale: ZooKeeper's packet rate was not back to idle within {limit:.0f} s")


def reading(zk_port):
    m = mntr(zk_port)
    return (time.perf_counter(), m["zk_packets_received"], m["zk_packets_sent"], m.get("zk_response_bytes", 0))


def measure(params):
    from kazoo.client import KazooClient

    herald, python, baseline_script = params["herald"], params["python"], params["baseline"]
    zk_hosts, zk_port, zk_pid, workdir = params["zk"], params["zk_port"], params["zk_pid"], params["workdir"]
    S, I, B, N = params["services"], params["instances"], params["big"], params["changes"]
    reconcile = params["reconcile"]
    sizes = service_sizes(S, I, B)
    width = max(5, len(str(max(sizes) - 1)))
    names = [f"svc{k:04d}" for k in range(S)]
    keys = [f"S_{k:04d}" for k in range(S)]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HERALD_ZK": zk_hosts}
    result = {"services": S, "instances": I, "big": B, "sizes": sizes, "reconcile": reconcile, "notes": []}
    pair = ("director 1", "director 2")

    def ident(j):
        return f"i{j:0{width}d}"

    def address(k, j):
        return f"10.{1 + k // 256}.{k % 256}.{j % 250 + 1}"

    steady = {}

    def hostports(k, present):
        """The value hostports derives for service k: its instances by id, then `x` if present."""
        if k not in steady:
            steady[k] = ",".join(f"{address(k, j)}:{8000 + j}" for j in range(sizes[k]))
        x = f"10.250.{k % 256}.{k // 256 + 1}:9000"
        return (steady[k] + ("," + x if present else "")).encode()

    def tree(root, count):
        """The first `count` services' nodes and instances under `root`."""
        owner.ensure_path(f"{root}/services")
        bulk_create(owner, ((f"{root}/services/{names[k]}", b"") for k in range(count)), ephemeral=False)
        bulk_create(owner, (
            (f"{root}/services/{names[k]}/{ident(j)}", document(names[k], ident(j), address(k, j), 8000 + j))
            for k in range(count) for j in range(sizes[k])
        ))

    def start_pair(tag, every):
        """Two directors over every service, started together; --reconcile `every`."""
        argv = [herald, "director", "--config", config, "--log-format", "json",
                "--metrics-listen", "127.0.0.1:0", "--reconcile", every]
        logs = {n: os.path.join(workdir, f"director-{tag}-{i + 1}.log") for i, n in enumerate(pair)}
        return {n: spawn(argv, dict(env, HERALD_ROOT=ROOT), logs[n]) for n in pair}, logs

    # Sessions longer than the pause of the reconnect test: only the directors (10 s) reconnect.
    watcher = KazooClient(hosts=zk_hosts, timeout=30)  # sees the published values
    writer = KazooClient(hosts=zk_hosts, timeout=30)   # adds and removes the instance `x`
    owner = KazooClient(hosts=zk_hosts, timeout=30)    # owns every other instance
    clients = (watcher, writer, owner)
    try:
        for client in clients:
            client.start()
        srvr = four_letter(zk_port, "srvr")
        version = next((l.split(":", 1)[1].strip() for l in srvr.splitlines() if l.startswith("Zookeeper version")), "?")
        result["zk"] = {"version": version.split("-", 1)[0], "heap": "?"}

        t = time.perf_counter()
        tree(ROOT, S)
        result["created_s"] = time.perf_counter() - t
        log(f"{I:,} ephemeral instances in {S:,} services created in {result['created_s']:.1f} s")

        # The baseline reads one instance after another: this program's own sequential get +
        # parse of some of them estimates how many services it gets through within the budget.
        sample = [(k, random.randrange(sizes[k])) for k in random.choices(range(S), k=min(1000, I))]
        t = time.perf_counter()
        for k, j in sample:
            json.loads(owner.get(f"{ROOT}/services/{names[k]}/{ident(j)}")[0])
        per_read = (time.perf_counter() - t) / len(sample)
        if params["baseline_services"]:
            M = min(S, params["baseline_services"])
            why = f" (--baseline-services {M})"
        else:
            budget, M, spent = params["baseline_budget"], 0, 0.0
            while M < S and spent + per_read * (sizes[M] + 2) <= budget:
                spent += per_read * (sizes[M] + 2)
                M += 1
            M = max(M, 1)
            why = ("" if M == S else
                   f"; capped at {M:,} of {S:,} services: at {per_read * 1000:.2f} ms per sequential read "
                   f"(measured here) all {I:,} would take ~{per_read * (I + 2 * S):.0f} s, over the "
                   f"{budget:.0f} s budget")
        m_instances = sum(sizes[:M])
        t = time.perf_counter()
        tree(BASE, M)
        log(f"baseline tree: {M:,} services, {m_instances:,} instances in {time.perf_counter() - t:.1f} s "
            f"({per_read * 1000:.2f} ms per sequential read here)")
        result["baseline"] = {"services": M, "instances": m_instances, "per_read_ms": per_read * 1000, "why": why}
        C = 0
        if params["curator"]:
            C = min(S, params["curator_services"] or S)
            t = time.perf_counter()
            tree(CUR, C)
            log(f"Curator's tree: {C:,} services, {sum(sizes[:C]):,} instances in {time.perf_counter() - t:.1f} s")
            result["curator"] = {"services": C, "instances": sum(sizes[:C]), "argv": params["curator"]}

        # ZooKeeper's heap: what the JVM was given, and what the znodes take after a full GC.
        heap_gc(zk_pid, result)
        result["zk"]["znodes"] = mntr(zk_port).get("zk_znode_count", 0)

        config = os.path.join(workdir, "director.toml")
        with open(config, "w") as f:
            for k in range(S):
                f.write(f'[[output]]\nkey = "{keys[k]}"\nservice = "{names[k]}"\npreset = "hostports"\n\n')

        # Phase 1, the directors as deployed (--reconcile at its default unless given): both
        # started together; initial sync.
        seen = [Created(watcher, f"{ROOT}/environment/{key}") for key in keys]
        zk_cpu = cpu_ms(zk_pid)
        t0 = time.perf_counter()
        procs, logs = start_pair("1", reconcile)
        deadline = time.monotonic() + SYNC_TIMEOUT
        for key, s in zip(keys, seen):
            if not s.done.wait(max(0.0, deadline - time.monotonic())):
                raise SystemExit(f"bench scale: {key} not published within {SYNC_TIMEOUT}s of the start")
        synced_wall = time.time()
        directors = {n: {"after_sync": memory(p.pid), "sync_cpu_ms": cpu_ms(p.pid)} for n, p in procs.items()}
        times = sorted((s.at - t0) * 1000 for s in seen)
        result["sync"] = {"first_ms": times[0], "sync_ms": times[-1], "zk_cpu_ms": cpu_ms(zk_pid) - zk_cpu}
        log(f"both directors: all {S:,} keys published {times[-1]:,.0f} ms after the start")
        for k in range(S):
            value = watcher.get(f"{ROOT}/environment/{keys[k]}")[0]
            if value != hostports(k, False):
                raise SystemExit(f"bench scale: {keys[k]} is {value[:80]!r}…, not the hostports of {names[k]}")
        addrs = {n: metrics_address(logs[n]) for n in pair}
        result["leadership"] = {"after_sync": leadership(addrs, keys, directors, "after_sync")}

        # The baseline's initial sync, the directors idle meanwhile.
        bseen = [Created(watcher, f"{BASE}/environment/{keys[k]}") for k in range(M)]
        blog = os.path.join(workdir, "baseline.log")
        zk_cpu = cpu_ms(zk_pid)
        t0 = time.perf_counter()
        bproc = spawn([python, baseline_script, zk_hosts, BASE, str(M), "4"], env, blog)
        deadline = time.monotonic() + SYNC_TIMEOUT
        for k, s in enumerate(bseen):
            if not s.done.wait(max(0.0, deadline - time.monotonic())):
                raise SystemExit(f"bench scale: the baseline did not publish {keys[k]} within {SYNC_TIMEOUT}s")
        btimes = sorted((s.at - t0) * 1000 for s in bseen)
        bres = result["baseline"]
        bres.update(first_ms=btimes[0], sync_ms=btimes[-1], cpu_ms=cpu_ms(bproc.pid),
                    zk_cpu_ms=cpu_ms(zk_pid) - zk_cpu, after_sync=memory(bproc.pid))
        log(f"baseline: all {M:,} keys published {btimes[-1]:,.0f} ms after its start")
        for k in range(M):
            if watcher.get(f"{BASE}/environment/{keys[k]}")[0] != hostports(k, False):
                raise SystemExit(f"bench scale: the baseline's {keys[k]} is not the hostports of {names[k]}")

        # Curator's ServiceCache's initial sync, the directors and the baseline idle meanwhile.
        jvm = None
        if C:
            cres = result["curator"]
            clog = os.path.join(workdir, "curator.log")
            zk_cpu = cpu_ms(zk_pid)
            t0 = time.perf_counter()
            jvm = ServiceCacheJvm([*params["curator"], zk_hosts, f"{CUR}/services", str(C), "4"], clog)
            jvm.wait(lambda: jvm.synced is not None, SYNC_TIMEOUT, "the initial sync")
            cres.update(connected_ms=(jvm.connected - t0) * 1000, started_ms=(jvm.started - t0) * 1000,
                        sync_ms=(jvm.synced - t0) * 1000,
                        first_ms=min(at for _, at in jvm.ready.values()) * 1000 - t0 * 1000,
                        cpu_ms=cpu_ms(jvm.proc.pid), zk_cpu_ms=cpu_ms(zk_pid) - zk_cpu,
                        after_sync=memory(jvm.proc.pid))
            cres["after_sync"]["heap"] = jvm.heap_after_gc()
            wrong = [names[k] for k in range(C) if jvm.ready.get(names[k], (None,))[0] != sizes[k]]
            if wrong or jvm.total != sum(sizes[:C]):
                raise SystemExit(f"bench scale: Curator's ServiceCache holds {jvm.total:,} instances after its "
                                 f"initial sync, {len(wrong)} services wrong (first: {wrong[:3]})")
            log(f"Curator's ServiceCache: all {C:,} caches started {cres['sync_ms']:,.0f} ms after the JVM's spawn "
                f"({cres['connected_ms']:,.0f} ms to connect)")

        # One change republished: herald and the baseline interleaved, both modes, shuffled.
        present = {ROOT: [False] * S, BASE: [False] * M, CUR: [False] * C}

        def change(root, k, pause):
            key = f"{root}/environment/{keys[k]}"
            node = f"{root}/services/{names[k]}/x"
            seen = Changed(watcher, key)
            now = present[root][k]
            time.sleep(pause)
            t0 = time.perf_counter()
            if now:
                writer.delete(node)
            else:
                x = f"10.250.{k % 256}.{k // 256 + 1}"
                writer.create(node, document(names[k], "x", x, 9000), ephemeral=True)
            t1 = seen.wait(f"{root}: a change in {names[k]}")
            present[root][k] = not now
            value = watcher.get(key)[0]
            if value != hostports(k, not now):
                raise SystemExit(f"bench scale: {root}: after a change {key} is {value[:80]!r}…")
            return (t1 - t0) * 1000

        def curator_change(k, pause):
            """One instance `x` added or removed in Curator's tree: from the create/delete to the
            cache listener's callback reporting the new count (ms)."""
            node = f"{CUR}/services/{names[k]}/x"
            now = present[CUR][k]
            count = sizes[k] + (0 if now else 1)
            jvm.expect(names[k], count)
            time.sleep(pause)
            t0 = time.perf_counter()
            if now:
                writer.delete(node)
            else:
                x = f"10.250.{k % 256}.{k // 256 + 1}"
                writer.create(node, document(names[k], "x", x, 9000), ephemeral=True)
            t1 = jvm.seen(names[k], count, f"a change in {names[k]}")
            present[CUR][k] = not now
            if t1 < t0:
                raise SystemExit("bench scale: the ServiceCache's callback came before the change: the JVM's "
                                 "System.nanoTime and time.perf_counter are not the same clock here")
            return (t1 - t0) * 1000

        def pick(count, big):
            return 0 if big or count == 1 else random.randrange(1, count)

        roots = (ROOT, BASE, CUR) if C else (ROOT, BASE)
        counts = {ROOT: S, BASE: M, CUR: C}
        for n in range(5):  # warm-up, not counted
            change(ROOT, pick(S, False), 0.0)
            change(BASE, pick(M, False), 0.0)
            if C:
                curator_change(pick(C, False), 0.0)
        samples = {root: [] for root in roots}
        big_rounds = set(random.sample(range(N), max(1, N // params["big_every"]))) if params["big_every"] else set()
        for n in range(N):
            big = n in big_rounds
            services = {root: pick(counts[root], big) for root in roots}
            units = [(root, mode) for root in roots for mode in MODES]
            random.shuffle(units)
            for root, mode in units:
                k = services[root]
                took = curator_change(k, MODES[mode]) if root == CUR else change(root, k, MODES[mode])
                samples[root].append({"mode": mode, "service": k, "big": k == 0, "ms": took})
            if (n + 1) % 25 == 0:
                log(f"{n + 1}/{N} change rounds")
        result["changes"] = {"herald": samples[ROOT]}
        bres["changes"] = samples[BASE]
        bres["at_end"] = memory(bproc.pid)
        bres["stopped"] = stop(bproc, blog)
        if C:
            cres["changes"] = samples[CUR]
            cres["at_end"] = memory(jvm.proc.pid)
            cres["cpu_end_ms"] = cpu_ms(jvm.proc.pid)

        # What the reconcile costs at rest: one reconcile period (each director re-lists one
        # service every reconcile / services), nothing else happening.
        window = min(max(parse_duration(reconcile), 5.0), 120.0)
        log(f"the directors at rest for {window:.0f} s (their reconcile: {reconcile})")
        before_ops = {n: ops(metrics(addrs[n])) for n in pair}
        cpu_before = {n: cpu_ms(procs[n].pid) for n in pair}
        zk_cpu = cpu_ms(zk_pid)
        a = reading(zk_port)
        time.sleep(window)
        b = reading(zk_port)
        elapsed = b[0] - a[0]
        result["reconcile_idle"] = {
            "window_s": elapsed, "received": b[1] - a[1] - 1, "rate": (b[1] - a[1] - 1) / elapsed,
            "response_bytes": b[3] - a[3], "zk_cpu_ms": cpu_ms(zk_pid) - zk_cpu,
            "cpu_ms": {n: cpu_ms(procs[n].pid) - cpu_before[n] for n in pair},
            "ops": {n: delta(ops(metrics(addrs[n])), before_ops[n]) for n in pair},
        }
        result["leadership"]["at_end"] = leadership(addrs, keys, directors, "at_end")
        for n in pair:
            directors[n]["at_end"] = memory(procs[n].pid)
            directors[n]["metrics_end"] = {k: v for k, v in metrics(addrs[n]).items()
                                           if k.startswith(("herald_director_handovers_total", "herald_zk_"))
                                           and "{" not in k}
        for n in pair:
            directors[n]["stopped"] = stop(procs[n], logs[n])
        own, publishes = [], []
        for n in pair:
            for r in records(logs[n]):
                fields = r.get("fields", {})
                if fields.get("message") != "published":
                    continue
                at = iso_s(r["timestamp"]) - synced_wall
                publishes.append({"director": n, "at_s": at, "key": r.get("span", {}).get("key"),
                                  "latency_ms": fields.get("latency_ms"), "old": fields.get("old"),
                                  "new": fields.get("new"), "instances": fields.get("instances")})
                # A key's first value replaces none: the change publishes are the others.
                if fields.get("old") != "none" and fields.get("latency_ms") is not None:
                    own.append(fields["latency_ms"])
        result["own_latency"] = own
        result["publishes"] = publishes
        result["directors"] = directors

        # Phase 2: two fresh directors whose reconcile is out of the way (--reconcile 24h), so
        # that what ZooKeeper receives is theirs and this program's alone. Their start over the
        # values already published: until each output has one leader and the rate is idle.
        log("phase 2: two directors with --reconcile 24h")
        zk_cpu = cpu_ms(zk_pid)
        first = reading(zk_port)
        procs, logs = start_pair("2", "24h")
        addrs = {}
        second = {n: {} for n in pair}
        checked = [0.0, False]  # when /status.json was last asked; whether every output was led

        def led_once():
            if checked[1] or time.monotonic() - checked[0] < 1.0:
                return checked[1]
            checked[0] = time.monotonic()
            try:
                for n in pair:
                    addrs.setdefault(n, metrics_address(logs[n]))
                checked[1] = leadership(addrs, keys, second, "after_start", wait=0)["unled"] == 0
            except OSError:
                pass
            return checked[1]

        quiet, npolls, _ = until_quiet(zk_port, first, 1.0, led_once, limit=SYNC_TIMEOUT)
        received = quiet[1] - first[1]
        result["restart"] = {
            "quiet_s": quiet[0] - first[0], "received": received, "polls": npolls,
            "directors": received - npolls, "zk_cpu_ms": cpu_ms(zk_pid) - zk_cpu,
            "cpu_ms": {n: cpu_ms(procs[n].pid) for n in pair},
        }
        for n in pair:
            second[n]["after_start"] = memory(procs[n].pid)
        log(f"phase 2: both directors listed and leading after {quiet[0] - first[0]:.1f} s, "
            f"{received:,} packets")

        # Requests per change: the idle rate first, then a batch of registrations and one of
        # deregistrations in distinct services (never svc0000), back to back.
        idle_s = 5.0
        a = mntr(zk_port)
        time.sleep(idle_s)
        b = mntr(zk_port)
        idle_rate = max(0.0, (b["zk_packets_received"] - a["zk_packets_received"] - 1) / idle_s)
        packets = {"idle_s": idle_s, "idle_rate": idle_rate}
        batch = [k for k in random.sample(range(1, S), min(params["batch"], S - 1)) if not present[ROOT][k]]
        for kind in ("registration", "deregistration"):
            before_ops = {n: ops(metrics(addrs[n])) for n in pair}
            m0 = mntr(zk_port)
            t = time.perf_counter()
            for k in batch:
                change(ROOT, k, 0.0)
            elapsed = time.perf_counter() - t
            m1 = mntr(zk_port)
            received = m1["zk_packets_received"] - m0["zk_packets_received"]
            idle = idle_rate * elapsed
            directors_part = received - 3 * len(batch) - 1 - idle
            packets[kind] = {
                "changes": len(batch), "elapsed_s": elapsed, "received": received, "idle": idle,
                "sent": m1["zk_packets_sent"] - m0["zk_packets_sent"], "directors": directors_part,
                "per_change": directors_part / len(batch),
                "ops": {n: delta(ops(metrics(addrs[n])), before_ops[n]) for n in pair},
            }
            log(f"{len(batch)} {kind}s: {received} packets received, {directors_part / len(batch):.2f} per change "
                f"from the directors")
        if C:
            # The same count for Curator's ServiceCache, in its own tree (the directors see none of it):
            # this program's requests are the writer's create/delete alone.
            cbatch = [k for k in random.sample(range(1, C), min(params["batch"], C - 1)) if not present[CUR][k]]
            for kind in ("registration", "deregistration"):
                m0 = mntr(zk_port)
                t = time.perf_counter()
                for k in cbatch:
                    curator_change(k, 0.0)
                elapsed = time.perf_counter() - t
                m1 = mntr(zk_port)
                received = m1["zk_packets_received"] - m0["zk_packets_received"]
                idle = idle_rate * elapsed
                part = received - len(cbatch) - 1 - idle
                cres.setdefault("packets", {})[kind] = {
                    "changes": len(cbatch), "elapsed_s": elapsed, "received": received, "idle": idle,
                    "curator": part, "per_change": part / len(cbatch)}
                log(f"Curator: {len(cbatch)} {kind}s: {received} packets received, {part / len(cbatch):.2f} per "
                    f"change from the ServiceCache")
            cres["events"], cres["unexpected_events"], cres["states"] = jvm.events, jvm.unexpected, jvm.states
            cres["at_end"]["heap"] = jvm.heap_after_gc()
            cres["stopped"] = jvm.stop()
        result["packets"] = packets

        # Requests per reconnect: ZooKeeper stopped longer than the directors' connection
        # timeout, shorter than their sessions.
        pause = params["pause"]
        before_metrics = {n: metrics(addrs[n]) for n in pair}
        cpu_before = {n: cpu_ms(procs[n].pid) for n in pair}
        first = reading(zk_port)
        stopped_wall = time.time()
        os.kill(zk_pid, signal.SIGSTOP)
        try:
            time.sleep(pause)
        finally:
            os.kill(zk_pid, signal.SIGCONT)
        resumed = time.perf_counter()
        resumed_wall = time.time()
        zk_cpu = cpu_ms(zk_pid)
        relisted = {n: None for n in pair}

        def both_relisted():
            for n in pair:
                if relisted[n] is None:
                    found = [iso_s(r["timestamp"]) for r in records(logs[n])
                             if r.get("fields", {}).get("message") in RELISTED and iso_s(r["timestamp"]) > stopped_wall]
                    if found:
                        relisted[n] = min(found) - resumed_wall
            return all(v is not None for v in relisted.values())

        quiet, npolls, polls = until_quiet(zk_port, first, idle_rate, both_relisted)
        quiet_s = quiet[0] - resumed
        received = quiet[1] - first[1]
        idle = idle_rate * (quiet[0] - first[0])
        after_metrics = {n: metrics(addrs[n]) for n in pair}
        result["reconnect"] = {
            "pause_s": pause, "quiet_s": quiet_s, "quiet_window_s": 2.0, "poll_s": 0.2,
            "received": received, "polls": npolls, "idle": idle,
            "directors": received - npolls - idle,
            "sent": quiet[2] - first[2], "response_bytes": quiet[3] - first[3],
            "zk_cpu_ms": cpu_ms(zk_pid) - zk_cpu,
            "cpu_ms": {n: cpu_ms(procs[n].pid) - cpu_before[n] for n in pair},
            "relisted_s": relisted, "relisted_all_s": max(relisted.values()),
            "ops": {n: delta(ops(after_metrics[n]), ops(before_metrics[n])) for n in pair},
            "metrics_delta": {n: delta(after_metrics[n], before_metrics[n]) for n in pair},
            "series": [(p[0] - resumed, p[1] - first[1]) for p in polls],
        }
        log(f"reconnect: {received:,} packets received until {quiet_s:.1f} s after the resume")

        # The end: every value still right, leadership, memory, exits.
        for k in range(S):
            if watcher.get(f"{ROOT}/environment/{keys[k]}")[0] != hostports(k, present[ROOT][k]):
                result["notes"].append(f"after the reconnect {keys[k]} was not the expected value")
        leadership(addrs, keys, second, "at_end")
        for n in pair:
            second[n]["at_end"] = memory(procs[n].pid)
        for n in pair:
            second[n]["stopped"] = stop(procs[n], logs[n])
        result["second"] = second
        relists = {n: sum(1 for r in records(logs[n]) if r.get("fields", {}).get("message") in RELISTED)
                   for n in pair}
        if any(v != 1 for v in relists.values()):
            result["notes"].append(f"relists logged by the phase 2 directors: {relists} (1 each expected: the reconnect)")
    finally:
        for proc in live:
            proc.kill()
            proc.wait()
        for client in clients:
            try:
                client.stop()
                client.close()
            except Exception:  # the measurements are already taken or lost
                pass
    json.dump(result, sys.stdout)


def heap_gc(zk_pid, result):
    """ZooKeeper's maximum heap (jcmd VM.flags) and its use after a full GC (jcmd GC.run,
    jstat -gc); left unknown when the JDK tools are missing."""
    try:
        flags = subprocess.run(["jcmd", str(zk_pid), "VM.flags"], capture_output=True, text=True, timeout=60).stdout
        for word in flags.split():
            if word.startswith("-XX:MaxHeapSize="):
                result["zk"]["heap"] = f"{int(word.split('=')[1]) / 2**20:,.0f} MiB"
        subprocess.run(["jcmd", str(zk_pid), "GC.run"], capture_output=True, timeout=120)
        lines = subprocess.run(["jstat", "-gc", str(zk_pid)], capture_output=True, text=True, timeout=60).stdout.split("\n")
        row = dict(zip(lines[0].split(), lines[1].split()))
        used = sum(float(row[c]) for c in ("S0U", "S1U", "EU", "OU"))
        result["zk"]["live_heap_mib"] = used / 1024
    except (OSError, subprocess.SubprocessError, IndexError, KeyError, ValueError):
        result["zk"]["live_heap_mib"] = None


def metrics_address(log_path):
    """The address a director serves metrics on (`--metrics-listen 127.0.0.1:0`), from its log."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        for r in records(log_path):
            fields = r.get("fields", {})
            if fields.get("message") == "serving metrics and status":
                return fields["listen"]
        time.sleep(0.1)
    raise SystemExit(f"bench scale: no 'serving metrics and status' in {log_path}")


def leadership(addrs, keys, directors, when, wait=30):
    """Outputs each director leads (/status.json), once every key has one leader (or after `wait`
    s): a director first in line that is not preferred hands the output over just after the start."""
    deadline = time.monotonic() + wait
    while True:
        led = {n: {k for k, v in json.loads(http_get(a, "/status.json"))["outputs"].items() if v.get("leading")}
               for n, a in addrs.items()}
        every = [k for n in led for k in led[n]]
        unled = len(set(keys) - set(every))
        twice = len(every) - len(set(every))
        if (unled == 0 and twice == 0) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    for n in addrs:
        directors[n].setdefault("leading", {})[when] = len(led[n])
    return {"unled": unled, "twice": twice}


if __name__ == "__main__":
    measure(json.loads(sys.argv[1]))
