"""Local 3PID bindings, with each row's hash under the current pepper."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence

from mxisd_flask.storage.db import Cursor


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
        cur.execute(
            "DELETE FROM bindings WHERE medium = ? AND address = ?", (medium, address)
        )
        cur.execute(
            "INSERT INTO bindings (medium, address, mxid, lookup_hash, created_ts) "
            "VALUES (?, ?, ?, ?, ?)",
            (medium, address, mxid, lookup_hash, now_ms),
        )

    def delete(self, cur: Cursor, medium: str, address: str, mxid: str) -> bool:
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
        return len(rows)


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
