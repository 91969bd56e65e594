"""LDAP store benchmark: v1 single lookups answered from a real slapd.

Starts a slapd of its own (tests/fixtures_ldap.py's, on a loopback port)
with N generated users (default 5,000) besides the test seed, then measures
one after the other, with the store's connection reused:

- ``store``: ``LdapIdentityStore.lookup`` of random users (one thread);
- ``app``: ``GET /_matrix/identity/api/v1/lookup`` in-process through Flask
  (parsing, the chain, signing, JSON);
- ``bulk_1000``: one bulk lookup of 1000 addresses, half unknown;
- ``listing``: enumerating every user for the hash index (paged search);
- with wrk installed, ``http_1`` and ``http_16``: the v1 lookup through
  ``mxisd run`` (gunicorn, 2 workers x 8 threads) at 1 and at 16 keep-alive
  connections.

    python bench/ldap_bench.py [--users 5000] [--lookups 5000] [--seconds 10]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from fixtures_ldap import Slapd, ldif_users, write_temp  # noqa: E402
from lookup_bench import _wait, free_port, rss_mb, run_wrk  # noqa: E402

from mxisd_flask.app import create_app  # noqa: E402
from mxisd_flask.config import load_config  # noqa: E402
from mxisd_flask.services.hash_index import HashIndex  # noqa: E402
from mxisd_flask.stores.ldap import LdapIdentityStore, from_config  # noqa: E402

V1_LOOKUP = "/_matrix/identity/api/v1/lookup"


def write_config(directory: Path, slapd: Slapd, port: int) -> Path:
    section = slapd.config(filter="(objectClass=inetOrgPerson)")
    section["connection"]["baseDNs"] = ["ou=people,dc=example,dc=org"]
    raw = {
        "matrix": {"domain": "example.org"},
        "server": {"port": port, "publicUrl": f"http://127.0.0.1:{port}"},
        "key": {"path": str(directory / "signing.key")},
        "storage": {"provider": {"sqlite": {"database": str(directory / "db")}}},
        "memory": {"enabled": False},
        "ldap": section,
        "logging": {"level": "WARNING"},
    }
    path = directory / "mxisd.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def timed(calls: int, call: Callable[[int], object]) -> dict[str, float]:
    """p50 and p99 of ``call(i)`` in milliseconds, after a short warm-up."""
    for i in range(min(200, calls)):
        call(i)
    samples = []
    for i in range(calls):
        started = time.perf_counter()
        call(i)
        samples.append((time.perf_counter() - started) * 1000)
    quantiles = statistics.quantiles(samples, n=100)
    return {"p50_ms": quantiles[49], "p99_ms": quantiles[98], "calls": calls}


def in_process(config_path: Path, users: int, lookups: int) -> dict[str, Any]:
    config = load_config(str(config_path))
    store = from_config(config)
    assert isinstance(store, LdapIdentityStore)
    wanted = [f"user{random.randrange(users)}@example.org" for _ in range(lookups)]

    def store_lookup(i: int) -> None:
        assert store.lookup("email", wanted[i]) is not None

    results: dict[str, Any] = {"store": timed(lookups, store_lookup)}

    client = create_app(config).test_client()

    def app_lookup(i: int) -> None:
        query = {"medium": "email", "address": wanted[i]}
        assert "mxid" in client.get(V1_LOOKUP, query_string=query).get_json()

    results["app"] = timed(lookups, app_lookup)

    bulk = [("email", f"user{i}@example.org") for i in range(500)]
    bulk += [("email", f"nobody{i}@example.org") for i in range(500)]
    started = time.perf_counter()
    found = store.bulk_lookup(bulk)
    results["bulk_1000"] = {
        "ms": (time.perf_counter() - started) * 1000,
        "found": len(found),
    }

    started = time.perf_counter()
    entries = HashIndex([store], 300, 60).build_entries("bench-pepper")
    results["listing"] = {
        "seconds": time.perf_counter() - started,
        "threepids": len(entries),
    }
    store.close()
    return results


def through_gunicorn(
    config_path: Path, port: int, seconds: int
) -> dict[str, dict[str, float]]:
    """wrk at 1 connection (latency alone) and at 16 (under load)."""
    server = subprocess.Popen(
        [sys.executable, "-m", "mxisd_flask", "--config", str(config_path)],
        cwd=ROOT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait(base)
        url = f"{base}{V1_LOOKUP}?medium=email&address=user7@example.org"
        results = {}
        for connections in (1, 16):
            result = run_wrk(url, seconds, None, connections)
            result["rss_mb"] = rss_mb(server.pid)
            results[f"http_{connections}"] = result
        return results
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--lookups", type=int, default=5000)
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()

    directory = Path(tempfile.mkdtemp(prefix="mxisd-ldap-bench-"))
    slapd = Slapd(directory / "slapd")
    try:
        started = time.monotonic()
        slapd.load(write_temp(ldif_users(args.users), directory))
        print(f"loaded {args.users} users in {time.monotonic() - started:.1f}s")
        slapd.start()
        port = free_port()
        config_path = write_config(directory, slapd, port)

        results = in_process(config_path, args.users, args.lookups)
        for name in ("store", "app"):
            r = results[name]
            print(f"{name:8} p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:6.2f} ms")
        print(
            f"bulk_1000 {results['bulk_1000']['ms']:.1f} ms "
            f"({results['bulk_1000']['found']} found); listing "
            f"{results['listing']['threepids']} 3PIDs in "
            f"{results['listing']['seconds']:.2f} s"
        )
        if shutil.which("wrk"):
            results.update(through_gunicorn(config_path, port, args.seconds))
            for name in ("http_1", "http_16"):
                r = results[name]
                print(
                    f"{name:8} {r['rps']:.0f} req/s  p50 {r['p50_ms']:.2f} ms  "
                    f"p99 {r['p99_ms']:.2f} ms  non-2xx {r['errors']:.0f}"
                )
        print(json.dumps({"users": args.users, **results}))
    finally:
        slapd.stop()
        shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
