"""Login through us: 3PID logins resolved by the stores, the rest untouched."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fixtures_homeserver import FakeHomeserver, Recorded
from flask import Flask
from flask.testing import FlaskClient

from conftest import ConfigFactory, FakeClock
from mxisd_flask.app import create_app
from mxisd_flask.config import ConfigError

LOGIN = "/_matrix/client/v3/login"
PASSWORD = {"type": "m.login.password", "password": "alice-pw"}
LOGGED_IN = {
    "user_id": "@alice:example.org",
    "access_token": "syt_abc",
    "device_id": "DEV",
}
EMPLOYEES = {
    "username": "dave",
    "threepids": [{"medium": "employeeid", "address": "40123"}],
}
RULES = [{"regex": "[0-9]{5}", "medium": "employeeid"}]


def login_config(homeserver: FakeHomeserver, **extra: Any) -> dict[str, Any]:
    client = [{"name": "example.org", "value": homeserver.url}]
    return {
        "dns": {"overwrite": {"homeserver": {"client": client}}},
        **extra,
    }


@pytest.fixture
def client(
    make_config: ConfigFactory, fake_homeserver: FakeHomeserver, clock: FakeClock
) -> Iterator[FlaskClient]:
    fake_homeserver.answer("POST", LOGIN, 200, LOGGED_IN)
    identities = [
        {
            "username": "alice",
            "threepids": [{"medium": "email", "address": "alice@example.org"}],
        },
        EMPLOYEES,
    ]
    config = make_config(
        **login_config(
            fake_homeserver,
            memory={"identities": identities},
            auth={"rewrite": {"user": {"rules": RULES}}},
        )
    )
    app: Flask = create_app(config, clock=clock)
    yield app.test_client()
    app.extensions["mxisd"].db.close()


def forwarded(homeserver: FakeHomeserver) -> Recorded:
    (call,) = homeserver.calls(LOGIN)
    return call


@pytest.mark.parametrize(
    "body",
    [
        {
            **PASSWORD,
            "identifier": {
                "type": "m.id.thirdparty",
                "medium": "email",
                "address": "Alice@Example.org",
            },
        },
        {**PASSWORD, "medium": "email", "address": "alice@example.org"},
    ],
    ids=["identifier", "legacy"],
)
def test_a_3pid_login_is_forwarded_as_a_user_login(
    body: dict[str, Any], client: FlaskClient, fake_homeserver: FakeHomeserver
) -> None:
    response = client.post(LOGIN, json={**body, "device_id": "DEV"})

    assert response.status_code == 200
    assert response.get_json() == LOGGED_IN
    assert forwarded(fake_homeserver).json() == {
        **PASSWORD,
        "device_id": "DEV",
        "identifier": {"type": "m.id.user", "user": "@alice:example.org"},
    }


def test_an_unknown_3pid_is_refused_like_a_wrong_password(
    client: FlaskClient, fake_homeserver: FakeHomeserver
) -> None:
    identifier = {
        "type": "m.id.thirdparty",
        "medium": "email",
        "address": "nobody@example.org",
    }

    response = client.post(LOGIN, json={**PASSWORD, "identifier": identifier})

    assert response.status_code == 403
    assert response.get_json()["errcode"] == "M_FORBIDDEN"
    assert fake_homeserver.calls(LOGIN) == []


@pytest.mark.parametrize("user", ["40123", "@40123:example.org"])
def test_a_user_name_matching_a_rewrite_rule_is_looked_up_as_that_medium(
    user: str, client: FlaskClient, fake_homeserver: FakeHomeserver
) -> None:
    identifier = {"type": "m.id.user", "user": user}

    response = client.post(LOGIN, json={**PASSWORD, "identifier": identifier})

    assert response.status_code == 200
    assert forwarded(fake_homeserver).json()["identifier"] == {
        "type": "m.id.user",
        "user": "@dave:example.org",
    }


@pytest.mark.parametrize(
    "body",
    [
        {**PASSWORD, "identifier": {"type": "m.id.user", "user": "alice"}},
        {**PASSWORD, "identifier": {"type": "m.id.user", "user": "99999"}},
        {**PASSWORD, "user": "@40123:elsewhere.example"},
        {"type": "m.login.token", "token": "login-token"},
    ],
    ids=["plain-user", "rule-without-match", "other-server", "token"],
)
def test_other_logins_pass_through_byte_for_byte(
    body: dict[str, Any], client: FlaskClient, fake_homeserver: FakeHomeserver
) -> None:
    raw = json.dumps(body, indent=1).encode()

    response = client.post(LOGIN, data=raw, content_type="application/json")

    assert response.status_code == 200
    assert forwarded(fake_homeserver).body == raw


def test_the_homeservers_refusal_reaches_the_client_unchanged(
    client: FlaskClient, fake_homeserver: FakeHomeserver
) -> None:
    limited = {"errcode": "M_LIMIT_EXCEEDED", "error": "Too many", "retry_after_ms": 7}
    fake_homeserver.answer("POST", LOGIN, 429, limited)
    identifier = {
        "type": "m.id.thirdparty",
        "medium": "email",
        "address": "alice@example.org",
    }

    response = client.post(LOGIN, json={**PASSWORD, "identifier": identifier})

    assert response.status_code == 429
    assert response.get_json() == limited


# Nested deeper than the JSON parser recurses: once a 500 from us.
@pytest.mark.parametrize("raw", [b"{not json", b"[" * 100_000, b'{"a":' * 100_000])
def test_a_malformed_login_is_the_homeservers_to_answer(
    client: FlaskClient, fake_homeserver: FakeHomeserver, raw: bytes
) -> None:
    bad = {"errcode": "M_NOT_JSON", "error": "Content not JSON."}
    fake_homeserver.answer("POST", LOGIN, 400, bad)

    response = client.post(LOGIN, data=raw, content_type="application/json")

    assert (response.status_code, response.get_json()) == (400, bad)
    assert forwarded(fake_homeserver).body == raw


def test_get_login_and_r0_pass_through(
    client: FlaskClient, fake_homeserver: FakeHomeserver
) -> None:
    flows = {"flows": [{"type": "m.login.password"}]}
    fake_homeserver.answer("GET", LOGIN, 200, flows)
    fake_homeserver.answer("POST", "/_matrix/client/r0/login", 200, LOGGED_IN)
    identifier = {
        "type": "m.id.thirdparty",
        "medium": "email",
        "address": "alice@example.org",
    }

    got = client.get(LOGIN, headers={"User-Agent": "Element/1.0"})
    r0 = client.post(
        "/_matrix/client/r0/login",
        json={**PASSWORD, "identifier": identifier},
        headers={"User-Agent": "Element/1.0"},
    )

    assert got.get_json() == flows
    assert r0.get_json() == LOGGED_IN
    (call,) = fake_homeserver.calls("/_matrix/client/r0/login")
    assert call.json()["identifier"]["user"] == "@alice:example.org"
    assert call.headers["user-agent"] == "Element/1.0"
    assert call.headers["x-forwarded-for"] == "127.0.0.1"


@pytest.mark.parametrize(
    "rules",
    [
        [{"regex": "("}],
        [{"regex": "(", "medium": "email"}],
        ["x"],
        [{"medium": "email"}],
    ],
)
def test_bad_rewrite_rules_are_refused_at_start(
    rules: list[Any], make_config: ConfigFactory, clock: FakeClock
) -> None:
    config = make_config(auth={"rewrite": {"user": {"rules": rules}}})

    with pytest.raises(ConfigError, match="auth.rewrite.user.rules"):
        create_app(config, clock=clock)
