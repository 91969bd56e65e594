"""Our server under gunicorn behind a real Apache on etc/apache2/mxisd.conf.

The test client connects from loopback addresses other than Apache's own
(127.0.0.2, 127.0.0.3), so the address Apache appends to X-Forwarded-For
is told apart from Apache's 127.0.0.1, which is what our server's socket
sees. Every request carries a forged ``X-Forwarded-For: 203.0.113.9``.
"""

from __future__ import annotations

import os
import re
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from fixtures_apache import EXAMPLE, OPTIONAL_LINE, ApacheSite, StartApache
from fixtures_homeserver import FakeHomeserver, Recorded
from fixtures_synapse import Process
from requests.adapters import HTTPAdapter

from conftest import Mailbox, free_port
from mxisd_flask.crypto.hashing import lookup_hash

ROOT = Path(__file__).resolve().parent.parent
HOST = "matrix.example.org"  # what clients put in Host; Apache preserves it
FORGED = "203.0.113.9"
CLIENT = "127.0.0.2"  # allowed by auth.internal.allowedCidr
STRANGER = "127.0.0.3"  # not allowed
LOGGED_IN = {"user_id": "@alice:example.org", "access_token": "syt_x"}
ALICE = {
    "username": "alice",
    "password": "alice-pw",
    "name": "Alice",
    "threepids": [{"medium": "email", "address": "alice@example.org"}],
}
CHECK_CREDENTIALS = "/_matrix-internal/identity/v1/check_credentials"


class FromAddress(HTTPAdapter):
    """Connects from a loopback address of our choosing: another client."""

    def __init__(self, address: str) -> None:
        self._address = address  # read by init_poolmanager, called by __init__
        super().__init__()

    def init_poolmanager(
        self, connections: int, maxsize: int, block: bool = False, **kwargs: Any
    ) -> None:
        kwargs["source_address"] = (self._address, 0)
        super().init_poolmanager(connections, maxsize, block, **kwargs)


@dataclass(frozen=True)
class Stack:
    apache: ApacheSite

    def client(self, address: str = CLIENT) -> requests.Session:
        session = requests.Session()
        session.mount("https://", FromAddress(address))
        # The environment's CA bundle or proxy would win over ours.
        session.trust_env = False
        session.verify = self.apache.ca_file
        session.headers.update({"Host": HOST, "X-Forwarded-For": FORGED})
        return session


def scripted_homeserver() -> FakeHomeserver:
    """Synapse's side: OpenID, login, directory search, anything else 404."""
    homeserver = FakeHomeserver()
    homeserver.answer(
        "GET",
        "/_matrix/federation/v1/openid/userinfo",
        200,
        {"sub": "@carol:example.org"},
    )
    homeserver.answer("GET", "/_matrix/client/versions", 200, {"versions": ["v1.11"]})
    for version in ("r0", "v3"):
        homeserver.answer("POST", f"/_matrix/client/{version}/login", 200, LOGGED_IN)
    # It is also the identity server ours forwards lookups to; it knows nobody.
    homeserver.answer(
        "GET",
        "/_matrix/identity/v2/hash_details",
        200,
        {"algorithms": ["none"], "lookup_pepper": "pepper"},
    )
    homeserver.answer("POST", "/_matrix/identity/v2/lookup", 200, {"mappings": {}})
    homeserver.answer(
        "POST",
        "/_matrix/client/v3/user_directory/search",
        200,
        {"limited": False, "results": []},
    )
    return homeserver


@dataclass(frozen=True)
class IdentityServer:
    url: str  # plain HTTP on loopback, as Apache reaches it
    process: Process


