from __future__ import annotations

import signedjson.key
import signedjson.sign
from flask.testing import FlaskClient

from conftest import (
    V1,
    V2,
    ConfigFactory,
    FakeClock,
    Homeserver,
    Mailbox,
    bearer,
    free_port,
    register,
    text_of,
)
from mxisd_flask.app import create_app

INVITE = {
    "medium": "email",
    "address": "Erin@Example.org",
    "room_id": "!room:example.org",
    "sender": "@alice:example.org",
    "room_name": "Book club",
    "sender_display_name": "Alice",
}


def test_store_invite_persists_mails_and_answers_keys(
    client: FlaskClient, mailbox: Mailbox
) -> None:
    response = client.post(f"{V1}/store-invite", json=INVITE)

    body = response.get_json()
    assert response.status_code == 200
    assert body["token"]
    assert body["display_name"] == "eri...@exa..."
    long_term, ephemeral = body["public_keys"]
    assert (
        long_term["public_key"]
        == client.get(f"{V1}/pubkey/ed25519:0").get_json()["public_key"]
    )
    assert long_term["key_validity_url"] == (
        "https://id.example.org/_matrix/identity/v2/pubkey/isvalid"
    )
    assert ephemeral["key_validity_url"].endswith("/pubkey/ephemeral/isvalid")
    valid = client.get(
        f"{V1}/pubkey/ephemeral/isvalid",
        query_string={"public_key": ephemeral["public_key"]},
    ).get_json()
    assert valid == {"valid": True}
    _sender, recipients, message = mailbox.messages[-1]
    assert recipients == ["erin@example.org"]
    assert "Alice" in message["Subject"] and "Book club" in message["Subject"]
    assert "erin@example.org" in text_of(message)


def test_store_invite_mail_carries_the_token(
    client: FlaskClient, mailbox: Mailbox, tmp_path: object
) -> None:
    token = client.post(f"{V1}/store-invite", json=INVITE).get_json()["token"]

    assert token in text_of(mailbox.last())
    with client.application.extensions["mxisd"].db.read() as cur:
        cur.execute("SELECT token, address FROM invites")
        assert cur.fetchall() == [(token, "erin@example.org")]


def test_store_invite_of_a_bound_address_is_in_use(
    client: FlaskClient, mailbox: Mailbox
) -> None:
    response = client.post(
        f"{V1}/store-invite", json={**INVITE, "address": "alice@example.org"}
    )

    assert response.status_code == 400
    assert response.get_json()["errcode"] == "M_THREEPID_IN_USE"
    assert response.get_json()["mxid"] == "@alice:example.org"
    assert mailbox.messages == []


def test_store_invite_of_unsupported_medium_is_unrecognized(
    client: FlaskClient,
) -> None:
    response = client.post(
        f"{V1}/store-invite", json={**INVITE, "medium": "fax", "address": "441"}
    )

    assert response.status_code == 400
    assert response.get_json()["errcode"] == "M_UNRECOGNIZED"


def test_store_invite_header_injection_is_flattened(
    client: FlaskClient, mailbox: Mailbox
) -> None:
    client.post(
        f"{V1}/store-invite",
        json={**INVITE, "sender_display_name": "Alice\r\nBcc: victim@example.net"},
    )

    _sender, recipients, message = mailbox.messages[-1]
    assert recipients == ["erin@example.org"]
    assert message["Bcc"] is None
    assert "victim@example.net" in message["Subject"]


def test_sign_ed25519_signs_with_the_ephemeral_key(
    client: FlaskClient, mailbox: Mailbox, homeserver: Homeserver
) -> None:
    token = register(client, homeserver, "@alice:example.org")
    key = signedjson.key.generate_signing_key("0")
    private = signedjson.key.encode_signing_key_base64(key)
    invite_token = client.post(
        f"{V2}/store-invite", json=INVITE, headers=bearer(token)
    ).get_json()["token"]

    response = client.post(
        f"{V2}/sign-ed25519",
        json={
            "mxid": "@erin:example.org",
            "token": invite_token,
            "private_key": private,
        },
        headers=bearer(token),
    )

    signed = response.get_json()
    assert signed["sender"] == "@alice:example.org"
    assert signed["mxid"] == "@erin:example.org"
    verify_key = signedjson.key.get_verify_key(key)
    signedjson.sign.verify_signed_json(signed, "example.org", verify_key)


def test_sign_ed25519_of_unknown_token_is_unrecognized(
    client: FlaskClient, homeserver: Homeserver
) -> None:
    token = register(client, homeserver, "@alice:example.org")
    key = signedjson.key.encode_signing_key_base64(
        signedjson.key.generate_signing_key("0")
    )

    response = client.post(
        f"{V2}/sign-ed25519",
        json={"mxid": "@erin:example.org", "token": "nope", "private_key": key},
        headers=bearer(token),
    )

    assert response.status_code == 404
    assert response.get_json()["errcode"] == "M_UNRECOGNIZED"


def test_store_invite_accepts_room_ids_without_a_domain(
    client: FlaskClient, mailbox: Mailbox
) -> None:
    # Room version 12 IDs, as Synapse creates them by default.
    room_id = "!UqQsU5Jow_L1xxyCQ8aeQIB8CVPNX0CjFU4H-Le9Z-c"

    response = client.post(f"{V1}/store-invite", json={**INVITE, "room_id": room_id})

    assert response.status_code == 200, response.get_json()
    assert response.get_json()["token"] in text_of(mailbox.last())


def test_store_invite_refuses_malformed_room_ids(client: FlaskClient) -> None:
    for room_id in ("room:example.org", "!", "!a b:example.org", "!r:bad host"):
        response = client.post(
            f"{V1}/store-invite", json={**INVITE, "room_id": room_id}
        )

        assert response.get_json()["errcode"] == "M_INVALID_PARAM", room_id


def test_store_invite_of_a_malformed_email_is_invalid_email(
    client: FlaskClient, mailbox: Mailbox
) -> None:
    response = client.post(f"{V1}/store-invite", json={**INVITE, "address": "erin@"})

    assert response.status_code == 400
    assert response.get_json()["errcode"] == "M_INVALID_EMAIL"
    assert mailbox.messages == []


def test_failed_invite_mail_is_send_error_and_stores_nothing(
    make_config: ConfigFactory, clock: FakeClock
) -> None:
    dead = {"medium": {"email": {"connectors": {"smtp": {"port": free_port()}}}}}
    client = create_app(make_config(threepid=dead), clock=clock).test_client()

    response = client.post(f"{V1}/store-invite", json=INVITE)

    assert response.status_code == 400
    assert response.get_json()["errcode"] == "M_EMAIL_SEND_ERROR"
    with client.application.extensions["mxisd"].db.read() as cur:
        cur.execute("SELECT COUNT(*) FROM invites")
        assert cur.fetchone()[0] == 0
