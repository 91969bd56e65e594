"""Numbers every process on the host shares: what changed in the database.

Each process keeps tables in memory that must follow what other workers
commit: its bindings' lookup hashes (services/binding_cache.py) and the
access tokens it has checked (services/accounts.py). Asking SQLite whether
anything changed on every request costs more than the request itself under
gunicorn's threads: Python's sqlite3 lets go of the GIL around each step,
and taking it back from the other threads is what costs (bench/RESULTS.md).
So whoever changes those tables also changes a number in a small file
beside the database; a request reads sixteen bytes there and asks SQLite
only when they differ from what its process last saw.

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
one this process has open; if not, it opens the file at the path instead
(a new one made if it is missing or short), and what was read before
counts for nothing: each read names the opening it came from. The numbers
are read and written with pread and pwrite, not through a shared mapping:
a mapped page past the end of a truncated file kills the process (SIGBUS)
when touched, and the file may shrink between the check and the read. The
check and the read keep the GIL (storage/held.py): letting go of it costs
a lookup more, under gunicorn's threads, than the calls themselves. A
process that cannot open the file removes it when it writes the log or
logs out, so that the others stop trusting it. Numbers read are trusted
for TRUST_SECONDS at most, whatever the file says.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import struct
import tempfile
import threading
import time

from mxisd_flask.storage import held

logger = logging.getLogger(__name__)

SUFFIX = ".seq"
BINDINGS = 0
ACCOUNTS = 1
_SLOTS = 2
_NUMBER = struct.Struct("<q")  # signed 64-bit integers
_SIZE = _NUMBER.size * _SLOTS
_ALL = struct.Struct(f"<{_SLOTS}q")

# The longest a process answers from what the counters told it without
# asking SQLite (services/binding_cache.py, services/accounts.py).
TRUST_SECONDS = 1.0
# A process that failed to open the file tries again after this long.
RETRY_SECONDS = 1.0

# Which opening of the file a number was read from, and the number.
Stamp = tuple[int, int]


class _Opened:
    """One opening of the file. Its descriptor closes once no thread refers
    to it any more, so no thread ever reads a number that was reused for
    another file."""

    def __init__(self, fd: int, generation: int) -> None:
        found = os.fstat(fd)
        self.fd = fd
        self.file = (found.st_dev, found.st_ino)
        self.generation = generation

    def read(self) -> tuple[int, ...] | None:
        """Every slot's number; None when the file is too short (truncated)."""
        data = held.pread(self.fd, _SIZE, 0)
        if len(data) < _SIZE:
            return None
        return _ALL.unpack(data)

    def write(self, slot: int, value: int) -> None:
        os.pwrite(self.fd, _NUMBER.pack(value), slot * _NUMBER.size)

    def __del__(self) -> None:
        os.close(self.fd)


