"""Fixtures with real parts: an SMTP server, SQLite and PostgreSQL storage,
a homeserver's OpenID endpoint on loopback, and the app built from YAML."""

from __future__ import annotations

import email
import email.policy
import json
import logging
import os
import re
import socket
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import yaml
from aiosmtpd.controller import Controller
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from mxisd_flask.app import create_app
from mxisd_flask.config import Config, load_config
from mxisd_flask.storage.db import Database

# Fixtures of each feature live in their own module, one per real part.
pytest_plugins = [
    "fixtures_ldap",
    "fixtures_sql",
    "fixtures_rest_exec",
    "fixtures_dns",
    "fixtures_twilio",
    "fixtures_synapse",
    "fixtures_apache",
    "fixtures_homeserver",
]

PG_DSN = os.environ.get("MXISD_TEST_PG", "host=127.0.0.1 port=5432 user=postgres")
BACKENDS = ["sqlite", "postgresql"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Mailbox:
    """What the SMTP server received, in order."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], EmailMessage]] = []
        self.raw: list[bytes] = []
        self.received = threading.Condition()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802  # aiosmtpd hook name
        message = email.message_from_bytes(
            envelope.content, _class=EmailMessage, policy=email.policy.default
        )
        with self.received:
            self.raw.append(envelope.content)
            self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), message))
            self.received.notify_all()
        return "250 OK"

    def last(self) -> EmailMessage:
        assert self.messages, "no mail was received"
        return self.messages[-1][2]

    def token(self) -> str:
        """The validation or invite token in the last mail's text."""
        body = text_of(self.last())
        match = re.search(r"[?&]token=([A-Za-z0-9_\-]+)", body) or re.search(
            r"code[^:]*: ([A-Za-z0-9_\-]+)", body
        )
        assert match, f"no token in mail: {body!r}"
        return match.group(1)


def text_of(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content())


@pytest.fixture(scope="session")
def smtp_server() -> Iterator[tuple[int, Mailbox]]:
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield port, mailbox
    controller.stop()


@pytest.fixture
def mailbox(smtp_server: tuple[int, Mailbox]) -> Mailbox:
    smtp_server[1].messages.clear()
    smtp_server[1].raw.clear()
    return smtp_server[1]


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A database of our own on the real PostgreSQL, dropped after the run."""
    name = f"mxisd_test_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(PG_DSN + " dbname=postgres")
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    yield name
    with admin.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.close()


def reset_pg(name: str) -> None:
    conn = psycopg2.connect(PG_DSN + f" dbname={name}")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    conn.close()


EMAIL_RE = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}")


@pytest.fixture(autouse=True)
def no_full_address_above_debug(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fail any test whose run logged a whole email address at INFO or above."""
    caplog.set_level(logging.INFO, logger="mxisd_flask")
    yield
    # caplog.records would hold only the teardown phase's records here.
    records = caplog.get_records("setup") + caplog.get_records("call")
    for record in records:
        if record.name.startswith("mxisd_flask") and record.levelno >= logging.INFO:
            leaked = EMAIL_RE.findall(record.getMessage())
            assert not leaked, f"full address logged: {record.getMessage()!r}"


class FakeClock:
    def __init__(self) -> None:
        self.ms = 1_700_000_000_000

    def __call__(self) -> int:
        return self.ms

    def advance(self, seconds: float) -> None:
        self.ms += int(seconds * 1000)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


ConfigFactory = Callable[..., Config]


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_merge(base[key], value)
        else:
            base[key] = value
    return base


@pytest.fixture
def make_config(
    tmp_path: Path,
    backend: str,
    smtp_server: tuple[int, Mailbox],
    request: pytest.FixtureRequest,
) -> ConfigFactory:
    """Write a YAML config for this test and load it like the server does."""

    def factory(**extra: Any) -> Config:
        storage: dict[str, Any] = {"backend": backend}
        if backend == "sqlite":
            storage["provider"] = {"sqlite": {"database": str(tmp_path / "mxisd.db")}}
        else:
            name = request.getfixturevalue("pg_database")
            reset_pg(name)
            storage["provider"] = {"postgresql": {"database": name, "user": "postgres"}}
        raw: dict[str, Any] = {
            "matrix": {"domain": "example.org"},
            "server": {"publicUrl": "https://id.example.org"},
            "key": {"path": str(tmp_path / "signing.key")},
            "storage": storage,
            "threepid": {
                "medium": {
                    "email": {
                        "identity": {"from": "id@example.org", "name": "Example ID"},
                        "connectors": {
                            "smtp": {
                                "host": "127.0.0.1",
                                "port": smtp_server[0],
                                "tls": 0,
                            }
                        },
                    }
                }
            },
            "memory": {
                "identities": [
                    {
                        "username": "alice",
                        "password": "alice-pw",
                        "name": "Alice",
                        "threepids": [
                            {"medium": "email", "address": "alice@example.org"}
                        ],
                    }
                ]
            },
        }
        deep_merge(raw, extra)
        path = tmp_path / "mxisd.yaml"
        path.write_text(yaml.safe_dump(raw))
        return load_config(str(path))

    return factory


class JsonHandler(BaseHTTPRequestHandler):
    """A test server's request handler: JSON answers, no access log."""

    def send_json(
        self, status: int, body: Any, headers: dict[str, str] | None = None
    ) -> None:
        """Answer ``body``: bytes as they are, anything else as JSON."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


class Homeserver:
    """A homeserver's OpenID userinfo endpoint: token -> user id."""

    def __init__(self) -> None:
        self.tokens: dict[str, str] = {}
        self.calls = 0
        outer = self

        class Handler(JsonHandler):
            def do_GET(self) -> None:  # noqa: N802  # http.server hook name
                outer.calls += 1
                match = re.search(r"access_token=([^&]+)", self.path)
                user = outer.tokens.get(match.group(1)) if match else None
                ok = self.path.startswith("/_matrix/federation/v1/openid/userinfo")
                if ok and user:
                    self.send_json(200, {"sub": user})
                else:
                    self.send_json(401, {"errcode": "M_UNKNOWN_TOKEN", "error": "no"})

        self.server, self.url = serve_http(Handler)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def serve_http(
    handler: type[BaseHTTPRequestHandler],
) -> tuple[ThreadingHTTPServer, str]:
    """Serve ``handler`` on a free loopback port in a daemon thread."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def homeserver() -> Iterator[Homeserver]:
    server = Homeserver()
    yield server
    server.close()


def homeserver_config(homeserver: Homeserver) -> dict[str, Any]:
    return {
        "dns": {
            "overwrite": {
                "homeserver": {
                    "federation": [{"name": "example.org", "value": homeserver.url}]
                }
            }
        },
        "outbound": {"allowedCidr": ["127.0.0.1/32"]},
    }


def register(client: FlaskClient, homeserver: Homeserver, user: str) -> str:
    """Register ``user`` with the identity server; returns our access token."""
    openid = uuid.uuid4().hex
    homeserver.tokens[openid] = user
    response = client.post(
        "/_matrix/identity/v2/account/register",
        json={
            "access_token": openid,
            "token_type": "Bearer",
            "matrix_server_name": "example.org",
            "expires_in": 3600,
        },
    )
    assert response.status_code == 200, response.get_json()
    return str(response.get_json()["token"])


V1 = "/_matrix/identity/api/v1"
V2 = "/_matrix/identity/v2"


def request_token(
    client: FlaskClient,
    address: str,
    secret: str = "secret-1",
    attempt: int = 1,
    prefix: str = V1,
    headers: dict[str, str] | None = None,
) -> Any:
    return client.post(
        f"{prefix}/validate/email/requestToken",
        json={"client_secret": secret, "email": address, "send_attempt": attempt},
        headers=headers,
    )


def validated_session(
    client: FlaskClient,
    mailbox: Mailbox,
    address: str,
    secret: str = "secret-1",
    prefix: str = V1,
    headers: dict[str, str] | None = None,
) -> str:
    """Run requestToken and submitToken; returns the validated session's sid."""
    response = request_token(client, address, secret, prefix=prefix, headers=headers)
    assert response.status_code == 200, response.get_json()
    sid = str(response.get_json()["sid"])
    submitted = client.post(
        f"{prefix}/validate/email/submitToken",
        json={"sid": sid, "client_secret": secret, "token": mailbox.token()},
        headers=headers,
    )
    assert submitted.get_json() == {"success": True}
    return sid


def trace_statements(db: Database) -> list[str]:
    """The SQL statements that this thread's connection to ``db`` runs from
    now on, on SQLite; always empty on PostgreSQL."""
    statements: list[str] = []
    if db.backend == "sqlite":
        with db.read() as cur:
            assert isinstance(cur, sqlite3.Cursor)
            cur.connection.set_trace_callback(statements.append)
    return statements


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def sha256_lookup(
    client: FlaskClient, token: str, pepper: str, hashes: list[str]
) -> TestResponse:
    """POST a v2 lookup of ``hashes`` (sha256 under ``pepper``)."""
    return client.post(
        f"{V2}/lookup",
        json={"algorithm": "sha256", "pepper": pepper, "addresses": hashes},
        headers=bearer(token),
    )


def token_and_pepper(client: FlaskClient, homeserver: Homeserver) -> tuple[str, str]:
    """An access token of ours, and the current lookup pepper."""
    token = register(client, homeserver, "@someone:example.org")
    details = client.get(f"{V2}/hash_details", headers=bearer(token)).get_json()
    return token, str(details["lookup_pepper"])


@pytest.fixture
def config(make_config: ConfigFactory, homeserver: Homeserver) -> Config:
    return make_config(**homeserver_config(homeserver))


@pytest.fixture
def app(config: Config, clock: FakeClock) -> Iterator[Flask]:
    application = create_app(config, clock=clock)
    yield application
    application.extensions["mxisd"].db.close()


@pytest.fixture
def two_workers(config: Config, clock: FakeClock) -> Iterator[tuple[Flask, Flask]]:
    """Two apps on one database, as two gunicorn workers have."""
    apps = (create_app(config, clock=clock), create_app(config, clock=clock))
    yield apps
    for application in apps:
        application.extensions["mxisd"].db.close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()
