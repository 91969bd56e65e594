from __future__ import annotations

from flask import Flask
from flask.testing import FlaskClient

from conftest import (
    V1,
    V2,
    FakeClock,
    Homeserver,
    Mailbox,
    bearer,
    register,
    sha256_lookup,
    validated_session,
)
from mxisd_flask.crypto.hashing import lookup_hash


def bind(client: FlaskClient, mailbox: Mailbox, address: str, mxid: str) -> None:
    sid = validated_session(client, mailbox, address, secret="s-" + mxid[1:4])
    response = client.post(
        f"{V1}/3pid/bind",
        json={"sid": sid, "client_secret": "s-" + mxid[1:4], "mxid": mxid},
    )
    assert response.status_code == 200


def test_v1_lookup_answers_from_the_memory_store_signed(client: FlaskClient) -> None:
    response = client.get(
        f"{V1}/lookup", query_string={"medium": "email", "address": "Alice@Example.org"}
    )

    body = response.get_json()
    assert body["mxid"] == "@alice:example.org"
    assert body["signatures"]["example.org"]["ed25519:0"]


def test_v1_lookup_of_unknown_address_is_empty(client: FlaskClient) -> None:
    response = client.get(
        f"{V1}/lookup",
        query_string={"medium": "email", "address": "nobody@example.org"},
    )

    assert response.status_code == 200
    assert response.get_json() == {}


def test_v1_lookup_without_parameters_is_missing_params(client: FlaskClient) -> None:
    response = client.get(f"{V1}/lookup", query_string={"medium": "email"})

    assert response.status_code == 400
    assert response.get_json()["errcode"] == "M_MISSING_PARAMS"


def test_bulk_lookup_returns_known_threepids_only(
    client: FlaskClient, mailbox: Mailbox
) -> None:
    bind(client, mailbox, "carol@example.org", "@carol:example.org")

    response = client.post(
        f"{V1}/bulk_lookup",
        json={
            "threepids": [
                ["email", "alice@example.org"],
                ["email", "carol@example.org"],
                ["email", "nobody@example.org"],
                ["email", "not an email"],
            ]
        },
    )

    assert sorted(map(tuple, response.get_json()["threepids"])) == [
        ("email", "alice@example.org", "@alice:example.org"),
        ("email", "carol@example.org", "@carol:example.org"),
    ]


def test_bulk_lookup_rejects_malformed_threepids(client: FlaskClient) -> None:
    response = client.post(f"{V1}/bulk_lookup", json={"threepids": [["email"]]})

    assert response.status_code == 400
    assert response.get_json()["errcode"] == "M_INVALID_PARAM"


def test_v2_hashed_lookup_finds_bindings_and_memory_identities(
    client: FlaskClient, mailbox: Mailbox, homeserver: Homeserver
) -> None:
    bind(client, mailbox, "carol@example.org", "@carol:example.org")
    token = register(client, homeserver, "@dave:example.org")
    details = client.get(f"{V2}/hash_details", headers=bearer(token)).get_json()
    assert set(details["algorithms"]) == {"none", "sha256"}
    pepper = details["lookup_pepper"]
    hashes = {
        a: lookup_hash(a, "email", pepper)
        for a in ("carol@example.org", "alice@example.org", "nobody@example.org")
    }

    response = sha256_lookup(client, token, pepper, list(hashes.values()))

    assert response.get_json() == {
        "mappings": {
            hashes["carol@example.org"]: "@carol:example.org",
            hashes["alice@example.org"]: "@alice:example.org",
        }
    }


def test_v2_none_algorithm_lookup(client: FlaskClient, homeserver: Homeserver) -> None:
    token = register(client, homeserver, "@dave:example.org")
    pepper = client.get(f"{V2}/hash_details", headers=bearer(token)).get_json()[
        "lookup_pepper"
    ]

    response = client.post(
        f"{V2}/lookup",
        json={
            "algorithm": "none",
            "pepper": pepper,
            "addresses": ["alice@example.org email", "nobody@example.org email"],
        },
        headers=bearer(token),
    )

    assert response.get_json() == {
        "mappings": {"alice@example.org email": "@alice:example.org"}
    }


def test_v2_lookup_with_wrong_pepper_tells_the_current_one(
    client: FlaskClient, homeserver: Homeserver
) -> None:
    token = register(client, homeserver, "@dave:example.org")
    pepper = client.get(f"{V2}/hash_details", headers=bearer(token)).get_json()[
        "lookup_pepper"
    ]

    response = sha256_lookup(client, token, "stale", [])

    assert response.status_code == 400
    body = response.get_json()
    assert body["errcode"] == "M_INVALID_PEPPER"
    assert body["lookup_pepper"] == pepper
    assert set(body["algorithms"]) == {"none", "sha256"}


def test_v2_lookup_with_unknown_algorithm_is_invalid_param(
    client: FlaskClient, homeserver: Homeserver
) -> None:
    token = register(client, homeserver, "@dave:example.org")

    response = client.post(
        f"{V2}/lookup",
        json={"algorithm": "md5", "pepper": "x", "addresses": []},
        headers=bearer(token),
    )

    assert response.status_code == 400
    assert response.get_json()["errcode"] == "M_INVALID_PARAM"


def test_pepper_rotates_on_schedule_and_bindings_follow(
    app: Flask, mailbox: Mailbox, homeserver: Homeserver, clock: FakeClock
) -> None:
    client = app.test_client()
    bind(client, mailbox, "carol@example.org", "@carol:example.org")
    token = register(client, homeserver, "@dave:example.org")
    old = client.get(f"{V2}/hash_details", headers=bearer(token)).get_json()[
        "lookup_pepper"
    ]

    clock.advance(86400 + 1)
    new = client.get(f"{V2}/hash_details", headers=bearer(token)).get_json()[
        "lookup_pepper"
    ]
    found = sha256_lookup(
        client, token, new, [lookup_hash("carol@example.org", "email", new)]
    ).get_json()

    assert new != old
    assert list(found["mappings"].values()) == ["@carol:example.org"]


def test_access_token_query_parameter_is_accepted(
    client: FlaskClient, homeserver: Homeserver
) -> None:
    token = register(client, homeserver, "@dave:example.org")

    response = client.get(f"{V2}/hash_details", query_string={"access_token": token})

    assert response.status_code == 200
    assert response.get_json()["lookup_pepper"]