def start_identity_server(
    workdir: Path, smtp_port: int, homeserver: FakeHomeserver, trusted: list[str]
) -> IdentityServer:
    """``python -m mxisd_flask`` (gunicorn) on a free port, plain HTTP."""
    workdir.mkdir()
    port = free_port()
    config = {
        "matrix": {"domain": "example.org"},
        "server": {
            "port": port,
            "publicUrl": f"https://{HOST}",
            "workers": 1,
            "trustedProxies": trusted,
        },
        "key": {"path": str(workdir / "signing.key")},
        "storage": {"provider": {"sqlite": {"database": str(workdir / "db")}}},
        "threepid": {
            "medium": {
                "email": {
                    "connectors": {
                        "smtp": {"host": "127.0.0.1", "port": smtp_port, "tls": 0}
                    }
                }
            }
        },
        "memory": {"identities": [ALICE]},
        "auth": {"internal": {"allowedCidr": [f"{CLIENT}/32"]}},
        "lookup": {"recursive": {"allowedCidr": [f"{CLIENT}/32"]}},
        "forward": {"servers": [homeserver.url]},
        "dns": {
            "overwrite": {
                "homeserver": {
                    "federation": [{"name": "example.org", "value": homeserver.url}],
                    # Found by the Host Apache preserved, not matrix.domain.
                    "client": [{"name": HOST, "value": homeserver.url}],
                }
            }
        },
        "outbound": {"allowedCidr": ["127.0.0.1/32"]},
    }
    path = workdir / "mxisd.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "mxisd_flask", "--config", str(path)]
    server = IdentityServer(f"http://127.0.0.1:{port}", Process(command, workdir, env))
    server.process.wait_until(f"{server.url}/_matrix/identity/v2")
    return server


@pytest.fixture(scope="module")
def module_homeserver() -> Iterator[FakeHomeserver]:
    server = scripted_homeserver()
    yield server
    server.close()


@pytest.fixture
def homeserver(module_homeserver: FakeHomeserver) -> FakeHomeserver:
    module_homeserver.forget()
    return module_homeserver


@pytest.fixture(scope="module")
def servers(
    tmp_path_factory: pytest.TempPathFactory,
    smtp_server: tuple[int, Mailbox],
    module_homeserver: FakeHomeserver,
) -> Iterator[dict[str, IdentityServer]]:
    """Our server trusting Apache (the default list), and one trusting nobody."""
    workdir = tmp_path_factory.mktemp("identity")
    started: dict[str, IdentityServer] = {}
    try:
        for name, trusted in (("trusted", ["127.0.0.1", "::1"]), ("untrusted", [])):
            started[name] = start_identity_server(
                workdir / name, smtp_server[0], module_homeserver, trusted
            )
        yield started
    finally:
        for server in started.values():
            server.process.stop()


@dataclass(frozen=True)
class Stacks:
    trusted: Stack  # the optional lines on, before the server trusting Apache
    untrusted: Stack  # the same, before the server trusting nobody
    plain: Stack  # the example as shipped, before the trusting server


@pytest.fixture(scope="module")
def stacks(
    servers: dict[str, IdentityServer],
    module_homeserver: FakeHomeserver,
    start_apache: StartApache,
) -> Stacks:
    def stack(server: str, optional: bool) -> Stack:
        url = servers[server].url
        return Stack(start_apache(url, module_homeserver.url, optional=optional))

    return Stacks(
        stack("trusted", True), stack("untrusted", True), stack("trusted", False)
    )


def only_call(homeserver: FakeHomeserver, path: str) -> Recorded:
    calls = homeserver.calls(path)
    assert len(calls) == 1, [c.path for c in homeserver.requests]
    return calls[0]


def password_check(
    stack: Stack, address: str, forwarded_for: str = FORGED
) -> requests.Response:
    http = stack.client(address)
    http.headers["X-Forwarded-For"] = forwarded_for
    body = {"user": {"id": "@alice:example.org", "password": "alice-pw"}}
    return http.post(stack.apache.url + CHECK_CREDENTIALS, json=body)


