"""scripts/bench gateway: GET /environment/KEY through `herald gateway` under wrk, side by side with
nginx serving the same bytes from a file, in one run. Three ways, the order shuffled each round:

  nginx              a static file, one worker process (herald serves on one thread)
  herald             the value from memory (fed by the gateway's watch)
  herald, no-cache   `Cache-Control: no-cache` on every request: a sync and a read of ZooKeeper
                     each time (what every GET cost before values were held in memory)

wrk (Debian's package) keeps --connections keep-alive connections for --duration seconds per way
and round; requests/s and wrk's latency percentiles are reported as medians over rounds, with
the ratio to nginx. Then the visibility of a write through another client: a kazoo client sets
the value, and a keep-alive HTTP client GETs until it sees it (ms from set's acknowledgement).
"""
import http.client
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KEY = "DATABASE_URL"
VALUE = b"postgresql://app:secret@db.example:5432/app"


def log(msg):
    print(f"bench gateway: {msg}", file=sys.stderr, flush=True)


def ensure(tool, package):
    if shutil.which(tool) is None:
        if os.geteuid() != 0:
            raise SystemExit(f"bench gateway: {tool} is missing; apt-get install {package}")
        log(f"installing Debian's {package} package")
        subprocess.run(["apt-get", "install", "-y", "-qq", package], check=True, stdout=subprocess.DEVNULL)


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", f"/environment/{KEY}", headers=headers or {})
        reply = conn.getresponse()
        return reply.status, reply.read()
    finally:
        conn.close()


def wait_serving(port, what, deadline=20):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            status, body = get(port)
            if status == 200 and body == VALUE:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"bench gateway: {what} did not serve the value within {deadline}s")


def parse_wrk(text):
    """Requests/s and the latency percentiles (ms) of `wrk --latency`."""
    result = {}
    units = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    in_dist = False
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("Requests/sec:"):
            result["rps"] = float(line.split()[1])
        if line.startswith("Latency Distribution"):
            in_dist = True
            continue
        if in_dist:
            parts = line.split()
            if len(parts) == 2 and parts[0].endswith("%"):
                value = parts[1]
                for unit in ("us", "ms", "s"):
                    if value.endswith(unit):
                        result[f"p{parts[0][:-1]}"] = float(value[: -len(unit)]) * units[unit]
                        break
            else:
                in_dist = False
        if "Non-2xx or 3xx responses" in line or "Socket errors" in line:
            result["errors"] = line
    return result


def wrk(port, connections, duration, headers=()):
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency"]
    for header in headers:
        argv += ["-H", header]
    argv.append(f"http://127.0.0.1:{port}/environment/{KEY}")
    proc = subprocess.run(argv, capture_output=True, text=True, check=True)
    return parse_wrk(proc.stdout)


def visibility(python, zk, port, samples):
    """ms from a kazoo set's acknowledgement to the gateway serving the new value."""
    script = r'''
import http.client, json, sys, time
from kazoo.client import KazooClient
zk_hosts, port, samples, path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
zk = KazooClient(hosts=zk_hosts); zk.start()
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
lags = []
for n in range(samples):
    value = f"value {n} {time.time()}".encode()
    zk.set(path, value)
    t0 = time.perf_counter()
    while True:
        conn.request("GET", "/environment/DATABASE_URL")
        reply = conn.getresponse(); body = reply.read()
        if body == value:
            break
    lags.append((time.perf_counter() - t0) * 1000)
    time.sleep(0.02)
print(json.dumps(lags))
zk.stop(); zk.close()
'''
    proc = subprocess.run(
        [python, "-c", script, zk, str(port), str(samples), f"/bench-gateway/environment/{KEY}"],
        capture_output=True, text=True, check=True,
    )
    import json

    return json.loads(proc.stdout)


