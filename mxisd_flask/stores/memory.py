"""mxisd's ``memory`` store: identities listed in the configuration file."""

from __future__ import annotations

import hmac
from collections.abc import Iterator

from mxisd_flask.config.sections import Config, MemoryIdentity
from mxisd_flask.errors import MatrixError
from mxisd_flask.model import normalise_address
from mxisd_flask.stores.base import (
    AuthResult,
    Capability,
    DirectoryEntry,
    IdentityStore,
    Profile,
    enabled_capabilities,
)


def from_config(config: Config) -> MemoryIdentityStore | None:
    if not config.memory_identities:
        return None
    return MemoryIdentityStore(
        config.memory_identities,
        enabled_capabilities(config.values, "memory", MemoryIdentityStore.SUPPORTED),
    )


class MemoryIdentityStore(IdentityStore):
    name = "memory"
    SUPPORTED = frozenset(Capability)

    def __init__(
        self,
        identities: tuple[MemoryIdentity, ...],
        capabilities: frozenset[Capability] = SUPPORTED,
    ) -> None:
        self.identities = identities
        self.capabilities = capabilities
        self._by_mxid = {identity.mxid: identity for identity in identities}
        self._by_threepid: dict[tuple[str, str], str] = {}
        self._threepids: dict[str, tuple[tuple[str, str], ...]] = {}
        for identity in identities:
            normalised = []
            for medium, address in identity.threepids:
                try:
                    key = (medium, normalise_address(medium, address))
                except MatrixError:
                    continue
                normalised.append(key)
                self._by_threepid.setdefault(key, identity.mxid)
            self._threepids[identity.mxid] = tuple(normalised)

    def lookup(self, medium: str, address: str) -> str | None:
        return self._by_threepid.get((medium, address))

    def iter_threepids(self) -> Iterator[tuple[str, str, str]]:
        for (medium, address), mxid in self._by_threepid.items():
            yield medium, address, mxid

    def authenticate(
        self, mxid: str, localpart: str, password: str
    ) -> AuthResult | None:
        identity = self._by_mxid.get(mxid)
        if identity is None or identity.password is None:
            return None
        if not hmac.compare_digest(identity.password.encode(), password.encode()):
            return None
        return AuthResult(mxid=identity.mxid, profile=self._profile_of(identity))

    def directory_search(self, term: str, by_threepid: bool) -> list[DirectoryEntry]:
        term = term.lower()
        found = []
        for identity in self.identities:
            names = [identity.localpart, (identity.display_name or "").lower()]
            if by_threepid:
                names += [address for _, address in self._threepids[identity.mxid]]
            if any(term in name for name in names):
                found.append(DirectoryEntry(identity.mxid, identity.display_name))
        return found

    def profile(self, mxid: str) -> Profile | None:
        identity = self._by_mxid.get(mxid)
        return self._profile_of(identity) if identity is not None else None

    def _profile_of(self, identity: MemoryIdentity) -> Profile:
        return Profile(identity.display_name, self._threepids[identity.mxid])
