"""The hash index: v2 sha256 lookups of 3PIDs that stores list."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from mxisd_flask.crypto.hashing import lookup_hash
from mxisd_flask.errors import StoreError
from mxisd_flask.services.hash_index import HashIndex
from mxisd_flask.stores.base import Capability, IdentityStore


class ListingStore(IdentityStore):
    """A store whose listing the test controls, and can hold or break."""

    capabilities = frozenset({Capability.LISTING})

    def __init__(self, name: str, rows: list[tuple[str, str, str]]) -> None:
        self.name = name
        self.rows = rows
        self.listed = 0
        self.gate: threading.Event | None = None
        self.broken = False

    def iter_threepids(self) -> Iterator[tuple[str, str, str]]:
        self.listed += 1
        if self.gate is not None:
            self.gate.wait(5)
        if self.broken:
            raise StoreError(f"{self.name} is down")
        yield from self.rows


class Monotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


ALICE = ("email", "alice@example.org", "@alice:example.org")
BOB = ("email", "bob@example.org", "@bob:example.org")


def hash_of(row: tuple[str, str, str], pepper: str) -> str:
    return lookup_hash(row[1], row[0], pepper)


def index_of(*stores: IdentityStore, refresh_s: float = 300) -> HashIndex:
    return HashIndex(stores, refresh_s, build_timeout_s=5, monotonic=Monotonic())


def test_finds_listed_threepids_under_the_pepper() -> None:
    index = index_of(ListingStore("a", [ALICE, BOB]))

    found = index.lookup([hash_of(ALICE, "p1"), hash_of(BOB, "other")], "p1")

    assert found == {hash_of(ALICE, "p1"): "@alice:example.org"}


def test_earlier_store_wins_for_the_same_threepid() -> None:
    first = ListingStore("a", [ALICE])
    second = ListingStore("b", [("email", "alice@example.org", "@impostor:x.org")])

    found = index_of(first, second).lookup([hash_of(ALICE, "p")], "p")

    assert found == {hash_of(ALICE, "p"): "@alice:example.org"}


def test_stores_without_listing_are_not_asked() -> None:
    store = ListingStore("a", [ALICE])
    store.capabilities = frozenset({Capability.LOOKUP})

    assert index_of(store).lookup([hash_of(ALICE, "p")], "p") == {}
    assert store.listed == 0


def test_garbage_hashes_are_ignored() -> None:
    index = index_of(ListingStore("a", [ALICE]))

    found = index.lookup(["not base64 !", "é", "", "AAAA", hash_of(ALICE, "p")], "p")

    assert found == {hash_of(ALICE, "p"): "@alice:example.org"}


def test_a_new_pepper_rebuilds_the_index() -> None:
    store = ListingStore("a", [ALICE])
    index = index_of(store)
    index.lookup([hash_of(ALICE, "p1")], "p1")

    found = index.lookup([hash_of(ALICE, "p2")], "p2")

    assert found == {hash_of(ALICE, "p2"): "@alice:example.org"}
    assert store.listed == 2


def test_refresh_serves_the_old_table_until_the_new_one_is_built() -> None:
    store = ListingStore("a", [ALICE])
    index = index_of(store, refresh_s=60)
    clock = index._monotonic
    assert isinstance(clock, Monotonic)
    index.lookup([], "p")
    store.rows = [ALICE, BOB]
    store.gate = threading.Event()
    clock.now += 61

    # The rebuild is held in the store; lookups answer from the old table.
    during = index.lookup([hash_of(ALICE, "p"), hash_of(BOB, "p")], "p")
    store.gate.set()
    _wait_for(lambda: store.listed == 2 and index._building is None)
    after = index.lookup([hash_of(BOB, "p")], "p")

    assert during == {hash_of(ALICE, "p"): "@alice:example.org"}
    assert after == {hash_of(BOB, "p"): "@bob:example.org"}


def test_a_failed_rebuild_keeps_the_previous_table(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = ListingStore("a", [ALICE])
    index = index_of(store, refresh_s=60)
    clock = index._monotonic
    assert isinstance(clock, Monotonic)
    index.lookup([], "p")
    store.broken = True
    clock.now += 61

    index.lookup([], "p")
    _wait_for(lambda: index._building is None)
    found = index.lookup([hash_of(ALICE, "p")], "p")

    assert found == {hash_of(ALICE, "p"): "@alice:example.org"}
    assert "store=a failed to list, kept its previous entries" in caplog.text


def test_a_store_down_at_the_first_build_leaves_out_only_its_own() -> None:
    down = ListingStore("down", [BOB])
    down.broken = True
    index = index_of(down, ListingStore("up", [ALICE]), refresh_s=300)
    clock = index._monotonic
    assert isinstance(clock, Monotonic)

    first = index.lookup([hash_of(ALICE, "p"), hash_of(BOB, "p")], "p")
    down.broken = False
    clock.now += 31  # a failed store is retried before the refresh interval
    index.lookup([], "p")
    _wait_for(lambda: down.listed == 2 and index._building is None)
    later = index.lookup([hash_of(BOB, "p")], "p")

    assert first == {hash_of(ALICE, "p"): "@alice:example.org"}
    assert later == {hash_of(BOB, "p"): "@bob:example.org"}


def test_concurrent_first_lookups_build_once() -> None:
    store = ListingStore("a", [ALICE])
    store.gate = threading.Event()
    index = index_of(store)
    results: list[dict[str, str]] = []
    threads = [
        threading.Thread(
            target=lambda: results.append(index.lookup([hash_of(ALICE, "p")], "p"))
        )
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    store.gate.set()
    for thread in threads:
        thread.join(5)

    assert results == [{hash_of(ALICE, "p"): "@alice:example.org"}] * 4
    assert store.listed == 1


def _wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 5
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
