"""What the benchmarks under scripts/bench.d share: percentiles, the service sizes of a
synthetic tree, ZooKeeper's four-letter words, /proc figures and herald's JSON logs."""
import json
import os
import socket


def pct(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def service_sizes(services, instances, big):
    """svc0000 holds `big`; the others share the rest, the remainder one each to the first."""
    each, extra = divmod(instances - big, services - 1)
    return [big] + [each + (1 if k - 1 < extra else 0) for k in range(1, services)]


def four_letter(port, word):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(word.encode())
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def memory(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "Threads"):
                out[key] = int(value.split()[0])
    return {"rss_kib": out["VmRSS"], "hwm_kib": out["VmHWM"], "threads": out["Threads"]}


def cpu_ms(pid):
    """utime + stime of a process so far, ms (clock ticks)."""
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) * 1000 / os.sysconf("SC_CLK_TCK")


def iso_s(stamp):
    """Seconds since the epoch of an RFC 3339 timestamp with a Z (herald's JSON logs)."""
    from datetime import datetime, timezone
    whole, _, frac = stamp.rstrip("Z").partition(".")
    t = datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc).timestamp()
    return t + (float("0." + frac) if frac else 0.0)


def records(log_path):
    """The JSON log records of a herald log."""
    out = []
    with open(log_path, errors="replace") as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
