"""Our own bindings' lookup hashes, held in this process's memory (SQLite).

A v2 lookup of 1000 hashes spends most of its time probing the bindings
index in SQLite, one probe per hash (bench/RESULTS.md). This cache answers
from a dict instead, and stays exact across gunicorn's workers: every bind
and unbind also appends its hash and new mxid (none for an unbind) to the
``binding_changes`` log in the same transaction, and each lookup first
applies the log's rows after the last one this process has seen, so a
lookup never misses a binding committed before it started, whichever
worker committed it. The log's writers also store its newest row's number
in a file every process reads (storage/counter.py): while that number is
the last one this process applied, a lookup asks SQLite nothing. A new
pepper, or a gap in the log (old rows are pruned), starts a rebuild from
the table in a background thread; lookups ask SQLite meanwhile.

Only for SQLite: a PostgreSQL database may be shared by servers on several
hosts, and its sequences do not follow commit order, so a log read by
sequence could skip a row that commits late. There the lookup asks the
database, as before.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from mxisd_flask.storage.bindings import ALL_CHANGED, BindingStorage, HashStateStorage
from mxisd_flask.storage.counter import (
    BINDINGS,
    TRUST_SECONDS,
    ChangeCounters,
    Stamp,
)
from mxisd_flask.storage.db import Database

logger = logging.getLogger(__name__)


@dataclass
class _Snapshot:
    pepper: str
    seq: int  # the last change log row applied
    entries: dict[str, str]  # lookup hash -> mxid


class BindingHashCache:
    def __init__(self, db: Database, storage: BindingStorage) -> None:
        self._db = db
        self._storage = storage
        self._state = HashStateStorage()
        self._snapshot: _Snapshot | None = None
        self._lock = threading.Lock()
        self._building_in: int | None = None  # pid of the process building
        self._counters: ChangeCounters | None = None
        self._checked = 0.0  # time.monotonic() of the last read of the log
        self._generation: int | None = None  # the counters' opening it followed

    def lookup(self, hashes: Sequence[str], pepper: str) -> dict[str, str] | None:
        """mxids for those of ``hashes`` that are bound, or None when this
        process has no table for ``pepper`` yet (the caller asks storage)."""
        snapshot = self._current(pepper)
        if snapshot is None:
            return None
        entries = snapshot.entries
        return {h: mxid for h in hashes if (mxid := entries.get(h)) is not None}

    @property
    def pepper(self) -> str | None:
        """The pepper of the table this process holds, if it holds one."""
        snapshot = self._snapshot
        return None if snapshot is None else snapshot.pepper

    def ready(self, pepper: str) -> bool:
        """Whether lookups under ``pepper`` answer from memory now."""
        snapshot = self._snapshot
        return snapshot is not None and snapshot.pepper == pepper

    def _current(self, pepper: str) -> _Snapshot | None:
        snapshot = self._snapshot
        if snapshot is None or snapshot.pepper != pepper:
            self._start_build()
            return None
        counters = self._counters
        stamp = None if counters is None else counters.read(BINDINGS)
        if self._unchanged_since(snapshot, stamp):
            return snapshot
        # Read before the log: a later reopening of the file reads it again.
        self._checked = time.monotonic()
        self._generation = None if stamp is None else stamp[0]
        with self._db.read() as cur:
            changes = self._storage.changes_since(cur, snapshot.seq)
        if not changes:
            return snapshot
        with self._lock:
            snapshot = self._apply(pepper)
        if snapshot is None:
            self._start_build()
        return snapshot

    def _unchanged_since(self, snapshot: _Snapshot, stamp: Stamp | None) -> bool:
        """Whether the shared counters, in the opening of their file this
        process followed at its last read of the log, still hold the
        snapshot's last change, so the log has nothing newer, and that read
        was under a second ago."""
        return (
            stamp is not None
            and stamp == (self._generation, snapshot.seq)
            and time.monotonic() - self._checked < TRUST_SECONDS
        )

    def _apply(self, pepper: str) -> _Snapshot | None:
        """Apply the log's new rows, or drop the table when they cannot be
        applied; with ``self._lock`` held (another thread may have applied
        some of them meanwhile)."""
        snapshot = self._snapshot
        if snapshot is None or snapshot.pepper != pepper:
            return None
        with self._db.read() as cur:
            changes = self._storage.changes_since(cur, snapshot.seq)
        gap = bool(changes) and changes[0][0] != snapshot.seq + 1
        if gap or any(h == ALL_CHANGED for _, h, _ in changes):
            # Rows we never saw were pruned, or the pepper rotated: only the
            # table can tell now.
            self._snapshot = None
            return None
        entries = snapshot.entries
        for seq, lookup_hash, mxid in changes:
            if mxid is None:
                entries.pop(lookup_hash, None)
            else:
                entries[lookup_hash] = mxid
            snapshot.seq = seq
        return snapshot

    def start(self) -> None:
        """Build the table now, rather than at the first hashed lookup."""
        self._start_build()

    def _start_build(self) -> None:
        with self._lock:
            # A thread does not survive a fork: a build started before
            # gunicorn forked this worker is not running here.
            if self._building_in == os.getpid():
                return
            self._building_in = os.getpid()
        thread = threading.Thread(target=self._build, name="binding-cache", daemon=True)
        thread.start()

    def _build(self) -> None:
        started = time.monotonic()
        try:
            with self._db.snapshot() as cur:
                state = self._state.get(cur)
                seq = self._storage.last_change(cur)
                entries = self._storage.hash_entries(cur)
        except sqlite3.Error as exc:
            # Lookups go on asking storage; the next one tries again.
            logger.warning("binding cache build failed: %s", exc)
            state = None
        generation = None if state is None else self._sync_counters(seq)
        with self._lock:
            if state is not None:
                self._snapshot = _Snapshot(state[0], seq, entries)
                self._checked = time.monotonic()
                self._generation = generation
            self._building_in = None
        if state is None:
            return
        logger.info(
            "binding cache built entries=%d seconds=%.2f",
            len(entries),
            time.monotonic() - started,
        )

    def _sync_counters(self, seq: int) -> int | None:
        """Fetch the shared counters; if they are behind the log (a log
        written before their file existed), store the log's last row there,
        under the write lock as the log's writers do. Returns the opening
        the table follows from now on (None: lookups read the log)."""
        counters = self._db.change_counters
        self._counters = counters
        if counters is None:
            return None
        stamp = counters.read(BINDINGS)
        if stamp is not None and stamp[1] == seq:
            return stamp[0]
        try:
            with self._db.write() as cur:
                counters.publish(BINDINGS, self._storage.last_change(cur))
                stamp = counters.read(BINDINGS)
        except sqlite3.Error as exc:
            # Lookups read the log each time instead.
            logger.warning("change counters not updated: %s", exc)
            return None
        return None if stamp is None else stamp[0]
