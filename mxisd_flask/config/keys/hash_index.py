"""Configuration keys of the hash index for v2 lookups across stores (issue #3)."""

from __future__ import annotations

from typing import Any

KEYS: dict[str, tuple[tuple[type, ...], Any]] = {
    # Seconds between rebuilds of the index from the stores that list 3PIDs.
    "hashing.index.refresh": ((int,), 300),
    # How long a lookup waits for the first index under a new pepper.
    "hashing.index.buildTimeout": ((int,), 60),
}
