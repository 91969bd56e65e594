"""storage.provider.sqlite.bindingsInMemory: with it off, a worker keeps no
table of our bindings' hashes and lookups answer from SQLite, the same."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from conftest import (
    V1,
    V2,
    ConfigFactory,
    FakeClock,
    Homeserver,
    Mailbox,
    bearer,
    homeserver_config,
    register,
    sha256_lookup,
    trace_statements,
    validated_session,
)
from mxisd_flask.app import create_app
from mxisd_flask.config import Config
from mxisd_flask.crypto.hashing import lookup_hash
from mxisd_flask.storage.bindings import BindingStorage

# The table is SQLite's only: PostgreSQL lookups always ask the database.
pytestmark = pytest.mark.parametrize("backend", ["sqlite"])

CAROL = "carol@example.org"


def switched(make_config: ConfigFactory, homeserver: Homeserver, on: bool) -> Config:
    storage = {"provider": {"sqlite": {"bindingsInMemory": on}}}
    return make_config(storage=storage, **homeserver_config(homeserver))


@pytest.fixture
def serving(
    make_config: ConfigFactory, homeserver: Homeserver, clock: FakeClock
) -> Iterator[list[Flask]]:
    """Apps started as a gunicorn worker starts them (background work on);
    append to the list, each is stopped and closed after the test."""
    apps: list[Flask] = []
    yield apps
    for application in apps:
        application.extensions["mxisd"].worker.stop()
        application.extensions["mxisd"].db.close()


def start(serving: list[Flask], config: Config, clock: FakeClock) -> Flask:
    application = create_app(config, clock=clock, background=True)
    serving.append(application)
    return application


def wait_for_builds() -> None:
    """Until no table is being built: one that started has read SQLite."""
    for thread in threading.enumerate():
        if thread.name == "binding-cache":
            thread.join(10)


def lookups(client: FlaskClient, token: str, pepper: str) -> tuple[Any, Any]:
    """What a v1 lookup and a v2 sha256 lookup of carol answer."""
    v1 = client.get(f"{V1}/lookup", query_string={"medium": "email", "address": CAROL})
    v2 = sha256_lookup(client, token, pepper, [lookup_hash(CAROL, "email", pepper)])
    assert v1.status_code == 200 and v2.status_code == 200
    return v1.get_json().get("mxid"), v2.get_json()["mappings"]


def test_config_turns_the_table_off_and_leaves_it_on_by_default(
    make_config: ConfigFactory, homeserver: Homeserver
) -> None:
    default = make_config(**homeserver_config(homeserver))
    off = switched(make_config, homeserver, False)

    assert default.storage.sqlite_bindings_in_memory is True
    assert off.storage.sqlite_bindings_in_memory is False


def test_worker_without_the_table_never_builds_one(
    make_config: ConfigFactory,
    homeserver: Homeserver,
    clock: FakeClock,
    serving: list[Flask],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    builds: list[int] = []
    entries = BindingStorage.hash_entries

    def counted(self: BindingStorage, cur: Any) -> dict[str, str]:
        builds.append(1)
        return entries(self, cur)

    monkeypatch.setattr(BindingStorage, "hash_entries", counted)
    application = start(serving, switched(make_config, homeserver, False), clock)
    client = application.test_client()
    token = register(client, homeserver, "@dave:example.org")
    pepper = client.get(f"{V2}/hash_details", headers=bearer(token)).get_json()[
        "lookup_pepper"
    ]

    lookups(client, token, pepper)
    wait_for_builds()

    assert application.extensions["mxisd"].chain.bindings_cache is None
    assert builds == []


def test_worker_with_the_table_builds_it(
    make_config: ConfigFactory,
    homeserver: Homeserver,
    clock: FakeClock,
    serving: list[Flask],
) -> None:
    """The counterpart of the test above: the same start does build it."""
    application = start(serving, switched(make_config, homeserver, True), clock)
    services = application.extensions["mxisd"]
    cache = services.chain.bindings_cache
    pepper = services.lookups.hash_details()["lookup_pepper"]

    assert cache is not None
    wait_for_builds()
    assert cache.ready(pepper)


@pytest.mark.parametrize("on", [True, False], ids=["table", "no-table"])
def test_lookups_answer_the_same_with_or_without_the_table(
    on: bool,
    make_config: ConfigFactory,
    homeserver: Homeserver,
    mailbox: Mailbox,
    clock: FakeClock,
    serving: list[Flask],
) -> None:
    config = switched(make_config, homeserver, on)
    # Two workers on one database: one binds, both look up.
    binder_app, reader_app = (
        start(serving, config, clock),
        start(serving, config, clock),
    )
    binder, reader = binder_app.test_client(), reader_app.test_client()
    token = register(reader, homeserver, "@dave:example.org")
    pepper = reader.get(f"{V2}/hash_details", headers=bearer(token)).get_json()[
        "lookup_pepper"
    ]
    wait_for_builds()
    statements = trace_statements(reader_app.extensions["mxisd"].db)
    wanted = lookup_hash(CAROL, "email", pepper)

    before = lookups(reader, token, pepper)
    sid = validated_session(binder, mailbox, CAROL, secret="s-carol")
    body = {"sid": sid, "client_secret": "s-carol", "mxid": "@carol:example.org"}
    assert binder.post(f"{V1}/3pid/bind", json=body).status_code == 200
    bound = [lookups(reader, token, pepper), lookups(binder, token, pepper)]
    unbind = {**body, "threepid": {"medium": "email", "address": CAROL}}
    assert binder.post(f"{V1}/3pid/unbind", json=unbind).status_code == 200
    unbound = [lookups(reader, token, pepper), lookups(binder, token, pepper)]

    assert before == (None, {})
    assert bound == [("@carol:example.org", {wanted: "@carol:example.org"})] * 2
    assert unbound == [(None, {})] * 2
    # Without the table every lookup asks the bindings in SQLite.
    asked = [s for s in statements if "FROM bindings" in s]
    assert (len(asked) >= 6) is not on
