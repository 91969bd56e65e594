from __future__ import annotations

import signedjson.key
import signedjson.sign
from flask.testing import FlaskClient
from unpaddedbase64 import decode_base64

from conftest import (
    V1,
    V2,
    Homeserver,
    Mailbox,
    bearer,
    register,
    request_token,
    validated_session,
)


def verify_with_published_key(client: FlaskClient, signed: dict[str, object]) -> None:
    public = client.get(f"{V1}/pubkey/ed25519:0").get_json()["public_key"]
    key = signedjson.key.decode_verify_key_bytes("ed25519:0", decode_base64(public))
    signedjson.sign.verify_signed_json(signed, "example.org", key)


def test_bind_of_unvalidated_session_is_refused(
    client: FlaskClient, mailbox: Mailbox
) -> None:
    sid = request_token(client, "carol@example.org").get_json()["sid"]

    response = client.post(
        f"{V1}/3pid/bind",
        json={"sid": sid, "client_secret": "secret-1", "mxid": "@carol:example.org"},
    )

    assert response.status_code == 400
    assert response.get_json()["errcode"] == "M_SESSION_NOT_VALIDATED"


def test_bind_returns_signed_association_and_lookup_finds_it(
    client: FlaskClient, mailbox: Mailbox
) -> None:
    sid = validated_session(client, mailbox, "carol@example.org")

    response = client.post(
        f"{V1}/3pid/bind",
        json={"sid": sid, "client_secret": "secret-1", "mxid": "@carol:example.org"},
    )

    association = response.get_json()
    assert response.status_code == 200
    assert association["mxid"] == "@carol:example.org"
    assert association["address"] == "carol@example.org"
    assert association["not_before"] <= association["ts"] < association["not_after"]
    verify_with_published_key(client, association)
    lookup = client.get(
        f"{V1}/lookup", query_string={"medium": "email", "address": "CAROL@example.org"}
    ).get_json()
    assert lookup["mxid"] == "@carol:example.org"


def test_bind_rejects_a_malformed_mxid(client: FlaskClient, mailbox: Mailbox) -> None:
    sid = validated_session(client, mailbox, "carol@example.org")

    response = client.post(
        f"{V1}/3pid/bind",
        json={"sid": sid, "client_secret": "secret-1", "mxid": "carol"},
    )

    assert response.status_code == 400
    assert response.get_json()["errcode"] == "M_INVALID_PARAM"


def test_v2_bind_only_binds_the_token_owners_mxid(
    client: FlaskClient, mailbox: Mailbox, homeserver: Homeserver
) -> None:
    token = register(client, homeserver, "@carol:example.org")
    sid = validated_session(
        client, mailbox, "carol@example.org", prefix=V2, headers=bearer(token)
    )
    body = {"sid": sid, "client_secret": "secret-1"}

    other = client.post(
        f"{V2}/3pid/bind",
        json={**body, "mxid": "@mallory:example.org"},
        headers=bearer(token),
    )
    own = client.post(
        f"{V2}/3pid/bind",
        json={**body, "mxid": "@carol:example.org"},
        headers=bearer(token),
    )

    assert other.status_code == 401
    assert other.get_json()["errcode"] == "M_UNAUTHORIZED"
    assert own.status_code == 200
    assert own.get_json()["mxid"] == "@carol:example.org"


def test_v2_endpoints_require_a_token(client: FlaskClient) -> None:
    for method, path in [
        ("post", "/validate/email/requestToken"),
        ("get", "/3pid/getValidated3pid"),
        ("post", "/3pid/bind"),
        ("post", "/3pid/unbind"),
        ("post", "/store-invite"),
        ("post", "/sign-ed25519"),
        ("get", "/hash_details"),
        ("post", "/lookup"),
        ("get", "/account"),
    ]:
        response = getattr(client, method)(
            f"{V2}{path}", json={}, headers=bearer("not-a-token")
        )
        assert response.status_code == 401, path
        assert response.get_json()["errcode"] == "M_UNAUTHORIZED", path


def test_unbind_with_the_session_removes_the_binding(
    client: FlaskClient, mailbox: Mailbox
) -> None:
    sid = validated_session(client, mailbox, "carol@example.org")
    mxid = "@carol:example.org"
    client.post(
        f"{V1}/3pid/bind", json={"sid": sid, "client_secret": "secret-1", "mxid": mxid}
    )

    response = client.post(
        f"{V1}/3pid/unbind",
        json={
            "sid": sid,
            "client_secret": "secret-1",
            "mxid": mxid,
            "threepid": {"medium": "email", "address": "carol@example.org"},
        },
    )

    assert response.status_code == 200
    lookup = client.get(
        f"{V1}/lookup", query_string={"medium": "email", "address": "carol@example.org"}
    )
    assert lookup.get_json() == {}


def test_unbind_with_a_session_for_another_address_is_forbidden(
    client: FlaskClient, mailbox: Mailbox
) -> None:
    carol = validated_session(client, mailbox, "carol@example.org")
    client.post(
        f"{V1}/3pid/bind",
        json={"sid": carol, "client_secret": "secret-1", "mxid": "@carol:example.org"},
    )
    mallory = validated_session(client, mailbox, "mallory@example.org", secret="m-1")

    response = client.post(
        f"{V1}/3pid/unbind",
        json={
            "sid": mallory,
            "client_secret": "m-1",
            "mxid": "@carol:example.org",
            "threepid": {"medium": "email", "address": "carol@example.org"},
        },
    )

    assert response.status_code == 403
    assert response.get_json()["errcode"] == "M_FORBIDDEN"
    lookup = client.get(
        f"{V1}/lookup", query_string={"medium": "email", "address": "carol@example.org"}
    )
    assert lookup.get_json()["mxid"] == "@carol:example.org"


def test_unbind_without_session_or_signature_is_refused(
    client: FlaskClient,
) -> None:
    response = client.post(
        f"{V1}/3pid/unbind",
        json={
            "mxid": "@carol:example.org",
            "threepid": {"medium": "email", "address": "carol@example.org"},
        },
    )

    assert response.status_code == 403
    assert response.get_json()["errcode"] == "M_FORBIDDEN"


def test_unbind_with_a_threepid_that_is_no_object_names_it(
    client: FlaskClient,
) -> None:
    wrong = client.post(
        f"{V1}/3pid/unbind",
        json={"mxid": "@carol:example.org", "threepid": "carol@example.org"},
    )
    absent = client.post(f"{V1}/3pid/unbind", json={"mxid": "@carol:example.org"})

    assert wrong.status_code == 400
    assert wrong.get_json()["errcode"] == "M_INVALID_PARAM"
    assert "threepid must be an object" in wrong.get_json()["error"]
    assert absent.get_json()["errcode"] == "M_MISSING_PARAMS"