def test_identity_paths_reach_us_and_the_rest_goes_to_the_homeserver(
    stacks: Stacks, homeserver: FakeHomeserver
) -> None:
    http = stacks.trusted.client()
    base = stacks.trusted.apache.url

    versions = http.get(f"{base}/_matrix/identity/versions")
    status = http.get(f"{base}/_matrix/identity/v2")
    client_versions = http.get(f"{base}/_matrix/client/versions")

    assert versions.status_code == 200
    assert "v1.1" in versions.json()["versions"]
    assert status.status_code == 200
    assert status.json() == {}
    assert client_versions.json() == {"versions": ["v1.11"]}
    seen = only_call(homeserver, "/_matrix/client/versions").headers
    assert seen["host"] == HOST
    assert seen["x-forwarded-proto"] == "https"
    # Apache appends the connecting client to what the client wrote itself.
    assert seen["x-forwarded-for"] == f"{FORGED}, {CLIENT}"


def test_email_session_bind_and_lookup_through_apache(
    stacks: Stacks, mailbox: Mailbox, homeserver: FakeHomeserver
) -> None:
    http = stacks.trusted.client()
    v2 = f"{stacks.trusted.apache.url}/_matrix/identity/v2"
    registered = http.post(
        f"{v2}/account/register",
        json={"access_token": uuid.uuid4().hex, "matrix_server_name": "example.org"},
    )
    assert registered.status_code == 200, registered.text
    http.headers["Authorization"] = f"Bearer {registered.json()['token']}"
    secret = uuid.uuid4().hex
    address = f"carol.{secret[:8]}@example.org"

    requested = http.post(
        f"{v2}/validate/email/requestToken",
        json={"client_secret": secret, "email": address, "send_attempt": 1},
    )
    assert requested.status_code == 200, requested.text
    sid = requested.json()["sid"]
    submitted = http.post(
        f"{v2}/validate/email/submitToken",
        json={"sid": sid, "client_secret": secret, "token": mailbox.token()},
    )
    assert submitted.json() == {"success": True}
    bound = http.post(
        f"{v2}/3pid/bind",
        json={"sid": sid, "client_secret": secret, "mxid": "@carol:example.org"},
    )
    assert bound.status_code == 200, bound.text

    pepper = http.get(f"{v2}/hash_details").json()["lookup_pepper"]
    hashed = lookup_hash(address, "email", pepper)
    found = http.post(
        f"{v2}/lookup",
        json={"algorithm": "sha256", "pepper": pepper, "addresses": [hashed]},
    )
    assert found.json() == {"mappings": {hashed: "@carol:example.org"}}


def test_a_trusted_apache_forwards_the_client_address_for_the_internal_acl(
    stacks: Stacks,
) -> None:
    allowed = password_check(stacks.trusted, CLIENT)
    # The stranger forges the allowed address; Apache appends the real one,
    # the right-most address that is not a trusted proxy.
    forged = password_check(stacks.trusted, STRANGER, forwarded_for=CLIENT)

    assert allowed.status_code == 200, allowed.text
    assert allowed.json()["auth"]["success"] is True
    assert forged.status_code == 403
    assert forged.json()["errcode"] == "M_FORBIDDEN"


def recursed(
    stack: Stack, address: str, homeserver: FakeHomeserver, **headers: str
) -> bool:
    """Whether a v1 lookup of an unknown address asked the forward server."""
    homeserver.forget()
    http = stack.client(address)
    http.headers.update(headers)
    answer = http.get(
        stack.apache.url + "/_matrix/identity/api/v1/lookup",
        params={"medium": "email", "address": "nobody@example.org"},
    )
    assert answer.status_code == 200, answer.text
    assert answer.json() == {}
    return bool(homeserver.calls("/_matrix/identity/v2/hash_details"))


def test_the_recursion_acl_sees_the_client_behind_a_trusted_apache_only(
    stacks: Stacks, homeserver: FakeHomeserver
) -> None:
    assert recursed(stacks.trusted, CLIENT, homeserver)
    assert not recursed(
        stacks.trusted, STRANGER, homeserver, **{"X-Forwarded-For": CLIENT}
    )
    # Untrusted, Apache's 127.0.0.1 is the client, and it may not recurse.
    assert not recursed(stacks.untrusted, CLIENT, homeserver)


