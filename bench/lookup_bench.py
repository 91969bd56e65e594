"""Lookup throughput benchmark: status, v1 lookup, v2 lookup of 1 and 1000 hashes.

The v1 lookup is measured twice: of one address, as wrk's own URL gives,
and of addresses drawn at random from the bindings (v1_lookup_spread),
which each worker's reused signed answers rarely serve.

Preloads N bindings (default 100,000) into a fresh SQLite database, starts
the server with ``mxisd run`` on a loopback port, and drives it with wrk
(Debian package ``wrk``) at 16 keep-alive connections for a bounded time
per endpoint. Prints requests/s, p50, p99 and the server's RSS.

    python bench/lookup_bench.py [--bindings 100000] [--seconds 10]
        [--workers 2] [--threads 4] [--worker-class gthread] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mxisd_flask.config import load_config  # noqa: E402
from mxisd_flask.crypto.hashing import lookup_hash  # noqa: E402
from mxisd_flask.services.clock import now_ms  # noqa: E402
from mxisd_flask.services.pepper import PepperService  # noqa: E402
from mxisd_flask.storage.db import Database  # noqa: E402

TOKEN = "bench-token"
LUA_POST = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %s"
wrk.body = [[%s]]
"""
# v1 lookups of addresses drawn at random from the bindings, so that each
# worker's reused signed answers (services/lookups.py) rarely apply.
LUA_V1_SPREAD = """
local path = "/_matrix/identity/api/v1/lookup?medium=email&address="
request = function()
  local address = "user" .. math.random(0, %d) .. "%%40bench.example"
  return wrk.format(nil, path .. address)
end
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def add_memory_switch(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-bindings-in-memory",
        dest="bindings_in_memory",
        action="store_false",
        help="storage.provider.sqlite.bindingsInMemory: false",
    )


def write_config(directory: Path, port: int, args: argparse.Namespace) -> Path:
    raw = {
        "matrix": {"domain": "bench.example"},
        "server": {
            "port": port,
            "publicUrl": f"http://127.0.0.1:{port}",
            "workers": args.workers,
            "threads": args.threads,
            "workerClass": args.worker_class,
        },
        "key": {"path": str(directory / "signing.key")},
        "storage": {
            "provider": {
                "sqlite": {
                    "database": str(directory / "db"),
                    "bindingsInMemory": args.bindings_in_memory,
                }
            }
        },
        "logging": {"level": "WARNING"},
    }
    path = directory / "mxisd.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def preload(config_path: Path, count: int) -> str:
    """Insert ``count`` bindings and an access token; returns the pepper."""
    config = load_config(str(config_path))
    db = Database(config.storage)
    db.migrate()
    pepper = PepperService(db, config.hashing, now_ms).current()
    now = now_ms()
    rows = [
        (
            "email",
            f"user{i}@bench.example",
            f"@user{i}:bench.example",
            lookup_hash(f"user{i}@bench.example", "email", pepper),
            now,
        )
        for i in range(count)
    ]
    with db.write() as cur:
        cur.executemany(
            "INSERT INTO bindings (medium, address, mxid, lookup_hash, created_ts) "
            "VALUES (?, ?, ?, ?, ?)",
            rows,
        )
        cur.execute(
            "INSERT INTO accounts (token, user_id, created_ts) VALUES (?, ?, ?)",
            (TOKEN, "@bench:bench.example", now),
        )
    db.close()
    return pepper


def v2_body(pepper: str, count: int, total: int) -> str:
    """``count`` hashes, half of them of known bindings, half misses."""
    hits = [
        lookup_hash(f"user{random.randrange(total)}@bench.example", "email", pepper)
        for _ in range((count + 1) // 2)
    ]
    misses = [
        lookup_hash(f"nobody{i}@bench.example", "email", pepper)
        for i in range(count - len(hits))
    ]
    addresses = (hits + misses) if count > 1 else hits
    return json.dumps({"algorithm": "sha256", "pepper": pepper, "addresses": addresses})


def rss_mb(pid: int) -> float:
    """RSS of the gunicorn master and its workers, in MiB."""
    out = subprocess.run(
        ["ps", "-o", "rss=", "--ppid", str(pid), "-p", str(pid)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sum(int(x) for x in out.split()) / 1024


def anon_mb(pid: int) -> float:
    """Anonymous RSS (RssAnon) of the gunicorn master and its workers, in
    MiB: their own memory, without the pages of the database file SQLite
    maps, which the kernel can reclaim and which each process counts."""
    total = 0
    for each in [pid, *_children(pid)]:
        try:
            status = Path(f"/proc/{each}/status").read_text()
        except OSError:
            continue
        found = re.search(r"^RssAnon:\s+(\d+) kB", status, re.MULTILINE)
        total += int(found.group(1)) if found else 0
    return total / 1024


def _children(pid: int) -> list[int]:
    out = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(pid)],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return [int(p) for p in out.split()]


def wait_idle(pid: int, timeout_s: float = 120) -> None:
    """Wait until the server stops using CPU: the workers build their
    in-memory tables when they start, which must not count in a run."""
    deadline = time.monotonic() + timeout_s
    last = server_cpu_s(pid)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = server_cpu_s(pid)
        if now - last < 0.05:
            return
        last = now


def server_cpu_s(pid: int) -> float:
    """User + system CPU seconds of the gunicorn master and its workers."""
    pids = [pid, *_children(pid)]
    ticks = 0
    for each in pids:
        try:
            stat = Path(f"/proc/{each}/stat").read_text()
        except OSError:
            continue
        # Fields after the command name (which may hold spaces): utime, stime
        # are the 14th and 15th fields of the whole line.
        fields = stat.rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def run_wrk(
    url: str, seconds: int, script: Path | None, connections: int = 16
) -> dict[str, float]:
    threads = str(min(2, connections))
    cmd = ["wrk", "-t", threads, "-c", str(connections), "-d", f"{seconds}s"]
    cmd += ["--latency", url]
    if script is not None:
        cmd[1:1] = ["-s", str(script)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = float(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": rate,
        "p50_ms": _ms(re.search(r"50%\s+([\d.]+\w+)", out).group(1)),  # type: ignore[union-attr]
        "p99_ms": _ms(re.search(r"99%\s+([\d.]+\w+)", out).group(1)),  # type: ignore[union-attr]
        "errors": float(non2xx.group(1)) if non2xx else 0.0,
        "requests": total,
    }


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(\w+)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bindings", type=int, default=100_000)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--worker-class", default="gthread")
    parser.add_argument("--only", nargs="*", help="run only these endpoints")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the endpoints in turn this many times; report each one's median",
    )
    add_memory_switch(parser)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("bench: needs wrk (apt-get install wrk)", file=sys.stderr)
        return 2

    directory = Path(tempfile.mkdtemp(prefix="mxisd-bench-"))
    port = free_port()
    config = write_config(directory, port, args)
    started = time.monotonic()
    pepper = preload(config, args.bindings)
    print(f"preloaded {args.bindings} bindings in {time.monotonic() - started:.1f}s")

    server = subprocess.Popen(
        [sys.executable, "-m", "mxisd_flask", "--config", str(config)], cwd=ROOT
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait(base)
        wait_idle(server.pid)
        scripts = {}
        for name, count in (("v2_lookup_1", 1), ("v2_lookup_1000", 1000)):
            path = directory / f"{name}.lua"
            path.write_text(LUA_POST % (TOKEN, v2_body(pepper, count, args.bindings)))
            scripts[name] = path
        spread = directory / "v1_lookup_spread.lua"
        spread.write_text(LUA_V1_SPREAD % (args.bindings - 1))
        # status right before v2_lookup_1: their ratio is taken from
        # adjacent runs, which saw the same load.
        cases = [
            (
                "v1_lookup",
                f"{base}/_matrix/identity/api/v1/lookup?medium=email"
                f"&address=user{args.bindings // 2}@bench.example",
                None,
            ),
            ("v1_lookup_spread", base, spread),
            ("status", f"{base}/_matrix/identity/v2", None),
            (
                "v2_lookup_1",
                f"{base}/_matrix/identity/v2/lookup",
                scripts["v2_lookup_1"],
            ),
            (
                "v2_lookup_1000",
                f"{base}/_matrix/identity/v2/lookup",
                scripts["v2_lookup_1000"],
            ),
        ]
        runs: dict[str, list[dict[str, float]]] = {}
        ratios: list[float] = []
        print("load average before:", _load())
        for _ in range(args.rounds):
            for name, url, script in cases:
                if args.only and name not in args.only:
                    continue
                runs.setdefault(name, []).append(measure(server.pid, url, script, args))
                print_run(name, runs[name][-1])
            if "v2_lookup_1" in runs and "status" in runs:
                ratios.append(
                    runs["v2_lookup_1"][-1]["rps"] / runs["status"][-1]["rps"]
                )
        print("load average after:", _load())
        results = {name: median_run(r) for name, r in runs.items()}
        if args.rounds > 1:
            print(f"medians of {args.rounds} rounds:")
            for name, r in results.items():
                print_run(name, r)
        if ratios:
            ratio = statistics.median(ratios)
            print(
                f"v2 lookup of 1 hash / status: {ratio:.0%}"
                + (
                    f" (rounds: {', '.join(f'{x:.0%}' for x in ratios)})"
                    if len(ratios) > 1
                    else ""
                )
            )
        print(json.dumps({"bindings": args.bindings, **results}))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        shutil.rmtree(directory, ignore_errors=True)
    return 0


def measure(
    pid: int, url: str, script: Path | None, args: argparse.Namespace
) -> dict[str, float]:
    cpu = server_cpu_s(pid)
    r = run_wrk(url, args.seconds, script)
    # The server's own CPU per answer: how much of the two cores each
    # request costs, whatever else runs on them meanwhile.
    r["server_cpu_us"] = (server_cpu_s(pid) - cpu) / r["requests"] * 1e6
    r["rss_mb"] = rss_mb(pid)
    r["anon_mb"] = anon_mb(pid)
    return r


def median_run(runs: list[dict[str, float]]) -> dict[str, float]:
    """Each figure's median over the runs of one endpoint."""
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


def print_run(name: str, r: dict[str, float]) -> None:
    print(
        f"{name:16} {r['rps']:9.0f} req/s  p50 {r['p50_ms']:7.2f} ms  "
        f"p99 {r['p99_ms']:7.2f} ms  cpu {r['server_cpu_us']:6.0f} us  "
        f"rss {r['rss_mb']:6.0f} MiB (anon {r['anon_mb']:4.0f})  "
        f"non-2xx {r['errors']:.0f}"
    )


def _load() -> str:
    """The 1, 5 and 15 minute load averages: other work on the same cores."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _wait(base: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{base}/_matrix/identity/v2", timeout=1)
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("bench: server did not start")


if __name__ == "__main__":
    sys.exit(main())
