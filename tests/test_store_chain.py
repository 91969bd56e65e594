"""The lookup chain with every kind of store at once, three of them down:
a stopped slapd, a REST backend answering 500 and an exec script that
outlives its time limit. The stores still up (memory, and SQLite after the
failing ones in the chain's order) answer; each failure is a warning."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures_ldap import Slapd
from fixtures_rest_exec import API, RestBackend, misbehaving, rest_section
from fixtures_sql import open_db, org_queries, seed_org
from flask import Flask

from conftest import (
    V1,
    V2,
    ConfigFactory,
    FakeClock,
    Homeserver,
    bearer,
    homeserver_config,
    register,
)
from mxisd_flask.app import create_app
from mxisd_flask.crypto.hashing import lookup_hash

ALICE = "@alice:example.org"  # the memory store's
JDOE = "@jdoe:example.org"  # the SQL store's: "John.Doe@Example.ORG"
LDAP_ALICE = "ldapalice@example.org"  # the stopped slapd's


@pytest.fixture
def backend() -> str:
    return "sqlite"  # our own storage is not under test


@pytest.fixture
def app(
    make_config: ConfigFactory,
    clock: FakeClock,
    homeserver: Homeserver,
    slapd: Slapd,
    rest_backend: RestBackend,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> Iterator[Flask]:
    org = open_db("sqlite", tmp_path, request)
    seed_org(org)
    rest_backend.fail = {f"{API}/identity/single": "500", f"{API}/identity/bulk": "500"}
    slow = {**misbehaving("slow", str(tmp_path / "pid")), "timeout": 0.5}
    config = make_config(
        ldap=slapd.config(),
        rest=rest_section(rest_backend),
        sql=org.section(**org_queries("sqlite")),
        exec={"enabled": True, "identity": {"lookup": {"single": slow, "bulk": slow}}},
        **homeserver_config(homeserver),
    )
    application = create_app(config, clock=clock)
    yield application
    services = application.extensions["mxisd"]
    for store in services.stores:
        store.close()
    services.db.close()


def failed_stores(caplog: pytest.LogCaptureFixture) -> set[str]:
    """The stores the chain logged a warning for."""
    return {
        message.split("store=", 1)[1].split(":", 1)[0]
        for record in caplog.records
        if record.levelno == logging.WARNING
        and "lookup link failed" in (message := record.getMessage())
    }


def test_stores_up_answer_while_ldap_rest_and_exec_are_down(
    app: Flask,
    slapd: Slapd,
    homeserver: Homeserver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = app.test_client()
    token = register(client, homeserver, "@someone:example.org")
    pepper = client.get(f"{V2}/hash_details", headers=bearer(token)).get_json()[
        "lookup_pepper"
    ]
    slapd.stop()
    caplog.set_level(logging.WARNING, logger="mxisd_flask")

    def v1(address: str) -> object:
        query = {"medium": "email", "address": address}
        response = client.get(f"{V1}/lookup", query_string=query)
        assert response.status_code == 200, response.get_json()
        return response.get_json().get("mxid")

    # Found after REST and LDAP failed: SQL comes later in the chain.
    assert v1("john.doe@example.org") == JDOE
    assert failed_stores(caplog) == {"rest", "ldap"}
    # Nobody knows it: every store is asked, exec times out last.
    assert v1("nobody@example.org") is None
    assert failed_stores(caplog) == {"rest", "ldap", "exec"}
    assert v1(LDAP_ALICE) is None

    caplog.clear()
    bulk = client.post(
        f"{V1}/bulk_lookup",
        json={
            "threepids": [
                ["email", "alice@example.org"],
                ["email", "John.Doe@example.org"],
                ["email", LDAP_ALICE],
            ]
        },
    )
    assert bulk.status_code == 200, bulk.get_json()
    assert sorted(map(tuple, bulk.get_json()["threepids"])) == [
        ("email", "John.Doe@example.org", JDOE),
        ("email", "alice@example.org", ALICE),
    ]
    assert failed_stores(caplog) == {"rest", "ldap", "exec"}

    def v2(algorithm: str, addresses: list[str]) -> dict[str, str]:
        body = {"algorithm": algorithm, "pepper": pepper, "addresses": addresses}
        response = client.post(f"{V2}/lookup", json=body, headers=bearer(token))
        assert response.status_code == 200, response.get_json()
        return dict(response.get_json()["mappings"])

    assert v2("none", ["john.doe@example.org email", f"{LDAP_ALICE} email"]) == {
        "john.doe@example.org email": JDOE
    }
    # Hashed: answered from the index, which SQL and memory fill whether or
    # not it was built before slapd stopped.
    hashes = {
        a: lookup_hash(a, "email", pepper)
        for a in ("john.doe@example.org", "alice@example.org", LDAP_ALICE)
    }
    found = v2("sha256", list(hashes.values()))
    assert found[hashes["john.doe@example.org"]] == JDOE
    assert found[hashes["alice@example.org"]] == ALICE
