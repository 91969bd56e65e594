"""What an identity store may offer to the lookup chain."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class IdentityStore(Protocol):
    """A source of 3PID to mxid mappings, asked in priority order."""

    name: str

    def lookup(self, medium: str, address: str) -> str | None:
        """The mxid for a normalised 3PID, or None."""
        ...

    def bulk_lookup(
        self, threepids: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], str]:
        """mxids for those of ``threepids`` this store knows."""
        ...

    def hashed_lookup(self, hashes: Sequence[str], pepper: str) -> dict[str, str]:
        """mxids for those of the lookup hashes (under ``pepper``) it knows."""
        ...
