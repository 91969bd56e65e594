from __future__ import annotations

import dataclasses
import os

import pytest
from fixtures_homeserver import FakeHomeserver, federation_to
from flask import Flask
from flask.testing import FlaskClient

from conftest import (
    V2,
    ConfigFactory,
    FakeClock,
    Homeserver,
    bearer,
    homeserver_config,
    register,
    trace_statements,
)
from mxisd_flask.app import create_app
from mxisd_flask.config import Config
from mxisd_flask.errors import FetcherError
from mxisd_flask.outbound import OutboundClient
from mxisd_flask.storage.counter import SUFFIX

USERINFO = "/_matrix/federation/v1/openid/userinfo"
TERMS = {
    "policy": {
        "policies": {
            "privacy": {
                "version": "1.0",
                "terms": {
                    "en": {"name": "Privacy", "url": "https://example.org/p-en"},
                    "fr": {"name": "Vie privée", "url": "https://example.org/p-fr"},
                },
                "regexp": ["^/_matrix/identity/v2/hash_details$"],
            }
        }
    }
}


def test_register_checks_the_openid_token_with_the_homeserver(
    client: FlaskClient, homeserver: Homeserver
) -> None:
    token = register(client, homeserver, "@carol:example.org")

    account = client.get(f"{V2}/account", headers=bearer(token))

    assert account.get_json() == {"user_id": "@carol:example.org"}
    assert homeserver.calls == 1


def test_register_with_a_token_the_homeserver_rejects_is_unauthorized(
    client: FlaskClient, homeserver: Homeserver
) -> None:
    response = client.post(
        f"{V2}/account/register",
        json={"access_token": "forged", "matrix_server_name": "example.org"},
    )

    assert response.status_code == 401
    assert response.get_json()["errcode"] == "M_UNAUTHORIZED"


def test_register_refuses_a_user_of_another_server(
    client: FlaskClient, homeserver: Homeserver
) -> None:
    homeserver.tokens["t"] = "@mallory:evil.example"

    response = client.post(
        f"{V2}/account/register",
        json={"access_token": "t", "matrix_server_name": "example.org"},
    )

    assert response.status_code == 401


def test_logout_ends_the_token(client: FlaskClient, homeserver: Homeserver) -> None:
    token = register(client, homeserver, "@carol:example.org")

    assert client.post(f"{V2}/account/logout", headers=bearer(token)).get_json() == {}
    after = client.get(f"{V2}/account", headers=bearer(token))
    again = client.post(f"{V2}/account/logout", headers=bearer(token))

    assert after.status_code == 401
    assert again.status_code == 401
    assert again.get_json()["errcode"] == "M_UNKNOWN_TOKEN"


def test_a_token_logged_out_in_one_worker_is_refused_at_once_by_another(
    config: Config, two_workers: tuple[Flask, Flask], homeserver: Homeserver
) -> None:
    """Each worker remembers the tokens it has found (SQLite only); a logout
    anywhere makes every worker forget them before the logout answers."""
    first, second = two_workers
    token = register(first.test_client(), homeserver, "@dave:example.org")
    other = register(first.test_client(), homeserver, "@erin:example.org")
    reader = second.test_client()
    db = second.extensions["mxisd"].db
    statements = trace_statements(db)
    for _ in range(3):
        assert reader.get(f"{V2}/account", headers=bearer(token)).status_code == 200
    asked = [s for s in statements if "FROM accounts" in s]

    logout = first.test_client().post(f"{V2}/account/logout", headers=bearer(token))
    after = reader.get(f"{V2}/account", headers=bearer(token))
    still = reader.get(f"{V2}/account", headers=bearer(other))

    assert logout.status_code == 200
    assert after.status_code == 401
    assert after.get_json()["errcode"] == "M_UNAUTHORIZED"
    assert still.get_json() == {"user_id": "@erin:example.org"}
    if config.storage.backend == "sqlite":
        assert len(asked) == 1  # the first request only


def test_outbound_client_refuses_internal_targets_unless_allowed() -> None:
    guarded = OutboundClient((), timeout_s=1)
    for url in (
        "http://127.0.0.1:1/x",
        "http://10.1.2.3/x",
        "http://169.254.169.254/",
        "http://[::1]:8/x",
        "file:///etc/passwd",
        "http://localhost/",
    ):
        with pytest.raises(FetcherError):
            guarded.check_target(url)

    import ipaddress

    OutboundClient((ipaddress.ip_network("127.0.0.0/8"),), 1).check_target(
        "http://127.0.0.1:1/x"
    )


def test_register_cannot_make_us_call_loopback_without_allowed_cidr(
    make_config: ConfigFactory, clock: FakeClock, homeserver: Homeserver
) -> None:
    settings = homeserver_config(homeserver)
    settings["outbound"] = {"allowedCidr": []}
    client = create_app(make_config(**settings), clock=clock).test_client()
    homeserver.tokens["t"] = "@carol:example.org"

    response = client.post(
        f"{V2}/account/register",
        json={"access_token": "t", "matrix_server_name": "example.org"},
    )

    assert response.status_code == 401
    assert homeserver.calls == 0


