"""Numbers every process on the host shares: what changed in the database.

Each process keeps tables in memory that must follow what other workers
commit: its bindings' lookup hashes (services/binding_cache.py) and the
access tokens it has checked (services/accounts.py). Asking SQLite whether
anything changed on every request costs more than the request itself under
gunicorn's threads: Python's sqlite3 lets go of the GIL around each step,
and taking it back from the other threads is what costs (bench/RESULTS.md).
So whoever changes those tables also changes a number in a small file
beside the database, which every process maps into memory; a request reads
eight bytes there and asks SQLite only when they differ from what its
process last saw.

BINDINGS holds the number of the binding change log's newest row. A writer
stores it inside its write transaction, before the commit, while SQLite's
write lock keeps the other writers out: the numbers stored are those of
the log's rows, in order. A reader that sees a number whose row is not
committed yet finds nothing new in the log and asks again at its next
lookup; a transaction that rolls back leaves a number no row has until the
next write reuses it (SQLite numbers the rows as the largest plus one), and
lookups ask the log meanwhile, as they would without this file.

ACCOUNTS counts the logouts. It goes up after the token's deletion has
committed, under a lock on the file, so it never goes back: a token a
process remembers from before is forgotten once the logout has answered.
"""

from __future__ import annotations

import fcntl
import logging
import mmap
import os

logger = logging.getLogger(__name__)

SUFFIX = ".seq"
BINDINGS = 0
ACCOUNTS = 1
_SLOTS = 2
_SIZE = 8 * _SLOTS  # native signed 64-bit integers


class ChangeCounters:
    """Signed 64-bit numbers in a file mapped shared by every process.

    Item access on a memoryview cast to "q" moves all eight bytes with one
    aligned store or load, so a reader never sees half of a new number.
    """

    def __init__(self, path: str, mapping: mmap.mmap) -> None:
        self._path = path
        self._mapping = mapping
        self._values = memoryview(mapping).cast("q")

    @classmethod
    def open(cls, database: str) -> ChangeCounters | None:
        """The counters beside SQLite file ``database``, created at 0 if
        missing; None when they cannot be opened (readers then ask SQLite)."""
        path = database + SUFFIX
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            logger.warning(
                "change counters unavailable path=%s: %s", path, exc.strerror
            )
            return None
        try:
            if os.fstat(fd).st_size < _SIZE:
                # Several processes may do this at once: growing a file to
                # the size it has already is no change.
                os.ftruncate(fd, _SIZE)
            return cls(path, mmap.mmap(fd, _SIZE))
        except (OSError, ValueError) as exc:
            logger.warning("change counters unavailable path=%s: %s", path, exc)
            return None
        finally:
            os.close(fd)

    def read(self, slot: int) -> int:
        return int(self._values[slot])

    def publish(self, slot: int, value: int) -> None:
        """Store ``value``; the caller holds SQLite's write lock."""
        self._values[slot] = value

    def increment(self, slot: int) -> None:
        """Add one, one process at a time."""
        with open(self._path, "rb") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            self._values[slot] += 1

    def close(self) -> None:
        self._values.release()
        self._mapping.close()