class ChangeCounters:
    """Signed 64-bit numbers in a file shared by every process.

    Each number is read and written with one pread or pwrite of eight
    aligned bytes; a number read while another process writes it is either
    one, or one neither wrote, which only makes the reader ask SQLite.
    """

    def __init__(self, database: str) -> None:
        # Beside the file SQLite opens: it follows a symlink to the database,
        # and two instances naming it by two paths share one WAL and one lock.
        self._path = os.path.realpath(database) + SUFFIX
        self._encoded_path = os.fsencode(self._path)
        self._lock = threading.Lock()
        self._opened: _Opened | None = None
        self._generation = 0
        self._failed_at: float | None = None
        # In a request (begin_request): its first reading of every slot.
        self._local = threading.local()

    @classmethod
    def open(cls, database: str) -> ChangeCounters:
        """The counters beside SQLite file ``database``, created at 0 if
        missing; readers ask SQLite while they cannot be opened."""
        counters = cls(database)
        counters._current()
        return counters

    def begin_request(self) -> None:
        """Until end_request, this thread's reads answer from its first one.

        A request must see what was committed before it started; a reading
        taken during it is later than that, so one suffices for the whole
        request: a v2 lookup asks once for its token and its bindings, not
        twice (each asking costs a stat and a pread).
        """
        self._local.reading = []

    def end_request(self) -> None:
        self._local.reading = None

    def read(self, slot: int) -> Stamp | None:
        """The number in ``slot`` and the opening it was read from; None
        when the file cannot be read (the caller asks SQLite)."""
        reading: list[tuple[int, tuple[int, ...]]] | None = getattr(
            self._local, "reading", None
        )
        if reading:
            generation, values = reading[0]
            return generation, values[slot]
        found = self._read()
        if found is None:
            return None
        if reading is not None:
            reading.append(found)
        return found[0], found[1][slot]

    def _read(self) -> tuple[int, tuple[int, ...]] | None:
        for _ in range(2):
            opened = self._current()
            if opened is None:
                return None
            try:
                values = opened.read()
            except OSError:
                values = None
            if values is not None:
                return opened.generation, values
            self._forget(opened)
        return None

    def publish(self, slot: int, value: int) -> None:
        """Store ``value``; the caller holds SQLite's write lock."""
        if not self._write(slot, value):
            self._withdraw()

    def increment(self, slot: int) -> None:
        """Add one, one process at a time."""
        try:
            fd = os.open(self._path, os.O_RDONLY)
        except OSError:
            fd = None
        try:
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            # A number past the end of a truncated file reads as none, and
            # the file is replaced: counting on from 0 could bring a number
            # back that some process remembers.
            found = self._read()
            if found is None or not self._write(slot, found[1][slot] + 1):
                self._withdraw()
        finally:
            if fd is not None:
                os.close(fd)

    def close(self) -> None:
        with self._lock:
            self._opened = None

    def _write(self, slot: int, value: int) -> bool:
        reading = getattr(self._local, "reading", None)
        if reading:
            reading.clear()  # this request reads what it wrote
        opened = self._current()
        if opened is None:
            return False
        try:
            opened.write(slot, value)
        except OSError as exc:
            logger.warning(
                "change counters not written path=%s: %s", self._path, exc.strerror
            )
            self._forget(opened)
            return False
        return True

    def _forget(self, opened: _Opened) -> None:
        with self._lock:
            if self._opened is opened:
                self._opened = None

    def _current(self) -> _Opened | None:
        """The opening of the file at the path, opened again if the file
        changed; None if it cannot be opened."""
        opened = self._opened
        try:
            device, inode, size = held.identity(self._encoded_path)
        except OSError:
            size = -1
        if opened is not None and size >= _SIZE and (device, inode) == opened.file:
            return opened
        with self._lock:
            return self._reopen()

    def _reopen(self) -> _Opened | None:
        """With ``self._lock`` held. The numbers of the file opened before
        may be stale: nothing read from it counts now."""
        self._opened = None
        failed_at = self._failed_at
        if failed_at is not None and time.monotonic() - failed_at < RETRY_SECONDS:
            return None
        try:
            fd = self._open_full()
            try:
                self._generation += 1
                opened = _Opened(fd, self._generation)
            except OSError:
                os.close(fd)
                raise
        except OSError as exc:
            if self._failed_at is None:
                logger.warning(
                    "change counters unavailable path=%s: %s",
                    self._path,
                    exc.strerror,
                )
            self._failed_at = time.monotonic()
            return None
        if self._failed_at is not None:
            logger.info("change counters available again path=%s", self._path)
            self._failed_at = None
        self._opened = opened
        return opened

    def _open_full(self) -> int:
        """A descriptor of the file at the path, at full size. A missing or
        short file is replaced by a new one rather than grown in place: a
        process still reading it must see another file, not numbers that
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
        """Put a new file of zeros at the path."""
        directory = os.path.dirname(self._path) or "."
        fd, temporary = tempfile.mkstemp(prefix=".seq-", dir=directory)
        try:
            os.write(fd, bytes(_SIZE))
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
