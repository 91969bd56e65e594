"""Pending invites delivered through /3pid/onbind when their 3PID is bound."""

from __future__ import annotations

import logging
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import signedjson.key
import signedjson.sign
from fixtures_dns import TlsCert
from fixtures_homeserver import FakeHomeserver, Recorded, federation_to
from flask import Flask
from flask.testing import FlaskClient
from unpaddedbase64 import decode_base64

from conftest import V1, V2, ConfigFactory, FakeClock, Mailbox, validated_session
from mxisd_flask.app import create_app
from mxisd_flask.config import Config, ConfigError
from mxisd_flask.services import Services
from mxisd_flask.services.onbind import ONBIND_PATH, retry_delay_ms
from mxisd_flask.services.worker import BackgroundWorker

ROOM = "!room:example.org"
SENDER = "@alice:example.org"


@dataclass
class Env:
    """What every test here uses: config factory, the homeserver, time."""

    make_config: ConfigFactory
    homeserver: FakeHomeserver
    clock: FakeClock
    mailbox: Mailbox
    apps: list[Flask] = field(default_factory=list)

    def config(self, **extra: Any) -> Config:
        return self.make_config(**{**federation_to(self.homeserver), **extra})

    def app(self, config: Config | None = None, **kw: Any) -> Flask:
        app = create_app(config or self.config(), clock=self.clock, **kw)
        self.apps.append(app)
        return app


@pytest.fixture
def env(
    make_config: ConfigFactory,
    fake_homeserver: FakeHomeserver,
    clock: FakeClock,
    mailbox: Mailbox,
) -> Iterator[Env]:
    """The apps a test built have their workers and connections closed after."""
    built = Env(make_config, fake_homeserver, clock, mailbox)
    yield built
    for app in built.apps:
        svc: Services = app.extensions["mxisd"]
        svc.worker.stop()
        svc.db.close()


def services(app: Flask) -> Services:
    found: Services = app.extensions["mxisd"]
    return found


def store_invite(client: FlaskClient, address: str, room_id: str = ROOM) -> str:
    response = client.post(
        f"{V1}/store-invite",
        json={
            "medium": "email",
            "address": address,
            "room_id": room_id,
            "sender": SENDER,
        },
    )
    assert response.status_code == 200, response.get_json()
    return str(response.get_json()["token"])


def bind(client: FlaskClient, mailbox: Mailbox, address: str, mxid: str) -> None:
    sid = validated_session(client, mailbox, address)
    response = client.post(
        f"{V1}/3pid/bind",
        json={"sid": sid, "client_secret": "secret-1", "mxid": mxid},
    )
    assert response.status_code == 200, response.get_json()


def verify_signed(client: FlaskClient, signed: dict[str, Any]) -> None:
    public = client.get(f"{V2}/pubkey/ed25519:0").get_json()["public_key"]
    key = signedjson.key.decode_verify_key_bytes("ed25519:0", decode_base64(public))
    signedjson.sign.verify_signed_json(signed, "example.org", key)


def test_bind_delivers_the_invite_signed_with_our_published_key(
    env: Env,
) -> None:
    env.homeserver.answer("POST", ONBIND_PATH, 200, {})
    app = env.app(background=True)
    client = app.test_client()
    token = store_invite(client, "Carol@example.org")

    bind(client, env.mailbox, "carol@example.org", "@carol:example.org")

    (call,) = env.homeserver.wait_for(ONBIND_PATH)
    body = call.json()
    assert body["medium"] == "email"
    assert body["address"] == "carol@example.org"
    assert body["mxid"] == "@carol:example.org"
    (invite,) = body["invites"]
    assert invite["token"] == token
    assert invite["sender"] == SENDER
    assert invite["room_id"] == ROOM
    assert invite["mxid"] == "@carol:example.org"
    signed = invite["signed"]
    assert {k: signed[k] for k in ("mxid", "token")} == {
        "mxid": "@carol:example.org",
        "token": token,
    }
    verify_signed(client, signed)
    forged = {**signed, "mxid": "@mallory:example.org"}
    with pytest.raises(signedjson.sign.SignatureVerifyException):
        verify_signed(client, forged)
    deadline = time.monotonic() + 5
    while (found := services(app).onbind.delivery(token)) is None or (
        found.state != "delivered"
    ):
        assert time.monotonic() < deadline, "the delivery was not recorded"
        time.sleep(0.02)


