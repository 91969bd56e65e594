"""Fixtures: a local REST identity backend and exec scripts.

:class:`RestBackend` is a real HTTP server on a free loopback port that
speaks mxisd's REST backend API (the shapes an existing mxisd backend
answers) over a small user list, records every request, and can be told to
misbehave per path. The exec store's scripts live in ``tests/exec/``.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from conftest import V1, V2, Homeserver, bearer, register
from mxisd_flask.config import Config, parse_config

EXEC_DIR = Path(__file__).resolve().parent / "exec"
API = "/_mxisd/backend/api/v1"


@dataclass
class BackendUser:
    localpart: str
    password: str
    display_name: str
    threepids: list[tuple[str, str]]
    roles: list[str] = field(default_factory=list)
    # How lookups name the user: mxisd allows a localpart or a whole mxid.
    id_type: str = "localpart"

    def user_id(self) -> dict[str, str]:
        if self.id_type == "mxid":
            return {"type": "mxid", "value": f"@{self.localpart}:example.org"}
        return {"type": "localpart", "value": self.localpart}


# Addresses kept the way a directory would hold them: mixed case, '+' and
# spaces, so the tests see our side normalise what comes back.
USERS = [
    BackendUser(
        "dave",
        "dave-pw",
        "Dave Bowman",
        [("email", "Dave.Bowman@Example.ORG"), ("msisdn", "+44 7700 900001")],
        ["staff", "pilots"],
    ),
    BackendUser(
        "Erin",
        "erin-pw",
        "Erin Example",
        [("email", "erin@example.org"), ("employee", "E-1002")],
        id_type="mxid",
    ),
]


def backend_key(medium: str, address: str) -> tuple[str, str]:
    """How the backend itself matches addresses (case-blind, digits only)."""
    if medium == "email":
        return medium, address.lower()
    if medium == "msisdn":
        return medium, re.sub(r"\D", "", address)
    return medium, address


class RestBackend:
    """mxisd's REST backend API on loopback; ``fail[path]`` makes it misbehave.

    Failure modes: ``"500"``, ``"badjson"``, ``"slow"`` (answers after
    ``slow_s``), ``"redirect"`` and ``"404"``.
    """

    def __init__(self) -> None:
        self.users = {u.localpart.lower(): u for u in USERS}
        self.requests: list[tuple[str, Any]] = []
        self.fail: dict[str, str] = {}
        self.slow_s = 1.0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(
            target=self.server.serve_forever, args=(0.05,), daemon=True
        ).start()

    def paths(self) -> list[str]:
        return [path for path, _ in self.requests]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def find(self, medium: str, address: str) -> BackendUser | None:
        wanted = backend_key(medium, address)
        for user in self.users.values():
            if wanted in (backend_key(m, a) for m, a in user.threepids):
                return user
        return None

    def user_of(self, body: dict[str, Any]) -> BackendUser | None:
        user = self.users.get(str(body.get("localpart", "")).lower())
        return user if user and body.get("domain") == "example.org" else None

    def answer(self, path: str, body: Any) -> tuple[int, Any]:
        """The status and JSON mxisd's API gives for ``body`` at ``path``."""
        route = ROUTES.get(path.removeprefix(API))
        if route is None:
            return 404, {"error": "no such endpoint"}
        return 200, route(self, body)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802  # http.server hook name
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"null")
                outer.requests.append((self.path, body))
                mode = outer.fail.get(self.path, "")
                if mode == "slow":
                    time.sleep(outer.slow_s)
                if mode == "redirect":
                    self._send(307, b"", {"Location": outer.url + self.path})
                elif mode in ("500", "404"):
                    self._send(int(mode), b'{"error": "backend trouble"}')
                elif mode == "badjson":
                    self._send(200, b'{"lookup": {"id": ')
                else:
                    status, answer = outer.answer(self.path, body)
                    self._send(status, json.dumps(answer).encode())

            def _send(
                self, status: int, data: bytes, headers: dict[str, str] | None = None
            ) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler


def _single(backend: RestBackend, body: Any) -> Any:
    lookup = body["lookup"]
    user = backend.find(lookup["medium"], lookup["address"])
    if user is None:
        return {}
    return {"lookup": {**lookup, "id": user.user_id()}}


