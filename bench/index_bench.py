"""Hash index rebuild benchmark: N 3PIDs listed by the sql store.

Fills an organisation-style table (``contacts``: login, kind, value; mixed
case emails, one phone number in ten, two 3PIDs per user) with N rows in a
SQLite file or a throw-away PostgreSQL database, then, in a fresh Python
process per measurement, builds the store from a configuration with its
``sql.lookup.query`` and times ``HashIndex.build_entries``. Memory is the
process's RSS just before the build and just after it (the table is then
alive), and its peak (VmHWM). ``--tracemalloc`` adds Python's own count of
the peak allocation (the build runs several times slower then).

    python bench/index_bench.py [--threepids 1000000] [--backend sqlite]
        [--tracemalloc] [--keep DIR]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PG_DSN = os.environ.get("MXISD_TEST_PG", "host=127.0.0.1 port=5432 user=postgres")
DOMAIN = "bench.example"
LISTING = {
    "sqlite": "SELECT '@' || login || ':bench.example' AS mxid, kind AS medium,"
    " value AS address FROM contacts",
    "postgresql": "SELECT '@' || login || ':bench.example' AS mxid, kind AS medium,"
    " value AS address FROM contacts",
}
PEPPER = "benchpepperbenchpepper"


def rows(count: int) -> Iterator[tuple[str, str, str]]:
    for i in range(count):
        login = f"user{i // 2:07d}"
        if i % 10 == 9:
            yield login, "msisdn", f"+44 20 {i:08d}"
        else:
            yield login, "email", f"User{i}.Name@Dept{i % 50}.Example.COM"


def fill_sqlite(path: Path, count: int) -> str:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE contacts (login TEXT, kind TEXT, value TEXT)")
    conn.executemany("INSERT INTO contacts VALUES (?, ?, ?)", rows(count))
    conn.commit()
    conn.close()
    return str(path)


def fill_postgresql(name: str, count: int) -> str:
    admin = psycopg2.connect(PG_DSN + " dbname=postgres")
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    admin.close()
    conn = psycopg2.connect(PG_DSN + f" dbname={name}")
    with conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE contacts (login TEXT, kind TEXT, value TEXT)")
        data = io.StringIO("".join(f"{a}\t{b}\t{c}\n" for a, b, c in rows(count)))
        cur.copy_from(data, "contacts")
        cur.execute("ANALYZE contacts")
    conn.close()
    dsn = psycopg2.extensions.parse_dsn(PG_DSN)
    server = f"{dsn.get('host', '127.0.0.1')}:{dsn.get('port', 5432)}"
    return f"//{server}/{name}?user={dsn.get('user', 'postgres')}"


def drop_postgresql(name: str) -> None:
    admin = psycopg2.connect(PG_DSN + " dbname=postgres")
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.close()


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(backend: str, connection: str, use_tracemalloc: bool) -> dict[str, Any]:
    """One measurement in this (fresh) process."""
    import tracemalloc

    from mxisd_flask.config import parse_config
    from mxisd_flask.services.hash_index import HashIndex
    from mxisd_flask.stores import sql

    config = parse_config(
        {
            "matrix": {"domain": DOMAIN},
            "key": {"path": "/nonexistent/unused.key"},
            "storage": {"provider": {"sqlite": {"database": "/nonexistent/x.db"}}},
            "sql": {
                "enabled": True,
                "type": backend,
                "connection": connection,
                "timeout": 30,
                "identity": {
                    "query": "SELECT login AS uid FROM contacts"
                    " WHERE kind = ? AND lower(value) = ?"
                },
                "lookup": {"query": LISTING[backend]},
            },
        }
    )
    store = sql.from_config(config)
    assert store is not None
    index = HashIndex([store], refresh_s=300, build_timeout_s=60)
    if use_tracemalloc:
        tracemalloc.start()
    rss_before = status_kib("VmRSS")
    started = time.perf_counter()
    cpu_started = time.process_time()
    entries = index.build_entries(PEPPER)
    seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    result = {
        "backend": backend,
        "entries": len(entries),
        "seconds": round(seconds, 2),
        # Wall time includes waiting for the database server and for the
        # other processes on this machine's two cores; CPU time does not.
        "cpu_seconds": round(cpu, 2),
        "load_average": round(os.getloadavg()[0], 1),
        "rss_before_mib": round(rss_before / 1024, 1),
        "rss_after_mib": round(status_kib("VmRSS") / 1024, 1),
        "rss_extra_mib": round((status_kib("VmRSS") - rss_before) / 1024, 1),
        "peak_rss_mib": round(status_kib("VmHWM") / 1024, 1),
    }
    if use_tracemalloc:
        _current, peak = tracemalloc.get_traced_memory()
        result["tracemalloc_peak_mib"] = round(peak / 2**20, 1)
    return result


def measure(args: argparse.Namespace, connection: str) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", args.backend, connection]
    if args.tracemalloc:
        command.append("--tracemalloc")
    out = subprocess.run(command, check=True, capture_output=True, text=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threepids", type=int, default=1_000_000)
    parser.add_argument("--backend", choices=sorted(LISTING), default="sqlite")
    parser.add_argument("--tracemalloc", action="store_true")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--child", nargs=2, metavar=("BACKEND", "CONNECTION"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.tracemalloc)))
        return

    with tempfile.TemporaryDirectory(prefix="mxisd-index-bench-") as tmp:
        started = time.perf_counter()
        name = f"mxisd_bench_{uuid.uuid4().hex[:10]}"
        if args.backend == "sqlite":
            connection = fill_sqlite(Path(tmp) / "org.db", args.threepids)
        else:
            connection = fill_postgresql(name, args.threepids)
        print(f"filled {args.threepids} rows in {time.perf_counter() - started:.1f}s")
        print(f"load average before: {os.getloadavg()[0]:.1f}")
        try:
            for _ in range(args.runs):
                result = measure(args, connection)
                print(json.dumps(result))
        finally:
            if args.backend == "postgresql":
                drop_postgresql(name)


if __name__ == "__main__":
    main()
