"""The LDAP store against a real slapd (tests/fixtures_ldap.py) seeded from
tests/ldap/seed.ldif: an OpenLDAP-style tree and an Active Directory-style one."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fixtures_ldap import Slapd, ldif_users, write_temp
from flask import Flask
from flask.testing import FlaskClient

from conftest import (
    V1,
    V2,
    ConfigFactory,
    Homeserver,
    bearer,
    sha256_lookup,
    token_and_pepper,
)
from mxisd_flask.app import create_app
from mxisd_flask.config import parse_config
from mxisd_flask.crypto.hashing import lookup_hash
from mxisd_flask.errors import ConfigError, StoreError
from mxisd_flask.services.hash_index import HashIndex
from mxisd_flask.stores.base import Capability
from mxisd_flask.stores.ldap import LdapIdentityStore, from_config

ALICE = "@ldapalice:example.org"
BOB = "@ldapbob:example.org"
CAROL = "@ldapcarol:example.org"
DAVE = "@ldapdave:example.org"
ERIN = "@ewindows:example.org"
FRANK = "@fgates:example.org"
AD_SECTION: dict[str, Any] = {
    "filter": "(objectClass=testADUser)",
    "attribute": {
        "uid": {"type": "uid", "value": "sAMAccountName"},
        "name": "displayName",
        "threepid": {"email": ["mail", "proxyAddresses"], "msisdn": ["mobile"]},
    },
}


@pytest.fixture
def backend() -> str:
    return "sqlite"  # storage is not what these tests are about


def with_ldap(section: dict[str, Any]) -> dict[str, Any]:
    """A whole configuration around an ``ldap`` section."""
    return {
        "matrix": {"domain": "example.org"},
        "key": {"path": "/tmp/unused.key"},
        "storage": {"provider": {"sqlite": {"database": "/tmp/unused.db"}}},
        "ldap": section,
    }


def make_store(slapd: Slapd, **section: Any) -> LdapIdentityStore:
    store = from_config(parse_config(with_ldap(slapd.config(**section))))
    assert store is not None
    return store


@pytest.fixture
def store(slapd: Slapd) -> Iterator[LdapIdentityStore]:
    ldap_store = make_store(slapd)
    yield ldap_store
    ldap_store.close()


@pytest.fixture
def ad_store(slapd: Slapd) -> Iterator[LdapIdentityStore]:
    ldap_store = make_store(slapd, **AD_SECTION)
    yield ldap_store
    ldap_store.close()


# Lookups


@pytest.mark.parametrize(
    "medium, address, mxid",
    [
        ("email", "ldapalice@example.org", ALICE),
        ("email", "alice.liddell@example.org", ALICE),  # second mail, mixed case
        ("email", "dave.upper@example.org", DAVE),  # stored in upper case
        ("msisdn", "442079460000", ALICE),  # stored as "+44 20 7946 0000"
        ("msisdn", "447700900123", DAVE),
        ("employee", "E-1001", ALICE),  # a custom medium
        ("employee", "e-1002", BOB),
    ],
)
def test_lookup_finds_users_by_their_attributes(
    store: LdapIdentityStore, medium: str, address: str, mxid: str
) -> None:
    assert store.lookup(medium, address) == mxid


def test_lookup_of_unknown_address_or_medium_is_none(store: LdapIdentityStore) -> None:
    assert store.lookup("email", "nobody@example.org") is None
    assert store.lookup("fax", "ldapalice@example.org") is None


def test_user_outside_the_filter_is_not_found(store: LdapIdentityStore) -> None:
    assert store.lookup("email", "mallory@example.org") is None
    assert store.lookup("employee", "E-6666") is None
    assert "mallory@example.org" not in {a for _, a, _ in store.iter_threepids()}
    assert (
        store.authenticate("@ldapmallory:example.org", "ldapmallory", "ldapmallory-pw")
        is None
    )


def test_user_outside_the_filter_is_found_without_it(slapd: Slapd) -> None:
    # The same entry is there: it is the filter that keeps it out above.
    store = make_store(slapd, filter="")

    assert store.lookup("email", "mallory@example.org") == "@ldapmallory:example.org"


@pytest.mark.parametrize(
    "address",
    [
        "*",
        "*@example.org",
        "ldap*",
        "ldapalice@example.org)(mail=*",
        "*)(|(mail=*",
        "\\2a",
        "\\",
        "\x00",
        "ldapalice@example.org\x00",
        "b\\2ab@example.org",
    ],
)
def test_filter_metacharacters_never_widen_a_search(
    store: LdapIdentityStore, address: str
) -> None:
    assert store.lookup("email", address) is None
    assert store.bulk_lookup([("email", address)]) == {}


@pytest.mark.parametrize(
    "address, mxid",
    [
        ("b*b@example.org", BOB),
        ("carol(admin)@example.org", CAROL),
        ("back\\slash@example.org", CAROL),
    ],
)
def test_addresses_holding_metacharacters_match_exactly(
    store: LdapIdentityStore, address: str, mxid: str
) -> None:
    assert store.lookup("email", address) == mxid
    assert store.lookup("email", address.replace("@", "x@")) is None


def test_custom_medium_query_is_escaped_too(slapd: Slapd) -> None:
    store = make_store(
        slapd, identity={"medium": {"email": "(|(mail=%3pid)(cn=%3pid))"}}
    )

    assert store.lookup("email", "Carol (Admin)") == CAROL  # cn, by the override
    assert store.lookup("email", "ldapalice@example.org") == ALICE
    assert store.lookup("email", "*") is None
    assert store.lookup("email", "Carol*") is None


def test_bulk_lookup_answers_the_known_ones(store: LdapIdentityStore) -> None:
    wanted = [
        ("email", "ldapalice@example.org"),
        ("email", "alice.liddell@example.org"),
        ("email", "dave.upper@example.org"),
        ("email", "b*b@example.org"),
        ("email", "mallory@example.org"),
        ("email", "nobody@example.org"),
        ("msisdn", "442079460000"),
        ("employee", "E-1002"),
    ]
    # More than one filter's worth of addresses.
    wanted += [("email", f"missing{i}@example.org") for i in range(120)]

    assert store.bulk_lookup(wanted) == {
        ("email", "ldapalice@example.org"): ALICE,
        ("email", "alice.liddell@example.org"): ALICE,
        ("email", "dave.upper@example.org"): DAVE,
        ("email", "b*b@example.org"): BOB,
        ("msisdn", "442079460000"): ALICE,
        ("employee", "E-1002"): BOB,
    }


def test_listing_gives_every_normalised_threepid(store: LdapIdentityStore) -> None:
    listed = set(store.iter_threepids())

    assert {
        ("email", "ldapalice@example.org", ALICE),
        ("email", "alice.liddell@example.org", ALICE),
        ("msisdn", "442079460000", ALICE),
        ("employee", "E-1001", ALICE),
        ("email", "b*b@example.org", BOB),
        ("email", "dave.upper@example.org", DAVE),
        ("msisdn", "447700900123", DAVE),
    } <= listed
    assert {mxid for _, _, mxid in listed} == {ALICE, BOB, DAVE}  # carol: no valid mail


# Active Directory-style schema


@pytest.mark.parametrize(
    "address, mxid",
    [
        ("erin.windows@corp.example.org", ERIN),  # mail and "SMTP:" primary
        ("erin@corp.example.org", ERIN),  # "smtp:" alias
        ("e.windows@legacy.example.org", ERIN),
        ("frank.gates@corp.example.org", FRANK),  # only in proxyAddresses
    ],
)
def test_ad_lookup_by_mail_and_proxy_addresses(
    ad_store: LdapIdentityStore, address: str, mxid: str
) -> None:
    assert ad_store.lookup("email", address) == mxid


def test_ad_proxy_addresses_are_listed_without_prefix(
    ad_store: LdapIdentityStore,
) -> None:
    listed = set(ad_store.iter_threepids())

    assert listed == {
        ("email", "erin.windows@corp.example.org", ERIN),
        ("email", "erin@corp.example.org", ERIN),
        ("email", "e.windows@legacy.example.org", ERIN),
        ("email", "frank.gates@corp.example.org", FRANK),
    }
    assert ad_store.bulk_lookup(
        [("email", "erin@corp.example.org"), ("email", "frank.gates@corp.example.org")]
    ) == {
        ("email", "erin@corp.example.org"): ERIN,
        ("email", "frank.gates@corp.example.org"): FRANK,
    }


def test_ad_numbers_stored_with_spaces_match_their_digits(slapd: Slapd) -> None:
    # otherTelephone compares as a plain string, as Active Directory does.
    attribute = {**AD_SECTION["attribute"], "threepid": {"msisdn": ["otherTelephone"]}}
    store = make_store(slapd, **{**AD_SECTION, "attribute": attribute})

    # Frank's "+44 (20) 7946-0222"; Erin's "+44 20 7946 02220" holds the
    # same digits and one more, and must not be taken for it.
    assert store.lookup("msisdn", "442079460222") == FRANK
    assert store.lookup("msisdn", "4420794602220") == ERIN
    assert store.lookup("msisdn", "44207946022") is None
    assert store.bulk_lookup(
        [
            ("msisdn", "442079460222"),
            ("msisdn", "4420794602220"),
            ("msisdn", "442079460223"),
        ]
    ) == {("msisdn", "442079460222"): FRANK, ("msisdn", "4420794602220"): ERIN}


def test_ad_user_principal_name_as_uid(slapd: Slapd) -> None:
    store = make_store(
        slapd,
        filter="(objectClass=testADUser)",
        attribute={"uid": {"type": "uid", "value": "userPrincipalName"}},
    )

    assert store.lookup("email", "erin.windows@corp.example.org") == ERIN
    result = store.authenticate(ERIN, "ewindows", "EWindows-pw")
    assert result is not None and result.mxid == ERIN


def test_uid_type_mxid_takes_the_value_as_the_mxid(slapd: Slapd) -> None:
    store = make_store(
        slapd, attribute={"uid": {"type": "mxid", "value": "description"}}
    )

    assert store.lookup("email", "ldapalice@example.org") == "@Alice.L:example.org"
    result = store.authenticate("@alice.l:example.org", "alice.l", "ldapalice-pw")
    assert result is not None and result.mxid == "@alice.l:example.org"


# Authentication, directory, profile


def test_auth_binds_as_the_user(store: LdapIdentityStore) -> None:
    result = store.authenticate(ALICE, "ldapalice", "ldapalice-pw")

    assert result is not None
    assert result.mxid == ALICE
    assert result.profile.display_name == "Alice Liddell"
    assert ("email", "alice.liddell@example.org") in result.profile.threepids


@pytest.mark.parametrize(
    "mxid, localpart, password",
    [
        (ALICE, "ldapalice", "wrong"),
        (ALICE, "ldapalice", ""),  # would be an anonymous bind
        (ALICE, "ldapalice", "ldapbob-pw"),
        ("@nobody:example.org", "nobody", "x"),
        ("@ldapalice:other.example", "ldapalice", "ldapalice-pw"),
        ("@ldap*:example.org", "ldap*", "ldapalice-pw"),
    ],
)
def test_auth_refuses(
    store: LdapIdentityStore, mxid: str, localpart: str, password: str
) -> None:
    assert store.authenticate(mxid, localpart, password) is None


def test_ad_auth_returns_the_canonical_lower_case_mxid(
    ad_store: LdapIdentityStore,
) -> None:
    result = ad_store.authenticate("@EWindows:example.org", "EWindows", "EWindows-pw")

    assert result is not None
    assert result.mxid == ERIN
    assert ("email", "erin@corp.example.org") in result.profile.threepids


def test_directory_by_name_and_by_threepid(store: LdapIdentityStore) -> None:
    assert [e.mxid for e in store.directory_search("liddell", False)] == [ALICE]
    assert store.directory_search("Alice", False)[0].display_name == "Alice Liddell"
    assert [e.mxid for e in store.directory_search("upper@", True)] == [DAVE]
    assert store.directory_search("upper@", False) == []
    # A literal "*": only the one address that holds it, not everyone.
    assert [e.mxid for e in store.directory_search("*", True)] == [BOB]
    assert store.directory_search("", False) == []


def test_directory_other_attributes(slapd: Slapd) -> None:
    store = make_store(slapd, directory={"attribute": {"other": ["employeeNumber"]}})

    assert [e.mxid for e in store.directory_search("E-1002", False)] == [BOB]


def test_profile_gives_name_and_threepids(store: LdapIdentityStore) -> None:
    profile = store.profile(DAVE)

    assert profile is not None
    assert profile.display_name == "Dave Upper"
    assert profile.threepids == (
        ("email", "dave.upper@example.org"),
        ("msisdn", "447700900123"),
    )
    assert store.profile("@nobody:example.org") is None
    assert store.profile("@ldapdave:other.example") is None


@pytest.mark.parametrize(
    "probe", ["*", "ldap*", "*)(uid=*", "ldapalice)(|(uid=*", "\\2a", "*\x00"]
)
def test_metacharacters_never_widen_logins_profiles_or_directory_searches(
    slapd: Slapd, store: LdapIdentityStore, ad_store: LdapIdentityStore, probe: str
) -> None:
    upn_store = make_store(
        slapd,
        filter="(objectClass=testADUser)",
        attribute={"uid": {"type": "uid", "value": "userPrincipalName"}},
    )
    mxid = f"@{probe}:example.org"

    assert store.profile(mxid) is None
    assert store.authenticate(mxid, probe, "ldapalice-pw") is None
    assert upn_store.authenticate(mxid, probe, "EWindows-pw") is None  # "=x@*" form
    assert store.directory_search(probe, False) == []
    assert ad_store.lookup("email", f"{probe}@corp.example.org") is None  # "smtp:"
    assert store.lookup("msisdn", f"44{probe}") is None
    # The same paths still find what the characters spell literally.
    assert [e.mxid for e in store.directory_search("(Admin)", False)] == [CAROL]


# Connections


def test_connection_is_reused(store: LdapIdentityStore) -> None:
    store.lookup("email", "ldapalice@example.org")
    first = list(store._pool._idle)

    for _ in range(20):
        store.lookup("email", "ldapalice@example.org")

    assert store._pool._idle == first and len(first) == 1


def test_lookups_work_again_after_a_server_restart(
    slapd: Slapd, store: LdapIdentityStore
) -> None:
    assert store.lookup("email", "ldapalice@example.org") == ALICE

    slapd.restart()

    assert store.lookup("email", "ldapalice@example.org") == ALICE
    assert store.authenticate(ALICE, "ldapalice", "ldapalice-pw") is not None


def test_threads_share_the_pool_without_sharing_a_connection(
    store: LdapIdentityStore,
) -> None:
    wanted = {
        "ldapalice@example.org": ALICE,
        "dave.upper@example.org": DAVE,
        "b*b@example.org": BOB,
        "nobody@example.org": None,
    }
    errors: list[str] = []

    def worker() -> None:
        for _ in range(25):
            for address, mxid in wanted.items():
                if store.lookup("email", address) != mxid:
                    errors.append(address)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert 1 <= len(store._pool._idle) <= 8


def test_a_stopped_server_is_a_store_error(
    slapd: Slapd, store: LdapIdentityStore
) -> None:
    assert store.lookup("email", "ldapalice@example.org") == ALICE
    slapd.stop()

    with pytest.raises(StoreError):
        store.lookup("email", "ldapalice@example.org")
    with pytest.raises(StoreError):
        store.authenticate(ALICE, "ldapalice", "ldapalice-pw")
    with pytest.raises(StoreError):
        list(store.iter_threepids())

    slapd.start()
    assert store.lookup("email", "ldapalice@example.org") == ALICE


def test_a_server_that_never_answers_times_out(slapd: Slapd) -> None:
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        section = slapd.config()
        section["connection"] = {
            **section["connection"],
            "port": silent.getsockname()[1],
            "timeout": 1,
        }
        store = make_store(slapd, **section)
        started = time.monotonic()

        with pytest.raises(StoreError):
            store.lookup("email", "ldapalice@example.org")

        assert time.monotonic() - started < 5


# Through the app


@pytest.fixture
def ldap_app(
    make_config: ConfigFactory, homeserver: Homeserver, slapd: Slapd
) -> Iterator[Flask]:
    from conftest import homeserver_config

    config = make_config(ldap=slapd.config(), **homeserver_config(homeserver))
    application = create_app(config)
    yield application
    close_app(application)


def close_app(application: Flask) -> None:
    services = application.extensions["mxisd"]
    for store in services.stores:
        store.close()
    services.db.close()


def test_v1_lookup_through_the_app(ldap_app: Flask) -> None:
    client = ldap_app.test_client()

    response = client.get(
        f"{V1}/lookup",
        query_string={"medium": "email", "address": "Dave.Upper@Example.org"},
    )
    starred = client.get(
        f"{V1}/lookup", query_string={"medium": "email", "address": "*@example.org"}
    )

    assert response.get_json()["mxid"] == DAVE
    assert starred.status_code == 200 and starred.get_json() == {}


def test_a_restart_is_invisible_through_the_app(
    ldap_app: Flask, slapd: Slapd, caplog: pytest.LogCaptureFixture
) -> None:
    client = ldap_app.test_client()
    query = {"medium": "email", "address": "ldapalice@example.org"}
    assert client.get(f"{V1}/lookup", query_string=query).get_json()["mxid"] == ALICE
    caplog.set_level(logging.DEBUG, logger="mxisd_flask")

    slapd.restart()
    response = client.get(f"{V1}/lookup", query_string=query)

    assert response.get_json()["mxid"] == ALICE
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("reconnecting" in r.getMessage() for r in caplog.records)


def test_v2_none_lookup_asks_the_directory(
    ldap_app: Flask, homeserver: Homeserver
) -> None:
    client = ldap_app.test_client()
    token, pepper = token_and_pepper(client, homeserver)
    addresses = ["Dave.Upper@example.org email", "+44 20 7946 0000 msisdn"]

    response = client.post(
        f"{V2}/lookup",
        json={"algorithm": "none", "pepper": pepper, "addresses": addresses},
        headers=bearer(token),
    )

    assert response.get_json() == {
        "mappings": {addresses[0]: DAVE, addresses[1]: ALICE}
    }


def test_v2_hashed_lookup_finds_ldap_users_through_the_index(
    ldap_app: Flask, homeserver: Homeserver
) -> None:
    client = ldap_app.test_client()
    token, pepper = token_and_pepper(client, homeserver)
    hashes = {
        a: lookup_hash(a, m, pepper)
        for a, m in [
            ("alice.liddell@example.org", "email"),
            ("442079460000", "msisdn"),
            ("alice@example.org", "email"),  # the memory store's
            ("mallory@example.org", "email"),
        ]
    }

    response = sha256_lookup(client, token, pepper, list(hashes.values()))

    assert response.get_json() == {
        "mappings": {
            hashes["alice.liddell@example.org"]: ALICE,
            hashes["442079460000"]: ALICE,
            hashes["alice@example.org"]: "@alice:example.org",
        }
    }


def test_a_custom_medium_answers_every_lookup_api(
    make_config: ConfigFactory, homeserver: Homeserver, slapd: Slapd
) -> None:
    from conftest import homeserver_config

    # employeeNumber in LDAP, and a memory identity's "employee" 3PID.
    memory = {
        "username": "alice",
        "threepids": [{"medium": "employee", "address": "M-7"}],
    }
    config = make_config(
        ldap=slapd.config(),
        memory={"identities": [memory]},
        **homeserver_config(homeserver),
    )
    application = create_app(config)
    client = application.test_client()
    token, pepper = token_and_pepper(client, homeserver)
    single = {"medium": "employee", "address": "E-1001"}
    bulk = [["employee", "E-1002"], ["employee", "M-7"], ["employee", "E-0000"]]
    hashes = [lookup_hash(a, "employee", pepper) for a in ("E-1001", "M-7", "E-0")]

    found = client.get(f"{V1}/lookup", query_string=single).get_json()
    in_bulk = client.post(f"{V1}/bulk_lookup", json={"threepids": bulk}).get_json()
    by_name = client.post(
        f"{V2}/lookup",
        json={"algorithm": "none", "pepper": pepper, "addresses": ["E-1002 employee"]},
        headers=bearer(token),
    ).get_json()
    by_hash = sha256_lookup(client, token, pepper, hashes).get_json()
    close_app(application)

    assert (found["medium"], found["address"], found["mxid"]) == (
        "employee",
        "E-1001",
        ALICE,
    )
    assert sorted(in_bulk["threepids"]) == [
        ["employee", "E-1002", BOB],
        ["employee", "M-7", "@alice:example.org"],
    ]
    assert by_name == {"mappings": {"E-1002 employee": BOB}}
    assert by_hash == {"mappings": {hashes[0]: ALICE, hashes[1]: "@alice:example.org"}}


def test_index_is_built_from_the_ldap_listing(store: LdapIdentityStore) -> None:
    index = HashIndex([store], refresh_s=300, build_timeout_s=10)

    found = index.lookup(
        [lookup_hash("dave.upper@example.org", "email", "p3pper")], "p3pper"
    )

    assert list(found.values()) == [DAVE]


def test_a_stopped_server_leaves_the_other_stores_answering(
    ldap_app: Flask, slapd: Slapd, caplog: pytest.LogCaptureFixture
) -> None:
    client: FlaskClient = ldap_app.test_client()
    assert (
        client.get(
            f"{V1}/lookup",
            query_string={"medium": "email", "address": "ldapalice@example.org"},
        ).get_json()["mxid"]
        == ALICE
    )
    slapd.stop()
    caplog.set_level(logging.WARNING, logger="mxisd_flask")

    memory = client.get(
        f"{V1}/lookup", query_string={"medium": "email", "address": "alice@example.org"}
    )
    ldap_user = client.get(
        f"{V1}/lookup",
        query_string={"medium": "email", "address": "ldapalice@example.org"},
    )
    bulk = client.post(
        f"{V1}/bulk_lookup",
        json={
            "threepids": [
                ["email", "alice@example.org"],
                ["email", "ldapalice@example.org"],
            ]
        },
    )

    assert (
        memory.status_code == 200 and memory.get_json()["mxid"] == "@alice:example.org"
    )
    assert ldap_user.status_code == 200 and ldap_user.get_json() == {}
    assert bulk.status_code == 200
    assert bulk.get_json()["threepids"] == [
        ["email", "alice@example.org", "@alice:example.org"]
    ]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("store=ldap" in w for w in warnings), warnings


# Configuration


def test_capabilities_can_be_turned_off(slapd: Slapd) -> None:
    store = make_store(slapd, auth={"enabled": False}, directory={"enabled": False})

    assert store.capabilities == {
        Capability.LOOKUP,
        Capability.LISTING,
        Capability.PROFILE,
    }


def test_older_single_base_dn_is_read(slapd: Slapd) -> None:
    section = slapd.config()
    connection = {k: v for k, v in section["connection"].items() if k != "baseDNs"}
    store = make_store(
        slapd, connection={**connection, "baseDn": "ou=people,dc=example,dc=org"}
    )

    assert store.config.base_dns == ("ou=people,dc=example,dc=org",)
    assert store.lookup("email", "ldapalice@example.org") == ALICE


def test_bind_password_from_the_environment_and_hidden(
    slapd: Slapd, monkeypatch: pytest.MonkeyPatch
) -> None:
    section = slapd.config()
    password = section["connection"].pop("bindPassword")
    monkeypatch.setenv("MXISD_LDAP__CONNECTION__BINDPASSWORD", password)
    store = make_store(slapd, connection=section["connection"])

    assert store.lookup("email", "ldapalice@example.org") == ALICE
    assert password not in repr(store.config)


@pytest.mark.parametrize(
    "section, key",
    [
        ({"attribute": {"uid": {"type": "login"}}}, "ldap.attribute.uid.type"),
        ({"identity": {"medium": {"email": "(mail=x)"}}}, "ldap.identity.medium.email"),
        ({"filter": "(&(a=b)"}, "ldap.filter"),
        (
            {"attribute": {"threepid": {"email": "mail"}}},
            "ldap.attribute.threepid.email",
        ),
        ({"connection": {"host": ""}}, "ldap.connection.host"),
        (
            {"connection": {"host": "h", "baseDNs": ["o=x"], "bindDn": "cn=x"}},
            "ldap.connection.bindPassword",
        ),
        ({"connection": {"host": "h", "baseDNs": []}}, "ldap.connection.baseDNs"),
        (
            {
                "connection": {
                    "host": "h",
                    "baseDNs": ["o=x"],
                    "tls": True,
                    "startTls": True,
                }
            },
            "ldap.connection.startTls",
        ),
    ],
)
def test_bad_values_name_their_key(section: dict[str, Any], key: str) -> None:
    raw = with_ldap(
        {
            "enabled": True,
            "connection": {"host": "127.0.0.1", "baseDNs": ["dc=example,dc=org"]},
            **section,
        }
    )
    with pytest.raises(ConfigError, match=key):
        from_config(parse_config(raw))


def test_disabled_section_builds_no_store() -> None:
    raw = with_ldap({"connection": {"host": "127.0.0.1"}})

    assert from_config(parse_config(raw)) is None


# Paging, TLS, Synapse logins


@pytest.fixture(scope="module")
def big_slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slapd]:
    """A slapd with more users than its size limit (500) lets one search return."""
    root = tmp_path_factory.mktemp("big-slapd")
    server = Slapd(root)
    server.load(write_temp(ldif_users(1200), root))
    server.start()
    yield server
    server.stop()


def test_listing_pages_past_the_server_size_limit(big_slapd: Slapd) -> None:
    store = make_store(big_slapd, filter="(objectClass=inetOrgPerson)")

    mxids = {mxid for _, _, mxid in store.iter_threepids()}

    assert {f"@user{i}:example.org" for i in range(1200)} <= mxids
    # An unpaged search stops at the server's limit.
    unpaged = store._pool.run(
        lambda c: store._search(c, "(objectClass=inetOrgPerson)", ["uid"])
    )
    assert len(unpaged) < 1200


def trusting_store(
    tls_server: tuple[Slapd, Path], monkeypatch: pytest.MonkeyPatch
) -> LdapIdentityStore:
    """A store for a TLS fixture's server that trusts the fixture's CA."""
    server, ca_file = tls_server
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    return make_store(server)


@pytest.mark.parametrize(
    "server_fixture, scheme", [("slapd_tls", "ldaps://"), ("slapd_starttls", "ldap://")]
)
def test_tls_with_a_certificate_from_a_trusted_ca(
    server_fixture: str,
    scheme: str,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = trusting_store(request.getfixturevalue(server_fixture), monkeypatch)

    assert store.config.uri.startswith(scheme)
    assert store.lookup("email", "ldapalice@example.org") == ALICE
    assert store.authenticate(ALICE, "ldapalice", "ldapalice-pw") is not None
    assert store.authenticate(ALICE, "ldapalice", "wrong") is None


def test_tls_refuses_a_trusted_certificate_for_another_name(
    slapd_misnamed: tuple[Slapd, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = trusting_store(slapd_misnamed, monkeypatch)

    with pytest.raises(StoreError):
        store.lookup("email", "ldapalice@example.org")


def test_the_starttls_server_serves_nothing_before_the_upgrade(
    slapd_starttls: tuple[Slapd, Path],
) -> None:
    # So the StartTLS test above passed over TLS only.
    server, _ = slapd_starttls
    connection = {**server.config()["connection"], "startTls": False}
    plain = make_store(server, connection=connection)

    with pytest.raises(StoreError, match="onfidentiality"):
        plain.lookup("email", "ldapalice@example.org")


@pytest.mark.parametrize("server_fixture", ["slapd_tls", "slapd_starttls"])
def test_tls_refuses_an_untrusted_certificate(
    server_fixture: str,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, _ = request.getfixturevalue(server_fixture)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    store = make_store(server)

    with pytest.raises(StoreError):
        store.lookup("email", "ldapalice@example.org")
    with pytest.raises(StoreError):
        store.authenticate(ALICE, "ldapalice", "ldapalice-pw")


def test_starttls_again_after_a_server_restart(
    slapd_starttls: tuple[Slapd, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = trusting_store(slapd_starttls, monkeypatch)
    assert store.lookup("email", "ldapalice@example.org") == ALICE

    slapd_starttls[0].restart()

    assert store.lookup("email", "dave.upper@example.org") == DAVE


CHECK_CREDENTIALS = "/_matrix-internal/identity/v1/check_credentials"


def test_synapse_login_with_the_ldap_password(ldap_app: Flask) -> None:
    client = ldap_app.test_client()

    def check(user: str, password: str) -> Any:
        body = {"user": {"id": user, "password": password}}
        return client.post(CHECK_CREDENTIALS, json=body).get_json()

    accepted = check("@LDAPAlice:Example.org", "ldapalice-pw")["auth"]

    assert accepted["success"] is True
    assert accepted["id"] == {"type": "mxid", "value": ALICE}
    assert accepted["profile"]["display_name"] == "Alice Liddell"
    assert {"medium": "email", "address": "alice.liddell@example.org"} in accepted[
        "profile"
    ]["three_pids"]
    assert check("ldapalice", "wrong")["auth"] == {"success": False}
    assert check("@ldapmallory:example.org", "ldapmallory-pw")["auth"] == {
        "success": False
    }


def test_v2_lookup_finds_memory_users_while_ldap_is_down_at_the_first_build(
    ldap_app: Flask, slapd: Slapd, homeserver: Homeserver
) -> None:
    client = ldap_app.test_client()
    token, pepper = token_and_pepper(client, homeserver)
    slapd.stop()
    alice = lookup_hash("alice@example.org", "email", pepper)

    response = sha256_lookup(client, token, pepper, [alice])

    assert response.status_code == 200
    assert response.get_json() == {"mappings": {alice: "@alice:example.org"}}
