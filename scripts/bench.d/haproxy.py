#!/usr/bin/env python3
"""scripts/bench haproxy: HAProxy behind herald under wrk while membership changes happen, the
two ways side by side in one run — `herald watch --reload` (a reload per change, as Synapse does
it) and `herald watch --haproxy` (the Runtime API) — each with its own ZooKeeper root, director,
watch and HAProxy (master-worker) over the same backends, changed at the same moments.

Four steady backends and two that come and go: each change deregisters or re-registers one of
the two (`herald drain` / `herald undrain`, a real removal and addition of a server), in both
roots at once, every --pause. wrk (Debian's package) keeps --connections keep-alive connections
through each HAProxy for the whole run. Reported per way: requests, failed requests (socket
errors + non-2xx), latency p50/p99/max from wrk, reloads asked (watch's log) and carried out
(HAProxy's "Loading success"), whether HAProxy ran exactly the live servers 10 s after the last
change, and HAProxy worker processes alive then (a reload's old worker lingers while it holds
connections)."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
WAYS = ("reload", "runtime")


def log(msg):
    print(f"bench haproxy: {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def workers(master):
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            stat = open(f"/proc/{pid}/stat").read()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == master:
            out.append(int(pid))
    return out


def servers_in_force(sock, backend="web"):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    s.connect(sock)
    s.sendall(f"show servers state {backend}\n".encode())
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    s.close()
    return sorted(l.split()[3] for l in data.decode().splitlines()[1:] if l and not l.startswith("#") and len(l.split()) > 4)


def wait_for(what, probe, timeout=30):
    deadline = time.monotonic() + timeout
    got = None
    while True:
        try:
            got = probe()
            if got:
                return got
        except OSError as err:
            got = err
        if time.monotonic() > deadline:
            raise SystemExit(f"bench haproxy: timed out waiting for {what} (last: {got!r})")
        time.sleep(0.05)


def parse_wrk(text):
    def ms(value):
        m = re.fullmatch(r"([\d.]+)(us|ms|s)", value)
        n = float(m.group(1))
        return n / 1000 if m.group(2) == "us" else n * 1000 if m.group(2) == "s" else n

    requests = int(re.search(r"(\d+) requests in", text).group(1))
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", text))
    non2xx = int((re.search(r"Non-2xx or 3xx responses: (\d+)", text) or [0, 0])[1])
    latency = {p: ms(v) for p, v in re.findall(r"^\s+(50|99)%\s+(\S+)", text, re.M)}
    maximum = ms(re.search(r"Latency\s+\S+\s+\S+\s+(\S+)", text).group(1))
    return {"requests": requests, "failed": errors + non2xx, "p50": latency["50"], "p99": latency["99"], "max": maximum}


def run(changes, pause, connections, rounds, machine):
    subprocess.run([os.path.join(REPO, "scripts", "haproxy"), "install"], check=True)
    if shutil.which("wrk") is None:
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            raise SystemExit("bench haproxy: wrk is missing; apt-get install wrk")
        log("installing Debian's wrk package")
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=REPO, check=True)
    herald = os.path.join(REPO, "target", "release", "herald")
    per_round = []
    for n in range(rounds):
        # The way set up (and loaded) first gets more of the machine: each round swaps them.
        order = WAYS if n % 2 == 0 else WAYS[::-1]
        log(f"round {n + 1}/{rounds}: {' then '.join(order)}")
        per_round.append(one_round(herald, changes, pause, connections, order))
    report(per_round, changes, pause, connections, machine)


def one_round(herald, changes, pause, connections, order):
    work = tempfile.mkdtemp(prefix="herald-bench-haproxy-")
    procs, ok = [], False
    zk_port = free_port()
    subprocess.run([os.path.join(REPO, "scripts", "zk"), "start", "--dir", f"{work}/zk", "--port", str(zk_port)],
                   check=True, stdout=subprocess.DEVNULL)
    base_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HERALD_ZK": f"127.0.0.1:{zk_port}", "HERALD_LOG": "herald=info"}

    def start(argv, name, env=None, **kw):
        out = open(f"{work}/{name}.log", "a")
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=dict(base_env, **(env or {})), **kw)
        procs.append(proc)
        return proc

    try:
        names = [f"web{n}" for n in range(6)]
        ports = {name: free_port() for name in names}
        for name in names:
            start([sys.executable, os.path.join(HERE, "http_backend.py"), str(ports[name]), name], name)
        for name in names:
            wait_for(f"backend {name}", lambda p=ports[name]: socket.create_connection(("127.0.0.1", p), 1).close() or True)
        example = open(os.path.join(REPO, "examples", "haproxy", "haproxy.cfg.j2")).read()
        setup = {}
        for way in order:
            d = f"{work}/{way}"
            os.makedirs(f"{d}/control")
            env = {"HERALD_ROOT": f"/bench-{way}", "HERALD_CONTROL_DIR": f"{d}/control"}
            for name in names:
                start([herald, "announce", "--service", "web", "--id", name, "--address", "127.0.0.1",
                       "--port", str(ports[name]), "--check", "tcp", "--rise", "1", "--check-interval", "100ms"],
                      f"{way}-announce-{name}", env)
            start([herald, "director", "--key", "HAPROXY_SERVERS", "--service", "web", "--preset", "haproxy"],
                  f"{way}-director", env)
            port = free_port()
            template = example.replace("    bind *:8080\n", f"    bind 127.0.0.1:{port}\n").replace(
                "stats socket /run/haproxy/admin.sock ", f"stats socket {d}/admin.sock ")
            open(f"{d}/haproxy.cfg.j2", "w").write(template)
            # The two that come and go start deregistered.
            for name in names[4:]:
                wait_for(f"{name}'s control socket", lambda: subprocess.run(
                    [herald, "drain", "--id", name, "--control-dir", f"{d}/control"],
                    env=dict(base_env, **env), capture_output=True).returncode == 0)
            wait_for("the steady servers published", lambda: subprocess.run(
                [herald, "resolve", "HAPROXY_SERVERS"], env=dict(base_env, **env), capture_output=True,
                text=True).stdout.count("server ") == 4)
            subprocess.run([herald, "watch", "HAPROXY_SERVERS", "--once", "--out", f"{d}/haproxy.cfg",
                            "--template", f"{d}/haproxy.cfg.j2"], env=dict(base_env, **env), check=True)
            haproxy = start(["haproxy", "-W", "-db", "-f", f"{d}/haproxy.cfg", "-p", f"{d}/haproxy.pid"], f"{way}-haproxy")
            wait_for("HAProxy's socket", lambda: servers_in_force(f"{d}/admin.sock"))
            watch = [herald, "watch", "HAPROXY_SERVERS", "--out", f"{d}/haproxy.cfg", "--template", f"{d}/haproxy.cfg.j2",
                     "--check", 'haproxy -c -q -f "$1"', "--reload", f'kill -USR2 "$(cat {d}/haproxy.pid)"']
            if way == "runtime":
                watch += ["--haproxy", f"{d}/admin.sock", "--haproxy-backend", "web"]
            start(watch, f"{way}-watch", env)
            setup[way] = {"dir": d, "env": env, "port": port, "master": haproxy.pid}
        duration = int(changes * pause + 8)
        log(f"wrk -c{connections} for {duration}s through each HAProxy; {changes} changes every {pause}s")
        wrks = {way: subprocess.Popen(["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency",
                                       f"http://127.0.0.1:{s['port']}/"], stdout=subprocess.PIPE, text=True)
                for way, s in setup.items()}
        time.sleep(2)
        registered = {name: False for name in names[4:]}
        for n in range(changes):
            name = names[4 + n % 2]
            verb = "drain" if registered[name] else "undrain"
            started = []
            for way, s in setup.items():
                started.append(subprocess.Popen([herald, verb, "--id", name, "--control-dir", f"{s['dir']}/control"],
                                                env=dict(base_env, **s["env"]), stdout=subprocess.DEVNULL))
            for p in started:
                if p.wait() != 0:
                    raise SystemExit(f"bench haproxy: herald {verb} {name} failed")
            registered[name] = not registered[name]
            time.sleep(pause)
        want = sorted(names[:4] + [n for n, r in registered.items() if r])
        # A way that never gets there (a reload lost) is reported, not waited for forever.
        converged = {}
        for way, s in setup.items():
            try:
                wait_for(f"{way}: HAProxy running {want}", lambda s=s: servers_in_force(f"{s['dir']}/admin.sock") == want, 10)
                converged[way] = True
            except SystemExit as stuck:
                log(str(stuck))
                converged[way] = False
        time.sleep(1)
        alive = {way: len(workers(s["master"])) for way, s in setup.items()}
        results = {}
        for way, w in wrks.items():
            out, _ = w.communicate()
            open(f"{work}/{way}-wrk.txt", "w").write(out)
            results[way] = parse_wrk(out)
            watch_log = open(f"{work}/{way}-watch.log").read()
            if way == "reload":
                results[way]["reloads"] = watch_log.count("wrote the new value")
            else:
                results[way]["reloads"] = watch_log.count("HAProxy reloaded and runs the file")
                results[way]["runtime"] = watch_log.count("without a reload")
            results[way]["workers"] = alive[way]
            results[way]["converged"] = converged[way]
            # Reloads HAProxy carried out (its master logs each); a signal sent while a reload
            # is still running is not queued.
            results[way]["loaded"] = open(f"{work}/{way}-haproxy.log").read().count("Loading success") - 1
        ok = True
        return results
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        subprocess.run([os.path.join(REPO, "scripts", "zk"), "stop", "--dir", f"{work}/zk"], stdout=subprocess.DEVNULL)
        if ok:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"logs kept in {work}")


def report(per_round, changes, pause, connections, machine):
    import statistics

    def total(way, k):
        return sum(r[way][k] for r in per_round)

    def median(way, k):
        return statistics.median(r[way][k] for r in per_round)

    print(f"\n`scripts/bench haproxy --changes {changes} --pause {pause} --connections {connections} "
          f"--rounds {len(per_round)}` on {machine}\n")
    print("| | reload per change (`--reload`) | runtime API (`--haproxy`) | ratio (runtime / reload) |")
    print("|---|---|---|---|")
    r_req, t_req = total("reload", "requests"), total("runtime", "requests")
    print(f"| requests (all rounds) | {r_req} | {t_req} | {t_req / max(r_req, 1):.2f} |")
    print(f"| failed requests (all rounds) | {total('reload', 'failed')} | {total('runtime', 'failed')} | |")
    for k in ("p50", "p99", "max"):
        r, t = median("reload", k), median("runtime", k)
        print(f"| latency {k}, median of rounds (ms) | {r:.2f} | {t:.2f} | {t / max(r, 1e-9):.2f} |")
    print(f"| HAProxy reloads (all rounds) | {total('reload', 'reloads')} | {total('runtime', 'reloads')} "
          f"(runtime applies: {total('runtime', 'runtime')}) | |")
    print(f"| reloads HAProxy carried out (all rounds) | {total('reload', 'loaded')} | {total('runtime', 'loaded')} | |")
    print(f"| rounds ending with HAProxy running the live servers | "
          f"{sum(r['reload']['converged'] for r in per_round)}/{len(per_round)} | "
          f"{sum(r['runtime']['converged'] for r in per_round)}/{len(per_round)} | |")
    print(f"| HAProxy workers alive after the last change (max) | {max(r['reload']['workers'] for r in per_round)} "
          f"| {max(r['runtime']['workers'] for r in per_round)} | |")
    print(json.dumps(per_round), file=sys.stderr)