def _bulk(backend: RestBackend, body: Any) -> Any:
    found = []
    for item in body["lookup"]:
        user = backend.find(item["medium"], item["address"])
        if user is not None:
            # Answer with the backend's own spelling of the address.
            stored = next(
                a
                for m, a in user.threepids
                if backend_key(m, a) == backend_key(item["medium"], item["address"])
            )
            found.append(
                {"medium": item["medium"], "address": stored, "id": user.user_id()}
            )
    return {"lookup": found}


def _auth(backend: RestBackend, body: Any) -> Any:
    auth = body["auth"]
    user = backend.user_of(auth)
    if user is None or auth.get("password") != user.password:
        return {"auth": {"success": False}}
    threepids = [{"medium": m, "address": a} for m, a in user.threepids]
    return {
        "auth": {
            "success": True,
            "id": user.user_id(),
            "profile": {"display_name": user.display_name, "three_pids": threepids},
        }
    }


def _directory(backend: RestBackend, body: Any) -> Any:
    term = str(body["search_term"]).lower()
    results = []
    for user in backend.users.values():
        if body["by"] == "threepid":
            hit = any(term in a.lower() for _, a in user.threepids)
        else:
            hit = term in user.display_name.lower()
        if hit:
            results.append(
                {
                    "user_id": user.localpart,
                    "display_name": user.display_name,
                    "avatar_url": f"mxc://example.org/{user.localpart}",
                }
            )
    return {"limited": False, "results": results}


def _profile_route(fieldname: str) -> Any:
    def route(backend: RestBackend, body: Any) -> Any:
        user = backend.user_of(body)
        if user is None:
            return {"profile": {}}
        values: dict[str, Any] = {
            "display_name": user.display_name,
            "threepids": [{"medium": m, "address": a} for m, a in user.threepids],
            "roles": user.roles,
        }
        return {"profile": {fieldname: values[fieldname]}}

    return route


ROUTES = {
    "/identity/single": _single,
    "/identity/bulk": _bulk,
    "/auth/login": _auth,
    "/directory/user/search": _directory,
    "/profile/displayName": _profile_route("display_name"),
    "/profile/threepids": _profile_route("threepids"),
    "/profile/roles": _profile_route("roles"),
}


@pytest.fixture
def rest_backend() -> Iterator[RestBackend]:
    backend = RestBackend()
    yield backend
    backend.close()


def exec_script(name: str) -> list[str]:
    """The command and first argument that run ``tests/exec/<name>``."""
    return [sys.executable, str(EXEC_DIR / name)]


def store_config(**sections: Any) -> Config:
    """A checked Config with only what a store needs (no files are written)."""
    raw: dict[str, Any] = {
        "matrix": {"domain": "example.org"},
        "key": {"path": "/nonexistent/signing.key"},
        "storage": {"provider": {"sqlite": {"database": "/nonexistent/mxisd.db"}}},
        **sections,
    }
    return parse_config(raw)


def rest_section(backend: RestBackend, **extra: Any) -> dict[str, Any]:
    """The ``rest`` section pointing at ``backend``, with a short timeout."""
    return {"enabled": True, "host": backend.url, "timeout": 0.3, **extra}


def v1_lookup(client: FlaskClient, medium: str, address: str) -> Any:
    response = client.get(
        f"{V1}/lookup", query_string={"medium": medium, "address": address}
    )
    assert response.status_code == 200
    return response.get_json()


def bulk(client: FlaskClient, *threepids: tuple[str, str]) -> set[tuple[str, ...]]:
    response = client.post(
        f"{V1}/bulk_lookup", json={"threepids": [list(tp) for tp in threepids]}
    )
    assert response.status_code == 200
    return {tuple(row) for row in response.get_json()["threepids"]}


def v2_none_lookup(
    client: FlaskClient, homeserver: Homeserver, addresses: list[str]
) -> Any:
    """POST v2 lookup with the ``none`` algorithm as a registered user."""
    token = register(client, homeserver, "@bob:example.org")
    details = client.get(f"{V2}/hash_details", headers=bearer(token)).get_json()
    response = client.post(
        f"{V2}/lookup",
        json={
            "algorithm": "none",
            "pepper": details["lookup_pepper"],
            "addresses": addresses,
        },
        headers=bearer(token),
    )
    assert response.status_code == 200
    return response.get_json()["mappings"]
