"""Fixtures: a scripted homeserver on loopback (federation and client API).

``fake_homeserver`` answers each (method, path) a test scripted with
:meth:`FakeHomeserver.answer` or :meth:`FakeHomeserver.on`, records every
request it got, and answers 404 ``M_UNRECOGNIZED`` to anything else. It
stands in for Synapse in unit-level tests; the real Synapse runs in the
scenario of ``fixtures_synapse``.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from conftest import JsonHandler


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


Handler = Callable[[Recorded], tuple[int, Any]]


class FakeHomeserver:
    def __init__(
        self, tls: ssl.SSLContext | None = None, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.requests: list[Recorded] = []
        self.routes: dict[tuple[str, str], Handler] = {}
        self._received = threading.Condition()
        self.server = ThreadingHTTPServer((host, port), self._handler_class())
        self.server.daemon_threads = True
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = int(self.server.server_address[1])
        scheme = "https" if tls is not None else "http"
        self.url = f"{scheme}://{host}:{self.port}"
        threading.Thread(
            target=self.server.serve_forever, args=(0.05,), daemon=True
        ).start()

    def answer(self, method: str, path: str, status: int, body: Any) -> None:
        self.on(method, path, lambda _request: (status, body))

    def on(self, method: str, path: str, handler: Handler) -> None:
        self.routes[(method, path)] = handler

    def forget(self) -> None:
        """Drop the requests recorded so far (a server shared by several tests)."""
        with self._received:
            self.requests.clear()

    def calls(self, path: str) -> list[Recorded]:
        with self._received:
            return [r for r in self.requests if r.path == path]

    def wait_for(
        self, path: str, count: int = 1, timeout_s: float = 5
    ) -> list[Recorded]:
        deadline = time.monotonic() + timeout_s
        with self._received:
            while len([r for r in self.requests if r.path == path]) < count:
                left = deadline - time.monotonic()
                assert left > 0, f"{path} was called fewer than {count} times"
                self._received.wait(left)
        return self.calls(path)

    def _record(self, request: Recorded) -> tuple[int, Any]:
        with self._received:
            self.requests.append(request)
            self._received.notify_all()
        handler = self.routes.get((request.method, request.path))
        if handler is None:
            return 404, {"errcode": "M_UNRECOGNIZED", "error": "Unrecognized"}
        return handler(request)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(JsonHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                parts = urllib.parse.urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                request = Recorded(
                    self.command,
                    parts.path,
                    urllib.parse.parse_qs(parts.query),
                    {k.lower(): v for k, v in self.headers.items()},
                    self.rfile.read(length),
                )
                status, body = outer._record(request)
                self.send_json(status, body)

            do_GET = do_POST = do_PUT = _serve  # noqa: N815  # http.server hooks

        return Handler

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_homeserver() -> Iterator[FakeHomeserver]:
    server = FakeHomeserver()
    yield server
    server.close()


def federation_to(server: FakeHomeserver, name: str = "example.org") -> dict[str, Any]:
    """Config fragment: federation for ``name`` goes to ``server``."""
    return {
        "dns": {
            "overwrite": {
                "homeserver": {"federation": [{"name": name, "value": server.url}]}
            }
        },
        "outbound": {"allowedCidr": ["127.0.0.1/32"]},
    }
