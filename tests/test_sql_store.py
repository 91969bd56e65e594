"""The sql and synapseSql stores against real databases: SQLite, the real
PostgreSQL and MariaDB (``org_db``), and Synapse's tables (``synapse_db``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fixtures_sql import SqlDb, org_queries
from flask import Flask
from flask.testing import FlaskClient

from conftest import (
    V1,
    V2,
    ConfigFactory,
    FakeClock,
    Homeserver,
    bearer,
    free_port,
    homeserver_config,
    register,
    sha256_lookup,
)
from mxisd_flask.app import create_app
from mxisd_flask.crypto.hashing import lookup_hash
from mxisd_flask.errors import ConfigError, StoreError
from mxisd_flask.services.hash_index import RETRY_S, HashIndex
from mxisd_flask.stores.base import Capability, DirectoryEntry, Profile
from mxisd_flask.stores.sql import SqlIdentityStore
from mxisd_flask.stores.sql_db import parse_target, prepare

AppFactory = Callable[..., Flask]


@pytest.fixture
def backend() -> str:
    # Our own storage is not under test here: SQLite keeps the matrix small.
    return "sqlite"


@pytest.fixture
def make_app(
    make_config: ConfigFactory, homeserver: Homeserver, clock: FakeClock
) -> Iterator[AppFactory]:
    apps: list[Flask] = []

    def factory(**sections: Any) -> Flask:
        config = make_config(**homeserver_config(homeserver), **sections)
        app = create_app(config, clock=clock)
        apps.append(app)
        return app

    yield factory
    for app in apps:
        services = app.extensions["mxisd"]
        for store in services.stores:
            store.close()
        services.db.close()


def org_section(db: SqlDb, **extra: Any) -> dict[str, Any]:
    return db.section(**org_queries(db.kind), **extra)


def sql_store(app: Flask, name: str = "sql") -> SqlIdentityStore:
    store = next(s for s in app.extensions["mxisd"].stores if s.name == name)
    assert isinstance(store, SqlIdentityStore)
    return store


def v1_lookup(client: FlaskClient, medium: str, address: str) -> Any:
    response = client.get(
        f"{V1}/lookup", query_string={"medium": medium, "address": address}
    )
    assert response.status_code == 200, response.get_json()
    return response.get_json()


# sql: an organisation's own tables


def test_lookup_by_email_ignores_case(org_db: SqlDb, make_app: AppFactory) -> None:
    client = make_app(sql=org_section(org_db)).test_client()

    body = v1_lookup(client, "email", "JOHN.DOE@example.org")

    assert body["mxid"] == "@jdoe:example.org"
    assert body["address"] == "john.doe@example.org"


def test_lookup_of_unknown_address_is_empty(
    org_db: SqlDb, make_app: AppFactory
) -> None:
    client = make_app(sql=org_section(org_db)).test_client()

    assert v1_lookup(client, "email", "nobody@example.org") == {}


def test_msisdn_uses_its_medium_query(org_db: SqlDb, make_app: AppFactory) -> None:
    client = make_app(sql=org_section(org_db)).test_client()

    body = v1_lookup(client, "msisdn", "+44 20 7946 0750")

    assert body["mxid"] == "@jdoe:example.org"


@pytest.mark.parametrize("spelling", ["localpart", "uid"])
def test_identity_type_uid_is_mxisds_name_for_localpart(
    org_db: SqlDb, make_app: AppFactory, spelling: str
) -> None:
    section = org_section(org_db)
    section["identity"]["type"] = spelling
    section["directory"]["query"]["name"]["type"] = spelling
    store = sql_store(make_app(sql=section))

    # The query answers "jdoe": the domain is added to make the mxid.
    assert store.lookup("email", "john.doe@example.org") == "@jdoe:example.org"
    assert [e.mxid for e in store.directory_search("john", False)] == [
        "@jdoe:example.org"
    ]


def test_custom_medium_is_looked_up_with_its_query(
    org_db: SqlDb, make_app: AppFactory
) -> None:
    client = make_app(sql=org_section(org_db)).test_client()

    assert v1_lookup(client, "employee", "E1002")["mxid"] == "@asmith:example.org"
    assert v1_lookup(client, "employee", "E9999") == {}


def test_bulk_lookup_answers_known_threepids(
    org_db: SqlDb, make_app: AppFactory
) -> None:
    client = make_app(sql=org_section(org_db)).test_client()

    response = client.post(
        f"{V1}/bulk_lookup",
        json={
            "threepids": [
                ["email", "Anna@Example.org"],
                ["email", "a.smith@sales.example.org"],
                ["email", "alice@example.org"],  # the memory store's
                ["email", "ghost@example.org"],
                ["msisdn", "442079460750"],
            ]
        },
    )

    assert response.status_code == 200
    assert sorted(map(tuple, response.get_json()["threepids"])) == [
        ("email", "Anna@Example.org", "@asmith:example.org"),
        ("email", "a.smith@sales.example.org", "@asmith:example.org"),
        ("email", "alice@example.org", "@alice:example.org"),
        ("msisdn", "442079460750", "@jdoe:example.org"),
    ]


def test_v2_hashed_lookup_finds_listed_threepids(
    org_db: SqlDb, make_app: AppFactory, homeserver: Homeserver
) -> None:
    client = make_app(sql=org_section(org_db)).test_client()
    token = register(client, homeserver, "@dave:example.org")
    pepper = client.get(f"{V2}/hash_details", headers=bearer(token)).get_json()[
        "lookup_pepper"
    ]
    wanted = {
        lookup_hash("john.doe@example.org", "email", pepper): "@jdoe:example.org",
        lookup_hash(
            "a.smith@sales.example.org", "email", pepper
        ): "@asmith:example.org",
        lookup_hash("442079460750", "msisdn", pepper): "@jdoe:example.org",
    }
    unknown = lookup_hash("ghost@example.org", "email", pepper)

    response = sha256_lookup(client, token, pepper, [*wanted, unknown])

    assert response.status_code == 200
    assert response.get_json()["mappings"] == wanted


def test_listing_normalises_and_skips_bad_rows(
    org_db: SqlDb, make_app: AppFactory
) -> None:
    store = sql_store(make_app(sql=org_section(org_db)))

    listed = sorted(store.iter_threepids())

    assert listed == [
        ("email", "a.smith@sales.example.org", "@asmith:example.org"),
        ("email", "anna@example.org", "@asmith:example.org"),
        ("email", "john.doe@example.org", "@jdoe:example.org"),
        ("email", "o'brien@example.org", "@obrien:example.org"),
        ("msisdn", "442079460750", "@jdoe:example.org"),
    ]


def test_directory_searches_names_and_threepids(
    org_db: SqlDb, make_app: AppFactory
) -> None:
    store = sql_store(make_app(sql=org_section(org_db)))

    by_name = store.directory_search("smith", by_threepid=False)
    by_address = store.directory_search("sales.example", by_threepid=True)
    name_only = store.directory_search("sales.example", by_threepid=False)

    assert by_name == [DirectoryEntry("@asmith:example.org", "Anna Smith")]
    assert by_address == [DirectoryEntry("@asmith:example.org", "Anna Smith")]
    assert name_only == []


def test_profile_has_name_normalised_threepids_and_roles(
    org_db: SqlDb, make_app: AppFactory
) -> None:
    store = sql_store(make_app(sql=org_section(org_db)))

    profile = store.profile("@jdoe:example.org")

    assert profile == Profile(
        "John Doe",
        (("email", "john.doe@example.org"), ("msisdn", "442079460750")),
        ("admins", "staff"),
    )
    assert store.profile("@nobody:example.org") is None


def test_check_credentials_answers_the_profile_stores_roles(
    org_db: SqlDb, make_app: AppFactory
) -> None:
    # The password is checked by one store; the SQL store only completes
    # the profile with its name, 3PIDs and roles.
    memory = {"identities": [{"username": "jdoe", "password": "jdoe-pw"}]}
    client = make_app(sql=org_section(org_db), memory=memory).test_client()

    answer = client.post(
        "/_matrix-internal/identity/v1/check_credentials",
        json={"user": {"id": "@JDoe:example.org", "password": "jdoe-pw"}},
    ).get_json()

    assert answer["auth"]["id"] == {"type": "mxid", "value": "@jdoe:example.org"}
    assert answer["auth"]["profile"] == {
        "display_name": "John Doe",
        "three_pids": [
            {"medium": "email", "address": "john.doe@example.org"},
            {"medium": "msisdn", "address": "442079460750"},
        ],
        "roles": ["admins", "staff"],
    }


def test_sql_injection_in_an_address_stays_data(
    org_db: SqlDb, make_app: AppFactory
) -> None:
    client = make_app(sql=org_section(org_db)).test_client()
    store = sql_store(client.application)

    # Pasted into the SQL, each of these would match every row or drop a table.
    assert v1_lookup(client, "employee", "x' OR '1'='1") == {}
    assert v1_lookup(client, "employee", "E1001'; DROP TABLE people; --") == {}
    assert store.directory_search("%' OR 1=1 --", by_threepid=True) == []
    # A quote is legal in an email address and must still match.
    assert v1_lookup(client, "email", "O'Brien@example.org")["mxid"] == (
        "@obrien:example.org"
    )
    assert org_db.execute("SELECT count(*) FROM people")[0][0] == 4


def test_capabilities_follow_queries_and_enabled_keys(
    org_db: SqlDb, make_app: AppFactory
) -> None:
    section = org_section(org_db)
    section["directory"]["enabled"] = False
    del section["lookup"]

    store = sql_store(make_app(sql=section))

    assert store.capabilities == {Capability.LOOKUP, Capability.PROFILE}


def test_unreachable_database_lets_the_others_answer(
    org_db: SqlDb, make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    section = org_section(org_db)
    if org_db.kind == "sqlite":
        section["connection"] = org_db.connection + ".missing"
    else:
        section["connection"] = f"//127.0.0.1:{free_port()}/nowhere?user=nobody"
    caplog.set_level(logging.WARNING, logger="mxisd_flask")
    client = make_app(sql=section).test_client()

    assert (
        v1_lookup(client, "email", "alice@example.org")["mxid"] == "@alice:example.org"
    )
    assert v1_lookup(client, "email", "john.doe@example.org") == {}
    response = client.post(
        f"{V1}/bulk_lookup", json={"threepids": [["email", "alice@example.org"]]}
    )
    assert response.status_code == 200
    assert response.get_json()["threepids"] == [
        ["email", "alice@example.org", "@alice:example.org"]
    ]
    assert any("lookup link failed store=sql" in r.getMessage() for r in caplog.records)


def test_hashed_lookup_answers_from_the_others_while_the_database_is_down(
    org_db: SqlDb, make_app: AppFactory, homeserver: Homeserver
) -> None:
    section = org_section(org_db)
    section["connection"] = (
        org_db.connection + ".missing"
        if org_db.kind == "sqlite"
        else f"//127.0.0.1:{free_port()}/nowhere?user=nobody"
    )
    client = make_app(sql=section).test_client()
    token = register(client, homeserver, "@dave:example.org")
    pepper = client.get(f"{V2}/hash_details", headers=bearer(token)).get_json()[
        "lookup_pepper"
    ]
    alice = lookup_hash("alice@example.org", "email", pepper)  # memory store
    anna = lookup_hash("anna@example.org", "email", pepper)  # SQL store only

    response = sha256_lookup(client, token, pepper, [alice, anna])

    # The SQL store failed to list: the index leaves out its 3PIDs only, and
    # still answers from the memory store, rather than an error.
    assert response.status_code == 200
    assert response.get_json()["mappings"] == {alice: "@alice:example.org"}


@pytest.mark.parametrize("org_db", ["postgresql", "mysql"], indirect=True)
def test_reconnects_after_the_server_drops_the_connection(
    org_db: SqlDb, make_app: AppFactory
) -> None:
    client = make_app(sql=org_section(org_db)).test_client()
    assert (
        v1_lookup(client, "email", "anna@example.org")["mxid"] == "@asmith:example.org"
    )

    assert org_db.drop_store_connections() >= 1

    assert (
        v1_lookup(client, "email", "anna@example.org")["mxid"] == "@asmith:example.org"
    )


SLOW_QUERIES = {
    # Each takes far longer than the 1 s limit the test sets.
    "sqlite": "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n"
    " WHERE i < 100000000) SELECT count(*) AS uid FROM n WHERE ? <> ?",
    "postgresql": "SELECT login AS uid FROM people, pg_sleep(10) WHERE ? <> ?",
    "mysql": "SELECT login AS uid FROM people WHERE SLEEP(10) = 0 AND ? <> ?",
}


def test_slow_query_is_cut_off_as_a_store_error(
    org_db: SqlDb, make_app: AppFactory
) -> None:
    section = org_section(org_db, timeout=1)
    section["identity"]["query"] = SLOW_QUERIES[org_db.kind]
    store = sql_store(make_app(sql=section))
    started = time.monotonic()

    with pytest.raises(StoreError):
        store.lookup("email", "anna@example.org")

    assert time.monotonic() - started < 5
    # The same store (and thread) goes on answering its other queries.
    profile = store.profile("@asmith:example.org")
    assert profile is not None and profile.display_name == "Anna Smith"


@pytest.mark.parametrize(
    "change, key",
    [
        (
            {"identity": {"query": "SELEC uid FROM contacts WHERE ? = ?"}},
            "identity.query",
        ),
        (
            {
                "identity": {
                    "query": "SELECT nope AS uid FROM contacts"
                    " WHERE kind = ? AND value = ?"
                }
            },
            "identity.query",
        ),
        ({"identity": {"query": "SELECT login FROM contacts"}}, "identity.query"),
        (
            {"lookup": {"query": "SELECT login, kind, value FROM contacts"}},
            "lookup.query",
        ),
        (
            {
                "identity": {
                    "medium": {"employee": "SELECT login FROM people WHERE x = :x"}
                }
            },
            "identity.medium.employee",
        ),
        ({"identity": {"type": "username"}}, "identity.type"),
        ({"auth": {"enabled": True}}, "auth.enabled"),
    ],
)
def test_invalid_query_or_value_fails_at_start_up(
    org_db: SqlDb, make_app: AppFactory, change: dict[str, Any], key: str
) -> None:
    section = org_section(org_db)
    for name, value in change.items():
        section[name] = {**section.get(name, {}), **value}

    with pytest.raises(ConfigError, match=f"sql.{key}"):
        make_app(sql=section)


# synapseSql: Synapse's own tables, with the built-in queries


def test_synapse_lookup_and_bulk(synapse_db: SqlDb, make_app: AppFactory) -> None:
    client = make_app(synapseSql=synapse_db.section()).test_client()

    assert v1_lookup(client, "email", "Bob@Example.org")["mxid"] == "@bob:example.org"
    assert v1_lookup(client, "msisdn", "+447700900123")["mxid"] == "@alice:example.org"
    response = client.post(
        f"{V1}/bulk_lookup",
        json={"threepids": [["email", "bob@example.org"], ["email", "x@example.org"]]},
    )
    assert response.get_json()["threepids"] == [
        ["email", "bob@example.org", "@bob:example.org"]
    ]


def test_synapse_hashed_lookup(
    synapse_db: SqlDb, make_app: AppFactory, homeserver: Homeserver
) -> None:
    client = make_app(
        synapseSql=synapse_db.section(), memory={"enabled": False}
    ).test_client()
    token = register(client, homeserver, "@dave:example.org")
    pepper = client.get(f"{V2}/hash_details", headers=bearer(token)).get_json()[
        "lookup_pepper"
    ]
    bob = lookup_hash("bob@example.org", "email", pepper)
    alice_phone = lookup_hash("447700900123", "msisdn", pepper)

    response = sha256_lookup(client, token, pepper, [bob, alice_phone])

    assert response.get_json()["mappings"] == {
        bob: "@bob:example.org",
        alice_phone: "@alice:example.org",
    }


def test_synapse_profile_reads_profiles_by_localpart(
    synapse_db: SqlDb, make_app: AppFactory
) -> None:
    store = sql_store(make_app(synapseSql=synapse_db.section()), "synapseSql")

    assert store.profile("@alice:example.org") == Profile(
        "Alice Liddell",
        (("email", "alice@example.org"), ("msisdn", "447700900123")),
    )
    assert store.capabilities == {
        Capability.LOOKUP,
        Capability.LISTING,
        Capability.DIRECTORY,
        Capability.PROFILE,
    }


def test_synapse_directory_skips_deactivated_users_and_escapes_wildcards(
    synapse_db: SqlDb, make_app: AppFactory
) -> None:
    store = sql_store(make_app(synapseSql=synapse_db.section()), "synapseSql")

    assert store.directory_search("ALICE", by_threepid=False) == [
        DirectoryEntry("@alice:example.org", "Alice Liddell")
    ]
    assert store.directory_search("gone", by_threepid=False) == []
    assert store.directory_search("bob@", by_threepid=True) == [
        DirectoryEntry("@bob:example.org", "Bob 100% Real")
    ]
    # % is a literal, not "anything": only Bob's name holds one.
    assert [e.mxid for e in store.directory_search("%", by_threepid=False)] == [
        "@bob:example.org"
    ]


def test_synapse_query_can_be_overridden(
    synapse_db: SqlDb, make_app: AppFactory
) -> None:
    section = synapse_db.section(
        identity={
            "query": "SELECT user_id AS uid FROM user_threepids"
            " WHERE medium = ? AND address = ? AND user_id <> '@bob:example.org'"
        }
    )
    client = make_app(synapseSql=section).test_client()

    assert v1_lookup(client, "email", "bob@example.org") == {}
    assert (
        v1_lookup(client, "email", "alice@example.org")["mxid"] == "@alice:example.org"
    )


def test_synapse_type_must_be_one_synapse_runs_on(
    synapse_db: SqlDb, make_app: AppFactory
) -> None:
    with pytest.raises(ConfigError, match="synapseSql.type"):
        make_app(synapseSql={**synapse_db.section(), "type": "mysql"})


# The parts: placeholders, connection strings, listed addresses


@pytest.mark.parametrize(
    "kind, sql, text, count",
    [
        (
            "postgresql",
            "SELECT a FROM t WHERE b = ? AND c = ?",
            "SELECT a FROM t WHERE b = %s AND c = %s",
            2,
        ),
        (
            "mysql",
            "SELECT '?', \"x?\", `y?` FROM t WHERE b LIKE 'a%' AND c = ? -- ?",
            "SELECT '?', \"x?\", `y?` FROM t WHERE b LIKE 'a%%' AND c = %s -- ?",
            1,
        ),
        (
            "postgresql",
            "SELECT $$?$$ /* ? */ FROM t WHERE b = ?::text;",
            "SELECT $$?$$ /* ? */ FROM t WHERE b = %s::text",
            1,
        ),
        (
            "sqlite",
            "SELECT a FROM t WHERE b LIKE '%?%' AND c = ?",
            "SELECT a FROM t WHERE b LIKE '%?%' AND c = ?",
            1,
        ),
    ],
)
def test_only_real_placeholders_are_adapted(
    kind: str, sql: str, text: str, count: int
) -> None:
    query = prepare("sql.identity.query", sql, kind)

    assert (query.text, query.placeholders) == (text, count)


@pytest.mark.parametrize(
    "sql", ["SELECT 1; DROP TABLE people", "", "SELECT a FROM t WHERE b = %s"]
)
def test_one_statement_with_question_marks_only(sql: str) -> None:
    with pytest.raises(ConfigError, match="sql.identity.query"):
        prepare("sql.identity.query", sql, "postgresql")


@pytest.mark.parametrize(
    "connection, expected",
    [
        (
            "//db.example.org/people?user=u&password=p%40ss",
            ("db.example.org", 5432, "people", "u", "p@ss"),
        ),
        ("jdbc:postgresql://db:6543/x?user=u", ("db", 6543, "x", "u", "")),
        ("//[::1]:5433/x?user=u&password=", ("::1", 5433, "x", "u", "")),
    ],
)
def test_mxisd_connection_strings(
    connection: str, expected: tuple[str, int, str, str, str]
) -> None:
    target = parse_target("sql", "postgresql", connection, 5, "/etc/mxisd")

    got = (target.host, target.port, target.database, target.user, target.password)
    assert got == expected
    assert "p@ss" not in repr(target)


def test_mariadb_default_port_and_sqlite_relative_path() -> None:
    assert parse_target("sql", "mariadb", "//db/x?user=u", 5, "/").port == 3306
    sqlite = parse_target("sql", "sqlite", "people.db", 5, "/etc/mxisd")
    assert sqlite.path == "/etc/mxisd/people.db"


@pytest.mark.parametrize(
    "connection", ["//db.example.org?user=u", "//:5432/x", "//db:99999/x"]
)
def test_bad_connection_string_names_the_key(connection: str) -> None:
    with pytest.raises(ConfigError, match="sql.connection"):
        parse_target("sql", "postgresql", connection, 5, "/")


def test_database_going_down_and_back_mid_run(
    org_db: SqlDb, make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    client = make_app(sql=org_section(org_db)).test_client()
    store = sql_store(client.application)
    assert (
        v1_lookup(client, "email", "anna@example.org")["mxid"] == "@asmith:example.org"
    )
    caplog.set_level(logging.WARNING, logger="mxisd_flask")

    org_db.go_down()
    try:
        assert v1_lookup(client, "email", "anna@example.org") == {}
        assert v1_lookup(client, "email", "alice@example.org")["mxid"] == (
            "@alice:example.org"
        )
        with pytest.raises(StoreError):
            list(store.iter_threepids())
    finally:
        org_db.come_back()

    assert (
        v1_lookup(client, "email", "anna@example.org")["mxid"] == "@asmith:example.org"
    )
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("lookup link failed store=sql" in m for m in warnings)
    assert not any("anna@example.org" in m for m in warnings)


@pytest.mark.parametrize("org_db", ["postgresql", "mysql"], indirect=True)
def test_listing_reconnects_and_outlasts_the_statement_limit(
    org_db: SqlDb, make_app: AppFactory
) -> None:
    section = org_section(org_db, timeout=1)
    sleep = "pg_sleep(1.5)" if org_db.kind == "postgresql" else "SLEEP(0.3)"
    listing = section["lookup"]["query"]
    if org_db.kind == "postgresql":
        section["lookup"]["query"] = listing.replace(
            " FROM contacts", f" FROM contacts, {sleep}"
        )
    else:
        section["lookup"]["query"] = listing + f" WHERE {sleep} = 0"
    store = sql_store(make_app(sql=section))
    assert len(list(store.iter_threepids())) == 5
    org_db.drop_store_connections()

    # Each listing takes 1.5 s or more, past the 1 s limit of one lookup.
    assert len(list(store.iter_threepids())) == 5


def test_index_built_while_a_store_is_down_is_rebuilt_soon(
    org_db: SqlDb, make_app: AppFactory
) -> None:
    stores = make_app(sql=org_section(org_db)).extensions["mxisd"].stores
    now = [1000.0]
    index = HashIndex(
        stores, refresh_s=300, build_timeout_s=5, monotonic=lambda: now[0]
    )
    alice = lookup_hash("alice@example.org", "email", "p")
    anna = lookup_hash("anna@example.org", "email", "p")
    org_db.go_down()
    try:
        assert index.lookup([alice, anna], "p") == {alice: "@alice:example.org"}
    finally:
        org_db.come_back()

    now[0] += RETRY_S + 1
    index.lookup([], "p")  # starts the rebuild; answers from the partial table
    deadline = time.monotonic() + 5
    while index._building is not None and time.monotonic() < deadline:
        time.sleep(0.01)

    assert index.lookup([alice, anna], "p") == {
        alice: "@alice:example.org",
        anna: "@asmith:example.org",
    }
