"""The shared change counters (storage/counter.py) and the system calls they
read with (storage/held.py), on real files."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from mxisd_flask.storage import held
from mxisd_flask.storage.counter import ACCOUNTS, BINDINGS, SUFFIX, ChangeCounters


@pytest.fixture(params=["held", "os"])
def calls(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each counters test runs with the calls that keep the GIL and with the
    os module's, which a system without them falls back to."""
    if request.param == "os":
        monkeypatch.setattr(held, "identity", held._os_identity)
        monkeypatch.setattr(held, "pread", os.pread)
    return str(request.param)


@pytest.fixture
def counters(tmp_path: Path, calls: str) -> Iterator[ChangeCounters]:
    opened = ChangeCounters.open(str(tmp_path / "mxisd.db"))
    yield opened
    opened.close()


@pytest.fixture
def seq(tmp_path: Path) -> str:
    """The counters' file beside the database."""
    return str(tmp_path / "mxisd.db") + SUFFIX


def test_this_system_reads_the_counters_without_letting_go_of_the_gil() -> None:
    # Linux with glibc, as on every machine we ship to: the fallback would
    # cost each lookup what bench/RESULTS.md measured.
    assert held.HELD


def test_identity_is_what_os_stat_tells(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_bytes(b"x" * 37)
    link = tmp_path / "link"
    link.symlink_to(target)
    found = os.stat(target)

    assert held.identity(os.fsencode(target)) == (
        found.st_dev,
        found.st_ino,
        37,
    )
    assert held.identity(os.fsencode(link)) == held.identity(os.fsencode(target))


def test_identity_of_a_missing_file_is_file_not_found(tmp_path: Path) -> None:
    missing = tmp_path / "missing"

    with pytest.raises(FileNotFoundError) as raised:
        held.identity(os.fsencode(missing))

    assert raised.value.errno == errno.ENOENT
    assert raised.value.filename == str(missing)


def test_pread_reads_what_os_pread_reads(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_bytes(bytes(range(40)))
    fd = os.open(path, os.O_RDONLY)
    try:
        for size, offset in ((16, 0), (8, 4), (16, 32), (16, 40), (16, 1 << 40)):
            assert held.pread(fd, size, offset) == os.pread(fd, size, offset)
    finally:
        os.close(fd)

    with pytest.raises(OSError) as raised:
        held.pread(fd, 16, 0)
    assert raised.value.errno == errno.EBADF


def test_numbers_written_are_read_by_another_opening(
    counters: ChangeCounters, tmp_path: Path
) -> None:
    other = ChangeCounters.open(str(tmp_path / "mxisd.db"))
    counters.publish(BINDINGS, 41)
    counters.increment(ACCOUNTS)
    counters.increment(ACCOUNTS)

    bindings, accounts = other.read(BINDINGS), other.read(ACCOUNTS)

    assert bindings is not None and bindings[1] == 41
    assert accounts is not None and accounts[1] == 2


def test_a_replaced_file_is_opened_again_and_old_readings_count_for_nothing(
    counters: ChangeCounters, seq: str
) -> None:
    counters.publish(BINDINGS, 7)
    before = counters.read(BINDINGS)
    Path(seq + ".new").write_bytes(bytes(16))
    os.replace(seq + ".new", seq)

    after = counters.read(BINDINGS)

    assert before is not None and after is not None
    assert after[1] == 0
    assert after[0] != before[0]  # another opening: not comparable


def test_a_truncated_file_is_replaced_not_read(
    counters: ChangeCounters, seq: str
) -> None:
    counters.publish(BINDINGS, 9)
    before = counters.read(BINDINGS)
    os.truncate(seq, 3)

    after = counters.read(BINDINGS)

    assert before is not None and after is not None
    assert after[0] != before[0]
    assert os.path.getsize(seq) == 16


def test_a_deleted_file_comes_back(
    counters: ChangeCounters, seq: str, tmp_path: Path
) -> None:
    counters.publish(BINDINGS, 5)
    os.unlink(seq)

    counters.publish(BINDINGS, 6)
    found = ChangeCounters.open(str(tmp_path / "mxisd.db")).read(BINDINGS)

    assert found is not None and found[1] == 6