def run(rounds, duration, connections, machine, python):
    ensure("wrk", "wrk")
    ensure("nginx", "nginx-light")
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=REPO, check=True)
    herald = os.path.join(REPO, "target", "release", "herald")
    workdir = tempfile.mkdtemp(prefix="herald-bench-gateway-")
    zk_port = free_port()
    zk = f"127.0.0.1:{zk_port}"
    procs = []
    subprocess.run([os.path.join(REPO, "scripts", "zk"), "start", "--dir", workdir, "--port", str(zk_port)],
                   check=True, stdout=subprocess.DEVNULL)
    try:
        env = dict(PATH=os.environ.get("PATH", "/usr/bin:/bin"), HERALD_ZK=zk, HERALD_ROOT="/bench-gateway",
                   HERALD_CACHE=os.path.join(workdir, "cache"))
        subprocess.run([herald, "put", KEY, "-"], input=VALUE, env=env, check=True)
        herald_port = free_port()
        with open(os.path.join(workdir, "gateway.log"), "wb") as err:
            gateway = subprocess.Popen([herald, "gateway", "--listen", f"127.0.0.1:{herald_port}",
                                        "--max-connections", "1024"],
                                       env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        procs.append(gateway)
        # nginx's worker runs as an unprivileged user (as root: nobody): it must reach the file.
        os.chmod(workdir, 0o755)
        www = os.path.join(workdir, "www")
        os.makedirs(os.path.join(www, "environment"))
        with open(os.path.join(www, "environment", KEY), "wb") as f:
            f.write(VALUE)
        nginx_port = free_port()
        conf = os.path.join(workdir, "nginx.conf")
        with open(conf, "w") as f:
            f.write(f"""daemon off;
worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path {workdir}/nginx-body;
    proxy_temp_path {workdir}/nginx-proxy;
    fastcgi_temp_path {workdir}/nginx-fastcgi;
    uwsgi_temp_path {workdir}/nginx-uwsgi;
    scgi_temp_path {workdir}/nginx-scgi;
    server {{
        listen 127.0.0.1:{nginx_port};
        location /environment/ {{ root {www}; default_type application/octet-stream; }}
    }}
}}
""")
        nginx = subprocess.Popen(["nginx", "-c", conf, "-p", workdir], stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(nginx)
        wait_serving(nginx_port, "nginx")
        wait_serving(herald_port, "herald gateway")
        status, body = get(herald_port, {"Cache-Control": "no-cache"})
        if (status, body) != (200, VALUE):
            raise SystemExit(f"bench gateway: no-cache GET answered {status} {body[:100]!r}")
        ways = {
            "nginx (static file, 1 worker)": (nginx_port, ()),
            "herald gateway (from memory)": (herald_port, ()),
            "herald gateway, Cache-Control: no-cache (sync + read)": (herald_port, ("Cache-Control: no-cache",)),
        }
        results = {name: [] for name in ways}
        for r in range(rounds):
            order = list(ways)
            random.shuffle(order)
            for name in order:
                port, headers = ways[name]
                log(f"round {r + 1}/{rounds}: {name}, wrk -c{connections} -d{duration}s")
                results[name].append(wrk(port, connections, duration, headers))
        rss_kib = None
        for line in open(f"/proc/{gateway.pid}/status"):
            if line.startswith("VmHWM:"):
                rss_kib = int(line.split()[1])
        lags = visibility(python, zk, herald_port, 100)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        subprocess.run([os.path.join(REPO, "scripts", "zk"), "stop", "--dir", workdir], stdout=subprocess.DEVNULL)
        shutil.rmtree(workdir, ignore_errors=True)

    def med(name, field):
        values = [r[field] for r in results[name] if field in r]
        return statistics.median(values) if values else float("nan")

    base = "nginx (static file, 1 worker)"
    print(f"machine: {machine}")
    print()
    print(f"gateway: GET /environment/{KEY} ({len(VALUE)} bytes), wrk -t1 -c{connections} -d{duration}s, "
          f"{rounds} rounds, the order shuffled each round; medians over rounds")
    print()
    print("| server | requests/s | / nginx | p50 ms | p99 ms | errors |")
    print("|---|---:|---:|---:|---:|---|")
    for name in ways:
        errors = "; ".join(sorted({r["errors"] for r in results[name] if "errors" in r})) or "0"
        print(f"| {name} | {med(name, 'rps'):,.0f} | {med(name, 'rps') / med(base, 'rps'):.2f}x | "
              f"{med(name, 'p50'):.2f} | {med(name, 'p99'):.2f} | {errors} |")
    print()
    if rss_kib is not None:
        print(f"herald gateway peak RSS (VmHWM) after the runs: {rss_kib / 1024:.1f} MiB")
        print()
    ordered = sorted(lags)
    p99 = ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]
    print(f"a write through another client (kazoo set) → the gateway serves it, {len(lags)} writes: "
          f"median {statistics.median(lags):.2f} ms, p99 {p99:.2f} ms, max {max(lags):.2f} ms")
