"""The lookup pepper: random, stored, rotated on schedule."""

from __future__ import annotations

import logging
import threading

from mxisd_flask.config.sections import HashingConfig
from mxisd_flask.crypto.hashing import lookup_hash, new_pepper
from mxisd_flask.services.clock import Clock
from mxisd_flask.storage.bindings import BindingStorage, HashStateStorage
from mxisd_flask.storage.db import Cursor, Database

logger = logging.getLogger(__name__)

# How long a worker trusts its cached pepper before reading storage again.
CACHE_S = 2


class PepperService:
    def __init__(self, db: Database, config: HashingConfig, clock: Clock) -> None:
        self._db = db
        self._config = config
        self._clock = clock
        self._state = HashStateStorage()
        self._bindings = BindingStorage()
        self._lock = threading.Lock()
        self._cached: tuple[str, int, int] | None = None  # pepper, created, read at

    def current(self) -> str:
        """The pepper clients must use now, rotating it first when due."""
        now = self._clock()
        cached = self._cached
        if (
            cached
            and now - cached[2] < CACHE_S * 1000
            and not self._due(cached[1], now)
        ):
            return cached[0]
        with self._lock:
            with self._db.read() as cur:
                state = self._state.get(cur)
            if state is None or self._due(state[1], now):
                state = self._rotate(now)
            self._cached = (state[0], state[1], now)
            return state[0]

    def _due(self, created_ts: int, now: int) -> bool:
        return now - created_ts >= self._config.rotation_delay_s * 1000

    def _rotate(self, now: int) -> tuple[str, int]:
        with self._db.write() as cur:
            state = self._state.get(cur, lock=self._row_lock("UPDATE"))
            if state is not None and not self._due(state[1], now):
                return state  # another worker rotated first
            pepper = new_pepper(self._config.pepper_length)
            self._state.set(cur, pepper, now)
            count = self._bindings.rehash(cur, lambda a, m: lookup_hash(a, m, pepper))
        logger.info("lookup pepper rotated bindings_rehashed=%d", count)
        return pepper, now

    def pepper_for_write(self, cur: Cursor) -> str:
        """The pepper inside a writing transaction, locked against rotation."""
        state = self._state.get(cur, lock=self._row_lock("SHARE"))
        if state is None:
            # create_app() calls current() before serving, so this is a bug.
            raise RuntimeError("no lookup pepper in storage")
        return state[0]

    def _row_lock(self, mode: str) -> str:
        return mode if self._db.backend == "postgresql" else ""
