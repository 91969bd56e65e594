from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

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
    validated_session,
)
from mxisd_flask.app import create_app
from mxisd_flask.config import Config
from mxisd_flask.crypto.hashing import lookup_hash
from mxisd_flask.services.binding_cache import BindingHashCache
from mxisd_flask.storage import bindings as bindings_module
from mxisd_flask.storage.bindings import BindingStorage, HashStateStorage
from mxisd_flask.storage.db import Database

# The in-memory table is SQLite's only (PostgreSQL lookups ask the database).
pytestmark = pytest.mark.parametrize("backend", ["sqlite"])

STORAGE = BindingStorage()
PEPPER = "pepper-one"


@pytest.fixture
def writer(config: Config) -> Iterator[Database]:
    """Another worker's connection: binds and unbinds go through it."""
    db = Database(config.storage)
    db.migrate()
    with db.write() as cur:
        HashStateStorage().set(cur, PEPPER, 1)
    yield db
    db.close()


@pytest.fixture
def cache(config: Config, writer: Database) -> Iterator[BindingHashCache]:
    db = Database(config.storage)
    yield BindingHashCache(db, STORAGE)
    db.close()


def h(address: str, pepper: str = PEPPER) -> str:
    return lookup_hash(address, "email", pepper)


def bind(db: Database, address: str, mxid: str, pepper: str = PEPPER) -> None:
    with db.write() as cur:
        STORAGE.upsert(cur, "email", address, mxid, h(address, pepper), 1)


def unbind(db: Database, address: str, mxid: str) -> None:
    with db.write() as cur:
        assert STORAGE.delete(cur, "email", address, mxid)


def wait_ready(cache: BindingHashCache, pepper: str = PEPPER) -> None:
    deadline = time.monotonic() + 10
    while not cache.ready(pepper):
        assert time.monotonic() < deadline, "binding cache not built in 10 s"
        time.sleep(0.01)


def test_cache_follows_binds_and_unbinds_of_other_workers(
    writer: Database, cache: BindingHashCache
) -> None:
    bind(writer, "alice@example.org", "@alice:example.org")
    assert cache.lookup([h("alice@example.org")], PEPPER) is None  # not built yet
    wait_ready(cache)
    wanted = [h(a) for a in ("alice@example.org", "bob@example.org", "x@example.org")]
    assert cache.lookup(wanted, PEPPER) == {wanted[0]: "@alice:example.org"}

    bind(writer, "bob@example.org", "@bob:example.org")
    unbind(writer, "alice@example.org", "@alice:example.org")

    assert cache.lookup(wanted, PEPPER) == {wanted[1]: "@bob:example.org"}

    bind(writer, "bob@example.org", "@robert:example.org")

    assert cache.lookup(wanted, PEPPER) == {wanted[1]: "@robert:example.org"}


def test_cache_rebuilds_when_changes_it_missed_were_pruned(
    writer: Database, cache: BindingHashCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bindings_module, "KEEP_CHANGES", 3)
    monkeypatch.setattr(bindings_module, "PRUNE_EVERY", 2)
    bind(writer, "alice@example.org", "@alice:example.org")
    cache.start()
    wait_ready(cache)

    unbind(writer, "alice@example.org", "@alice:example.org")
    for i in range(8):
        bind(writer, f"user{i}@example.org", f"@user{i}:example.org")
    with writer.read() as cur:
        cur.execute("SELECT MIN(seq) FROM binding_changes")
        assert cur.fetchone()[0] > 2  # alice's unbind is gone from the log

    wanted = [h("alice@example.org"), h("user7@example.org")]
    assert cache.lookup(wanted, PEPPER) is None  # asks storage meanwhile
    wait_ready(cache)
    assert cache.lookup(wanted, PEPPER) == {wanted[1]: "@user7:example.org"}


def test_cache_answers_under_a_new_pepper_only_after_a_rebuild(
    writer: Database, cache: BindingHashCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    bind(writer, "alice@example.org", "@alice:example.org")
    cache.start()
    wait_ready(cache)
    # The rebuild is held until the lookups below are done: running free, it
    # sometimes finished first (one run in ten failed).
    rebuild = threading.Event()
    entries = STORAGE.hash_entries
    monkeypatch.setattr(
        STORAGE, "hash_entries", lambda cur: rebuild.wait(10) and entries(cur)
    )

    with writer.write() as cur:
        HashStateStorage().set(cur, "pepper-two", 2)
        STORAGE.rehash(cur, lambda a, m: lookup_hash(a, m, "pepper-two"))

    # The old table is dropped at once, not asked with stale hashes.
    assert cache.lookup([h("alice@example.org")], PEPPER) is None
    new = h("alice@example.org", "pepper-two")
    assert cache.lookup([new], "pepper-two") is None
    rebuild.set()
    wait_ready(cache, "pepper-two")
    assert cache.lookup([new], "pepper-two") == {new: "@alice:example.org"}


def test_v2_lookup_in_one_worker_sees_a_bind_made_in_another(
    make_config: ConfigFactory,
    clock: FakeClock,
    mailbox: Mailbox,
    homeserver: Homeserver,
) -> None:
    config = make_config(**homeserver_config(homeserver))
    first = create_app(config, clock=clock)
    second = create_app(config, clock=clock)
    client = second.test_client()
    token = register(client, homeserver, "@dave:example.org")
    pepper = client.get(f"{V2}/hash_details", headers=bearer(token)).get_json()[
        "lookup_pepper"
    ]
    cache = second.extensions["mxisd"].chain.bindings_cache
    assert cache is not None
    cache.start()
    wait_ready(cache, pepper)

    binder = first.test_client()
    sid = validated_session(binder, mailbox, "carol@example.org", secret="s-carol")
    bound = binder.post(
        f"{V1}/3pid/bind",
        json={"sid": sid, "client_secret": "s-carol", "mxid": "@carol:example.org"},
    )
    wanted = lookup_hash("carol@example.org", "email", pepper)
    found = sha256_lookup(client, token, pepper, [wanted])

    assert bound.status_code == 200
    assert cache.ready(pepper)
    assert found.get_json() == {"mappings": {wanted: "@carol:example.org"}}
    for app in (first, second):
        app.extensions["mxisd"].db.close()
