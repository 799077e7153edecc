"""scripts/bench slice: one shard of SCALE.md's design, as far as one machine goes.

A ZooKeeper 3.8 ensemble on loopback (scripts/zk ensemble start: 3 voters and --observers
observers, --zk-heap each), --hosts `herald host` processes (one session each, to the voters,
--host-session-timeout, --register-rate 0 at first), and a load generator (this file, asyncio)
that registers --instances instances in --services services (svc0000 holds --big, like `scripts
bench scale`) through the host agents: one Unix-socket connection per instance, instance i through
host agent i mod --hosts, speaking the relay protocol itself (register, then wanted now=true) and
holding the connection open. Then --directors `herald director --config` processes with one
output per service (preset hostports, leadership spread) on the voters, and two readers (kazoo,
a data watch on every published value): one connected to the observers, one to the voters.
Measured, in this order:

  registration   start → every instance registered (the host agents' status lines, then
                 counted in ZooKeeper); the host agents' RSS; each server's mntr (znodes,
                 watches, data size, connections, latency, outstanding requests sampled every
                 100 ms); each JVM's heap after a full GC (jcmd, jstat)
  initial sync   the directors started → every value seen by each reader
  one change     --changes times an instance `x` registered or stopped through a host agent, to
                 the new value read by the reader on the observers and by the one on the voters
  leader kill    changes flowing back to back; the ZooKeeper leader SIGKILLed: a new leader, the
                 first change after the kill read on the observers, sessions expired (logs),
                 instance nodes before and after, every value each reader saw checked against
                 the instances (a value lacking one, or naming one that does not exist, is wrong),
                 the killed server started again
  storms         every host agent SIGSTOPped until ZooKeeper expired their sessions, then
                 SIGCONT: all instances registered again (unpaced), mntr every 100 ms on every
                 server, the directors' publishes and holds (max_drop), the values each reader
                 saw; then the host agents replaced by ones with --register-rate (--rate in all,
                 split over the hosts) and the same storm again

Prints Markdown tables; the raw figures go to target/bench/slice-TIMESTAMP.json. This file is
the driver (imported by scripts/bench), the measuring program (`measure`, in the bench venv: kazoo)
and the load generator (`loadgen`, plain asyncio).
"""
import asyncio
import json
import os
import random
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from benchlib import pct, service_sizes, four_letter, memory, cpu_ms, iso_s, records

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

ROOT = "/bench-slice"
ZK = os.path.join(REPO, "scripts", "zk")
TIMEOUT = 60          # one change, one process start
LONG = 1800           # a registration of everything, an initial sync, a storm
KILL_LIMIT = 300      # the leader kill: changes must flow again within this (else it is reported)
NOFILE = 262_144      # the load generator's and the host agents' open files (raised for them)
PER_PROCESS = 15_000  # connections per load generator process (under a hard limit of 20,000 files)


def log(msg):
    print(f"bench slice: {msg}", file=sys.stderr, flush=True)


def ident(j):
    return f"i{j:05d}"


def address(k, j):
    return f"10.{1 + k // 256}.{k % 256}.{j % 250 + 1}"


def x_address(k):
    return f"10.250.{k % 256}.{k // 256 + 1}"


def document(service, ident_, addr, port):
    """An instance document as herald and Curator write it (README: the instance document)."""
    return json.dumps({
        "name": service, "id": ident_, "address": addr, "port": port, "sslPort": None,
        "payload": {"labels": {}, "meta": {}, "endpoints": {}, "weight": 1},
        "registrationTimeUTC": int(time.time() * 1000), "serviceType": "DYNAMIC", "uriSpec": None,
    }, separators=(",", ":")).encode()


def http_get(addr, path):
    import urllib.request
    with urllib.request.urlopen(f"http://{addr}{path}", timeout=30) as reply:
        return reply.read()


