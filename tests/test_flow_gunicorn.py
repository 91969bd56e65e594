"""The whole flow over real HTTP against gunicorn started like an admin would."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gunicorn.config
import pytest
import requests
import signedjson.key
import signedjson.sign
import yaml
from unpaddedbase64 import decode_base64

from conftest import (
    Homeserver,
    Mailbox,
    bearer,
    free_port,
    homeserver_config,
    text_of,
)
from mxisd_flask.config import load_config
from mxisd_flask.crypto.hashing import lookup_hash
from mxisd_flask.storage.bindings import BindingStorage, HashStateStorage
from mxisd_flask.storage.counter import SUFFIX
from mxisd_flask.storage.db import Database
from mxisd_flask.workers import (
    JsonErrorsSyncWorker,
    JsonErrorsThreadWorker,
    worker_class,
)

ROOT = Path(__file__).resolve().parent.parent


class Server:
    def __init__(self, tmp_path: Path, smtp_port: int, extra: dict[str, Any]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        raw = {
            "matrix": {"domain": "example.org"},
            "server": {"port": self.port, "publicUrl": self.url, "workers": 2},
            "key": {"path": str(tmp_path / "signing.key")},
            "storage": {"provider": {"sqlite": {"database": str(tmp_path / "db")}}},
            "threepid": {
                "medium": {
                    "email": {
                        "connectors": {
                            "smtp": {"host": "127.0.0.1", "port": smtp_port, "tls": 0}
                        }
                    }
                }
            },
            **extra,
        }
        self.config = tmp_path / "mxisd.yaml"
        self.config.write_text(yaml.safe_dump(raw))
        self.log_path = tmp_path / "server.log"
        self.log = open(self.log_path, "w")  # noqa: SIM115  # closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mxisd_flask", "--config", str(self.config)],
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                requests.get(f"{self.url}/_matrix/identity/v2", timeout=1)
                return
            except requests.ConnectionError:
                assert self.process.poll() is None, self.output()
                time.sleep(0.1)
        raise AssertionError("server did not start: " + self.output())

    def output(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=30)
        self.log.close()
        return code


@pytest.fixture
def server(
    tmp_path: Path, smtp_server: tuple[int, Mailbox], homeserver: Homeserver
) -> Iterator[Server]:
    running = Server(tmp_path, smtp_server[0], homeserver_config(homeserver))
    yield running
    if running.process.poll() is None:
        running.stop()


def test_full_flow_over_http(
    server: Server, mailbox: Mailbox, homeserver: Homeserver
) -> None:
    http = requests.Session()
    base = server.url
    openid = uuid.uuid4().hex
    homeserver.tokens[openid] = "@carol:example.org"
    token = http.post(
        f"{base}/_matrix/identity/v2/account/register",
        json={"access_token": openid, "matrix_server_name": "example.org"},
    ).json()["token"]
    auth = {"Authorization": f"Bearer {token}"}
    v2 = f"{base}/_matrix/identity/v2"

    sid = http.post(
        f"{v2}/validate/email/requestToken",
        headers=auth,
        json={
            "client_secret": "flow-secret",
            "email": "carol@example.org",
            "send_attempt": 1,
        },
    ).json()["sid"]
    mail_token = mailbox.token()
    assert http.post(
        f"{v2}/validate/email/submitToken",
        headers=auth,
        json={
            "sid": sid,
            "client_secret": "flow-secret",
            "token": mail_token,
        },
    ).json() == {"success": True}
    bound = http.post(
        f"{v2}/3pid/bind",
        headers=auth,
        json={"sid": sid, "client_secret": "flow-secret", "mxid": "@carol:example.org"},
    )
    assert bound.status_code == 200

    pepper = http.get(f"{v2}/hash_details", headers=auth).json()["lookup_pepper"]
    hashed = lookup_hash("carol@example.org", "email", pepper)
    mappings = http.post(
        f"{v2}/lookup",
        headers=auth,
        json={"algorithm": "sha256", "pepper": pepper, "addresses": [hashed]},
    ).json()
    assert mappings == {"mappings": {hashed: "@carol:example.org"}}

    v1 = f"{base}/_matrix/identity/api/v1"
    answer = http.get(
        f"{v1}/lookup", params={"medium": "email", "address": "carol@example.org"}
    ).json()
    public = http.get(f"{v1}/pubkey/ed25519:0").json()["public_key"]
    key = signedjson.key.decode_verify_key_bytes("ed25519:0", decode_base64(public))
    signedjson.sign.verify_signed_json(answer, "example.org", key)
    assert answer["mxid"] == "@carol:example.org"

    invite = {
        "medium": "email",
        "room_id": "!r:example.org",
        "sender": "@carol:example.org",
    }
    stored = http.post(
        f"{v2}/store-invite",
        headers=auth,
        json={**invite, "address": "dave@example.org"},
    ).json()
    assert stored["token"] in text_of(mailbox.last())
    in_use = http.post(
        f"{v2}/store-invite",
        headers=auth,
        json={**invite, "address": "carol@example.org"},
    )
    assert in_use.status_code == 400
    assert in_use.json() == {
        "errcode": "M_THREEPID_IN_USE",
        "error": in_use.json()["error"],
        "mxid": "@carol:example.org",
    }
    assert http.get(f"{base}/nowhere").json()["errcode"] == "M_UNRECOGNIZED"


def test_sigterm_stops_cleanly_and_two_instances_run_side_by_side(
    tmp_path: Path, smtp_server: tuple[int, Mailbox]
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = Server(tmp_path / "a", smtp_server[0], {})
    second = Server(tmp_path / "b", smtp_server[0], {})
    try:
        keys = {
            requests.get(f"{s.url}/_matrix/identity/v2/pubkey/ed25519:0").json()[
                "public_key"
            ]
            for s in (first, second)
        }
        assert len(keys) == 2
    finally:
        codes = (first.stop(), second.stop())
    assert codes == (0, 0)
    assert "Traceback" not in first.output()
    assert f"Serving on {first.url} (2 workers)" in first.output()
    assert os.path.exists(tmp_path / "a" / "signing.key")


def test_gunicorn_wsgi_app_logs_like_mxisd_run(tmp_path: Path) -> None:
    # The README's other way to run: gunicorn's own command line, not ours.
    port = free_port()
    config = tmp_path / "mxisd.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "matrix": {"domain": "example.org"},
                "key": {"path": str(tmp_path / "signing.key")},
                "storage": {"provider": {"sqlite": {"database": str(tmp_path / "db")}}},
                "logging": {"level": "INFO"},
            }
        )
    )
    log_path = tmp_path / "gunicorn.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}"]
            + ["--no-control-socket", "wsgi:app"],
            cwd=ROOT,
            env={**os.environ, "MXISD_CONFIG": str(config)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 30
            while "mxisd-flask ready" not in log_path.read_text():
                assert process.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.1)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
    output = log_path.read_text()

    assert "INFO mxisd_flask.app: mxisd-flask ready server_name=example.org" in output
    assert "WARNING mxisd_flask.services.notifications: no connector" in output


def raw_http(server: Server, request: bytes) -> tuple[int, bytes, Any]:
    """Send ``request`` as it is; the status, headers and JSON body."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        try:
            sock.sendall(request)
        except OSError:
            pass  # the server answered before reading everything: read that
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), head, json.loads(body)


