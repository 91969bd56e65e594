"""Unbind signed by the user's homeserver (X-Matrix), without a session."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import signedjson.key
import signedjson.sign
from fixtures_homeserver import FakeHomeserver
from flask.testing import FlaskClient
from signedjson.types import SigningKey
from unpaddedbase64 import encode_base64

from conftest import (
    V1,
    V2,
    ConfigFactory,
    FakeClock,
    Mailbox,
    free_port,
    validated_session,
)
from mxisd_flask.app import create_app

KEY_PATH = "/_matrix/key/v2/server"
CAROL = "@carol:example.org"
CONTENT = {
    "mxid": CAROL,
    "threepid": {"medium": "email", "address": "carol@example.org"},
}


class SigningServer:
    """A homeserver that publishes a federation key and signs with it."""

    def __init__(self, name: str, http: FakeHomeserver, clock: FakeClock) -> None:
        self.name = name
        self.http = http
        self.key: SigningKey = signedjson.key.generate_signing_key("a1")
        published = {
            "server_name": name,
            "verify_keys": {
                "ed25519:a1": {"key": encode_base64(bytes(self.key.verify_key))}
            },
            "old_verify_keys": {},
            "valid_until_ts": clock.ms + 24 * 3600 * 1000,
        }
        self.published = signedjson.sign.sign_json(published, name, self.key)
        http.answer("GET", KEY_PATH, 200, self.published)

    def authorization(
        self,
        content: dict[str, Any],
        uri: str = f"{V2}/3pid/unbind",
        key: SigningKey | None = None,
        destination_is: str = "id.example.org",
    ) -> str:
        """The header Synapse sends: no destination, ``destination_is`` signed."""
        request = {
            "method": "POST",
            "uri": uri,
            "origin": self.name,
            "destination_is": destination_is,
            "content": content,
        }
        signed = signedjson.sign.sign_json(request, self.name, key or self.key)
        sig = signed["signatures"][self.name]["ed25519:a1"]
        return f'X-Matrix origin={self.name},key="ed25519:a1",sig="{sig}"'


@pytest.fixture
def other_http() -> Iterator[FakeHomeserver]:
    server = FakeHomeserver()
    yield server
    server.close()


@pytest.fixture
def servers(
    fake_homeserver: FakeHomeserver, other_http: FakeHomeserver, clock: FakeClock
) -> tuple[SigningServer, SigningServer]:
    return (
        SigningServer("example.org", fake_homeserver, clock),
        SigningServer("other.example", other_http, clock),
    )


@pytest.fixture
def allowed_cidr() -> list[str]:
    """outbound.allowedCidr: the test homeservers are on loopback."""
    return ["127.0.0.1/32"]


@pytest.fixture
def client(
    make_config: ConfigFactory,
    servers: tuple[SigningServer, SigningServer],
    clock: FakeClock,
    mailbox: Mailbox,
    allowed_cidr: list[str],
) -> Iterator[FlaskClient]:
    federation = [{"name": s.name, "value": s.http.url} for s in servers]
    # A homeserver that is down: nothing listens on a free port.
    federation.append(
        {"name": "down.example", "value": f"http://127.0.0.1:{free_port()}"}
    )
    config = make_config(
        dns={"overwrite": {"homeserver": {"federation": federation}}},
        outbound={"allowedCidr": allowed_cidr},
    )
    app = create_app(config, clock=clock)
    test_client = app.test_client()
    sid = validated_session(test_client, mailbox, "carol@example.org")
    bound = test_client.post(
        f"{V1}/3pid/bind", json={"sid": sid, "client_secret": "secret-1", "mxid": CAROL}
    )
    assert bound.status_code == 200
    yield test_client
    app.extensions["mxisd"].db.close()


def still_bound(client: FlaskClient) -> bool:
    answer = client.get(
        f"{V1}/lookup", query_string={"medium": "email", "address": "carol@example.org"}
    ).get_json()
    return bool(answer.get("mxid") == CAROL)


@pytest.mark.parametrize("prefix", [V2, V1])
def test_an_unbind_signed_by_the_users_homeserver_is_accepted(
    prefix: str, client: FlaskClient, servers: tuple[SigningServer, SigningServer]
) -> None:
    home, _other = servers
    header = home.authorization(CONTENT, uri=f"{prefix}/3pid/unbind")

    response = client.post(
        f"{prefix}/3pid/unbind", json=CONTENT, headers={"Authorization": header}
    )

    assert response.status_code == 200, response.get_json()
    assert not still_bound(client)
    assert len(home.http.calls(KEY_PATH)) == 1


def test_the_destination_may_be_our_server_name_too(
    client: FlaskClient, servers: tuple[SigningServer, SigningServer]
) -> None:
    header = servers[0].authorization(CONTENT, destination_is="example.org")

    response = client.post(
        f"{V2}/3pid/unbind", json=CONTENT, headers={"Authorization": header}
    )

    assert response.status_code == 200
    assert not still_bound(client)


def refused(client: FlaskClient, header: str, content: dict[str, Any] = CONTENT) -> Any:
    response = client.post(
        f"{V2}/3pid/unbind", json=content, headers={"Authorization": header}
    )
    assert response.status_code == 403, response.get_json()
    assert response.get_json()["errcode"] == "M_FORBIDDEN"
    assert still_bound(client)
    return response.get_json()


def test_a_signature_by_another_key_is_refused(
    client: FlaskClient, servers: tuple[SigningServer, SigningServer]
) -> None:
    impostor = signedjson.key.generate_signing_key("a1")

    body = refused(client, servers[0].authorization(CONTENT, key=impostor))

    assert body["error"] == "Invalid homeserver signature"


def test_a_signature_over_other_content_is_refused(
    client: FlaskClient, servers: tuple[SigningServer, SigningServer]
) -> None:
    signed_for = {**CONTENT, "mxid": "@dave:example.org"}

    refused(client, servers[0].authorization(signed_for))


def test_a_signature_for_another_identity_server_is_refused(
    client: FlaskClient, servers: tuple[SigningServer, SigningServer]
) -> None:
    refused(client, servers[0].authorization(CONTENT, destination_is="id.elsewhere"))


def test_another_homeserver_may_not_unbind_our_users(
    client: FlaskClient, servers: tuple[SigningServer, SigningServer]
) -> None:
    _home, other = servers

    body = refused(client, other.authorization(CONTENT))

    assert body["error"] == "Only the user's own homeserver may unbind for them"
    assert len(other.http.calls(KEY_PATH)) == 1  # its signature was good


@pytest.mark.parametrize("allowed_cidr", [[]])
def test_the_key_fetch_obeys_the_outbound_policy(
    client: FlaskClient, servers: tuple[SigningServer, SigningServer]
) -> None:
    home, _other = servers

    # Loopback is not allowed outbound: the key cannot be fetched.
    body = refused(client, home.authorization(CONTENT))

    assert home.http.calls(KEY_PATH) == []
    assert body["error"] == "Could not fetch the homeserver's signing key"


@pytest.mark.parametrize(
    "header",
    [
        'X-Matrix key="ed25519:a1",sig="abc"',
        'X-Matrix origin=bad/name,key="ed25519:a1",sig="abc"',
        'X-Matrix origin=example.org,key="ed25519:nope",sig="abc"',
        'X-Matrix origin=down.example,key="ed25519:a1",sig="abc"',
    ],
    ids=["no-origin", "bad-origin", "unknown-key", "unreachable-server"],
)
def test_malformed_or_unverifiable_authorization_is_refused(
    header: str, client: FlaskClient
) -> None:
    refused(client, header)


def _set(path: tuple[str, ...], value: object) -> Callable[[Any], None]:
    def spoil(answer: Any) -> None:
        for step in path[:-1]:
            answer = answer[step]
        answer[path[-1]] = value

    return spoil


@pytest.mark.parametrize(
    "spoil",
    [
        _set(("verify_keys", "ed25519:a1", "key"), 5),
        _set(("verify_keys", "ed25519:a1"), ["key"]),
        _set(("verify_keys",), ["ed25519:a1"]),
        _set(("signatures",), "example.org"),
        _set(("signatures", "example.org"), "ed25519:a1"),
    ],
    ids=["key-number", "entry-list", "keys-list", "sigs-text", "server-sigs-text"],
)
def test_a_malformed_key_answer_is_refused(
    spoil: Callable[[Any], None],
    client: FlaskClient,
    servers: tuple[SigningServer, SigningServer],
) -> None:
    # The origin is the caller's to name: its key answer may be anything.
    home = servers[0]
    answer = copy.deepcopy(home.published)
    spoil(answer)
    home.http.answer("GET", KEY_PATH, 200, answer)

    body = refused(client, home.authorization(CONTENT))

    assert body["error"] == "Could not fetch the homeserver's signing key"


def test_without_session_or_signature_v2_still_wants_a_token(
    client: FlaskClient,
) -> None:
    response = client.post(f"{V2}/3pid/unbind", json=CONTENT)

    assert response.status_code == 401
    assert still_bound(client)
