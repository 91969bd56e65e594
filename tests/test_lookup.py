from __future__ import annotations

from typing import Any

import pytest
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
    token_and_pepper,
    validated_session,
)
from mxisd_flask.crypto.hashing import lookup_hash
from mxisd_flask.crypto.keys import KEY_ID, verify_signature
from mxisd_flask.services import lookups


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


def v1_lookup(client: FlaskClient, address: str) -> dict[str, Any]:
    response = client.get(
        f"{V1}/lookup", query_string={"medium": "email", "address": address}
    )
    assert response.status_code == 200
    found: dict[str, Any] = response.get_json()
    return found


def test_v1_lookup_hands_out_its_signed_answer_again_until_it_is_due(
    app: Flask, clock: FakeClock
) -> None:
    client = app.test_client()
    first = v1_lookup(client, "alice@example.org")

    clock.advance(60)
    again = v1_lookup(client, "alice@example.org")
    clock.advance(lookups.SIGNED_REUSE_MS / 1000)
    renewed = v1_lookup(client, "alice@example.org")

    assert again == first
    assert first["ts"] == first["not_before"] == 1_700_000_000_000
    assert renewed["ts"] == clock.ms
    assert renewed["mxid"] == first["mxid"] == "@alice:example.org"
    public_key = app.extensions["mxisd"].keys.public_key
    for answer in (first, renewed):
        assert verify_signature(answer, "example.org", KEY_ID, public_key)


def test_v1_lookup_of_a_bound_3pid_answers_the_association_bind_gave(
    two_workers: tuple[Flask, Flask], mailbox: Mailbox, clock: FakeClock
) -> None:
    binder, other = (a.test_client() for a in two_workers)
    sid = validated_session(binder, mailbox, "carol@example.org", secret="s-c")
    clock.advance(30)
    bound = binder.post(
        f"{V1}/3pid/bind",
        json={"sid": sid, "client_secret": "s-c", "mxid": "@carol:example.org"},
    ).get_json()
    bound_at = clock.ms

    clock.advance(lookups.SIGNED_REUSE_MS / 1000 + 60)
    answers = [v1_lookup(c, "carol@example.org") for c in (binder, other, other)]

    assert bound["ts"] == bound["not_before"] == bound_at
    assert answers == [bound, bound, bound]


def test_v1_lookup_signs_again_when_the_clock_went_back(
    app: Flask, clock: FakeClock
) -> None:
    # time.time() steps back (NTP, an operator): an answer signed "later"
    # than now would be handed out until the clock caught up plus an hour,
    # its not_before in the future all along.
    client = app.test_client()
    first = v1_lookup(client, "alice@example.org")

    clock.advance(-2 * 3600)
    after_step_back = v1_lookup(client, "alice@example.org")

    assert first["ts"] == 1_700_000_000_000
    assert after_step_back["ts"] == after_step_back["not_before"] == clock.ms
    public_key = app.extensions["mxisd"].keys.public_key
    assert verify_signature(after_step_back, "example.org", KEY_ID, public_key)


def unbind(client: FlaskClient, mailbox: Mailbox, address: str, mxid: str) -> None:
    sid = validated_session(client, mailbox, address, secret="s-un")
    response = client.post(
        f"{V1}/3pid/unbind",
        json={
            "sid": sid,
            "client_secret": "s-un",
            "mxid": mxid,
            "threepid": {"medium": "email", "address": address},
        },
    )
    assert response.status_code == 200


def test_v1_lookup_follows_an_unbind_and_rebind_made_by_another_worker(
    two_workers: tuple[Flask, Flask], mailbox: Mailbox
) -> None:
    reader, writer = (a.test_client() for a in two_workers)
    bind(writer, mailbox, "carol@example.org", "@carol:example.org")
    assert v1_lookup(reader, "carol@example.org")["mxid"] == "@carol:example.org"

    unbind(writer, mailbox, "carol@example.org", "@carol:example.org")
    after_unbind = v1_lookup(reader, "carol@example.org")
    bind(writer, mailbox, "carol@example.org", "@dave:example.org")
    after_rebind = v1_lookup(reader, "carol@example.org")

    assert after_unbind == {}
    assert after_rebind["mxid"] == "@dave:example.org"


def test_v1_lookup_dates_a_rebind_to_the_same_mxid_anew(
    two_workers: tuple[Flask, Flask], mailbox: Mailbox, clock: FakeClock
) -> None:
    reader, writer = (a.test_client() for a in two_workers)
    bind(writer, mailbox, "carol@example.org", "@carol:example.org")
    first = v1_lookup(reader, "carol@example.org")
    unbind(writer, mailbox, "carol@example.org", "@carol:example.org")
    assert v1_lookup(reader, "carol@example.org") == {}

    clock.advance(60)
    sid = validated_session(writer, mailbox, "carol@example.org", secret="s-again")
    rebound = writer.post(
        f"{V1}/3pid/bind",
        json={"sid": sid, "client_secret": "s-again", "mxid": "@carol:example.org"},
    )
    again = v1_lookup(reader, "carol@example.org")

    assert again == rebound.get_json()
    assert again["ts"] == first["ts"] + 60_000


def test_v1_lookup_keeps_a_bounded_number_of_signed_answers(
    app: Flask, mailbox: Mailbox, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lookups, "SIGNED_KEPT", 2)
    client = app.test_client()
    bind(client, mailbox, "carol@example.org", "@carol:example.org")
    bind(client, mailbox, "dave@example.org", "@dave:example.org")
    first = v1_lookup(client, "alice@example.org")
    clock.advance(60)

    v1_lookup(client, "carol@example.org")
    v1_lookup(client, "dave@example.org")  # a third: the kept ones are dropped
    again = v1_lookup(client, "alice@example.org")

    assert again["ts"] == first["ts"] + 60_000


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


def test_bulk_lookup_answers_each_spelling_of_one_address(client: FlaskClient) -> None:
    response = client.post(
        f"{V1}/bulk_lookup",
        json={
            "threepids": [
                ["email", "alice@example.org"],
                ["email", "ALICE@example.org"],
                ["email", "alice@example.org"],
            ]
        },
    )

    assert sorted(map(tuple, response.get_json()["threepids"])) == [
        ("email", "ALICE@example.org", "@alice:example.org"),
        ("email", "alice@example.org", "@alice:example.org"),
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


def test_v2_none_lookup_answers_each_spelling_of_one_address(
    client: FlaskClient, homeserver: Homeserver
) -> None:
    token, pepper = token_and_pepper(client, homeserver)
    spellings = ["Alice@Example.org email", "alice@example.org email"]

    response = client.post(
        f"{V2}/lookup",
        json={"algorithm": "none", "pepper": pepper, "addresses": spellings},
        headers=bearer(token),
    )

    assert response.get_json() == {
        "mappings": dict.fromkeys(spellings, "@alice:example.org")
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