def test_a_failed_delivery_is_retried_with_back_off(
    env: Env,
) -> None:
    env.homeserver.answer("POST", ONBIND_PATH, 502, {"error": "down"})
    app = env.app()
    client = app.test_client()
    onbind = services(app).onbind
    token = store_invite(client, "carol@example.org")
    bind(client, env.mailbox, "carol@example.org", "@carol:example.org")

    started_ms = env.clock.ms
    onbind.run_once()
    first = onbind.delivery(token)
    env.clock.advance(retry_delay_ms(1) / 1000 - 1)
    onbind.run_once()
    early_calls = len(env.homeserver.calls(ONBIND_PATH))
    env.clock.advance(1)
    onbind.run_once()
    second = onbind.delivery(token)
    env.homeserver.answer("POST", ONBIND_PATH, 200, {})
    env.clock.advance(retry_delay_ms(2) / 1000)
    onbind.run_once()

    assert first is not None and second is not None
    assert (first.state, first.attempts) == ("pending", 1)
    assert first.next_ts == started_ms + retry_delay_ms(1)
    assert "HTTP 502" in (first.last_error or "")
    assert early_calls == 1
    assert (second.state, second.attempts) == ("pending", 2)
    assert second.next_ts == first.next_ts + retry_delay_ms(2)
    assert retry_delay_ms(2) == 2 * retry_delay_ms(1)
    final = onbind.delivery(token)
    assert final is not None and (final.state, final.attempts) == ("delivered", 3)
    assert len(env.homeserver.calls(ONBIND_PATH)) == 3


def test_the_retry_state_survives_a_restart(
    env: Env,
) -> None:
    env.homeserver.answer("POST", ONBIND_PATH, 503, {})
    config = env.config()
    first = env.app(config)
    token = store_invite(first.test_client(), "carol@example.org")
    bind(first.test_client(), env.mailbox, "carol@example.org", "@carol:example.org")
    services(first).onbind.run_once()
    services(first).db.close()

    second = env.app(config)
    onbind = services(second).onbind
    state_after_restart = onbind.delivery(token)
    onbind.run_once()  # not due yet: the back-off is remembered
    calls_before_due = len(env.homeserver.calls(ONBIND_PATH))
    env.homeserver.answer("POST", ONBIND_PATH, 200, {})
    env.clock.advance(retry_delay_ms(1) / 1000)
    onbind.run_once()

    assert state_after_restart is not None
    assert (state_after_restart.state, state_after_restart.attempts) == ("pending", 1)
    assert calls_before_due == 1
    delivered = onbind.delivery(token)
    assert delivered is not None and delivered.state == "delivered"
    assert len(env.homeserver.calls(ONBIND_PATH)) == 2


@pytest.mark.parametrize("status, final_state", [(403, "failed"), (429, "pending")])
def test_a_4xx_that_will_not_change_stops_the_retries(
    status: int,
    final_state: str,
    env: Env,
) -> None:
    env.homeserver.answer("POST", ONBIND_PATH, status, {"errcode": "M_FORBIDDEN"})
    app = env.app()
    token = store_invite(app.test_client(), "carol@example.org")
    bind(app.test_client(), env.mailbox, "carol@example.org", "@carol:example.org")
    onbind = services(app).onbind

    onbind.run_once()
    env.clock.advance(7 * 3600)
    onbind.run_once()

    delivery = onbind.delivery(token)
    assert delivery is not None and delivery.state == final_state
    expected_calls = 1 if final_state == "failed" else 2
    assert len(env.homeserver.calls(ONBIND_PATH)) == expected_calls


