"""The REST store against a real HTTP backend speaking mxisd's REST API."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from fixtures_homeserver import FakeHomeserver
from fixtures_rest_exec import (
    API,
    BULK_ANSWER,
    BULK_QUESTION,
    DAVE,
    DAVE_IN_DIRECTORY,
    DAVE_THREEPIDS,
    ERIN,
    LISTED,
    RestBackend,
    bulk,
    check_credentials,
    dave_accepted,
    directory_search,
    directory_sections,
    rest_section,
    store_config,
    v1_lookup,
    v2_hashed_lookup,
    v2_none_lookup,
)
from flask import Flask
from flask.testing import FlaskClient

from conftest import (
    ConfigFactory,
    FakeClock,
    Homeserver,
    free_port,
    homeserver_config,
)
from mxisd_flask.app import create_app
from mxisd_flask.errors import ConfigError, StoreError
from mxisd_flask.stores import backend_json, rest
from mxisd_flask.stores.base import AuthResult, Capability, DirectoryEntry, Profile


@pytest.fixture
def backend() -> str:
    return "sqlite"  # the storage backend plays no part here


def rest_store(backend: RestBackend, **extra: Any) -> rest.RestIdentityStore:
    store = rest.from_config(store_config(rest=rest_section(backend, **extra)))
    assert store is not None
    return store


def make_app(
    make_config: ConfigFactory, clock: FakeClock, **sections: Any
) -> Iterator[FlaskClient]:
    application: Flask = create_app(make_config(**sections), clock=clock)
    yield application.test_client()
    application.extensions["mxisd"].db.close()


@pytest.fixture
def rest_client(
    make_config: ConfigFactory,
    clock: FakeClock,
    rest_backend: RestBackend,
    homeserver: Homeserver,
) -> Iterator[FlaskClient]:
    yield from make_app(
        make_config,
        clock,
        rest=rest_section(rest_backend),
        **homeserver_config(homeserver),
    )


def test_v1_lookup_asks_the_single_endpoint_with_the_normalised_address(
    rest_client: FlaskClient, rest_backend: RestBackend
) -> None:
    body = v1_lookup(rest_client, "email", "DAVE.bowman@example.org")

    assert body["mxid"] == DAVE
    assert body["address"] == "dave.bowman@example.org"
    assert body["signatures"]["example.org"]["ed25519:0"]
    assert rest_backend.requests == [
        (
            f"{API}/identity/single",
            {"lookup": {"medium": "email", "address": "dave.bowman@example.org"}},
        )
    ]


def test_v1_lookup_lower_cases_an_mxid_answer(rest_client: FlaskClient) -> None:
    assert v1_lookup(rest_client, "employee", "E-1002")["mxid"] == "@erin:example.org"


def test_v1_lookup_unknown_to_every_store_is_empty(
    rest_client: FlaskClient, rest_backend: RestBackend
) -> None:
    assert v1_lookup(rest_client, "email", "nobody@example.org") == {}
    assert rest_backend.paths() == [f"{API}/identity/single"]


def test_bulk_lookup_asks_the_bulk_endpoint_for_what_memory_did_not_know(
    rest_client: FlaskClient, rest_backend: RestBackend
) -> None:
    assert bulk(rest_client, *BULK_QUESTION) == BULK_ANSWER
    assert rest_backend.requests == [
        (
            f"{API}/identity/bulk",
            {
                "lookup": [
                    {"medium": "email", "address": "dave.bowman@example.org"},
                    {"medium": "msisdn", "address": "447700900001"},
                    {"medium": "email", "address": "nobody@example.org"},
                ]
            },
        )
    ]


def test_v2_none_lookup_answers_from_the_rest_backend(
    rest_client: FlaskClient, homeserver: Homeserver
) -> None:
    addresses = ["dave.bowman@example.org email", "E-1002 employee"]

    assert v2_none_lookup(rest_client, homeserver, addresses) == {
        "dave.bowman@example.org email": DAVE,
        "E-1002 employee": "@erin:example.org",
    }


LISTING = {"identity": {"listing": f"{API}/identity/listing"}}


def test_listing_pages_through_the_backend_normalised(
    rest_backend: RestBackend,
) -> None:
    store = rest_store(rest_backend, endpoints=LISTING)

    listed = set(store.iter_threepids())

    assert listed == LISTED
    assert rest_backend.requests == [
        (f"{API}/identity/listing", {"listing": {"from": None}}),
        (f"{API}/identity/listing", {"listing": {"from": "1"}}),
    ]


def test_v2_hashed_lookup_finds_rest_users_only_with_a_listing_endpoint(
    make_config: ConfigFactory,
    clock: FakeClock,
    rest_backend: RestBackend,
    homeserver: Homeserver,
) -> None:
    asked = [("email", "dave.bowman@example.org"), ("employee", "E-1002")]
    found = {}
    for endpoints in ({}, LISTING):
        section = rest_section(rest_backend, endpoints=endpoints)
        for client in make_app(
            make_config, clock, rest=section, **homeserver_config(homeserver)
        ):
            found[bool(endpoints)] = v2_hashed_lookup(client, homeserver, asked)

    assert found[True] == {asked[0]: DAVE, asked[1]: ERIN}
    assert found[False] == {}  # mxisd's API: nothing to hash in advance


@pytest.mark.parametrize("mode", ["500", "badjson", "loop"])
def test_a_failing_listing_is_a_store_error(
    rest_backend: RestBackend, mode: str
) -> None:
    store = rest_store(rest_backend, endpoints=LISTING)
    rest_backend.fail[f"{API}/identity/listing"] = mode

    with pytest.raises(StoreError):
        list(store.iter_threepids())


def test_a_listing_skips_unusable_entries_and_keeps_the_rest() -> None:
    good = {
        "medium": "email",
        "address": "A@Example.org",
        "id": {"type": "localpart", "value": "a"},
    }
    page = {
        "lookup": [
            {**good, "address": "not an address"},
            {**good, "id": {"type": "mxid", "value": "no mxid"}},
            {**good, "id": {"type": "nickname", "value": "a"}},
            good,
        ],
        "next": "2",
    }

    assert backend_json.parse_listing(page, "example.org") == (
        [("email", "a@example.org", "@a:example.org")],
        "2",
    )
    with pytest.raises(StoreError):
        backend_json.parse_listing({"lookup": [], "next": 2}, "example.org")


def test_listing_is_off_by_default_and_can_be_switched_off(
    rest_backend: RestBackend,
) -> None:
    switched_off = rest_store(
        rest_backend, endpoints=LISTING, listing={"enabled": False}
    )

    assert Capability.LISTING not in rest_store(rest_backend).capabilities
    assert Capability.LISTING not in switched_off.capabilities
    assert Capability.LOOKUP in switched_off.capabilities


@pytest.mark.parametrize("mode", ["500", "badjson", "slow", "redirect"])
def test_a_failing_backend_leaves_the_memory_store_answering(
    rest_client: FlaskClient,
    rest_backend: RestBackend,
    caplog: pytest.LogCaptureFixture,
    mode: str,
) -> None:
    rest_backend.fail = {
        f"{API}/identity/single": mode,
        f"{API}/identity/bulk": mode,
    }

    single = v1_lookup(rest_client, "email", "dave.bowman@example.org")
    found = bulk(
        rest_client,
        ("email", "alice@example.org"),
        ("email", "dave.bowman@example.org"),
    )

    assert single == {}
    assert found == {("email", "alice@example.org", "@alice:example.org")}
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "store=rest" in r.getMessage()
    ]
    assert len(warnings) == 2, warnings


def test_a_backend_that_is_not_listening_leaves_the_others_answering(
    make_config: ConfigFactory, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    section = {"enabled": True, "host": f"http://127.0.0.1:{free_port()}"}
    for client in make_app(make_config, clock, rest=section):
        assert v1_lookup(client, "email", "alice@example.org")["mxid"]
        assert bulk(client, ("email", "nobody@example.org")) == set()

    assert any("ConnectionError" in r.getMessage() for r in caplog.records)


def test_an_empty_single_endpoint_sends_single_lookups_to_bulk(
    rest_backend: RestBackend,
) -> None:
    store = rest_store(rest_backend, endpoints={"identity": {"single": ""}})

    assert store.lookup("email", "dave.bowman@example.org") == DAVE
    assert rest_backend.paths() == [f"{API}/identity/bulk"]


def test_an_empty_bulk_endpoint_asks_single_once_per_threepid(
    rest_backend: RestBackend,
) -> None:
    store = rest_store(rest_backend, endpoints={"identity": {"bulk": ""}})

    found = store.bulk_lookup(list(DAVE_THREEPIDS))

    assert found == {tp: DAVE for tp in DAVE_THREEPIDS}
    assert rest_backend.paths() == [f"{API}/identity/single"] * 2


def test_empty_identity_endpoints_take_the_store_out_of_lookups(
    make_config: ConfigFactory, clock: FakeClock, rest_backend: RestBackend
) -> None:
    endpoints = {"identity": {"single": "", "bulk": ""}}
    section = rest_section(rest_backend, endpoints=endpoints)
    for client in make_app(make_config, clock, rest=section):
        assert v1_lookup(client, "email", "dave.bowman@example.org") == {}

    store = rest_store(rest_backend, endpoints=endpoints)
    assert Capability.LOOKUP not in store.capabilities
    # Asked anyway, it answers nothing rather than bouncing between the two.
    assert store.lookup("email", "dave.bowman@example.org") is None
    assert store.bulk_lookup(list(DAVE_THREEPIDS)) == {}
    assert rest_backend.requests == []


def test_auth_success_gives_the_canonical_mxid_and_profile(
    rest_backend: RestBackend,
) -> None:
    store = rest_store(rest_backend)

    result = store.authenticate(DAVE, "dave", "dave-pw")

    assert result == AuthResult(DAVE, Profile("Dave Bowman", DAVE_THREEPIDS))
    assert rest_backend.requests == [
        (
            f"{API}/auth/login",
            {
                "auth": {
                    "mxid": DAVE,
                    "localpart": "dave",
                    "domain": "example.org",
                    "password": "dave-pw",
                }
            },
        )
    ]


def test_auth_lower_cases_an_mxid_the_backend_spells_in_capitals(
    rest_backend: RestBackend,
) -> None:
    result = rest_store(rest_backend).authenticate(
        "@erin:example.org", "erin", "erin-pw"
    )

    assert result is not None and result.mxid == "@erin:example.org"


@pytest.mark.parametrize(
    "mxid, localpart, password",
    [(DAVE, "dave", "wrong"), ("@nobody:example.org", "nobody", "x")],
)
def test_auth_failure_is_none(
    rest_backend: RestBackend, mxid: str, localpart: str, password: str
) -> None:
    assert rest_store(rest_backend).authenticate(mxid, localpart, password) is None


def test_auth_refused_by_status_401_is_none_and_500_is_a_store_error(
    rest_backend: RestBackend,
) -> None:
    store = rest_store(rest_backend)
    rest_backend.fail[f"{API}/auth/login"] = "404"
    assert store.authenticate(DAVE, "dave", "dave-pw") is None

    rest_backend.fail[f"{API}/auth/login"] = "500"
    with pytest.raises(StoreError, match="HTTP 500"):
        store.authenticate(DAVE, "dave", "dave-pw")


def test_the_password_is_never_logged(
    rest_backend: RestBackend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="mxisd_flask")
    store = rest_store(rest_backend)
    store.authenticate(DAVE, "dave", "dave-pw")
    rest_backend.fail[f"{API}/auth/login"] = "badjson"
    with pytest.raises(StoreError):
        store.authenticate(DAVE, "dave", "dave-pw")

    assert caplog.records, "the calls should have been logged at debug"
    assert not any("dave-pw" in r.getMessage() for r in caplog.records)


def test_directory_search_by_name_and_by_threepid(rest_backend: RestBackend) -> None:
    store = rest_store(rest_backend)

    by_name = store.directory_search("bowman", by_threepid=False)
    by_threepid = store.directory_search("e-1002", by_threepid=True)

    assert by_name == [DirectoryEntry(DAVE, "Dave Bowman", "mxc://example.org/dave")]
    assert by_threepid == [
        DirectoryEntry("@erin:example.org", "Erin Example", "mxc://example.org/Erin")
    ]
    assert [body for _, body in rest_backend.requests] == [
        {"by": "name", "search_term": "bowman"},
        {"by": "threepid", "search_term": "e-1002"},
    ]


def test_profile_merges_the_three_endpoints(rest_backend: RestBackend) -> None:
    store = rest_store(rest_backend)

    assert store.profile(DAVE) == Profile(
        "Dave Bowman", DAVE_THREEPIDS, ("staff", "pilots")
    )
    assert store.profile("@nobody:example.org") is None
    assert rest_backend.paths()[:3] == [
        f"{API}/profile/displayName",
        f"{API}/profile/threepids",
        f"{API}/profile/roles",
    ]


def test_profile_with_only_the_roles_endpoint(rest_backend: RestBackend) -> None:
    endpoints = {"profile": {"displayName": "", "threepids": ""}}
    store = rest_store(rest_backend, endpoints=endpoints)

    assert store.profile(DAVE) == Profile(roles=("staff", "pilots"))
    assert rest_backend.paths() == [f"{API}/profile/roles"]


def test_an_endpoint_may_be_a_whole_url_without_a_host(
    rest_backend: RestBackend,
) -> None:
    section = {
        "enabled": True,
        "endpoints": {
            "auth": "",
            "directory": "",
            "identity": {
                "single": f"{rest_backend.url}{API}/identity/single",
                "bulk": "",
            },
            "profile": {"displayName": "", "threepids": "", "roles": ""},
        },
    }
    store = rest.from_config(store_config(rest=section))

    assert store is not None and store.capabilities == {Capability.LOOKUP}
    assert store.lookup("email", "dave.bowman@example.org") == DAVE


@pytest.mark.parametrize(
    "section, key",
    [
        ({"enabled": True}, "rest.host"),
        ({"enabled": True, "host": "ftp://backend.example.org"}, "rest.host"),
        (
            {"enabled": True, "host": "http://h", "endpoints": {"auth": "login"}},
            "rest.endpoints.auth",
        ),
        ({"enabled": True, "host": "http://h", "timeout": 0}, "rest.timeout"),
    ],
)
def test_bad_rest_configuration_names_the_key(
    section: dict[str, Any], key: str
) -> None:
    with pytest.raises(ConfigError, match=key):
        rest.from_config(store_config(rest=section))


def test_a_capability_can_be_switched_off(rest_backend: RestBackend) -> None:
    store = rest_store(rest_backend, auth={"enabled": False})

    assert Capability.AUTH not in store.capabilities
    assert Capability.LOOKUP in store.capabilities


def test_the_store_is_off_unless_enabled(rest_backend: RestBackend) -> None:
    assert rest.from_config(store_config(rest={"host": rest_backend.url})) is None


def test_synapse_password_check_goes_to_the_rest_backend(
    rest_client: FlaskClient,
    rest_backend: RestBackend,
    caplog: pytest.LogCaptureFixture,
) -> None:
    refused = {"auth": {"success": False}}
    # The backend's profile endpoints add dave's roles to the answer.
    accepted = dave_accepted(roles=("staff", "pilots"))
    assert check_credentials(rest_client, "@Dave:example.org", "dave-pw") == accepted
    assert check_credentials(rest_client, "dave", "wrong") == refused

    rest_backend.fail[f"{API}/auth/login"] = "500"
    assert check_credentials(rest_client, "dave", "dave-pw") == refused
    assert any("auth store failed store=rest" in r.getMessage() for r in caplog.records)


def test_user_directory_search_finds_the_backends_users(
    make_config: ConfigFactory,
    clock: FakeClock,
    rest_backend: RestBackend,
    fake_homeserver: FakeHomeserver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sections = directory_sections(fake_homeserver)
    for client in make_app(
        make_config, clock, rest=rest_section(rest_backend), **sections
    ):
        assert directory_search(client, "bowman") == DAVE_IN_DIRECTORY
        rest_backend.fail[f"{API}/directory/user/search"] = "500"
        assert directory_search(client, "bowman") == {"limited": False, "results": []}

    assert any(
        "directory store failed store=rest" in r.getMessage() for r in caplog.records
    )


def test_hostile_addresses_reach_the_backend_as_json_data(
    rest_client: FlaskClient, rest_backend: RestBackend
) -> None:
    address = "x'\"; DROP TABLE users; --\n$(id)\\u0041"

    assert v1_lookup(rest_client, "employee", address) == {}
    assert rest_backend.requests == [
        (
            f"{API}/identity/single",
            {"lookup": {"medium": "employee", "address": address}},
        )
    ]
