"""CPU cost per request of the lookup hot path, measured inside one process.

Builds the app the way ``mxisd run`` does (same config as lookup_bench.py,
N preloaded bindings), then calls ``app.wsgi_app`` in a loop with prebuilt
WSGI environs and reads ``time.process_time`` around the loop: the figure
is this process's own CPU time per request, so other programs sharing the
cores slow the run down but barely change it. gunicorn's HTTP parsing and
socket writes are not included (lookup_bench.py measures those with wrk).

    python bench/inprocess_bench.py [--bindings 100000] [--requests 5000]
        [--threads 4] [--profile v1_lookup]

With ``--threads N``, N threads drive the app at once, as a gunicorn gthread
worker does: the CPU per request then includes what the threads cost each
other (handing the GIL over), and p50/p99 are each request's wall time.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from lookup_bench import (  # noqa: E402
    TOKEN,
    add_memory_switch,
    preload,
    v2_body,
    write_config,
)
from werkzeug.test import EnvironBuilder  # noqa: E402

from mxisd_flask.app import create_app  # noqa: E402
from mxisd_flask.config import load_config  # noqa: E402
from mxisd_flask.services import Services  # noqa: E402

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def environ_factory(
    path: str, method: str = "GET", body: str | None = None
) -> Callable[[], dict[str, Any]]:
    """A function returning a fresh environ (new input stream) per call."""
    headers = [("Host", "127.0.0.1")]
    if body is not None:
        headers.append(("Authorization", f"Bearer {TOKEN}"))
    builder = EnvironBuilder(
        path=path,
        method=method,
        headers=headers,
        data=body,
        content_type="application/json" if body is not None else None,
    )
    template = builder.get_environ()
    raw = body.encode() if body is not None else b""

    def fresh() -> dict[str, Any]:
        environ = dict(template)
        environ["wsgi.input"] = io.BytesIO(raw)
        return environ

    return fresh


def call(app: WsgiApp, environ: dict[str, Any]) -> tuple[str, bytes]:
    status: list[str] = []

    def start_response(code: str, headers: list[Any], exc_info: Any = None) -> None:
        status.append(code)

    result = app(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return status[0], body


def measure(
    app: WsgiApp, fresh: Callable[[], dict[str, Any]], count: int
) -> dict[str, float]:
    status, body = call(app, fresh())  # warm-up, and a check of the answer
    if not status.startswith("200"):
        raise SystemExit(f"bench: {status} {body[:200]!r}")
    for _ in range(min(200, count)):
        call(app, fresh())
    environs = [fresh() for _ in range(count)]
    cpu = time.process_time()
    wall = time.perf_counter()
    for environ in environs:
        call(app, environ)
    cpu = time.process_time() - cpu
    wall = time.perf_counter() - wall
    return {
        "cpu_us": cpu / count * 1e6,
        "wall_us": wall / count * 1e6,
        "bytes": float(len(body)),
    }


def measure_threaded(
    app: WsgiApp, fresh: Callable[[], dict[str, Any]], count: int, threads: int
) -> dict[str, float]:
    """``count`` requests spread over ``threads`` threads running at once."""
    measure(app, fresh, 10)
    per_thread = [[fresh() for _ in range(count // threads)] for _ in range(threads)]
    latencies: list[float] = []
    start = threading.Barrier(threads + 1)

    def drive(environs: list[dict[str, Any]]) -> None:
        start.wait()
        own = []
        for environ in environs:
            began = time.perf_counter()
            call(app, environ)
            own.append(time.perf_counter() - began)
        latencies.extend(own)

    workers = [threading.Thread(target=drive, args=(e,)) for e in per_thread]
    for worker in workers:
        worker.start()
    cpu = time.process_time()
    wall = time.perf_counter()
    start.wait()
    for worker in workers:
        worker.join()
    cpu = time.process_time() - cpu
    wall = time.perf_counter() - wall
    latencies.sort()
    done = len(latencies)
    return {
        "cpu_us": cpu / done * 1e6,
        "rps": done / wall,
        "p50_ms": latencies[done // 2] * 1e3,
        "p99_ms": latencies[int(done * 0.99)] * 1e3,
    }


def cases(bindings: int, pepper: str) -> dict[str, Callable[[], dict[str, Any]]]:
    address = f"user{bindings // 2}@bench.example"
    return {
        "status": environ_factory("/_matrix/identity/v2"),
        "v1_lookup": environ_factory(
            f"/_matrix/identity/api/v1/lookup?medium=email&address={address}"
        ),
        "v2_lookup_1": environ_factory(
            "/_matrix/identity/v2/lookup", "POST", v2_body(pepper, 1, bindings)
        ),
        "v2_lookup_1000": environ_factory(
            "/_matrix/identity/v2/lookup", "POST", v2_body(pepper, 1000, bindings)
        ),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bindings", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=3, help="best of this many")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--profile", help="cProfile this case instead")
    add_memory_switch(parser)
    parser.add_argument(
        "--sort", default="tottime", help="cProfile order (tottime, cumtime)"
    )
    args = parser.parse_args()

    directory = Path(tempfile.mkdtemp(prefix="mxisd-inproc-"))
    try:
        # Same config as the wrk benchmark; the port is never opened.
        server = argparse.Namespace(
            workers=1,
            threads=1,
            worker_class="gthread",
            bindings_in_memory=args.bindings_in_memory,
        )
        config_path = write_config(directory, 8090, server)
        pepper = preload(config_path, args.bindings)
        flask_app = create_app(load_config(str(config_path)))
        wait_for_table(flask_app.extensions["mxisd"], pepper)
        app = flask_app.wsgi_app
        table = cases(args.bindings, pepper)
        if args.profile:
            return profile(app, table[args.profile], args.requests, args.sort)
        results: dict[str, dict[str, float]] = {}
        for name, fresh in table.items():
            count = args.requests // 10 if name == "v2_lookup_1000" else args.requests
            if args.threads > 1:
                runs = [
                    measure_threaded(app, fresh, count, args.threads)
                    for _ in range(args.runs)
                ]
            else:
                runs = [measure(app, fresh, count) for _ in range(args.runs)]
            results[name] = r = min(runs, key=lambda r: r["cpu_us"])
            print(f"{name:16} {r['cpu_us']:8.1f} us CPU/request  ", end="")
            if args.threads > 1:
                print(
                    f"({r['rps']:6.0f} req/s, p50 {r['p50_ms']:6.2f} ms, "
                    f"p99 {r['p99_ms']:6.2f} ms)"
                )
            else:
                print(f"(wall {r['wall_us']:8.1f} us, {r['bytes']:.0f} bytes)")
        print(
            json.dumps({"bindings": args.bindings, "threads": args.threads, **results})
        )
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return 0


def wait_for_table(services: Services, pepper: str, timeout_s: float = 120) -> None:
    """Build this process's table of our bindings and wait for it, as a
    serving worker does before its first lookup (``mxisd run`` starts the
    build in each worker): without it, lookups ask SQLite."""
    cache = services.chain.bindings_cache
    if cache is None:
        return
    services.chain.start_caches()
    deadline = time.monotonic() + timeout_s
    while not cache.ready(pepper):
        if time.monotonic() > deadline:
            raise SystemExit("bench: the table of bindings was not built")
        time.sleep(0.05)


def profile(
    app: WsgiApp, fresh: Callable[[], dict[str, Any]], count: int, sort: str
) -> int:
    measure(app, fresh, 10)
    environs = [fresh() for _ in range(count)]
    profiler = cProfile.Profile()
    profiler.enable()
    for environ in environs:
        call(app, environ)
    profiler.disable()
    pstats.Stats(profiler).sort_stats(sort).print_stats(45)
    return 0


if __name__ == "__main__":
    sys.exit(main())
