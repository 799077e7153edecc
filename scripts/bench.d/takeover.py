"""scripts/bench takeover: spread leadership over several `herald director` processes running the
same outputs, and what a director's stop, death and return cost.

One standalone ZooKeeper (scripts/zk), `--outputs` outputs (`key = "T_NNNN"`, each over its own
service, preset hostports; no instances are needed: a director leads an output whether or not it
can publish), and `--directors` directors started at once with `--session-timeout 2s`, JSON logs
and `--metrics-listen`. Each director's identity is `HOST PID`; the output's preferred director
is the one whose identity scores highest with its key (SHA-256 of key, a zero byte, identity: the
rendezvous hashing README describes), which this program computes itself and checks against
what the directors' status pages say they lead.

Then, `--rounds` times, on a director chosen at random:
  stop    SIGTERM: it resigns every output at once;
  kill    SIGKILL: its outputs wait for its session to expire (2 s here);
  return  a new director (a new PID, so a new identity) joins: the outputs it is preferred for
          move to it.
For each step: the time from the signal (or the start) to the last moved output led by its new
director (from the "leading" lines of the directors' JSON logs, on this machine's clock), how
many outputs moved, and whether any output that should have stayed changed hands (counted by
`herald_director_handovers_total` and the leaders' sets).
"""
import datetime
import hashlib
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

from benchlib import free_port

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ROOT = "/bench-takeover"
TIMEOUT = 60


def log(msg):
    print(f"bench takeover: {msg}", file=sys.stderr, flush=True)


def score(key, identity):
    return int.from_bytes(hashlib.sha256(key.encode() + b"\0" + identity.encode()).digest()[:8], "big")


class Director:
    def __init__(self, herald, config, env, workdir, n):
        self.log_path = os.path.join(workdir, f"director-{n}.log")
        self.err = open(self.log_path, "wb")
        self.started = time.time()
        self.proc = subprocess.Popen(
            [herald, "--session-timeout", "2s", "--log-format", "json", "director", "--config", config,
             "--metrics-listen", "127.0.0.1:0"],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.err)
        self.identity = f"{socket.gethostname()} {self.proc.pid}"
        self.port = None

    def lines(self):
        with open(self.log_path, "rb") as f:
            for raw in f:
                try:
                    yield json.loads(raw)
                except ValueError:
                    continue

    def metrics_port(self):
        deadline = time.time() + TIMEOUT
        while self.port is None:
            for line in self.lines():
                if line.get("fields", {}).get("message", "").startswith("serving metrics and status"):
                    self.port = int(line["fields"]["listen"].rsplit(":", 1)[1])
            if self.port is None:
                if time.time() > deadline or self.proc.poll() is not None:
                    raise SystemExit(f"bench takeover: a director never served its status: {self.log_path}")
                time.sleep(0.02)
        return self.port

    def leading(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port()}/status.json", timeout=5) as r:
            page = json.load(r)
        return {key for key, o in page["outputs"].items() if o["leading"]}

    def handovers(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port()}/metrics", timeout=5) as r:
            text = r.read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("herald_director_handovers_total{"))

    def led_at(self, since):
        """Unix time of the last "leading" line per key, at or after `since`."""
        out = {}
        for line in self.lines():
            if line.get("fields", {}).get("message") != "leading":
                continue
            at = datetime.datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00")).timestamp()
            key = (line.get("span") or {}).get("key")
            if key and at >= since:
                out[key] = at
        return out

    def stop(self, sig):
        self.proc.send_signal(sig)
        self.proc.wait(timeout=TIMEOUT)
        self.err.close()


def expected(keys, directors):
    sets = {id(d): set() for d in directors}
    for key in keys:
        best = max(directors, key=lambda d: (score(key, d.identity), -d.proc.pid))
        sets[id(best)].add(key)
    return sets


def converge(keys, directors, what):
    """Waits until every director leads exactly what the keys prefer; returns those sets."""
    want = expected(keys, directors)
    deadline = time.time() + TIMEOUT
    while True:
        now = {id(d): d.leading() for d in directors}
        if now == want:
            return now
        if time.time() > deadline:
            raise SystemExit(f"bench takeover: {what}: leadership never matched the preference")
        time.sleep(0.05)