def test_terms_must_be_accepted_before_guarded_calls(
    make_config: ConfigFactory, clock: FakeClock, homeserver: Homeserver
) -> None:
    client = create_app(
        make_config(**homeserver_config(homeserver), **TERMS), clock=clock
    ).test_client()
    token = register(client, homeserver, "@carol:example.org")

    terms = client.get(f"{V2}/terms").get_json()
    refused = client.get(f"{V2}/hash_details", headers=bearer(token))
    unguarded = client.get(f"{V2}/account", headers=bearer(token))
    client.post(
        f"{V2}/terms",
        json={"user_accepts": ["https://example.org/p-fr"]},
        headers=bearer(token),
    )
    accepted = client.get(f"{V2}/hash_details", headers=bearer(token))

    assert terms["policies"]["privacy"]["version"] == "1.0"
    assert terms["policies"]["privacy"]["en"]["url"] == "https://example.org/p-en"
    assert refused.status_code == 403
    assert refused.get_json()["errcode"] == "M_TERMS_NOT_SIGNED"
    assert unguarded.status_code == 200
    assert accepted.status_code == 200


def test_terms_post_rejects_a_non_list(
    client: FlaskClient, homeserver: Homeserver
) -> None:
    token = register(client, homeserver, "@carol:example.org")

    response = client.post(
        f"{V2}/terms", json={"user_accepts": "https://x"}, headers=bearer(token)
    )

    assert response.status_code == 400
    assert response.get_json()["errcode"] == "M_INVALID_PARAM"


@pytest.mark.parametrize("answer", [b"[" * 100_000, b'{"sub":' * 100_000])
def test_register_survives_a_homeserver_answer_nested_too_deep(
    make_config: ConfigFactory,
    clock: FakeClock,
    fake_homeserver: FakeHomeserver,
    answer: bytes,
) -> None:
    # matrix_server_name is the client's choice: any server may answer.
    fake_homeserver.answer("GET", USERINFO, 200, answer)
    app = create_app(make_config(**federation_to(fake_homeserver)), clock=clock)

    response = app.test_client().post(
        f"{V2}/account/register",
        json={"access_token": "t", "matrix_server_name": "example.org"},
    )

    assert response.status_code == 401
    assert response.get_json()["errcode"] == "M_UNAUTHORIZED"
    app.extensions["mxisd"].db.close()


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_logout_through_a_worker_started_after_the_seq_file_went_counts_everywhere(
    config: Config,
    clock: FakeClock,
    two_workers: tuple[Flask, Flask],
    homeserver: Homeserver,
) -> None:
    """An operator deletes or replaces mxisd.db.seq while the server runs;
    gunicorn then starts a worker that maps a new file (storage/counter.py)."""
    first, second = two_workers
    token = register(first.test_client(), homeserver, "@dave:example.org")
    reader = second.test_client()
    assert reader.get(f"{V2}/account", headers=bearer(token)).status_code == 200
    os.unlink(config.storage.sqlite_database + SUFFIX)
    newcomer = create_app(config, clock=clock)

    logout = newcomer.test_client().post(f"{V2}/account/logout", headers=bearer(token))
    after = reader.get(f"{V2}/account", headers=bearer(token))
    newcomer.extensions["mxisd"].db.close()

    assert logout.status_code == 200
    assert after.status_code == 401


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_logout_after_the_seq_file_went_answers_and_counts(
    config: Config, two_workers: tuple[Flask, Flask], homeserver: Homeserver
) -> None:
    first, second = two_workers
    token = register(first.test_client(), homeserver, "@dave:example.org")
    reader = second.test_client()
    assert reader.get(f"{V2}/account", headers=bearer(token)).status_code == 200
    os.unlink(config.storage.sqlite_database + SUFFIX)

    logout = first.test_client().post(f"{V2}/account/logout", headers=bearer(token))
    after = reader.get(f"{V2}/account", headers=bearer(token))

    assert logout.status_code == 200
    assert logout.get_json() == {}
    assert after.status_code == 401


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_logout_through_an_instance_naming_the_database_by_a_symlink_counts(
    config: Config, clock: FakeClock, app: Flask, homeserver: Homeserver
) -> None:
    """Two instances on one database, one configured with a symlink to it
    (SQLite itself follows the link: both use one WAL)."""
    token = register(app.test_client(), homeserver, "@dave:example.org")
    reader = app.test_client()
    assert reader.get(f"{V2}/account", headers=bearer(token)).status_code == 200
    database = config.storage.sqlite_database
    link = os.path.join(os.path.dirname(database), "elsewhere", "link.db")
    os.makedirs(os.path.dirname(link))
    os.symlink(database, link)
    storage = dataclasses.replace(config.storage, sqlite_database=link)
    other = create_app(dataclasses.replace(config, storage=storage), clock=clock)

    logout = other.test_client().post(f"{V2}/account/logout", headers=bearer(token))
    after = reader.get(f"{V2}/account", headers=bearer(token))
    other.extensions["mxisd"].db.close()

    assert logout.status_code == 200
    assert after.status_code == 401
