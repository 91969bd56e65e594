"""The identity store interface: what a store may offer the services layer.

A store declares the capabilities it supports in ``capabilities``; the
services layer only calls the methods of those. Every method receives
normalised 3PIDs (see :func:`mxisd_flask.model.normalise_address`) and
raises :class:`mxisd_flask.errors.StoreError` when the backend cannot
answer (down, timed out, bad answer): the chain then logs a warning and asks
the next store. "Not found" is never an error: it is ``None`` or empty.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mxisd_flask.errors import StoreError

logger = logging.getLogger(__name__)

ThreePid = tuple[str, str]  # (medium, normalised address)


class Capability(enum.Enum):
    LOOKUP = "identity"  # 3PID -> mxid, single and bulk
    LISTING = "listing"  # every (medium, address, mxid) it holds, for hashes
    AUTH = "auth"  # check a user's password
    DIRECTORY = "directory"  # search users by name or 3PID
    PROFILE = "profile"  # display name, 3PIDs and roles of a user


@dataclass(frozen=True)
class Profile:
    display_name: str | None = None
    threepids: tuple[ThreePid, ...] = ()
    roles: tuple[str, ...] = ()


@dataclass(frozen=True)
class AuthResult:
    """A successful password check. ``mxid`` is canonical (lower case)."""

    mxid: str
    profile: Profile = field(default_factory=Profile)


@dataclass(frozen=True)
class DirectoryEntry:
    mxid: str
    display_name: str | None = None
    avatar_url: str | None = None


class IdentityStore:
    """Base of every store; a subclass overrides the methods it supports."""

    name: str = "store"
    capabilities: frozenset[Capability] = frozenset()

    def supports(self, capability: Capability) -> bool:
        return capability in self.capabilities

    def lookup(self, medium: str, address: str) -> str | None:
        """The mxid for one 3PID, or None."""
        return None

    def bulk_lookup(self, threepids: Sequence[ThreePid]) -> dict[ThreePid, str]:
        """mxids for those of ``threepids`` this store knows.

        The default asks :meth:`lookup` once per 3PID; stores that can ask
        their backend once for many override it.
        """
        found: dict[ThreePid, str] = {}
        for medium, address in threepids:
            mxid = self.lookup(medium, address)
            if mxid is not None:
                found[(medium, address)] = mxid
        return found

    def iter_threepids(self) -> Iterator[tuple[str, str, str]]:
        """Every (medium, normalised address, mxid), for the hash index."""
        return iter(())

    def authenticate(
        self, mxid: str, localpart: str, password: str
    ) -> AuthResult | None:
        """Check ``password`` for the user; None when refused or unknown."""
        return None

    def directory_search(self, term: str, by_threepid: bool) -> list[DirectoryEntry]:
        """Users whose name (or, with ``by_threepid``, a 3PID) matches ``term``."""
        return []

    def profile(self, mxid: str) -> Profile | None:
        """What the store knows of the user, or None."""
        return None

    def close(self) -> None:
        """Release connections; the store may be used again afterwards."""


def enabled_capabilities(
    values: Mapping[str, Any], section: str, supported: Iterable[Capability]
) -> frozenset[Capability]:
    """Those of ``supported`` not turned off by ``<section>.<capability>.enabled``.

    A store factory calls this so an admin can, say, use LDAP for
    authentication only (``ldap.identity.enabled: false``).
    """
    return frozenset(
        cap
        for cap in supported
        if values.get(f"{section}.{cap.value}.enabled", True) is not False
    )


def stored_profiles(stores: Iterable[IdentityStore], mxid: str) -> Iterator[Profile]:
    """The profiles ``stores`` hold for ``mxid``, in their order; a store
    that fails is logged and skipped."""
    for store in stores:
        try:
            found = store.profile(mxid)
        except StoreError as exc:
            logger.warning("profile store failed store=%s: %s", store.name, exc)
            continue
        if found is not None:
            yield found