def test_two_apps_on_one_database_deliver_each_invite_once(
    env: Env,
) -> None:
    def slow_ok(_request: Recorded) -> tuple[int, Any]:
        time.sleep(0.1)  # widen the window in which a second worker could race
        return 200, {}

    env.homeserver.on("POST", ONBIND_PATH, slow_ok)
    config = env.config()
    first, second = env.app(config), env.app(config)
    client = first.test_client()
    tokens = {
        store_invite(client, "carol@example.org", f"!r{i}:example.org")
        for i in range(4)
    }
    bind(client, env.mailbox, "carol@example.org", "@carol:example.org")

    barrier = threading.Barrier(2)

    def deliver(app: Flask) -> None:
        barrier.wait()
        services(app).onbind.deliver_due()

    threads = [threading.Thread(target=deliver, args=(a,)) for a in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    env.clock.advance(3600)
    services(first).onbind.run_once()
    services(second).onbind.run_once()

    delivered = [
        c.json()["invites"][0]["token"] for c in env.homeserver.calls(ONBIND_PATH)
    ]
    assert sorted(delivered) == sorted(tokens)
    states = {d.token: d.state for d in services(second).onbind.deliveries()}
    assert states == {token: "delivered" for token in tokens}


DAVE = {
    "username": "dave",
    "threepids": [{"medium": "email", "address": "dave@example.org"}],
}


def test_a_store_that_now_resolves_the_threepid_gets_its_invite_delivered(
    env: Env,
) -> None:
    env.homeserver.answer("POST", ONBIND_PATH, 200, {})
    # Both configs first: on PostgreSQL make_config empties the test database.
    knows_dave = env.config(memory={"identities": [DAVE]})
    plain = env.config()
    before = env.app(plain)
    token = store_invite(before.test_client(), "dave@example.org")
    services(before).onbind.run_once()
    calls_while_unknown = len(env.homeserver.calls(ONBIND_PATH))
    services(before).db.close()
    # The directory learns about dave (here: the memory store after a restart).
    after = env.app(knows_dave)

    services(after).onbind.run_once()

    assert calls_while_unknown == 0
    (call,) = env.homeserver.calls(ONBIND_PATH)
    assert call.json()["mxid"] == "@dave:example.org"
    assert call.json()["invites"][0]["token"] == token
    delivery = services(after).onbind.delivery(token)
    assert delivery is not None and delivery.reason == "lookup"


def test_stores_are_asked_again_only_when_the_timer_is_due(
    env: Env,
) -> None:
    env.homeserver.answer("POST", ONBIND_PATH, 200, {})
    timer = {"resolution": {"timer": 5}}
    knows_dave = env.config(memory={"identities": [DAVE]}, invite=timer)
    plain = env.config(invite=timer)
    inviter, resolver = env.app(plain), env.app(knows_dave)
    onbind = services(resolver).onbind
    onbind.run_once()  # the first pass resolves at once (nothing pending yet)
    token = store_invite(inviter.test_client(), "dave@example.org")

    env.clock.advance(4 * 60)
    onbind.run_once()
    before_timer = onbind.delivery(token)
    env.clock.advance(60)
    onbind.run_once()

    assert before_timer is None
    assert len(env.homeserver.calls(ONBIND_PATH)) == 1
    delivery = onbind.delivery(token)
    assert delivery is not None and delivery.state == "delivered"


def test_an_expired_invite_is_resolved_to_the_configured_mxid(
    env: Env,
) -> None:
    env.homeserver.answer("POST", ONBIND_PATH, 200, {})
    expiration = {"enabled": True, "after": 60, "resolveTo": "@expired:example.org"}
    app = env.app(env.config(invite={"expiration": expiration}))
    token = store_invite(app.test_client(), "erin@example.org")
    onbind = services(app).onbind

    onbind.run_once()
    state_before = onbind.delivery(token)
    env.clock.advance(60 * 60)
    onbind.run_once()

    assert state_before is None
    (call,) = env.homeserver.calls(ONBIND_PATH)
    assert call.json()["mxid"] == "@expired:example.org"
    assert call.json()["invites"][0]["signed"]["mxid"] == "@expired:example.org"
    delivery = onbind.delivery(token)
    assert delivery is not None
    assert (delivery.reason, delivery.state) == ("expired", "delivered")


def list_invites(config_path: Path) -> list[str]:
    """``mxisd invites`` run as an admin would, on the test's database."""
    done = subprocess.run(
        [sys.executable, "-m", "mxisd_flask", "invites", "--config", str(config_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_mxisd_invites_shows_expiry_then_resolution(env: Env, tmp_path: Path) -> None:
    env.homeserver.answer("POST", ONBIND_PATH, 200, {})
    expiration = {"enabled": True, "after": 60, "resolveTo": "@expired:example.org"}
    app = env.app(env.config(invite={"expiration": expiration}))
    store_invite(app.test_client(), "erin@example.org")
    head = (
        "2023-11-14T22:13:20Z room=!room:example.org sender=@alice:example.org "
        "to=email:e***@example.org"
    )

    waiting = list_invites(tmp_path / "mxisd.yaml")
    env.clock.advance(60 * 60)
    services(app).onbind.run_once()
    resolved = list_invites(tmp_path / "mxisd.yaml")

    assert waiting == [f"{head} unresolved expires=2023-11-14T23:13:20Z"]
    assert resolved == [
        f"{head} resolved=expired mxid=@expired:example.org delivery=delivered "
        "attempts=1"
    ]


def test_onbind_obeys_the_outbound_policy(
    env: Env,
) -> None:
    env.homeserver.answer("POST", ONBIND_PATH, 200, {})
    app = env.app(env.config(outbound={"allowedCidr": []}))
    token = store_invite(app.test_client(), "carol@example.org")
    bind(app.test_client(), env.mailbox, "carol@example.org", "@carol:example.org")

    services(app).onbind.run_once()

    assert env.homeserver.calls(ONBIND_PATH) == []
    delivery = services(app).onbind.delivery(token)
    assert delivery is not None and delivery.state == "pending"
    assert "internal address" in (delivery.last_error or "")


def test_onbind_over_tls_trusts_the_configured_ca_file(
    env: Env, tls_cert: TlsCert, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls_cert.cert, tls_cert.key)
    homeserver = FakeHomeserver(tls=context)  # its certificate names 127.0.0.1
    try:
        homeserver.answer("POST", ONBIND_PATH, 200, {})
        # Both configs first: on PostgreSQL make_config empties the database.
        to_it = federation_to(homeserver)
        untrusting = env.make_config(**to_it)
        trusting = env.make_config(**to_it, federation={"caFile": str(tls_cert.cert)})
        first = env.app(untrusting)
        client = first.test_client()
        token = store_invite(client, "carol@example.org")
        bind(client, env.mailbox, "carol@example.org", "@carol:example.org")
        services(first).onbind.run_once()
        refused = services(first).onbind.delivery(token)
        second = env.app(trusting)
        env.clock.advance(retry_delay_ms(1) / 1000)
        services(second).onbind.run_once()
        delivered = services(second).onbind.delivery(token)
        calls = homeserver.calls(ONBIND_PATH)
    finally:
        homeserver.close()

    assert refused is not None and refused.state == "pending"
    assert "SSLError" in (refused.last_error or "")
    assert delivered is not None and delivered.state == "delivered"
    (call,) = calls  # the refused handshake never reached the handler
    assert call.json()["invites"][0]["token"] == token


@pytest.mark.parametrize(
    "invite, message",
    [
        ({"expiration": {"enabled": True}}, "invite.expiration.resolveTo"),
        ({"expiration": {"resolveTo": "bot"}}, "invite.expiration.resolveTo"),
        ({"resolution": {"timer": 0}}, "invite.resolution.timer"),
        ({"expiration": {"after": 0}}, "invite.expiration.after"),
    ],
)
def test_bad_invite_settings_are_refused_at_start(
    invite: dict[str, Any], message: str, make_config: ConfigFactory, clock: FakeClock
) -> None:
    with pytest.raises(ConfigError, match=message):
        create_app(make_config(invite=invite), clock=clock)


def test_hash_details_accepts_the_access_token_as_a_query_parameter(
    client: FlaskClient, homeserver: Any
) -> None:
    from conftest import register

    token = register(client, homeserver, "@carol:example.org")

    by_query = client.get(f"{V2}/hash_details", query_string={"access_token": token})
    wrong = client.get(f"{V2}/hash_details", query_string={"access_token": "nope"})

    assert by_query.status_code == 200
    assert by_query.get_json()["algorithms"]
    assert wrong.status_code == 401
    assert wrong.get_json()["errcode"] == "M_UNAUTHORIZED"


def test_a_failed_background_step_logs_its_traceback_but_not_its_text(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A database error's text quotes the row it failed on, address and all.
    failed = threading.Event()
    address = "carol@example.org"

    def step() -> None:
        failed.set()
        raise RuntimeError(f"duplicate key (email, {address})")

    worker = BackgroundWorker("onbind-test", step, interval_s=60)
    worker.ensure_running()
    assert failed.wait(5)
    worker.stop()

    text = "\n".join(
        caplog.handler.format(r) for r in caplog.records if r.levelno >= logging.INFO
    )
    assert "background step failed" in text
    assert "RuntimeError" in text and "in step" in text
    assert address not in text