def run(outputs, ndirectors, rounds, machine):
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=REPO, check=True)
    herald = os.path.join(REPO, "target", "release", "herald")
    workdir = tempfile.mkdtemp(prefix="herald-bench-takeover-")
    zk_port = free_port()
    subprocess.run([os.path.join(REPO, "scripts", "zk"), "start", "--dir", workdir, "--port", str(zk_port)],
                   check=True, stdout=subprocess.DEVNULL)
    env = dict(PATH=os.environ.get("PATH", "/usr/bin:/bin"), HERALD_ZK=f"127.0.0.1:{zk_port}", HERALD_ROOT=ROOT)
    keys = [f"T_{k:04d}" for k in range(outputs)]
    config = os.path.join(workdir, "director.toml")
    with open(config, "w") as f:
        for k, key in enumerate(keys):
            f.write(f'[[output]]\nkey = "{key}"\nservice = "svc{k:04d}"\npreset = "hostports"\n\n')
    directors = []
    steps = {"stop": [], "kill": [], "return": []}
    try:
        t0 = time.time()
        directors = [Director(herald, config, env, workdir, n) for n in range(ndirectors)]
        sets = converge(keys, directors, "start")
        start_ms = (time.time() - t0) * 1000
        shares = sorted(len(s) for s in sets.values())
        start_handovers = sum(d.handovers() for d in directors)
        log(f"{ndirectors} directors lead {shares} of {outputs} outputs, {start_ms:.0f} ms after start")
        n = ndirectors
        plan = [("stop", signal.SIGTERM), ("kill", signal.SIGKILL)] * rounds
        for step, sig in plan:
            victim = random.choice(directors)
            rest = [d for d in directors if d is not victim]
            before = {id(d): d.leading() for d in directors}
            moved = before[id(victim)]
            handed = {id(d): d.handovers() for d in rest}
            at = time.time()
            victim.stop(sig)
            directors = rest
            after = converge(keys, directors, step)
            led = {}
            for d in directors:
                led.update(d.led_at(at))
            took = max(led[k] for k in moved) - at if moved else 0.0
            stayed = all(before[id(d)] <= after[id(d)] for d in directors)
            extra = sum(d.handovers() - handed[id(d)] for d in directors)
            steps[step].append({"ms": took * 1000, "moved": len(moved), "stayed": stayed, "handovers": extra})
            log(f"{step}: {len(moved)} outputs moved in {took * 1000:.0f} ms; others stayed: {stayed}")
            # A new director joins: what it is preferred for moves to it.
            before = {id(d): d.leading() for d in directors}
            handed = {id(d): d.handovers() for d in directors}
            at = time.time()
            newcomer = Director(herald, config, env, workdir, n)
            n += 1
            directors.append(newcomer)
            after = converge(keys, directors, "return")
            gained = after[id(newcomer)]
            led = newcomer.led_at(at)
            took = max(led[k] for k in gained) - at if gained else 0.0
            # The others only lost outputs, and only to the newcomer.
            stayed = all(after[id(d)] <= before[id(d)] for d in directors if d is not newcomer)
            extra = sum(d.handovers() - handed[id(d)] for d in directors if d is not newcomer)
            steps["return"].append({"ms": took * 1000, "moved": len(gained), "stayed": stayed, "handovers": extra})
            log(f"return: {len(gained)} outputs moved to the new director in {took * 1000:.0f} ms")
    finally:
        for d in directors:
            if d.proc.poll() is None:
                d.proc.kill()
                d.proc.wait()
        subprocess.run([os.path.join(REPO, "scripts", "zk"), "stop", "--dir", workdir], stdout=subprocess.DEVNULL)

    print(f"machine: {machine}")
    print()
    print(f"takeover: {outputs} outputs, {ndirectors} directors (--spread on, --session-timeout 2s), "
          f"{rounds} rounds of stop + return and kill + return, a random director each time")
    print()
    print(f"start: every output led by its preferred director {start_ms:.0f} ms after the directors were started; "
          f"shares {shares}; {start_handovers:.0f} handovers on the way")
    print()
    print("| step | times | outputs moved (median) | took, median ms | took, max ms | others kept theirs | handovers by the others |")
    print("|---|---:|---:|---:|---:|---|---:|")
    labels = {"stop": "a director stops (SIGTERM)", "kill": "a director dies (SIGKILL)",
              "return": "a new director joins"}
    for step in ("stop", "kill", "return"):
        r = steps[step]
        if not r:
            continue
        print(f"| {labels[step]} | {len(r)} | {statistics.median(x['moved'] for x in r):.0f} | "
              f"{statistics.median(x['ms'] for x in r):.0f} | {max(x['ms'] for x in r):.0f} | "
              f"{'yes' if all(x['stayed'] for x in r) else 'NO'} | {sum(x['handovers'] for x in r):.0f} |")
