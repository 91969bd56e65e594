from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from flask import Flask

from conftest import (
    V1,
    V2,
    Homeserver,
    Mailbox,
    bearer,
    register,
    sha256_lookup,
    trace_statements,
    validated_session,
)
from mxisd_flask.config import Config
from mxisd_flask.crypto.hashing import lookup_hash
from mxisd_flask.services.binding_cache import BindingHashCache
from mxisd_flask.storage import bindings as bindings_module
from mxisd_flask.storage import held
from mxisd_flask.storage.bindings import BindingStorage, HashStateStorage
from mxisd_flask.storage.counter import BINDINGS, SUFFIX
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
def reader(config: Config, writer: Database) -> Iterator[Database]:
    """This worker's connection, which the cache reads through."""
    db = Database(config.storage)
    yield db
    db.close()


@pytest.fixture
def cache(reader: Database) -> BindingHashCache:
    return BindingHashCache(reader, STORAGE)


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
    two_workers: tuple[Flask, Flask], mailbox: Mailbox, homeserver: Homeserver
) -> None:
    first, second = two_workers
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


def test_cache_asks_sqlite_nothing_while_no_process_logged_a_change(
    writer: Database, reader: Database, cache: BindingHashCache
) -> None:
    bind(writer, "alice@example.org", "@alice:example.org")
    cache.start()
    wait_ready(cache)
    statements = trace_statements(reader)
    wanted = [h("alice@example.org"), h("bob@example.org")]

    quiet = [cache.lookup(wanted, PEPPER) for _ in range(3)]
    asked_while_quiet = list(statements)
    bind(writer, "bob@example.org", "@bob:example.org")
    after = cache.lookup(wanted, PEPPER)

    assert quiet == [{wanted[0]: "@alice:example.org"}] * 3
    assert asked_while_quiet == []
    assert after == {wanted[0]: "@alice:example.org", wanted[1]: "@bob:example.org"}
    assert any("binding_changes" in s for s in statements)


def test_a_bind_that_rolls_back_is_never_seen(
    writer: Database, cache: BindingHashCache
) -> None:
    """The writer stores the log row's number before its commit; a rollback
    leaves that number with no row."""
    cache.start()
    wait_ready(cache)
    wanted = [h("alice@example.org"), h("bob@example.org")]
    with pytest.raises(RuntimeError), writer.write() as cur:
        STORAGE.upsert(
            cur, "email", "alice@example.org", "@a:example.org", wanted[0], 1
        )
        raise RuntimeError("the request failed after the bind")

    assert cache.lookup(wanted, PEPPER) == {}
    bind(writer, "bob@example.org", "@bob:example.org")
    assert cache.lookup(wanted, PEPPER) == {wanted[1]: "@bob:example.org"}


def test_the_next_lookup_sees_a_bind_of_a_process_started_after_the_seq_file_went(
    config: Config, writer: Database, cache: BindingHashCache
) -> None:
    """An operator deletes or replaces mxisd.db.seq while the server runs;
    gunicorn then starts a worker that maps a new file."""
    cache.start()
    wait_ready(cache)
    wanted = [h("alice@example.org")]
    path = config.storage.sqlite_database + SUFFIX
    os.unlink(path)
    newcomer = Database(config.storage)
    bind(newcomer, "alice@example.org", "@alice:example.org")
    seen_after_delete = cache.lookup(wanted, PEPPER)
    # A copy put back from a backup: the same numbers, another file.
    shutil.copyfile(path, path + ".copy")
    os.replace(path + ".copy", path)
    unbind(writer, "alice@example.org", "@alice:example.org")
    seen_after_replace = cache.lookup(wanted, PEPPER)
    newcomer.close()

    assert seen_after_delete == {wanted[0]: "@alice:example.org"}
    assert seen_after_replace == {}