def raise_nofile():
    """preexec_fn: the open-files limit raised to NOFILE, or to the hard limit when it may not be
    raised (a root without CAP_SYS_RESOURCE, as in many containers)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = NOFILE
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# ---------------------------------------------------------------------------------------------
# The driver: starts the ensemble, runs the measuring program in the venv, prints the tables.


def add_arguments(parser):
    """The options of `scripts/bench slice`."""
    parser.add_argument("--instances", type=int, default=100_000, help="instances in all (100000)")
    parser.add_argument("--services", type=int, default=1000, help="services, one output each (1000)")
    parser.add_argument("--big", type=int, default=10_000, help="instances of svc0000, the big service (10000)")
    parser.add_argument("--hosts", type=int, default=10, help="`herald host` processes (10)")
    parser.add_argument("--observers", type=int, default=1, help="ZooKeeper observers beside the 3 voters (1)")
    parser.add_argument("--directors", type=int, default=2, help="`herald director` processes (2)")
    parser.add_argument("--changes", type=int, default=200, help="one-change rounds (200)")
    parser.add_argument("--kill-changes", type=int, default=30,
                        help="changes read on the observers after the leader kill before it is over (30)")
    parser.add_argument("--rate", type=int, default=2000,
                        help="the paced storm: registrations per second over all host agents (2000)")
    parser.add_argument("--host-session-timeout", default="4s",
                        help="the host agents' --session-timeout (4s): how long a storm's freeze lasts")
    parser.add_argument("--zk-heap", default="1g", help="each ZooKeeper server's -Xmx (1g)")
    parser.add_argument("--no-build", action="store_true",
                        help="use target/release/herald as it is (no cargo build --release)")
    parser.add_argument("--herald", metavar="PATH",
                        help="run this herald binary (no build; e.g. one built from a clean export of a commit)")
    parser.add_argument("--output-toml", default="",
                        help="more TOML lines for every [[output]] of the directors' configuration, e.g. "
                             "'wait = \"100ms:1s\"' or 'removal_delay = \"30s\"' (default: none, herald's defaults; "
                             "the directors' one-output flags do not apply to --config outputs)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the work directory (every process's log) after a successful run too")


def problems(opts):
    if not 2 <= opts.services <= 10_000:
        return "--services must be from 2 to 10000 (svc0000…svc9999)"
    if opts.big < 1 or opts.instances - opts.big < opts.services - 1 or opts.big > 99_999:
        return "--big must be 1 to 99999 and leave at least one instance for each other service"
    if not 1 <= opts.hosts <= 1000 or not 0 <= opts.observers <= 6 or not 1 <= opts.directors <= 10:
        return "--hosts 1 to 1000, --observers 0 to 6, --directors 1 to 10"
    if opts.changes < 1 or opts.kill_changes < 1 or opts.rate < opts.hosts:
        return "--changes and --kill-changes at least 1, --rate at least one per host"
    if opts.instances > 500_000:
        return "--instances at most 500000 (one connection each)"
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and -(-opts.instances // opts.hosts) > hard - 200:
        return (f"{-(-opts.instances // opts.hosts):,} connections per host agent would pass the hard limit of open "
                f"files ({hard:,}); give more --hosts")
    return None


def free_base():
    """A base port P with P+1..P+29 free (scripts/zk's ensemble uses P+N, P+10+N, P+20+N)."""
    for _ in range(200):
        base = random.randrange(30_000, 59_000, 100)
        try:
            for port in range(base + 1, base + 30):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise SystemExit("bench slice: no free range of 30 ports")


def run(opts, machine, python):
    def git(*args):
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "?"
    herald = os.path.abspath(opts.herald) if opts.herald else os.path.join(REPO, "target", "release", "herald")
    if opts.herald:
        version = subprocess.run([herald, "--version"], capture_output=True, text=True).stdout.strip()
        built = f"{herald} ({version}; --herald; HEAD is now {head})"
    elif not opts.no_build:
        changed = " with uncommitted changes" if git("status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock") else ""
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=REPO, check=True)
        built = f"{head}{changed}"
    else:
        mtime = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(os.stat(herald).st_mtime))
        built = f"the target/release/herald of {mtime} (--no-build; HEAD is now {head})"
    workdir = tempfile.mkdtemp(prefix="herald-bench-slice-")
    zkdir = os.path.join(workdir, "zk")
    base = free_base()
    load_before = os.getloadavg()
    started = subprocess.run([ZK, "ensemble", "start", "--dir", zkdir, "--base-port", str(base),
                              "--observers", str(opts.observers), "--heap", opts.zk_heap],
                             check=True, stdout=subprocess.PIPE, text=True).stdout.split()
    ok = False
    measurer = None
    try:
        logs = os.path.join(workdir, "logs")
        os.mkdir(logs)
        servers = [{"id": n, "port": base + n,
                    "role": "voter" if n <= 3 else "observer",
                    "pid": int(open(os.path.join(zkdir, str(n), "pid")).read())}
                   for n in range(1, 4 + opts.observers)]
        params = dict(vars(opts), herald=herald, python=python, zkdir=zkdir, voters=started[0],
                      observers_hosts=started[1] if opts.observers else "", servers=servers, workdir=logs)
        params.pop("bench", None)
        # Its own process group: whatever it started goes with it, even if it is killed.
        measurer = subprocess.Popen([python, os.path.abspath(__file__), "measure", json.dumps(params)],
                                    stdout=subprocess.PIPE, start_new_session=True)
        out, _ = measurer.communicate()
        if measurer.returncode != 0:
            raise SystemExit(f"bench slice: the measuring program failed (exit {measurer.returncode}); logs in {logs}")
        result = json.loads(out)
        ok = True
    finally:
        if measurer is not None:
            try:
                os.killpg(measurer.pid, signal.SIGTERM)
                measurer.wait(timeout=30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
            try:
                os.killpg(measurer.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        subprocess.run([ZK, "ensemble", "stop", "--dir", zkdir], stdout=subprocess.DEVNULL)
        if ok and not opts.keep:
            subprocess.run(["rm", "-rf", workdir])
        else:
            subprocess.run(["rm", "-rf", *(os.path.join(zkdir, str(n), "data") for n in range(1, 10))])
            log(f"logs kept in {workdir}")
        if ok and opts.keep:
            subprocess.run(["rm", "-rf", *(os.path.join(zkdir, str(n), "data") for n in range(1, 10))])
            log(f"logs kept in {workdir}")
    result.update(machine=machine, built_from=built, load_before=load_before, load_after=os.getloadavg(),
                  options={k: v for k, v in vars(opts).items() if k != "bench"})
    out_dir = os.path.join(REPO, "target", "bench")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, time.strftime("slice-%Y%m%d-%H%M%S.json"))
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    report(result)
    print()
    print(f"raw figures: {os.path.relpath(path, REPO)}")


# ---------------------------------------------------------------------------------------------
# The report.


def report(r):
    o = r["options"]
    servers = r["servers"]

    def row(*cells):
        print("| " + " | ".join(str(c) for c in cells) + " |")

    def ms(v):
        return "n/a" if v is None else f"{v:,.0f}"

    def s(v):
        return "n/a" if v is None else f"{v:,.1f}"

    def pp(values):
        return "n/a" if not values else f"{pct(values, 50):.1f} / {pct(values, 99):.1f} / {max(values):.1f}"

    names = {srv["id"]: f"{srv['id']} ({srv['role']})" for srv in servers}
    print(f"machine: {r['machine']}; load average before {r['load_before'][0]:.2f}, after {r['load_after'][0]:.2f}")
    print()
    print(
        f"slice: ZooKeeper {r['zk_version']} ensemble, 3 voters + {o['observers']} observer(s) on loopback "
        f"(-Xmx{o['zk_heap']} each); {r['instances']:,} instances in {r['services']:,} services (svc0000: "
        f"{r['big']:,}; the others {min(r['sizes'][1:])}–{max(r['sizes'][1:])}) registered through {o['hosts']} "
        f"`herald host` processes (--session-timeout {o['host_session_timeout']}, one Unix-socket connection per "
        f"instance from asyncio load generator processes); {o['directors']} `herald director --config` processes with "
        f"{r['services']:,} outputs each (preset hostports, spread{', ' + o['output_toml'] if o.get('output_toml') else ''}) on the voters; readers: kazoo data watches on "
        f"every value, one client on the observer(s), one on the voters. herald built from {r['built_from']}."
    )
    reg = r["registration"]
    print()
    print("| registration | value |")
    print("|---|---:|")
    row("start → every instance registered (the host agents' status lines), s", s(reg["all_registered_s"]))
    row("… instances per second", f"{r['instances'] / reg['all_registered_s']:,.0f}")
    row("instance nodes counted on the observer afterwards", f"{reg['counted']:,}")
    row("host agent VmRSS after, MiB (min–max of the hosts)",
        f"{min(h['rss_kib'] for h in reg['hosts']) / 1024:,.1f}–{max(h['rss_kib'] for h in reg['hosts']) / 1024:,.1f}")
    row("host agent VmHWM, MiB (max)", f"{max(h['hwm_kib'] for h in reg['hosts']) / 1024:,.1f}")
    row("host agent CPU over the registration, s (sum of the hosts)", s(reg["hosts_cpu_ms"] / 1000))
    row(f"load generator VmRSS, MiB ({reg['loadgen']['processes']} processes)", s(reg["loadgen"]["rss_kib"] / 1024))
    print()
    print("| server | mode | znodes | watches | data size MiB | connections | outstanding max (100 ms samples) | latency avg / max ms | live heap MiB (after full GC) | VmRSS MiB |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n, m in sorted(reg["mntr"].items(), key=lambda kv: int(kv[0])):
        heap = reg["heap"].get(n)
        row(names[int(n)], m.get("zk_server_state", "?"), f"{m.get('zk_znode_count', 0):,}",
            f"{m.get('zk_watch_count', 0):,}", f"{m.get('zk_approximate_data_size', 0) / 2**20:,.1f}",
            m.get("zk_num_alive_connections", "?"), reg["outstanding_max"].get(n, "?"),
            f"{float(m.get('zk_avg_latency', 0)):.1f} / {m.get('zk_max_latency', 0)}",
            "n/a" if heap is None else f"{heap:,.0f}", f"{reg['zk_rss'][n] / 1024:,.0f}")

    sync = r["sync"]
    print()
    print("| directors | value |")
    print("|---|---:|")
    row("initial sync: start → every value read on the observer(s), ms", ms(sync["observer_ms"]))
    row("initial sync: start → every value read on the voters, ms", ms(sync["voter_ms"]))
    row("director VmRSS after sync, MiB", " / ".join(f"{d['rss_kib'] / 1024:,.0f}" for d in sync["memory"]))
    row("outputs each leads", " / ".join(str(v) for v in sync["leading"]))
    ch = r["changes"]
    for who in ("observer", "voter"):
        row(f"one change → value read on the {who} reader, p50 / p99 / max ms ({len(ch[who])} changes)", pp(ch[who]))
    ratio = statistics.median(ch["observer"]) / statistics.median(ch["voter"]) if ch["voter"] else None
    row("observer p50 / voter p50", "n/a" if ratio is None else f"{ratio:.2f}x")
    row("values checked after the changes", "all right" if not ch["wrong_after"] else f"{ch['wrong_after']} WRONG")

    k = r["kill"]
    print()
    print("| leader kill (SIGKILL, changes flowing) | value |")
    print("|---|---:|")
    row("killed server", k["killed"])
    row("kill → a new leader (srvr), ms", ms(k["new_leader_ms"]))
    row("kill → the observer serving again, ms", ms(k["observer_back_ms"]))
    row("kill → first change made after it read on the observer, ms", ms(k["first_after_ms"]))
    row("longest gap between two values read on the observer, ms", ms(k["gap_ms"]))
    row("the change in flight at the kill: issued → read, ms", ms(k["inflight_ms"]))
    row(f"changes after the kill, read on the observer, p50 / p99 / max ms ({len(k['after'])})", pp(k["after"]))
    row("changes before the kill, p50 / p99 / max ms", pp(k["before"]))
    row("sessions expired (host agents / directors, from their logs)", f"{k['expired']['hosts']} / {k['expired']['directors']}")
    row("connections lost / registrations failed (load generator)", f"{k['loadgen']['lost']} / {k['loadgen']['failed']}")
    row("instance nodes before → after", f"{k['nodes_before']:,} → {k['nodes_after']:,}")
    row("values read that were wrong or lacking an instance (observer / voter reader)",
        f"{k['bad']['observer']} / {k['bad']['voter']}")
    row("values checked after settling", "all right" if not k["wrong_after"] else f"{k['wrong_after']} WRONG")
    row("killed server restarted → serving, ms", ms(k["restart_ms"]))

    print()
    print("| re-registration storm (host agents SIGSTOPped past their session, SIGCONT) | unpaced (--register-rate 0) | "
          f"paced ({o['rate']:,}/s over {o['hosts']} hosts) |")
    print("|---|---:|---:|")
    a, b = r["storms"]["unpaced"], r["storms"]["paced"]

    def both(label, f):
        row(label, f(a), f(b))

    both("SIGSTOP → ZooKeeper expired every host session, s", lambda x: s(x["expired_s"]))
    both("SIGCONT → every instance registered again (host status lines), s", lambda x: s(x["back_s"]))
    both("SIGCONT → every instance node back (ZooKeeper's ephemeral count), s", lambda x: s(x["nodes_back_s"]))
    both("… instances per second (nodes back)", lambda x: "n/a" if not x["nodes_back_s"] else f"{r['instances'] / x['nodes_back_s']:,.0f}")
    both("SIGCONT → every value whole again (observer reader), s", lambda x: s(x["whole_s"]))
    both("… per output, p50 / p90 / max s", lambda x: "n/a" if not x["whole_by_key"] else
         f"{pct(x['whole_by_key'], 50):.1f} / {pct(x['whole_by_key'], 90):.1f} / {max(x['whole_by_key']):.1f}")
    both("outstanding requests, max over the servers (100 ms samples)", lambda x: f"{x['outstanding_max']:,}")
    both("… per server", lambda x: " / ".join(f"{v}" for _, v in sorted(x["outstanding_by_server"].items())))
    both("latency avg / max ms, per server", lambda x: " · ".join(f"{float(v[0] or 0):.0f}/{v[1]}" for _, v in sorted(x["latency"].items())))
    both("host sessions expired / new sessions (logs)", lambda x: f"{x['expired']} / {x['new_sessions']}")
    both("publishes (all directors)", lambda x: f"{x['publishes']:,}")
    both("publishes lacking instances (below the full count)", lambda x: f"{x['lacking']:,}")
    both("… of which lacking more than half (max_drop's 50 %)", lambda x: f"{x['lacking_over_half']:,}")
    both("holds logged (max_drop / min_instances / empty)", lambda x: " / ".join(str(x["holds"].get(h, 0)) for h in ("max_drop", "min_instances", "empty")))
    both("drops confirmed after drop_confirm", lambda x: f"{x['confirmed']:,}")
    both("outputs that published a value lacking instances", lambda x: f"{x['keys_lacking']:,}")
    both("smallest share of a service's instances published", lambda x: "n/a" if x["min_share"] is None else f"{x['min_share'] * 100:.0f} %")
    both("values read lacking instances (observer reader)", lambda x: f"{x['read_lacking']:,}")
    both("values read naming an instance that does not exist", lambda x: f"{x['read_wrong']:,}")
    both("values checked after settling", lambda x: "all right" if not x["wrong_after"] else f"{x['wrong_after']} WRONG")
    both("host agent VmHWM after, MiB (max)", lambda x: s(x["host_hwm_kib"] / 1024))
    rp = r["replace"]
    print()
    print(f"The paced host agents replaced the unpaced ones (SIGKILL, sessions expired in {s(rp['expired_s'])} s, new "
          f"ones started): every instance registered again {s(rp['back_s'])} s after they started "
          f"({r['instances'] / rp['back_s']:,.0f}/s against the {o['rate']:,}/s asked).")
    for line in r["exits"]:
        print(line)
    for line in r.get("notes", []):
        print(line)


# ---------------------------------------------------------------------------------------------
# The load generator (`slice.py loadgen PARAMS`): one connection per instance, the relay
# protocol spoken directly. Its counts go to stdout as JSON lines, one every 100 ms.


def loadgen(params):
    hosts, sizes, part, parts = params["sockets"], params["sizes"], params["part"], params["parts"]
    # Instance n registers through host agent n mod hosts; this process holds every parts-th one.
    plan = [(k, j) for k in range(len(sizes)) for j in range(sizes[k])]
    state = {"registered": 0, "connected": 0, "lost": 0, "failed": 0, "reconnects": 0, "refused": 0}
    failures = []

    def lines(k, j):
        name = f"svc{k:04d}"
        doc = document(name, ident(j), address(k, j), 8000 + j).decode()
        register = {"type": "register", "service": name, "id": ident(j), "generation": 1,
                    "document": doc, "give_up_on_duplicate": False}
        return (json.dumps(register) + "\n" + json.dumps({"type": "wanted", "now": True, "why": ""}) + "\n").encode()

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    gates = [asyncio.Semaphore(64) for _ in hosts]

    class Conn(asyncio.Protocol):
        def __init__(self, n):
            self.n, self.buf, self.registered, self.transport = n, b"", False, None

        def connection_made(self, transport):
            self.transport = transport
            state["connected"] += 1
            k, j = plan[self.n]
            transport.write(lines(k, j))

        def data_received(self, data):
            self.buf += data
            while b"\n" in self.buf:
                line, _, self.buf = self.buf.partition(b"\n")
                if line.startswith(b'{"type":"status"'):
                    now = b'"registered":true' in line
                    if now != self.registered:
                        state["registered"] += 1 if now else -1
                        self.registered = now
                elif line.startswith(b'{"type":"failed"'):
                    state["failed"] += 1
                    if len(failures) < 20:
                        failures.append(line.decode(errors="replace"))

        def connection_lost(self, exc):
            state["connected"] -= 1
            if self.registered:
                state["registered"] -= 1
            self.registered = False
            state["lost"] += 1
            # Like herald's own agents: connect again every second until a host agent answers.
            loop.call_later(1.0, lambda: loop.create_task(connect(self.n, again=True)))

    async def connect(n, again=False):
        h = n % len(hosts)
        while True:
            async with gates[h]:
                try:
                    await loop.create_unix_connection(lambda: Conn(n), hosts[h])
                    if again:
                        state["reconnects"] += 1
                    return
                except OSError:
                    state["refused"] += 1
            await asyncio.sleep(1.0)

    async def report():
        last = None
        while True:
            now = dict(state, t=time.monotonic())
            key = tuple(state.values())
            if key != last:
                print(json.dumps(now), flush=True)
                last = key
            if failures:
                print(json.dumps({"failures": failures[:]}), flush=True)
                failures.clear()
            await asyncio.sleep(0.1)

    async def main():
        loop.create_task(report())
        print(json.dumps({"started": time.monotonic()}), flush=True)
        for n in range(part, len(plan), parts):
            loop.create_task(connect(n))
            if n % 1000 < parts:
                await asyncio.sleep(0)
        await asyncio.Event().wait()

    loop.add_signal_handler(signal.SIGTERM, loop.stop)
    try:
        loop.run_until_complete(main())
    except RuntimeError:
        pass  # stopped by SIGTERM


class Loadgen:
    """The load generator as the measuring program sees it: as many processes as the open-files
    limit asks for, their counts summed by a thread each."""

    def __init__(self, python, params, log_path, env, instances):
        self.cond = threading.Condition()
        self.state, self.started, self.history, self.failures = {}, None, [], []
        parts = max(1, -(-instances // PER_PROCESS))
        self.parts = [{} for _ in range(parts)]
        self.procs = []
        for part in range(parts):
            err = open(f"{log_path}.{part}", "wb")
            proc = subprocess.Popen([python, os.path.abspath(__file__), "loadgen",
                                     json.dumps(dict(params, part=part, parts=parts))],
                                    stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL,
                                    env=env, preexec_fn=raise_nofile)
            self.procs.append(proc)
            threading.Thread(target=self._read, args=(part, proc), daemon=True).start()

    def _read(self, part, proc):
        for raw in proc.stdout:
            msg = json.loads(raw)
            with self.cond:
                if "started" in msg:
                    self.started = msg["started"] if self.started is None else min(self.started, msg["started"])
                elif "failures" in msg:
                    self.failures.extend(msg["failures"])
                else:
                    self.parts[part] = msg
                    if all(self.parts):
                        total = {k: sum(p[k] for p in self.parts) for k in msg if k != "t"}
                        self.state = dict(total, t=msg["t"])
                        self.history.append((msg["t"], total["registered"]))
                self.cond.notify_all()
        with self.cond:
            self.state = dict(self.state, exited=True)
            self.cond.notify_all()

    def until(self, what, test, limit):
        """Waits until test(state) holds; the time (monotonic) of the state that met it."""
        deadline = time.monotonic() + limit
        with self.cond:
            while not (self.state and test(self.state)):
                if self.state.get("exited"):
                    raise SystemExit(f"bench slice: the load generator exited while waiting for {what}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SystemExit(f"bench slice: no {what} within {limit:.0f} s (load generator: {self.state})")
                self.cond.wait(min(left, 1.0))
            return self.state["t"]

    def snapshot(self):
        with self.cond:
            return dict(self.state)

    def memory_kib(self):
        return sum(memory(p.pid)["rss_kib"] for p in self.procs)


# ---------------------------------------------------------------------------------------------
# The measuring program (`slice.py measure PARAMS`, the venv's python: kazoo).


live = []  # (process, log) of everything started and not yet reaped: killed on the way out


def spawn(argv, env, log_path, nofile=False):
    err = open(log_path, "ab")
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                            preexec_fn=raise_nofile if nofile else None)
    live.append(proc)
    return proc


def stop(proc, sig=signal.SIGTERM, limit=TIMEOUT):
    proc.send_signal(sig)
    try:
        code = proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = proc.wait()
        code = f"{code} (killed: no exit within {limit} s of the signal)"
    if proc in live:
        live.remove(proc)
    return code


def mntr_all(port):
    out = {}
    try:
        text = four_letter(port, "mntr")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition("\t")
        try:
            out[key] = int(value)
        except ValueError:
            try:
                out[key] = float(value)
            except ValueError:
                out[key] = value
    return out or None


def mode(port):
    try:
        for line in four_letter(port, "srvr").splitlines():
            if line.startswith("Mode:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


class Sampler:
    """mntr of every server every 100 ms in a thread, while running."""

    KEYS = ("zk_outstanding_requests", "zk_avg_latency", "zk_max_latency", "zk_ephemerals_count",
            "zk_znode_count", "zk_num_alive_connections", "zk_server_state")

    def __init__(self, servers):
        self.servers, self.samples, self.running = servers, [], True
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while self.running:
            t = time.monotonic()
            for srv in self.servers:
                m = mntr_all(srv["port"])
                if m is not None:
                    with self.lock:
                        self.samples.append((t, srv["id"], {k: m.get(k) for k in self.KEYS}))
            time.sleep(max(0.0, 0.1 - (time.monotonic() - t)))

    def latest(self, n, key):
        with self.lock:
            for t, sid, m in reversed(self.samples):
                if sid == n:
                    return m.get(key)
        return None

    def finish(self):
        self.running = False
        self.thread.join()
        return self.samples

    @staticmethod
    def max_of(samples, key, since=0.0):
        out = {}
        for t, sid, m in samples:
            if t >= since and isinstance(m.get(key), (int, float)):
                out[sid] = max(out.get(sid, 0), m[key])
        return out


class Reader:
    """A kazoo client with a data watch on every key; every value it reads is classified on
    arrival: `full` (the instances exactly), `lacking` (some of them only), `wrong` (naming an
    instance that does not exist, or out of order)."""

    def __init__(self, hosts, name, keys, expected):
        from kazoo.client import KazooClient
        from kazoo.recipe.watchers import DataWatch

        self.name, self.keys, self.expected = name, keys, expected
        self.client = KazooClient(hosts=hosts, timeout=30)
        self.client.start(timeout=TIMEOUT)
        self.cond = threading.Condition()
        self.latest, self.at, self.events = {}, {}, []
        self.first = {}
        for k, key in enumerate(keys):
            DataWatch(self.client, f"{ROOT}/environment/{key}", self._watch(k))

    def _watch(self, k):
        def seen(data, stat, event=None):
            t = time.monotonic()
            verdict = self.expected.classify(k, data) if data is not None else None
            with self.cond:
                if data is not None:
                    self.first.setdefault(k, t)
                    self.events.append((t, k, verdict))
                self.latest[k] = data
                self.at[k] = t
                self.cond.notify_all()
        return seen

    def wait_value(self, k, value, limit=TIMEOUT):
        """The time (monotonic) this reader read `value` at key k, or None after `limit`."""
        deadline = time.monotonic() + limit
        with self.cond:
            while self.latest.get(k) != value:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)
            return self.at[k]

    def wait_all(self, limit):
        """Waits until every key holds its expected value; the time of the last, or None."""
        deadline = time.monotonic() + limit
        with self.cond:
            while True:
                bad = [k for k in range(len(self.keys)) if self.latest.get(k) != self.expected.value(k)]
                if not bad:
                    return max(self.at.values())
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(min(left, 1.0))

    def wrong_now(self):
        with self.cond:
            return sum(1 for k in range(len(self.keys)) if self.latest.get(k) != self.expected.value(k))

    def verdicts(self, since, until=None):
        with self.cond:
            return [(t, k, v) for t, k, v in self.events if t >= since and (until is None or t <= until)]


class Expected:
    """What each service's value should be: its instances by id, then `x` when present."""

    def __init__(self, sizes):
        self.sizes = sizes
        self.present = [False] * len(sizes)
        self.lock = threading.Lock()
        self.steady, self.sets = {}, {}

    def _steady(self, k):
        if k not in self.steady:
            entries = [f"{address(k, j)}:{8000 + j}".encode() for j in range(self.sizes[k])]
            self.steady[k] = b",".join(entries)
            self.sets[k] = {e: j for j, e in enumerate(entries)}  # entry → its place in the value
        return self.steady[k]

    def x(self, k):
        return f"{x_address(k)}:9000".encode()

    def value(self, k, present=None):
        present = self.present[k] if present is None else present
        return self._steady(k) + (b"," + self.x(k) if present else b"")

    def classify(self, k, data):
        steady = self._steady(k)
        if data == steady or data == steady + b"," + self.x(k):
            return ("full", self.sizes[k])
        entries = data.split(b",") if data else []
        place, x = self.sets[k], self.x(k)
        if all(e in place or e == x for e in entries) and len(set(entries)) == len(entries):
            order = [len(place) if e == x else place[e] for e in entries]
            if order == sorted(order):
                return ("lacking", sum(1 for e in entries if e != x))
        return ("wrong", len(entries))


def instance_count(client, names):
    """Instance nodes under every service, listed through `client`."""
    pending = [client.get_children_async(f"{ROOT}/services/{n}") for n in names]
    total = 0
    for p in pending:
        try:
            total += len([c for c in p.get(timeout=TIMEOUT) if c != "x"])
        except Exception:  # a service with no node yet counts none
            pass
    return total


def jvm_heaps(servers):
    """Each server's heap in use after a full GC, MiB (jcmd GC.run, jstat -gc); None when the JDK
    tools are missing."""
    out = {}
    for srv in servers:
        try:
            subprocess.run(["jcmd", str(srv["pid"]), "GC.run"], capture_output=True, timeout=120)
            lines = subprocess.run(["jstat", "-gc", str(srv["pid"])], capture_output=True, text=True,
                                   timeout=60).stdout.split("\n")
            row = dict(zip(lines[0].split(), lines[1].split()))
            out[str(srv["id"])] = sum(float(row[c]) for c in ("S0U", "S1U", "EU", "OU")) / 1024
        except (OSError, subprocess.SubprocessError, IndexError, KeyError, ValueError):
            out[str(srv["id"])] = None
    return out


def log_lines(path, message, since_wall=0.0, prefix=False):
    """The JSON records of a herald log whose message is (or, `prefix`, begins with) `message`,
    logged at or after `since_wall`."""
    out, needle = [], message.encode()
    with open(path, "rb") as f:
        raw = [line for line in f if needle in line]
    for line in raw:
        try:
            r = json.loads(line)
        except ValueError:
            continue
        m = r.get("fields", {}).get("message", "")
        if (m.startswith(message) if prefix else m == message) and iso_s(r["timestamp"]) >= since_wall:
            out.append(r)
    return out


def measure(params):
    import logging

    from kazoo.client import KazooClient

    # kazoo says every dropped connection; the leader kill drops many on purpose.
    logging.getLogger("kazoo").setLevel(logging.ERROR)

    herald, workdir, zkdir = params["herald"], params["workdir"], params["zkdir"]
    S, I, B, H = params["services"], params["instances"], params["big"], params["hosts"]
    servers = params["servers"]
    voters, observers = params["voters"], params["observers_hosts"] or params["voters"]
    sizes = service_sizes(S, I, B)
    names = [f"svc{k:04d}" for k in range(S)]
    keys = [f"S_{k:04d}" for k in range(S)]
    expected = Expected(sizes)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HERALD_ZK": voters, "HERALD_ROOT": ROOT,
           "HERALD_LOG_FORMAT": "json"}
    result = {"services": S, "instances": I, "big": B, "sizes": sizes, "servers": servers, "notes": [],
              "exits": []}
    clients, readers = [], []
    hosts = {}         # n → process
    host_logs = {n: os.path.join(workdir, f"host-{n}.log") for n in range(H)}
    sockets = [os.path.join(workdir, f"host-{n}.sock") for n in range(H)]
    # Signals end the program through its finally (the driver sends SIGTERM on Ctrl-C).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    def start_hosts(rate):
        per_host = 0 if rate == 0 else max(1, rate // H)
        started_wall = time.time() - 0.01
        for n in range(H):
            argv = [herald, "--session-timeout", params["host_session_timeout"], "host", "--socket", sockets[n],
                    "--register-rate", str(per_host), "--metrics-listen", "127.0.0.1:0"]
            hosts[n] = spawn(argv, env, host_logs[n], nofile=True)
        deadline = time.monotonic() + TIMEOUT
        for n in range(H):
            while not log_lines(host_logs[n], "host agent: registering the processes of this machine", started_wall):
                if hosts[n].poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"bench slice: host agent {n} did not start; see {host_logs[n]}")
                time.sleep(0.05)

    def host_memory():
        return [memory(hosts[n].pid) for n in range(H)]

    def count_on(client):
        return instance_count(client, names)

    sampler = None
    try:
        admin = KazooClient(hosts=voters, timeout=30)
        admin.start(timeout=TIMEOUT)
        clients.append(admin)
        srvr = four_letter(servers[0]["port"], "srvr")
        result["zk_version"] = next((l.split(":", 1)[1].strip() for l in srvr.splitlines()
                                     if l.startswith("Zookeeper version")), "?").split("-", 1)[0]
        admin.ensure_path(f"{ROOT}/environment")
        admin.ensure_path(f"{ROOT}/services")

        # The readers first: they see every value from its first version.
        oreader = Reader(observers, "observer", keys, expected)
        vreader = Reader(voters, "voter", keys, expected)
        readers += [oreader, vreader]
        ocount = KazooClient(hosts=observers, timeout=30)
        ocount.start(timeout=TIMEOUT)
        clients.append(ocount)

        # ---- Registration through the host agents.
        start_hosts(0)
        for srv in servers:
            four_letter(srv["port"], "srst")
        sampler = Sampler(servers)
        cpu0 = sum(cpu_ms(hosts[n].pid) for n in range(H))
        lg_params = {"sockets": sockets, "sizes": sizes}
        loadgen_proc = Loadgen(params["python"], lg_params, os.path.join(workdir, "loadgen.log"), env, I)
        live.extend(loadgen_proc.procs)
        loadgen_proc.until("load generator start", lambda s: loadgen_proc.started is not None, TIMEOUT)
        t0 = loadgen_proc.started
        done = loadgen_proc.until("every instance registered", lambda s: s["registered"] >= I, LONG)
        samples = sampler.finish()
        reg = {"all_registered_s": done - t0, "hosts_cpu_ms": sum(cpu_ms(hosts[n].pid) for n in range(H)) - cpu0,
               "outstanding_max": {str(k): v for k, v in Sampler.max_of(samples, "zk_outstanding_requests").items()}}
        log(f"{I:,} instances registered through {H} host agents in {done - t0:.1f} s")
        deadline = time.monotonic() + TIMEOUT
        while (counted := count_on(ocount)) != I and time.monotonic() < deadline:
            time.sleep(0.5)
        reg["counted"] = counted
        if counted != I:
            result["notes"].append(f"after the registration the observer listed {counted:,} instance nodes, not {I:,}")
        reg["hosts"] = host_memory()
        reg["loadgen"] = {"rss_kib": loadgen_proc.memory_kib(), "processes": len(loadgen_proc.procs)}
        reg["mntr"] = {str(srv["id"]): mntr_all(srv["port"]) for srv in servers}
        reg["zk_rss"] = {str(srv["id"]): memory(srv["pid"])["rss_kib"] for srv in servers}
        reg["heap"] = jvm_heaps(servers)
        result["registration"] = reg

        # ---- The directors: initial sync, read on the observers and on the voters.
        config = os.path.join(workdir, "director.toml")
        with open(config, "w") as f:
            for k in range(S):
                f.write(f'[[output]]\nkey = "{keys[k]}"\nservice = "{names[k]}"\npreset = "hostports"\n'
                        f'{params["output_toml"]}\n\n')
        director_logs = [os.path.join(workdir, f"director-{d}.log") for d in range(params["directors"])]
        t0 = time.monotonic()
        directors = [spawn([herald, "director", "--config", config, "--metrics-listen", "127.0.0.1:0"], env, p)
                     for p in director_logs]
        synced = {}
        for reader in readers:
            at = reader.wait_all(LONG)
            if at is None:
                raise SystemExit(f"bench slice: the {reader.name} reader did not read every value within {LONG} s; "
                                 f"{reader.wrong_now()} not as expected")
            synced[reader.name] = (at - t0) * 1000
        addrs = []
        for p in director_logs:
            deadline = time.monotonic() + TIMEOUT
            while not (found := log_lines(p, "serving metrics and status")):
                if time.monotonic() > deadline:
                    raise SystemExit(f"bench slice: no metrics address in {p}")
                time.sleep(0.1)
            addrs.append(found[0]["fields"]["listen"])

        def leading():
            return [sum(1 for o in json.loads(http_get(a, "/status.json"))["outputs"].values() if o.get("leading"))
                    for a in addrs]

        result["sync"] = {"observer_ms": synced["observer"], "voter_ms": synced["voter"],
                          "memory": [memory(d.pid) for d in directors], "leading": leading()}
        log(f"initial sync: every value read on the observer {synced['observer']:,.0f} ms after the directors' start")

        # ---- One change: an instance `x` registered or stopped through a host agent.
        xconns = {}

        def change(k):
            """Toggles `x` in service k; the time it was asked (monotonic)."""
            now = expected.present[k]
            if now:
                conn = xconns.pop(k)
                t = time.monotonic()
                conn.sendall(b'{"type":"stop","why":"stopped"}\n')
                conn.close()
            else:
                name = names[k]
                doc = document(name, "x", x_address(k), 9000).decode()
                msg = {"type": "register", "service": name, "id": "x", "generation": 1, "document": doc,
                       "give_up_on_duplicate": False}
                conn = socket.socket(socket.AF_UNIX)
                conn.connect(sockets[k % H])
                t = time.monotonic()
                conn.sendall((json.dumps(msg) + "\n" + '{"type":"wanted","now":true,"why":""}\n').encode())
                xconns[k] = conn
            expected.present[k] = not now
            return t

        def pick():
            return random.randrange(1, S)

        lat = {"observer": [], "voter": []}
        for n in range(5 + params["changes"]):
            k = 0 if (n >= 5 and n % 10 == 9) else pick()
            t = change(k)
            for reader in readers:
                at = reader.wait_value(k, expected.value(k))
                if at is None:
                    raise SystemExit(f"bench slice: the {reader.name} reader did not read {keys[k]}'s new value "
                                     f"within {TIMEOUT} s")
                if n >= 5:
                    lat[reader.name].append((at - t) * 1000)
        result["changes"] = dict(lat, wrong_after=oreader.wrong_now())
        log(f"{params['changes']} changes: observer p50 {statistics.median(lat['observer']):.1f} ms, "
            f"voter p50 {statistics.median(lat['voter']):.1f} ms")

        # ---- The leader killed while changes flow.
        kill = {}
        wall0 = time.time()
        for srv in servers:
            four_letter(srv["port"], "srst")
        kill["nodes_before"] = count_on(ocount)
        lg_before = loadgen_proc.snapshot()
        sampler = Sampler(servers)
        flow = {"stop": False, "rows": [], "error": None}

        def flowing():
            try:
                while not flow["stop"]:
                    k = pick()
                    t = change(k)
                    at = oreader.wait_value(k, expected.value(k), limit=KILL_LIMIT)
                    if at is None:
                        flow["error"] = (f"{keys[k]}'s new value (x through host agent {k % H}) not read on the "
                                         f"observer within {KILL_LIMIT} s; see the host agents' logs")
                        return
                    flow["rows"].append((t, at))
            except Exception as err:  # reported by the main thread
                flow["error"] = repr(err)

        flower = threading.Thread(target=flowing, daemon=True)
        flower.start()
        deadline = time.monotonic() + TIMEOUT
        while len(flow["rows"]) < 20 and time.monotonic() < deadline and not flow["error"]:
            time.sleep(0.05)
        leader = next((srv for srv in servers if srv["role"] == "voter" and mode(srv["port"]) == "leader"), None)
        if leader is None:
            raise SystemExit("bench slice: no leader among the voters before the kill")
        pid = int(open(os.path.join(zkdir, str(leader["id"]), "pid")).read())
        t_kill = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        kill["killed"] = f"server {leader['id']} (the leader)"
        others = [srv for srv in servers if srv is not leader]
        new_leader = observer_back = None
        deadline = time.monotonic() + KILL_LIMIT + 60
        obs = [srv for srv in servers if srv["role"] == "observer"]
        while time.monotonic() < deadline:
            if new_leader is None and any(mode(srv["port"]) == "leader" for srv in others if srv["role"] == "voter"):
                new_leader = time.monotonic()
            if observer_back is None and obs and all(mode(srv["port"]) == "observer" for srv in obs):
                observer_back = time.monotonic()
            after = [r for r in flow["rows"] if r[0] > t_kill]
            if new_leader and (observer_back or not obs) and len(after) >= params["kill_changes"]:
                break
            if flow["error"]:
                raise SystemExit(f"bench slice: during the leader kill: {flow['error']}")
            time.sleep(0.05)
        flow["stop"] = True
        flower.join(KILL_LIMIT)
        if len([r for r in flow["rows"] if r[0] > t_kill]) < params["kill_changes"]:
            raise SystemExit(f"bench slice: changes did not flow again after the leader kill: {flow['error']}")
        rows = flow["rows"]
        after = [r for r in rows if r[0] > t_kill]
        before = [r for r in rows if r[1] < t_kill]
        inflight = [r for r in rows if r[0] <= t_kill <= r[1]]
        reads = sorted([r[1] for r in rows])
        gaps = [b - a for a, b in zip(reads, reads[1:]) if b >= t_kill - 1]
        kill.update(
            new_leader_ms=None if new_leader is None else (new_leader - t_kill) * 1000,
            observer_back_ms=None if observer_back is None else (observer_back - t_kill) * 1000,
            first_after_ms=(min(r[1] for r in after) - t_kill) * 1000 if after else None,
            gap_ms=max(gaps) * 1000 if gaps else None,
            inflight_ms=(inflight[0][1] - inflight[0][0]) * 1000 if inflight else None,
            after=[(b - a) * 1000 for a, b in after], before=[(b - a) * 1000 for a, b in before],
        )
        log(f"leader kill: a new leader after {kill['new_leader_ms']:.0f} ms; the first change after the kill read "
            f"on the observer {kill['first_after_ms']:.0f} ms after it")
        # The killed server back.
        t = time.monotonic()
        subprocess.run([ZK, "ensemble", "restart", str(leader["id"]), "--dir", zkdir], check=True,
                       stdout=subprocess.DEVNULL)
        leader["pid"] = int(open(os.path.join(zkdir, str(leader["id"]), "pid")).read())
        kill["restart_ms"] = (time.monotonic() - t) * 1000
        # Everything settled: every value as expected again, then counted and checked.
        for reader in readers:
            if reader.wait_all(TIMEOUT) is None:
                result["notes"].append(f"after the leader kill the {reader.name} reader still had "
                                       f"{reader.wrong_now()} values not as expected after {TIMEOUT} s")
        kill["wrong_after"] = oreader.wrong_now() + vreader.wrong_now()
        kill["nodes_after"] = count_on(ocount)
        lg_after = loadgen_proc.snapshot()
        kill["loadgen"] = {k2: lg_after.get(k2, 0) - lg_before.get(k2, 0) for k2 in ("lost", "failed")}
        kill["expired"] = {
            "hosts": sum(len(log_lines(p, "ZooKeeper session expired", wall0, prefix=True)) for p in host_logs.values()),
            "directors": sum(len(log_lines(p, "ZooKeeper session expired", wall0, prefix=True)) for p in director_logs),
        }
        kill["bad"] = {r.name: sum(1 for _, _, v in r.verdicts(t_kill - 1) if v and v[0] != "full") for r in readers}
        kill["samples"] = sampler.finish()[-2000:]
        result["kill"] = kill
        # The `x` instances go: the storms are about the load generator's instances alone.
        for k in list(xconns):
            change(k)
        for reader in readers:
            reader.wait_all(TIMEOUT)

        # ---- The storms.
        storms = {}

        def storm(tag):
            out = {}
            wall = time.time()
            base_eph = mntr_all(servers[0]["port"])["zk_ephemerals_count"]
            for srv in servers:
                four_letter(srv["port"], "srst")
            sam = Sampler(servers)
            t_stop = time.monotonic()
            for n in range(H):
                os.kill(hosts[n].pid, signal.SIGSTOP)
            try:
                # Until ZooKeeper has expired every host session (their nodes gone).
                deadline = time.monotonic() + LONG
                while True:
                    eph = sam.latest(others[0]["id"], "zk_ephemerals_count")
                    if eph is not None and eph <= base_eph - I:
                        break
                    if time.monotonic() > deadline:
                        raise SystemExit(f"bench slice: {tag}: the host sessions did not expire within {LONG} s")
                    time.sleep(0.05)
                out["expired_s"] = time.monotonic() - t_stop
            finally:
                for n in range(H):
                    os.kill(hosts[n].pid, signal.SIGCONT)
            t_cont = time.monotonic()
            # ZooKeeper's count of ephemeral nodes back where it was: every instance node again.
            deadline = time.monotonic() + LONG
            while (sam.latest(others[0]["id"], "zk_ephemerals_count") or 0) < base_eph:
                if time.monotonic() > deadline:
                    raise SystemExit(f"bench slice: {tag}: the ephemeral count never came back to {base_eph}")
                time.sleep(0.05)
            out["nodes_back_s"] = time.monotonic() - t_cont
            # The host agents' own word: the status lines dip below every instance, then come back.
            loadgen_proc.until(f"{tag}: every instance registered again", lambda s: s["registered"] >= I, LONG)
            with loadgen_proc.cond:
                after = [(t, n) for t, n in loadgen_proc.history if t >= t_stop]
            dipped = next((i for i, (_, n) in enumerate(after) if n < I), None)
            back = None if dipped is None else next((t for t, n in after[dipped:] if n >= I), None)
            out["back_s"] = None if back is None else back - t_cont
            out["dip_min"] = min((n for _, n in after), default=None)
            if dipped is None:
                result["notes"].append(f"{tag}: the host agents' status lines never said an instance was unregistered "
                                       f"during the storm (their count stayed at {I:,}), though every "
                                       f"instance node went with the sessions")
            whole = oreader.wait_all(LONG)
            out["whole_s"] = None if whole is None else max(0.0, whole - t_cont)
            vreader.wait_all(TIMEOUT)
            # The rest of the directors' work: until neither reader has read a value for 3 s.
            deadline = time.monotonic() + LONG
            while time.monotonic() < deadline:
                last = max(max(r.at.values(), default=0.0) for r in readers)
                if time.monotonic() - last > 3.0:
                    break
                time.sleep(0.2)
            samples = sam.finish()
            out["outstanding_by_server"] = {str(k2): v for k2, v in Sampler.max_of(samples, "zk_outstanding_requests").items()}
            out["outstanding_max"] = max(out["outstanding_by_server"].values(), default=0)
            out["series"] = [(round(t - t_cont, 2), sid, m["zk_outstanding_requests"], m["zk_ephemerals_count"])
                             for t, sid, m in samples]
            out["latency"] = {}
            for srv in servers:
                m = mntr_all(srv["port"]) or {}
                out["latency"][str(srv["id"])] = (m.get("zk_avg_latency"), m.get("zk_max_latency"))
            out["expired"] = sum(len(log_lines(p, "ZooKeeper session expired", wall, prefix=True)) for p in host_logs.values())
            out["new_sessions"] = sum(len(log_lines(p, "new ZooKeeper session", wall)) for p in host_logs.values())
            # The directors: publishes, holds, confirmed drops.
            pubs, holds, confirmed = [], {}, 0
            for p in director_logs:
                for r in records(p):
                    if iso_s(r["timestamp"]) < wall:
                        continue
                    f = r.get("fields", {})
                    m = f.get("message", "")
                    key = (r.get("span") or {}).get("key")
                    if m == "published":
                        pubs.append((key, f.get("instances")))
                    elif m.endswith("keeping the last value") and "reason" in f:
                        holds[f["reason"]] = holds.get(f["reason"], 0) + 1
                    elif m.startswith("the drop is confirmed"):
                        confirmed += 1
            full = {keys[k2]: sizes[k2] for k2 in range(S)}
            lacking = [(key, n) for key, n in pubs if key in full and n is not None and n < full[key]]
            out.update(publishes=len(pubs), lacking=len(lacking),
                       lacking_over_half=sum(1 for key, n in lacking if n < full[key] / 2),
                       keys_lacking=len({key for key, _ in lacking}), holds=holds, confirmed=confirmed,
                       min_share=min((n / full[key] for key, n in lacking), default=None))
            verdicts = oreader.verdicts(t_stop)
            # When each key's value was whole for good (its last read value is whole; the read before
            # it was not), from SIGCONT; keys never touched count 0.
            last_bad = {}
            for t, k2, v in verdicts:
                if v and v[0] != "full":
                    last_bad[k2] = t
            whole_at = {}
            for t, k2, v in verdicts:
                if k2 in last_bad and t > last_bad[k2] and v and v[0] == "full":
                    whole_at.setdefault(k2, t - t_cont)
            out["whole_by_key"] = sorted(whole_at.values())
            out["slowest_keys"] = sorted(((round(w, 2), keys[k2]) for k2, w in whole_at.items()), reverse=True)[:10]
            out["read_lacking"] = sum(1 for _, _, v in verdicts if v and v[0] == "lacking")
            out["read_wrong"] = sum(1 for _, _, v in verdicts if v and v[0] == "wrong")
            out["wrong_after"] = oreader.wrong_now() + vreader.wrong_now()
            out["host_hwm_kib"] = max(m["hwm_kib"] for m in host_memory())
            out["counted"] = count_on(ocount)
            if out["counted"] != I:
                result["notes"].append(f"{tag}: after the storm the observer listed {out['counted']:,} instance nodes, not {I:,}")
            log(f"{tag} storm: every instance node back {out['nodes_back_s']:.1f} s after SIGCONT; {out['publishes']:,} publishes, "
                f"{out['lacking']:,} lacking instances")
            return out

        storms["unpaced"] = storm("unpaced")

        # The host agents replaced by paced ones: the old sessions expire, the new ones register
        # everything again at the rate.
        replace = {}
        base_eph = mntr_all(servers[0]["port"])["zk_ephemerals_count"]
        t = time.monotonic()
        for n in range(H):
            stop(hosts[n], signal.SIGKILL)
        deadline = time.monotonic() + LONG
        while (mntr_all(others[0]["port"]) or {}).get("zk_ephemerals_count", base_eph) > base_eph - I:
            if time.monotonic() > deadline:
                raise SystemExit("bench slice: the killed host agents' sessions did not expire")
            time.sleep(0.1)
        replace["expired_s"] = time.monotonic() - t
        t = time.monotonic()
        start_hosts(params["rate"])
        back = loadgen_proc.until("every instance registered through the paced host agents",
                                  lambda s: s["registered"] >= I, LONG)
        replace["back_s"] = back - t
        for reader in readers:
            reader.wait_all(LONG)
        result["replace"] = replace
        log(f"paced host agents: every instance registered again {replace['back_s']:.1f} s after their start")
        storms["paced"] = storm("paced")
        result["storms"] = storms

        # ---- The end: exits.
        for d, proc in enumerate(directors):
            code = stop(proc)
            result["exits"].append(f"director {d + 1}: exited {code} after SIGTERM")
        for n in range(H):
            code = stop(hosts[n])
            if code != 0:
                result["exits"].append(f"host agent {n}: exited {code} after SIGTERM")
        if all(hosts[n].returncode == 0 for n in range(H)):
            result["exits"].append(f"host agents: all {H} exited 0 after SIGTERM")
        lg = loadgen_proc.snapshot()
        result["loadgen_end"] = lg
        if loadgen_proc.failures:
            result["notes"].append(f"registrations refused by a host agent: {loadgen_proc.failures[:3]}")
    finally:
        if sampler is not None:
            sampler.running = False
        for proc in live:
            if proc.poll() is None:
                try:
                    os.kill(proc.pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
                proc.kill()
                proc.wait()
        for c in clients + [r.client for r in readers]:
            try:
                c.stop()
                c.close()
            except Exception:  # the measurements are already taken or lost
                pass
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    if sys.argv[1] == "loadgen":
        loadgen(json.loads(sys.argv[2]))
    else:
        measure(json.loads(sys.argv[2]))
