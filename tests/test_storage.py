from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable

import psycopg2
import pytest

from conftest import V1, ConfigFactory, FakeClock, Homeserver, homeserver_config
from mxisd_flask.app import create_app
from mxisd_flask.config import Config
from mxisd_flask.storage.accounts import AccountStorage
from mxisd_flask.storage.bindings import BindingStorage
from mxisd_flask.storage.db import MIGRATIONS, Cursor, Database


def test_migrations_apply_once_and_are_idempotent(config: Config) -> None:
    db = Database(config.storage)

    assert db.migrate() == len(MIGRATIONS)
    assert db.migrate() == len(MIGRATIONS)
    with db.read() as cur:
        cur.execute("SELECT version FROM schema_version")
        assert cur.fetchall() == [(len(MIGRATIONS),)]
    db.close()


def test_a_failed_unit_of_work_writes_nothing(config: Config) -> None:
    db = Database(config.storage)
    db.migrate()

    with pytest.raises(RuntimeError), db.write() as cur:
        cur.execute(
            "INSERT INTO accounts (token, user_id, created_ts) VALUES (?, ?, ?)",
            ("t1", "@a:example.org", 1),
        )
        raise RuntimeError("fails half way")

    with db.read() as cur:
        cur.execute("SELECT COUNT(*) FROM accounts")
        assert cur.fetchone()[0] == 0
    db.close()


def add_account(db: Database, token: str, close: bool = False) -> None:
    with db.write() as cur:
        cur.execute(
            "INSERT INTO accounts (token, user_id, created_ts) VALUES (?, ?, ?)",
            (token, "@a:example.org", 1),
        )
    if close:  # this thread's connection
        db.close()


def test_a_write_after_a_half_read_query_survives_another_threads_commit(
    config: Config,
) -> None:
    # A read left with rows unfetched kept its SQLite snapshot open; once
    # another thread committed, this thread's next write failed at once with
    # "database is locked" (concurrent requestToken gave 500s).
    db = Database(config.storage)
    db.migrate()
    add_account(db, "t1")
    add_account(db, "t2")

    with db.read() as cur:
        cur.execute("SELECT token FROM accounts ORDER BY token")
        assert cur.fetchone() == ("t1",)
    other = threading.Thread(target=add_account, args=(db, "t3", True))
    other.start()
    other.join()
    add_account(db, "t4")

    with db.read() as cur:
        cur.execute("SELECT COUNT(*) FROM accounts")
        assert cur.fetchone()[0] == 4
    db.close()


Work = Callable[[Cursor], None]


def during_transaction(db: Database, first: Work, second: Work) -> list[Exception]:
    """Run ``second`` in its own transaction on another thread while
    ``first``'s is still open; the database errors ``second`` met."""
    failures: list[Exception] = []

    def run_second() -> None:
        try:
            with db.write() as cur:
                second(cur)
        except (sqlite3.Error, psycopg2.Error) as exc:
            failures.append(exc)
        finally:
            db.close()

    with db.write() as cur:
        first(cur)
        other = threading.Thread(target=run_second)
        other.start()
        time.sleep(0.5)  # until the other one waits for this transaction
    other.join()
    return failures


def test_two_binds_of_one_threepid_at_once_both_succeed(config: Config) -> None:
    # PostgreSQL: DELETE then INSERT let the second transaction's INSERT
    # wait on the first's new row, then fail on the primary key (a 500).
    db = Database(config.storage)
    db.migrate()
    storage = BindingStorage()

    failures = during_transaction(
        db,
        lambda cur: storage.upsert(cur, "email", "a@example.org", "@a:x", "h1", 1),
        lambda cur: storage.upsert(cur, "email", "a@example.org", "@b:x", "h2", 2),
    )

    assert failures == []
    with db.read() as cur:
        cur.execute("SELECT mxid, lookup_hash FROM bindings")
        assert cur.fetchall() == [("@b:x", "h2")]
    db.close()


def test_the_same_terms_accepted_twice_at_once_are_accepted(config: Config) -> None:
    # A double-click: both checked what was accepted before either committed.
    db = Database(config.storage)
    db.migrate()
    storage = AccountStorage()

    def accept(cur: Cursor) -> None:
        storage.accept(cur, "@a:x", ["https://example.org/p"])

    assert during_transaction(db, accept, accept) == []
    with db.read() as cur:
        assert storage.accepted_urls(cur, "@a:x") == {"https://example.org/p"}
    db.close()


def test_state_survives_a_restart(
    make_config: ConfigFactory, clock: FakeClock, homeserver: Homeserver
) -> None:
    config = make_config(**homeserver_config(homeserver))
    first = create_app(config, clock=clock)
    key = first.test_client().get(f"{V1}/pubkey/ed25519:0").get_json()
    pepper = first.extensions["mxisd"].pepper.current()
    first.extensions["mxisd"].db.close()

    second = create_app(config, clock=clock)

    assert second.test_client().get(f"{V1}/pubkey/ed25519:0").get_json() == key
    assert second.extensions["mxisd"].pepper.current() == pepper


def test_v1_paths_can_be_turned_off(
    make_config: ConfigFactory, clock: FakeClock
) -> None:
    client = create_app(make_config(matrix={"v1": False}), clock=clock).test_client()

    assert client.get(V1).status_code == 404
    assert client.get("/_matrix/identity/v2").status_code == 200


def test_bindings_by_hashes_finds_every_match_over_several_chunks(
    config: Config,
) -> None:
    db = Database(config.storage)
    db.migrate()
    storage = BindingStorage()
    # mxids JSON must escape, as the SQLite path carries them in a JSON object.
    awkward = ['@a"b:example.org', "@c\\d:example.org", "@\u00e9t\u00e9:example.org"]
    with db.write() as cur:
        for i in range(1200):
            mxid = awkward[i] if i < len(awkward) else f"@u{i}:example.org"
            storage.upsert(cur, "email", f"u{i}@example.org", mxid, f"hash{i}", 1)
    # Every other hash is bound; misses and a repeat are mixed in.
    wanted = [f"hash{i}" for i in range(0, 1200, 2)] + ["nothing", "hash0"]
    wanted += [f"miss{i}" for i in range(600)]

    with db.read() as cur:
        found = storage.by_hashes(cur, wanted)
        assert storage.by_hashes(cur, ["miss1", "miss2"]) == {}

    assert found == {
        f"hash{i}": awkward[i] if i < len(awkward) else f"@u{i}:example.org"
        for i in range(0, 1200, 2)
    }
    db.close()