def test_a_counters_file_truncated_under_a_running_process_is_no_crash(
    config: Config, writer: Database
) -> None:
    """Reading a mapped page past the end of its file is SIGBUS (a worker
    killed mid-request): the file shrunk by `: > mxisd.db.seq` or a copy."""
    script = (
        "import sys\n"
        "from mxisd_flask.storage.counter import BINDINGS, SUFFIX, ChangeCounters\n"
        "counters = ChangeCounters.open(sys.argv[1])\n"
        "assert counters is not None\n"
        "open(sys.argv[1] + SUFFIX, 'wb').close()\n"
        "print(counters.read(BINDINGS))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, config.storage.sqlite_database],
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert done.returncode == 0, done.stderr


def test_a_build_brings_counters_behind_the_log_up_to_date(
    writer: Database, reader: Database, cache: BindingHashCache
) -> None:
    """A log written before the counters' file existed (an upgrade)."""
    bind(writer, "alice@example.org", "@alice:example.org")
    counters = writer.change_counters
    assert counters is not None
    with writer.read() as cur:
        last = STORAGE.last_change(cur)
    counters.publish(BINDINGS, 0)

    cache.start()
    wait_ready(cache)
    statements = trace_statements(reader)
    found = cache.lookup([h("alice@example.org")], PEPPER)

    stamp = counters.read(BINDINGS)
    assert stamp is not None and stamp[1] == last
    assert found == {h("alice@example.org"): "@alice:example.org"}
    assert statements == []


def test_v1_lookup_answers_from_the_table_and_sees_another_workers_changes(
    two_workers: tuple[Flask, Flask], mailbox: Mailbox
) -> None:
    first, second = two_workers
    binder, client = first.test_client(), second.test_client()
    sid = validated_session(binder, mailbox, "carol@example.org", secret="s-carol")
    body = {"sid": sid, "client_secret": "s-carol", "mxid": "@carol:example.org"}
    assert binder.post(f"{V1}/3pid/bind", json=body).status_code == 200
    services = second.extensions["mxisd"]
    cache = services.chain.bindings_cache
    assert cache is not None
    cache.start()
    pepper = services.lookups.hash_details()["lookup_pepper"]
    wait_ready(cache, pepper)
    statements = trace_statements(services.db)
    query = {"medium": "email", "address": "carol@example.org"}

    bound = client.get(f"{V1}/lookup", query_string=query).get_json()
    asked_first = list(statements)
    statements.clear()
    again = client.get(f"{V1}/lookup", query_string=query).get_json()
    asked_again = list(statements)
    unbind = {**body, "threepid": {"medium": "email", "address": "carol@example.org"}}
    assert binder.post(f"{V1}/3pid/unbind", json=unbind).status_code == 200
    unbound = client.get(f"{V1}/lookup", query_string=query).get_json()

    assert bound["mxid"] == "@carol:example.org"
    # The first answer this worker signs is dated by the bind, read once;
    # the mxid comes from the table both times.
    assert [s.split()[:2] for s in asked_first] == [["SELECT", "created_ts"]]
    assert again == bound
    assert asked_again == []
    assert unbound == {}


def test_a_v2_lookup_reads_the_shared_counters_once_for_its_token_and_bindings(
    two_workers: tuple[Flask, Flask],
    homeserver: Homeserver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = two_workers[1]
    client = app.test_client()
    token = register(client, homeserver, "@dave:example.org")
    services = app.extensions["mxisd"]
    pepper = services.lookups.hash_details()["lookup_pepper"]
    cache = services.chain.bindings_cache
    assert cache is not None
    cache.start()
    wait_ready(cache, pepper)
    sha256_lookup(client, token, pepper, [h("x@example.org", pepper)])
    reads: list[int] = []
    pread = held.pread

    def counted(fd: int, size: int, offset: int) -> bytes:
        reads.append(size)
        return pread(fd, size, offset)

    monkeypatch.setattr(held, "pread", counted)
    answers = [
        sha256_lookup(client, token, pepper, [h("x@example.org", pepper)])
        for _ in range(2)
    ]

    assert [a.status_code for a in answers] == [200, 200]
    assert len(reads) == 2  # one per request, not one per use
