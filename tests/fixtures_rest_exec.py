"""Fixtures: a local REST identity backend and exec scripts.

:class:`RestBackend` is a real HTTP server on a free loopback port that
speaks mxisd's REST backend API (the shapes an existing mxisd backend
answers) over a small user list, records every request, and can be told to
misbehave per path. The exec store's scripts live in ``tests/exec/``.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mxisd_backend
import pytest
from flask.testing import FlaskClient

from conftest import (
    V1,
    V2,
    Homeserver,
    JsonHandler,
    bearer,
    deep_merge,
    register,
    sha256_lookup,
)
from mxisd_flask.config import Config, parse_config
from mxisd_flask.crypto.hashing import lookup_hash

if TYPE_CHECKING:  # a plugin module too: importing it here would come first
    from fixtures_homeserver import FakeHomeserver

EXEC_DIR = Path(__file__).resolve().parent / "exec"
API = "/_mxisd/backend/api/v1"
# Dave as our side must see him: canonical mxid, normalised 3PIDs.
DAVE = "@dave:example.org"
DAVE_THREEPIDS = (("email", "dave.bowman@example.org"), ("msisdn", "447700900001"))
# A bulk lookup for memory's Alice, Dave in the client's own spelling, and
# nobody; and what the answer must be.
BULK_QUESTION = (
    ("email", "alice@example.org"),
    ("email", "Dave.Bowman@example.org"),
    ("msisdn", "+44 7700 900001"),
    ("email", "nobody@example.org"),
)
ERIN = "@erin:example.org"
# Every 3PID of the backend's users, as a listing must give them.
LISTED = {
    ("email", "dave.bowman@example.org", DAVE),
    ("msisdn", "447700900001", DAVE),
    ("email", "erin@example.org", ERIN),
    ("employee", "E-1002", ERIN),
}
BULK_ANSWER = {
    ("email", "alice@example.org", "@alice:example.org"),
    ("email", "Dave.Bowman@example.org", DAVE),
    ("msisdn", "+44 7700 900001", DAVE),
}


class RestBackend:
    """mxisd's REST backend API on loopback; ``fail[path]`` makes it misbehave.

    Failure modes: ``"500"``, ``"badjson"``, ``"slow"`` (answers after
    ``slow_s``), ``"redirect"``, ``"404"`` and ``"loop"`` (a listing page
    whose next cursor is always the same).
    """

    def __init__(self) -> None:
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

    def answer(self, path: str, body: Any) -> tuple[int, Any]:
        """The status and JSON mxisd's API gives for ``body`` at ``path``."""
        route = ROUTES.get(path.removeprefix(API))
        if route is None:
            return 404, {"error": "no such endpoint"}
        return 200, route(body)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(JsonHandler):
            def do_POST(self) -> None:  # noqa: N802  # http.server hook name
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"null")
                outer.requests.append((self.path, body))
                mode = outer.fail.get(self.path, "")
                if mode == "slow":
                    time.sleep(outer.slow_s)
                if mode == "redirect":
                    self.send_json(307, b"", {"Location": outer.url + self.path})
                elif mode in ("500", "404"):
                    self.send_json(int(mode), b'{"error": "backend trouble"}')
                elif mode == "badjson":
                    self.send_json(200, b'{"lookup": {"id": ')
                elif mode == "loop":
                    self.send_json(200, b'{"lookup": [], "next": "again"}')
                else:
                    status, answer = outer.answer(self.path, body)
                    self.send_json(status, answer)

        return Handler


ROUTES: dict[str, Callable[[dict[str, Any]], Any]] = {
    "/identity/single": lambda body: mxisd_backend.single(body["lookup"]),
    "/identity/bulk": mxisd_backend.bulk,
    "/identity/listing": lambda body: mxisd_backend.listing(body["listing"]),
    "/auth/login": lambda body: mxisd_backend.auth(body["auth"]),
    "/directory/user/search": mxisd_backend.directory,
    "/profile/displayName": mxisd_backend.profile("display_name"),
    "/profile/threepids": mxisd_backend.profile("threepids"),
    "/profile/roles": mxisd_backend.profile("roles"),
}


@pytest.fixture
def rest_backend() -> Iterator[RestBackend]:
    backend = RestBackend()
    yield backend
    backend.close()


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