SECRET_QUERY = b"sid=s1&client_secret=cs-secret-9&token=tok-secret-9"
SUBMIT = b"/_matrix/identity/api/v1/validate/email/submitToken?" + SECRET_QUERY


@pytest.mark.parametrize(
    "request_bytes, status",
    [
        (b"GET " + SUBMIT + b"&\xff HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET " + SUBMIT + b"&x=" + b"x" * 5000 + b" HTTP/1.1\r\n\r\n", 414),
        (b"GET " + SUBMIT + b" HTTP/1.1\r\nX-A: " + b"a" * 9000 + b"\r\n\r\n", 431),
        (b"GET " + SUBMIT + b" HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
    ],
)
def test_requests_gunicorn_cannot_parse_get_json_and_leave_no_secret_in_the_log(
    server: Server, request_bytes: bytes, status: int
) -> None:
    code, head, body = raw_http(server, request_bytes)

    assert code == status
    assert b"Content-Type: application/json" in head
    assert b"\r\nAccess-Control-Allow-Origin: *\r\n" in head
    assert set(body) == {"errcode", "error"}
    server.stop()
    assert "invalid request" in server.output()
    assert "secret-9" not in server.output()


CHUNKED = (
    b"POST /_matrix/identity/api/v1/bulk_lookup HTTP/1.1\r\nConnection: close\r\n"
    b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
)


def chunked(body: bytes, size: int = 65536) -> bytes:
    parts = [body[i : i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


def test_a_chunked_body_over_the_limit_is_too_large(server: Server) -> None:
    # Werkzeug cut such a body at the limit and went on with the first MiB.
    body = b'{"threepids": []}' + b" " * (1 << 20)

    code, _head, answer = raw_http(server, CHUNKED + chunked(body))

    assert code == 413
    assert answer["errcode"] == "M_BAD_JSON"


def test_a_malformed_chunked_body_is_a_bad_request(server: Server) -> None:
    code, _head, answer = raw_http(server, CHUNKED + b"zz\r\n{}\r\n0\r\n\r\n")

    assert code == 400
    assert answer["errcode"] == "M_BAD_JSON"
    server.stop()
    assert "Traceback" not in server.output()


def test_a_chunked_body_under_the_limit_is_read_whole(server: Server) -> None:
    address = "a" * 80 + "@example.org"
    body = json.dumps({"threepids": [["email", address]] * 9000}).encode()
    assert 800_000 < len(body) < 1 << 20

    code, _head, answer = raw_http(server, CHUNKED + chunked(body))

    assert (code, answer) == (200, {"threepids": []})


@pytest.mark.parametrize(
    "name, threads, expected",
    [
        ("gthread", 4, JsonErrorsThreadWorker),
        ("gthread", 1, JsonErrorsThreadWorker),
        ("sync", 4, JsonErrorsThreadWorker),
        ("sync", 1, JsonErrorsSyncWorker),
    ],
)
def test_gunicorn_loads_our_worker_for_each_worker_class(
    name: str, threads: int, expected: type
) -> None:
    config = gunicorn.config.Config()
    config.set("worker_class", worker_class(name, threads))
    config.set("threads", threads)

    assert config.worker_class is expected


def test_workers_answer_what_was_committed_before_each_request(
    server: Server, homeserver: Homeserver
) -> None:
    """Each worker answers lookups from its table in memory and remembers
    tokens (SQLite): binds and unbinds by another process, and a logout
    through any worker, show at the very next request to any worker, also
    while the shared counters' file is replaced or truncated under them."""
    db = Database(load_config(str(server.config)).storage)
    with db.read() as cur:
        state = HashStateStorage().get(cur)
    assert state is not None
    pepper = state[0]
    v2 = f"{server.url}/_matrix/identity/v2"
    tokens = [
        requests.post(
            f"{v2}/account/register",
            json={"access_token": openid, "matrix_server_name": "example.org"},
        ).json()["token"]
        for openid in (uuid.uuid4().hex for _ in range(3))
        if homeserver.tokens.setdefault(openid, "@u:example.org")
    ]
    address, mxid = "hammer@example.org", "@h:example.org"
    hashed = lookup_hash(address, "email", pepper)
    seq_file = db._config.sqlite_database + SUFFIX
    committed = [0, False]  # commits so far, and whether the last one bound
    committing = threading.Lock()  # held from before a commit to its record
    stop = threading.Event()
    wrong: list[str] = []
    checked = [0]  # lookups no commit overlapped

    def write() -> None:
        storage = BindingStorage()
        writer = Database(db._config)
        while not stop.is_set():
            with committing:
                with writer.write() as cur:
                    if committed[1]:
                        storage.delete(cur, "email", address, mxid)
                    else:
                        storage.upsert(cur, "email", address, mxid, hashed, 1)
                committed[:] = [committed[0] + 1, not committed[1]]
            if committed[0] % 8 == 0:  # the operator, now and then
                shutil.copyfile(seq_file, seq_file + ".copy")
                os.replace(seq_file + ".copy", seq_file)
                writer.close()  # and a process started after that
                writer = Database(db._config)
            elif committed[0] % 8 == 4:
                open(seq_file, "wb").close()
            time.sleep(0.02)  # a few lookups between two commits
        writer.close()

    def ask(version: str) -> str | None:
        with requests.Session() as http:  # a new connection: any worker
            if version == "v1":
                query = {"medium": "email", "address": address}
                answer = http.get(
                    f"{server.url}/_matrix/identity/api/v1/lookup", params=query
                )
                mxid: str | None = answer.json().get("mxid")
                return mxid
            body = {"algorithm": "sha256", "pepper": pepper, "addresses": [hashed]}
            answer = http.post(f"{v2}/lookup", headers=bearer(tokens[0]), json=body)
            mxid = answer.json()["mappings"].get(hashed)
            return mxid

    def look(version: str) -> None:
        while not stop.is_set():
            with committing:
                before = list(committed)
            got = ask(version)
            with committing:
                unchanged = committed == before
            checked[0] += unchanged
            if unchanged and (got == mxid) != before[1]:
                wrong.append(f"{version} after {before[0]} commits: {got}")

    def status(token: str) -> int:
        with requests.Session() as http:
            return http.get(f"{v2}/account", headers=bearer(token)).status_code

    threads = [threading.Thread(target=write)] + [
        threading.Thread(target=look, args=(v,)) for v in ("v1", "v2", "v1", "v2")
    ]
    for thread in threads:
        thread.start()
    try:
        for token in tokens[1:]:
            assert [status(token) for _ in range(6)] == [200] * 6  # both workers
            with requests.Session() as http:
                logout = http.post(f"{v2}/account/logout", headers=bearer(token))
            assert logout.status_code == 200
            assert [status(token) for _ in range(6)] == [401] * 6
        time.sleep(1.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        db.close()
    assert committed[0] > 40
    assert checked[0] > 100
    assert wrong == []
    assert "Traceback" not in server.output()