def test_an_untrusted_apache_is_the_client_our_server_sees(
    stacks: Stacks, homeserver: FakeHomeserver
) -> None:
    refused = password_check(stacks.untrusted, CLIENT)
    login = stacks.untrusted.client().post(
        stacks.untrusted.apache.url + "/_matrix/client/v3/login",
        json={"type": "m.login.password", "user": "alice", "password": "alice-pw"},
    )

    assert refused.status_code == 403
    assert refused.json()["errcode"] == "M_FORBIDDEN"
    assert login.status_code == 200
    seen = only_call(homeserver, "/_matrix/client/v3/login").headers
    assert seen["x-forwarded-for"] == "127.0.0.1"


@pytest.mark.parametrize("version", ["r0", "v3"])
def test_a_3pid_login_is_resolved_by_us_through_apache(
    version: str, stacks: Stacks, homeserver: FakeHomeserver
) -> None:
    path = f"/_matrix/client/{version}/login"
    identifier = {
        "type": "m.id.thirdparty",
        "medium": "email",
        "address": "alice@example.org",
    }
    body = {"type": "m.login.password", "identifier": identifier, "password": "pw"}

    answer = stacks.trusted.client().post(stacks.trusted.apache.url + path, json=body)

    assert answer.status_code == 200, answer.text
    assert answer.json() == LOGGED_IN
    forwarded = only_call(homeserver, path)
    assert forwarded.json()["identifier"] == {
        "type": "m.id.user",
        "user": "@alice:example.org",
    }
    assert forwarded.headers["x-forwarded-for"] == CLIENT


def test_a_directory_search_through_apache_finds_the_stores_users(
    stacks: Stacks, homeserver: FakeHomeserver
) -> None:
    path = "/_matrix/client/v3/user_directory/search"
    http = stacks.trusted.client()
    http.headers["Authorization"] = "Bearer client-token"

    answer = http.post(stacks.trusted.apache.url + path, json={"search_term": "alice"})

    assert answer.status_code == 200, answer.text
    users = [result["user_id"] for result in answer.json()["results"]]
    assert users == ["@alice:example.org"]
    asked = only_call(homeserver, path)
    assert asked.headers["authorization"] == "Bearer client-token"


def test_without_the_optional_lines_the_homeserver_gets_login_and_search(
    stacks: Stacks, homeserver: FakeHomeserver
) -> None:
    http = stacks.plain.client()
    login = {"type": "m.login.password", "user": "alice", "password": "pw"}
    search = {"search_term": "alice"}

    logged_in = http.post(
        stacks.plain.apache.url + "/_matrix/client/v3/login", json=login
    )
    searched = http.post(
        stacks.plain.apache.url + "/_matrix/client/v3/user_directory/search",
        json=search,
    )
    internal = password_check(stacks.plain, CLIENT)

    assert logged_in.json() == LOGGED_IN
    assert searched.json() == {"limited": False, "results": []}
    # Straight from Apache: the client's header with Apache's addition.
    seen = only_call(homeserver, "/_matrix/client/v3/login")
    assert seen.json() == login
    assert seen.headers["x-forwarded-for"] == f"{FORGED}, {CLIENT}"
    assert internal.status_code == 404
    assert "errcode" not in internal.text


def test_the_apache_lines_in_the_docs_are_the_example_s() -> None:
    """Each line of an ``apache`` block in the docs is in the tested example."""
    example = {
        line.strip() for line in OPTIONAL_LINE.sub("", EXAMPLE.read_text()).splitlines()
    }
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    blocks = [
        (doc.name, block)
        for doc in docs
        for block in re.findall(r"```apache\n(.*?)```", doc.read_text(), re.S)
    ]

    assert len(blocks) >= 3
    for name, block in blocks:
        for line in block.splitlines():
            assert line.strip() in example, f"{name}: {line!r} is not in {EXAMPLE}"
