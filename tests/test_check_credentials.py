"""POST /_matrix-internal/identity/v1/check_credentials: Synapse's password
check against the identity stores."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from flask.testing import FlaskClient

from conftest import V1, ConfigFactory, FakeClock
from mxisd_flask.app import create_app
from mxisd_flask.config.sections import MemoryIdentity, Secret
from mxisd_flask.errors import ConfigError, StoreError
from mxisd_flask.services.auth import AuthConfig, AuthService
from mxisd_flask.stores.base import AuthResult, Capability, IdentityStore, Profile
from mxisd_flask.stores.memory import MemoryIdentityStore

PATH = "/_matrix-internal/identity/v1/check_credentials"
ALICE_OK = {
    "auth": {
        "success": True,
        "id": {"type": "mxid", "value": "@alice:example.org"},
        "profile": {
            "display_name": "Alice",
            "three_pids": [{"medium": "email", "address": "alice@example.org"}],
            "roles": [],
        },
    }
}
REFUSED = {"auth": {"success": False}}


def check(client: FlaskClient, user_id: Any, password: Any) -> Any:
    return client.post(PATH, json={"user": {"id": user_id, "password": password}})


def test_right_password_answers_mxid_and_profile(client: FlaskClient) -> None:
    response = check(client, "@alice:example.org", "alice-pw")

    assert response.status_code == 200
    assert response.get_json() == ALICE_OK


def test_memory_store_kept_for_passwords_only(
    make_config: ConfigFactory, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    off = {"enabled": False}
    config = make_config(memory={"identity": off, "listing": off})
    app = create_app(config, clock=clock)
    client = app.test_client()
    query = {"medium": "email", "address": "alice@example.org"}

    try:
        lookup = client.get(f"{V1}/lookup", query_string=query)
        assert lookup.status_code == 200 and lookup.get_json() == {}
        assert check(client, "@alice:example.org", "alice-pw").get_json() == ALICE_OK
    finally:
        app.extensions["mxisd"].db.close()
    assert "unknown configuration key" not in caplog.text


@pytest.mark.parametrize("user_id", ["@Alice:Example.ORG", "ALICE", " alice"])
def test_mixed_case_and_bare_localparts_resolve_to_the_canonical_mxid(
    client: FlaskClient, user_id: str
) -> None:
    response = check(client, user_id, "alice-pw")

    assert response.get_json() == ALICE_OK


@pytest.mark.parametrize(
    "user_id, password",
    [
        ("@alice:example.org", "wrong"),
        ("@alice:example.org", "ALICE-PW"),
        ("@alice:example.org", ""),
        ("@nobody:example.org", "alice-pw"),
        # Same localpart and password, another server's user: never ours.
        ("@alice:elsewhere.example", "alice-pw"),
    ],
)
def test_refused_credentials_answer_success_false(
    client: FlaskClient, user_id: str, password: str
) -> None:
    response = check(client, user_id, password)

    assert response.status_code == 200
    assert response.get_json() == REFUSED


@pytest.mark.parametrize(
    "body, errcode",
    [
        (b"{not json", "M_NOT_JSON"),
        (b"[1, 2]", "M_BAD_JSON"),
        (b"{}", "M_MISSING_PARAMS"),
        (b'{"user": "alice"}', "M_INVALID_PARAM"),
        (b'{"user": {"id": "@alice:example.org"}}', "M_MISSING_PARAMS"),
        (b'{"user": {"id": 5, "password": "x"}}', "M_INVALID_PARAM"),
        (b'{"user": {"id": "@alice:example.org", "password": []}}', "M_INVALID_PARAM"),
        (b'{"user": {"id": "@:example.org", "password": "x"}}', "M_INVALID_PARAM"),
        (b'{"user": {"id": "@a b:example.org", "password": "x"}}', "M_INVALID_PARAM"),
        (
            b'{"user": {"id": "@alice:example.org", "password": "a\\u0000"}}',
            "M_BAD_JSON",
        ),
    ],
)
def test_bad_bodies_get_the_spec_error_json(
    client: FlaskClient, body: bytes, errcode: str
) -> None:
    response = client.post(PATH, data=body, content_type="application/json")

    assert response.status_code == 400
    assert response.get_json()["errcode"] == errcode
    assert isinstance(response.get_json()["error"], str)


def test_get_is_unrecognized(client: FlaskClient) -> None:
    response = client.get(PATH)

    assert response.status_code == 405
    assert response.get_json()["errcode"] == "M_UNRECOGNIZED"


@pytest.mark.parametrize(
    "remote, forwarded",
    [
        ("203.0.113.5", None),
        ("10.1.2.3", None),
        # Through our own proxy on loopback, the client is the forwarded one.
        ("127.0.0.1", "203.0.113.5"),
    ],
)
def test_outside_addresses_are_forbidden(
    client: FlaskClient, remote: str, forwarded: str | None
) -> None:
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}

    response = client.post(
        PATH,
        json={"user": {"id": "@alice:example.org", "password": "alice-pw"}},
        headers=headers,
        environ_base={"REMOTE_ADDR": remote},
    )

    assert response.status_code == 403
    assert response.get_json()["errcode"] == "M_FORBIDDEN"


def test_ipv6_loopback_is_internal_by_default(client: FlaskClient) -> None:
    response = client.post(
        PATH,
        json={"user": {"id": "@alice:example.org", "password": "alice-pw"}},
        environ_base={"REMOTE_ADDR": "::1"},
    )

    assert response.get_json() == ALICE_OK


def test_configured_internal_network_may_call(make_config: ConfigFactory) -> None:
    config = make_config(auth={"internal": {"allowedCidr": ["10.1.0.0/16"]}})
    app = create_app(config)
    try:
        client = app.test_client()
        inside = {"REMOTE_ADDR": "10.1.2.3"}
        body = {"user": {"id": "@alice:example.org", "password": "alice-pw"}}

        allowed = client.post(PATH, json=body, environ_base=inside)
        loopback = client.post(PATH, json=body)
    finally:
        app.extensions["mxisd"].db.close()

    assert allowed.get_json() == ALICE_OK
    assert loopback.status_code == 403


def test_bad_internal_network_is_a_config_error(make_config: ConfigFactory) -> None:
    config = make_config(auth={"internal": {"allowedCidr": ["10.1.0.0/33"]}})

    with pytest.raises(ConfigError, match=r"auth\.internal\.allowedCidr"):
        create_app(config)


def test_password_is_never_logged(
    client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    password = "pw-that-must-not-leak"

    check(client, "@alice:example.org", password)
    check(client, "@alice:example.org", "alice-pw")
    check(client, "@Alice:example.org", [password])

    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "credentials refused mxid=@alice:example.org" in logged
    assert "credentials accepted mxid=@alice:example.org" in logged
    assert password not in logged
    assert "alice-pw" not in logged


# The service: stores with the auth capability in order, profile stores after.

DAVE = "@dave:example.org"


def identity(name: str | None, password: str | None, *emails: str) -> MemoryIdentity:
    return MemoryIdentity(
        localpart="dave",
        mxid=DAVE,
        password=Secret(password) if password is not None else None,
        display_name=name,
        threepids=tuple(("email", e) for e in emails),
    )


def memory(caps: set[Capability], *identities: MemoryIdentity) -> IdentityStore:
    return MemoryIdentityStore(identities, frozenset(caps))


class UnreachableStore(IdentityStore):
    """A store whose backend is down, as an LDAP server that does not answer."""

    name = "down"
    capabilities = frozenset({Capability.AUTH, Capability.PROFILE})

    def authenticate(
        self, mxid: str, localpart: str, password: str
    ) -> AuthResult | None:
        raise StoreError("connection refused")

    def profile(self, mxid: str) -> Profile | None:
        raise StoreError("connection refused")


CONFIG = AuthConfig(domain="example.org", internal_allowed=())


def test_first_store_accepting_the_password_wins() -> None:
    first = memory({Capability.AUTH}, identity("First", "one"))
    second = memory({Capability.AUTH}, identity("Second", "two"))
    service = AuthService([first, second], CONFIG)

    by_first = service.check_credentials(DAVE, "one")
    by_second = service.check_credentials(DAVE, "two")

    assert by_first is not None and by_first.profile.display_name == "First"
    assert by_second is not None and by_second.profile.display_name == "Second"
    assert service.check_credentials(DAVE, "three") is None


def test_stores_without_the_auth_capability_are_not_asked() -> None:
    lookup_only = memory({Capability.LOOKUP, Capability.PROFILE}, identity("D", "pw"))
    service = AuthService([lookup_only], CONFIG)

    assert service.check_credentials(DAVE, "pw") is None


def test_profile_stores_complete_the_profile() -> None:
    auth_only = memory({Capability.AUTH}, identity(None, "pw", "dave@example.org"))
    profiles = memory(
        {Capability.PROFILE},
        identity("Dave Dir", None, "Dave@Example.org", "d.2@example.org"),
    )
    service = AuthService([auth_only, profiles], CONFIG)

    result = service.check_credentials("@DAVE:example.org", "pw")

    assert result == AuthResult(
        mxid=DAVE,
        profile=Profile(
            "Dave Dir", (("email", "dave@example.org"), ("email", "d.2@example.org"))
        ),
    )


def test_a_failing_store_is_skipped(caplog: pytest.LogCaptureFixture) -> None:
    working = memory({Capability.AUTH, Capability.PROFILE}, identity("Dave", "pw"))
    service = AuthService([UnreachableStore(), working], CONFIG)

    result = service.check_credentials(DAVE, "pw")

    assert result is not None and result.profile.display_name == "Dave"
    assert "auth store failed store=down" in caplog.text
    assert "profile store failed store=down" in caplog.text
