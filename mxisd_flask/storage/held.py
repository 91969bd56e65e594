"""Two system calls made without letting go of the GIL: a file's status by
path, and a read at an offset.

Python's os.stat and os.pread let go of the GIL around the call. Under
gunicorn's threads another thread takes it, and the caller waits for it
back far longer than the call took: reading the change counters
(storage/counter.py) that way cost a lookup 60 to 90 us on four threads,
against 4 us on one (bench/RESULTS.md). Both calls here take a microsecond
or two on a local file, so they are made through ctypes.PyDLL, which keeps
the GIL during the call. glibc's statx has the same layout on every
architecture, unlike struct stat.

Where libc or its statx cannot be loaded (another C library, an old
kernel), os.stat and os.pread are used: the same answers, at the old cost.
HELD tells which is in use.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
import sys
from collections.abc import Callable

# What a file's status is compared by: device, inode, size.
Identity = tuple[int, int, int]

_AT_FDCWD = -100
_STATX_INO = 0x100
_STATX_SIZE = 0x200
_STATX_BUFFER = 256  # sizeof(struct statx)
# struct statx: stx_ino at 32, stx_size at 40, stx_dev_major and
# stx_dev_minor at 136 and 140 (linux/stat.h).
_STATX_FIELDS = struct.Struct("=32xQQ88xII")


def _os_identity(path: bytes) -> Identity:
    found = os.stat(path)
    return found.st_dev, found.st_ino, found.st_size


def _load() -> tuple[Callable[[bytes], Identity], Callable[[int, int, int], bytes]]:
    if not sys.platform.startswith("linux"):
        raise OSError(errno.ENOSYS, "not Linux")
    libc = ctypes.PyDLL(None, use_errno=True)
    # No argtypes: converting each argument through them costs more than
    # the call. Python ints go as C ints, which suits every 32-bit
    # parameter; the 64-bit ones are passed as ctypes objects.
    statx = libc.statx
    statx.restype = ctypes.c_int
    c_pread = libc.pread64
    c_pread.restype = ctypes.c_ssize_t

    def identity(path: bytes) -> Identity:
        out = ctypes.create_string_buffer(_STATX_BUFFER)
        if statx(_AT_FDCWD, path, 0, _STATX_INO | _STATX_SIZE, out):
            _raise(path)
        inode, size, major, minor = _STATX_FIELDS.unpack_from(out)
        return os.makedev(major, minor), inode, size

    def pread(fd: int, size: int, offset: int) -> bytes:
        out = ctypes.create_string_buffer(size)
        done = c_pread(fd, out, ctypes.c_size_t(size), ctypes.c_int64(offset))
        if done < 0:
            _raise(None)
        return out.raw[:done]

    # A kernel without statx answers ENOSYS: find out now, not per read.
    identity(b"/")
    return identity, pread


def _raise(path: bytes | None) -> None:
    code = ctypes.get_errno()
    if path is None:
        raise OSError(code, os.strerror(code))
    raise OSError(code, os.strerror(code), os.fsdecode(path))


try:
    identity, pread = _load()
    HELD = True
except (OSError, AttributeError):
    identity, pread = _os_identity, os.pread
    HELD = False
