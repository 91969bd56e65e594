"""Local 3PID bindings, with each row's hash under the current pepper."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence

from mxisd_flask.storage.counter import BINDINGS
from mxisd_flask.storage.db import Cursor

# The change log keeps this many rows: a process further behind rebuilds its
# table from the bindings (services/binding_cache.py). Pruned every
# PRUNE_EVERY changes.
KEEP_CHANGES = 10_000
PRUNE_EVERY = 1_000
# The log row a pepper rotation writes: every hash changed.
ALL_CHANGED = ""

Change = tuple[int, str, str | None]  # seq, lookup hash, mxid (None: unbound)


def _chunks(values: Sequence[str], size: int = 500) -> list[list[str]]:
    """Bounded IN lists keep each statement small on both backends."""
    return [list(values[i : i + size]) for i in range(0, len(values), size)]


class BindingStorage:
    def get(self, cur: Cursor, medium: str, address: str) -> str | None:
        cur.execute(
            "SELECT mxid FROM bindings WHERE medium = ? AND address = ?",
            (medium, address),
        )
        row = cur.fetchone()
        return str(row[0]) if row else None

    def bound_since(
        self, cur: Cursor, medium: str, address: str, mxid: str
    ) -> int | None:
        """When the 3PID was bound to ``mxid``, if it is bound to it."""
        cur.execute(
            "SELECT created_ts FROM bindings "
            "WHERE medium = ? AND address = ? AND mxid = ?",
            (medium, address, mxid),
        )
        row = cur.fetchone()
        return int(row[0]) if row else None

    def get_many(
        self, cur: Cursor, threepids: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], str]:
        by_medium: dict[str, list[str]] = {}
        for medium, address in threepids:
            by_medium.setdefault(medium, []).append(address)
        found: dict[tuple[str, str], str] = {}
        for medium, addresses in by_medium.items():
            for chunk in _chunks(addresses):
                marks = ", ".join("?" * len(chunk))
                cur.execute(
                    "SELECT address, mxid FROM bindings "
                    f"WHERE medium = ? AND address IN ({marks})",
                    [medium, *chunk],
                )
                found.update({(medium, str(a)): str(m) for a, m in cur.fetchall()})
        return found

    def by_hashes(self, cur: Cursor, hashes: Sequence[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for chunk in _chunks(hashes):
            marks = ", ".join("?" * len(chunk))
            if isinstance(cur, sqlite3.Cursor):
                found.update(_sqlite_by_hashes(cur, marks, chunk))
                continue
            cur.execute(
                "SELECT lookup_hash, mxid FROM bindings "
                f"WHERE lookup_hash IN ({marks})",
                chunk,
            )
            found.update({str(h): str(m) for h, m in cur.fetchall()})
        return found

    def upsert(
        self,
        cur: Cursor,
        medium: str,
        address: str,
        mxid: str,
        lookup_hash: str,
        now_ms: int,
    ) -> None:
        # One statement: with DELETE then INSERT, two binds of one 3PID at
        # once on PostgreSQL had the second fail on the primary key.
        cur.execute(
            "INSERT INTO bindings (medium, address, mxid, lookup_hash, created_ts) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (medium, address) DO UPDATE SET "
            "mxid = excluded.mxid, lookup_hash = excluded.lookup_hash, "
            "created_ts = excluded.created_ts",
            (medium, address, mxid, lookup_hash, now_ms),
        )
        _log_change(cur, lookup_hash, mxid)

    def delete(self, cur: Cursor, medium: str, address: str, mxid: str) -> bool:
        if isinstance(cur, sqlite3.Cursor):
            cur.execute(
                "SELECT lookup_hash FROM bindings "
                "WHERE medium = ? AND address = ? AND mxid = ?",
                (medium, address, mxid),
            )
            row = cur.fetchone()
            if row is not None:
                _log_change(cur, str(row[0]), None)
        cur.execute(
            "DELETE FROM bindings WHERE medium = ? AND address = ? AND mxid = ?",
            (medium, address, mxid),
        )
        return cur.rowcount > 0

    def rehash(self, cur: Cursor, hasher: Callable[[str, str], str]) -> int:
        cur.execute("SELECT medium, address FROM bindings")
        rows = [(hasher(a, m), m, a) for m, a in cur.fetchall()]
        cur.executemany(
            "UPDATE bindings SET lookup_hash = ? WHERE medium = ? AND address = ?", rows
        )
        _log_change(cur, ALL_CHANGED, None)
        return len(rows)

    def changes_since(self, cur: Cursor, seq: int) -> list[Change]:
        """The change log's rows after ``seq``, oldest first."""
        cur.execute(
            "SELECT seq, lookup_hash, mxid FROM binding_changes "
            "WHERE seq > ? ORDER BY seq",
            (seq,),
        )
        return [
            (int(s), str(h), None if m is None else str(m))
            for s, h, m in cur.fetchall()
        ]

    def last_change(self, cur: Cursor) -> int:
        cur.execute("SELECT MAX(seq) FROM binding_changes")
        row = cur.fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def hash_entries(self, cur: Cursor, batch: int = 10_000) -> dict[str, str]:
        """lookup hash -> mxid of every binding, read in batches."""
        cur.execute("SELECT lookup_hash, mxid FROM bindings")
        entries: dict[str, str] = {}
        while rows := cur.fetchmany(batch):
            entries.update(rows)
        return entries


