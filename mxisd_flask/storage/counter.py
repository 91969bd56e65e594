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

The file is the operator's to delete, replace or truncate, running or not.
Each read first asks the kernel whether the file at the path is still the
one mapped here, and at full size: touching a mapped page past the end of
its file kills the process (SIGBUS). If it is not, the file at the path is
mapped instead (a new one made if it is missing or short), and what was
read before counts for nothing: each read names the mapping it came from.
A process that cannot map the file removes it when it writes the log or
logs out, so that the others stop trusting it. Numbers read are trusted
for TRUST_SECONDS at most, whatever the file says.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import mmap
import os
import tempfile
import threading
import time
from dataclasses import dataclass

logger = logging.getLogger(__name__)

SUFFIX = ".seq"
BINDINGS = 0
ACCOUNTS = 1
_SLOTS = 2
_SIZE = 8 * _SLOTS  # native signed 64-bit integers


# The longest a process answers from what the counters told it without
# asking SQLite (services/binding_cache.py, services/accounts.py).
TRUST_SECONDS = 1.0
# A process that failed to map the file tries again after this long.
RETRY_SECONDS = 1.0

# Which mapping a number was read from, and the number.
Stamp = tuple[int, int]


@dataclass
class _Mapping:
    file: tuple[int, int]  # st_dev, st_ino
    mapping: mmap.mmap
    values: memoryview  # cast to "q"
    generation: int


class ChangeCounters:
    """Signed 64-bit numbers in a file mapped shared by every process.

    Item access on a memoryview cast to "q" moves all eight bytes with one
    aligned store or load, so a reader never sees half of a new number.
    """

    def __init__(self, database: str) -> None:
        self._path = database + SUFFIX
        self._lock = threading.Lock()
        self._mapped: _Mapping | None = None
        self._generation = 0
        self._failed_at: float | None = None

    @classmethod
    def open(cls, database: str) -> ChangeCounters:
        """The counters beside SQLite file ``database``, created at 0 if
        missing; readers ask SQLite while they cannot be mapped."""
        counters = cls(database)
        counters._current()
        return counters

    def read(self, slot: int) -> Stamp | None:
        """The number in ``slot`` and the mapping it was read from; None
        when the file cannot be mapped (the caller asks SQLite)."""
        mapped = self._current()
        if mapped is None:
            return None
        return mapped.generation, int(mapped.values[slot])

    def publish(self, slot: int, value: int) -> None:
        """Store ``value``; the caller holds SQLite's write lock."""
        mapped = self._current()
        if mapped is None:
            self._withdraw()
            return
        mapped.values[slot] = value

    def increment(self, slot: int) -> None:
        """Add one, one process at a time."""
        try:
            fd = os.open(self._path, os.O_RDONLY)
        except OSError:
            fd = None
        try:
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            mapped = self._current()
            if mapped is None:
                self._withdraw()
                return
            mapped.values[slot] += 1
        finally:
            if fd is not None:
                os.close(fd)

    def close(self) -> None:
        with self._lock:
            mapped, self._mapped = self._mapped, None
        if mapped is not None:
            mapped.values.release()
            mapped.mapping.close()

    def _current(self) -> _Mapping | None:
        """The mapping of the file at the path, mapped again if the file
        changed; None if it cannot be mapped."""
        mapped = self._mapped
        try:
            found = os.stat(self._path)
        except OSError:
            found = None
        if (
            mapped is not None
            and found is not None
            and (found.st_dev, found.st_ino) == mapped.file
            and found.st_size >= _SIZE
        ):
            return mapped
        with self._lock:
            return self._remap()

    def _remap(self) -> _Mapping | None:
        """With ``self._lock`` held."""
        # Its numbers may be stale: nothing read from it counts now. Another
        # thread may still read it: it is unmapped once nothing refers to it.
        self._mapped = None
        failed_at = self._failed_at
        if failed_at is not None and time.monotonic() - failed_at < RETRY_SECONDS:
            return None
        try:
            fd = self._open_full()
            try:
                found = os.fstat(fd)
                mapping = mmap.mmap(fd, _SIZE)
            finally:
                os.close(fd)
        except (OSError, ValueError) as exc:
            if self._failed_at is None:
                logger.warning(
                    "change counters unavailable path=%s: %s",
                    self._path,
                    getattr(exc, "strerror", None) or exc,
                )
            self._failed_at = time.monotonic()
            return None
        if self._failed_at is not None:
            logger.info("change counters available again path=%s", self._path)
            self._failed_at = None
        self._generation += 1
        self._mapped = _Mapping(
            (found.st_dev, found.st_ino),
            mapping,
            memoryview(mapping).cast("q"),
            self._generation,
        )
        return self._mapped

    def _open_full(self) -> int:
        """A descriptor of the file at the path, at full size. A missing or
        short file is replaced by a new one rather than grown in place: a
        process still mapping it must see another file, not numbers that
        start again from 0."""
        for _ in range(3):
            try:
                fd = os.open(self._path, os.O_RDWR)
            except FileNotFoundError:
                fd = None
            if fd is not None:
                if os.fstat(fd).st_size >= _SIZE:
                    return fd
                os.close(fd)
            self._replace()
        raise OSError(errno.EAGAIN, "the file keeps changing")

    def _replace(self) -> None:
        """Put a new file of zeros at the path, written out (a file with
        holes would need disk space at the first store into the mapping,
        and SIGBUS if there is none)."""
        directory = os.path.dirname(self._path) or "."
        fd, temporary = tempfile.mkstemp(prefix=".seq-", dir=directory)
        try:
            os.write(fd, bytes(_SIZE))
            os.fsync(fd)
            os.replace(temporary, self._path)
        except OSError:
            os.unlink(temporary)
            raise
        finally:
            os.close(fd)

    def _withdraw(self) -> None:
        """This process changes what others may remember without being able
        to tell them through the file: remove it, so they stop trusting it."""
        try:
            os.unlink(self._path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            logger.warning(
                "change counters stale path=%s: %s", self._path, exc.strerror
            )