def v2_hashed_lookup(
    client: FlaskClient, homeserver: Homeserver, threepids: list[tuple[str, str]]
) -> dict[tuple[str, str], str]:
    """POST v2 lookup with sha256 for (medium, address) pairs; what it found."""
    token = register(client, homeserver, "@bob:example.org")
    details = client.get(f"{V2}/hash_details", headers=bearer(token)).get_json()
    pepper = details["lookup_pepper"]
    hashes = {lookup_hash(a, m, pepper): (m, a) for m, a in threepids}
    response = sha256_lookup(client, token, pepper, list(hashes))
    assert response.status_code == 200
    return {hashes[h]: mxid for h, mxid in response.get_json()["mappings"].items()}


IDENTITY_SCRIPT = str(EXEC_DIR / "identity.py")
MISBEHAVE_SCRIPT = str(EXEC_DIR / "misbehave.sh")


def exec_action(action: str, fmt: str = "json", **extra: Any) -> dict[str, Any]:
    """An exec action running tests/exec/identity.py for ``action``."""
    output = fmt if action in ("auth", "single") else "json"
    return {
        "command": sys.executable,
        "args": [IDENTITY_SCRIPT, action, fmt],
        "input": {"type": fmt},
        "output": {"type": output},
        **extra,
    }


def exec_section(fmt: str = "json", **extra: Any) -> dict[str, Any]:
    """The ``exec`` section with every action answered by identity.py."""
    section = {
        "enabled": True,
        "timeout": 5,
        "auth": exec_action("auth", fmt),
        "directory": {"search": {"byName": exec_action("directory", fmt)}},
        "identity": {
            "lookup": {
                "single": exec_action("single", fmt),
                "bulk": exec_action("bulk", fmt),
            }
        },
        "profile": {
            "displayName": exec_action("displayName", fmt),
            "threePid": exec_action("threepids", fmt),
            "role": exec_action("roles", fmt),
        },
    }
    return deep_merge(section, extra)


def misbehaving(how: str, *args: str) -> dict[str, Any]:
    """An exec action running tests/exec/misbehave.sh with sh."""
    return {"command": "/bin/sh", "args": [MISBEHAVE_SCRIPT, how, *args]}


class ExecRecord:
    """What identity.py was given, one entry per run (argv, env, stdin)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def env(self) -> dict[str, str]:
        """The environment entry that makes identity.py record its runs."""
        return {"EXEC_RECORD": str(self.path)}

    def runs(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        lines = self.path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines]


@pytest.fixture
def exec_record(tmp_path: Path) -> ExecRecord:
    return ExecRecord(tmp_path / "exec-record.jsonl")


CHECK_CREDENTIALS = "/_matrix-internal/identity/v1/check_credentials"


def dave_accepted(roles: tuple[str, ...] = ()) -> dict[str, Any]:
    """What check_credentials answers for Dave: the stores' profile, normalised."""
    return {
        "auth": {
            "success": True,
            "id": {"type": "mxid", "value": DAVE},
            "profile": {
                "display_name": "Dave Bowman",
                "three_pids": [{"medium": m, "address": a} for m, a in DAVE_THREEPIDS],
                "roles": list(roles),
            },
        }
    }


def check_credentials(client: FlaskClient, user_id: str, password: str) -> Any:
    """Synapse's password check through our internal endpoint."""
    response = client.post(
        CHECK_CREDENTIALS, json={"user": {"id": user_id, "password": password}}
    )
    assert response.status_code == 200
    return response.get_json()


DIRECTORY_SEARCH = "/_matrix/client/v3/user_directory/search"
# What the user directory answers for "bowman" from Dave's store entry.
DAVE_IN_DIRECTORY = {
    "limited": False,
    "results": [
        {
            "user_id": DAVE,
            "display_name": "Dave Bowman",
            "avatar_url": "mxc://example.org/dave",
        }
    ],
}


def directory_sections(homeserver: FakeHomeserver) -> dict[str, Any]:
    """Directory search from the stores only; the homeserver checks tokens."""
    homeserver.answer(
        "GET", "/_matrix/client/v3/account/whoami", 200, {"user_id": "@bob:example.org"}
    )
    client = [{"name": "example.org", "value": homeserver.url}]
    return {
        "directory": {"exclude": {"homeserver": True}},
        "dns": {"overwrite": {"homeserver": {"client": client}}},
    }


def directory_search(client: FlaskClient, term: str) -> Any:
    response = client.post(
        DIRECTORY_SEARCH, json={"search_term": term}, headers=bearer("a-token")
    )
    assert response.status_code == 200
    return response.get_json()