def _log_change(cur: Cursor, lookup_hash: str, mxid: str | None) -> None:
    """Append to the change log that keeps each process's in-memory table of
    our bindings exact (SQLite only: services/binding_cache.py)."""
    if not isinstance(cur, sqlite3.Cursor):
        return
    cur.execute(
        "INSERT INTO binding_changes (lookup_hash, mxid) VALUES (?, ?)",
        (lookup_hash, mxid),
    )
    seq = cur.lastrowid
    if seq is None:
        return
    # Before the commit, under SQLite's write lock (storage/counter.py).
    counters = getattr(cur.connection, "change_counters", None)
    if counters is not None:
        counters.publish(BINDINGS, seq)
    if seq % PRUNE_EVERY == 0:
        # The newest row always stays, so SQLite never hands out its seq
        # again (a rowid is the largest one plus one).
        cur.execute("DELETE FROM binding_changes WHERE seq <= ?", (seq - KEEP_CHANGES,))


def _sqlite_by_hashes(
    cur: sqlite3.Cursor, marks: str, chunk: list[str]
) -> dict[str, str]:
    """One row holding every match as a JSON object. Python's sqlite3 lets go
    of the GIL and takes it back around each row it steps to; under gunicorn's
    threads every one of those hand-overs can stall this request behind
    another. Aggregated, the index probes all run in one step, without the
    GIL, so a worker's other threads run meanwhile (bench/RESULTS.md)."""
    cur.execute(
        "SELECT json_group_object(lookup_hash, mxid) FROM bindings "
        f"WHERE lookup_hash IN ({marks})",
        chunk,
    )
    found: dict[str, str] = json.loads(cur.fetchone()[0])
    return found


class HashStateStorage:
    def get(self, cur: Cursor, lock: str = "") -> tuple[str, int] | None:
        """Read the pepper; ``lock`` ("SHARE" or "UPDATE") orders writers on
        PostgreSQL so a bind never stores a hash under a pepper being replaced.
        SQLite needs no row lock: its write transactions are serialised."""
        suffix = f" FOR {lock}" if lock else ""
        cur.execute("SELECT pepper, created_ts FROM hash_state WHERE id = 1" + suffix)
        row = cur.fetchone()
        return (str(row[0]), int(row[1])) if row else None

    def set(self, cur: Cursor, pepper: str, now_ms: int) -> None:
        cur.execute(
            "UPDATE hash_state SET pepper = ?, created_ts = ? WHERE id = 1",
            (pepper, now_ms),
        )
        if cur.rowcount == 0:
            cur.execute(
                "INSERT INTO hash_state (id, pepper, created_ts) VALUES (1, ?, ?)",
                (pepper, now_ms),
            )
