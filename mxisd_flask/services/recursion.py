"""Recursive lookups: other identity servers asked when no local store knows.

Two kinds of remote, asked in this order: the identity server that an email
address's domain names in DNS (SRV ``_matrix-identity._tcp.<domain>``: DNS
federation), then ``forward.servers``. Each remote is asked with v2 (its
hash_details, then a sha256 lookup under its pepper, or "none" when that is
all it offers) and, when v2 is refused (most servers require a v2 account),
with v1. A remote that fails is logged at warning and skipped for a while;
the chain answers with what it has.
"""

from __future__ import annotations

import copy
import functools
import ipaddress
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from mxisd_flask.config.recursion import RecursionConfig, endpoint
from mxisd_flask.crypto.hashing import lookup_hash
from mxisd_flask.crypto.keys import verify_signature
from mxisd_flask.errors import FetcherError, HttpStatusError, MatrixError
from mxisd_flask.model import check_mxid, normalise_address
from mxisd_flask.outbound import OutboundClient
from mxisd_flask.stores.base import ThreePid
from mxisd_flask.stores.remote import RemoteIdentityServerFetcher

logger = logging.getLogger(__name__)

FEDERATION_SERVICE = "_matrix-identity._tcp"
# A remote that failed is not asked again for this long: a lookup must not
# wait for the same dead server on every request.
DOWN_S = 30.0
# A remote that refused v2 (it wants an account we cannot have) is asked
# with v1 directly for this long.
V1_ONLY_S = 600.0
PUBKEY_TTL_S = 3600.0
BATCH = 1000  # 3PIDs per remote call: remotes cap their bulk lookups


@dataclass(frozen=True)
class Found:
    """An answer of the chain. ``association`` is a remote's signed v1
    association (signature checked), when the remote gave one."""

    mxid: str
    association: dict[str, Any] | None = None


# The longest IPv6 address in text, with an interface scope.
MAX_ADDRESS_LENGTH = 64


class RecursionPolicy:
    """Which requests may make us ask other identity servers."""

    def __init__(self, config: RecursionConfig) -> None:
        self._config = config
        # Every v1 lookup asks; the same few clients (a homeserver, a proxy)
        # ask again and again, and parsing and matching the address costs
        # about a tenth of the lookup.
        self._client_allowed = functools.lru_cache(maxsize=4096)(self._check_client)

    @property
    def enabled(self) -> bool:
        return self._config.enabled

    def allows(self, client_address: str, marked: bool) -> bool:
        """Recursion is on, the request is not one of our own recursive
        lookups (``marked``), and the client is in lookup.recursive.allowedCidr."""
        if not self._config.enabled or marked:
            return False
        if len(client_address) > MAX_ADDRESS_LENGTH:
            return False  # no IP address is this long; keeps cache keys small
        return self._client_allowed(client_address)

    def _check_client(self, client_address: str) -> bool:
        try:
            address = ipaddress.ip_address(client_address.split("%")[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped  # a dual-stack listener's IPv4 client
        return any(address in net for net in self._config.allowed_clients)


class RemoteLookup:
    """The chain's last link: DNS federation, then the forward servers."""

    def __init__(
        self,
        config: RecursionConfig,
        outbound: OutboundClient,
        via: str,
        clock: Callable[[], float] = time.monotonic,
        wall_clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self._config = config
        self._outbound = outbound
        self._via = via
        self._clock = clock
        self._wall_clock_ms = wall_clock_ms
        self._down_until: dict[str, float] = {}
        self._v1_only_until: dict[str, float] = {}
        self._pubkeys: dict[tuple[str, str], tuple[float, str | None]] = {}
        self._forward = tuple(b for b in config.forward_servers if not self._is_us(b))
        for base in config.forward_servers:
            if base not in self._forward:
                logger.warning("forward server is this server, skipped url=%s", base)

    def lookup(self, medium: str, address: str) -> Found | None:
        """Ask the remotes for one 3PID until one knows it."""
        for group in self._groups(medium, address):
            found = self._ask_group(group, medium, address)
            if found is not None:
                return found
        return None

    def bulk_lookup(self, threepids: Sequence[ThreePid]) -> dict[ThreePid, str]:
        """mxids of those of ``threepids`` a remote knows."""
        found: dict[ThreePid, str] = {}
        by_domain: dict[str, list[ThreePid]] = {}
        for tp in threepids:
            domain = self._federation_domain(*tp)
            if domain is not None:
                by_domain.setdefault(domain, []).append(tp)
        for domain, wanted in by_domain.items():
            found.update(self._bulk_group(self._federation_targets(domain), wanted))
        for base in self._forward:
            remaining = [tp for tp in threepids if tp not in found]
            if not remaining:
                break
            found.update(self._bulk_group([base], remaining))
        return found

    # Choosing the remotes

    def _groups(self, medium: str, address: str) -> list[list[str]]:
        """Remotes to ask, grouped: the first of a group that answers (found
        or not) speaks for the group (SRV targets of one domain)."""
        groups: list[list[str]] = []
        domain = self._federation_domain(medium, address)
        if domain is not None:
            groups.append(self._federation_targets(domain))
        groups.extend([base] for base in self._forward)
        return groups

    def _federation_domain(self, medium: str, address: str) -> str | None:
        """The DNS domain of an email address, unless it is ours (our stores
        already answered for it, and its SRV record would name us)."""
        if medium != "email" or "@" not in address:
            return None
        domain = address.rpartition("@")[2].lower()
        return None if domain in self._config.own_domains else domain

    def _federation_targets(self, domain: str) -> list[str]:
        lifetime = min(self._config.timeout_s, 3.0)
        targets = self._outbound.resolve_srv(f"{FEDERATION_SERVICE}.{domain}", lifetime)
        bases = [f"https://{_bracket(host)}:{port}" for host, port in targets]
        return [base for base in bases if not self._is_us(base)]

    def _is_us(self, base: str) -> bool:
        found = endpoint(base)
        if found is None:
            return False
        return (
            found in self._config.own_endpoints or found[0] in self._config.own_domains
        )

    # Asking the remotes

    def _usable(self, base: str) -> bool:
        return self._down_until.get(base, 0.0) <= self._clock()

    def _failed(self, base: str, exc: FetcherError) -> None:
        logger.warning("remote identity server failed url=%s: %s", base, exc)
        self._down_until[base] = self._clock() + DOWN_S

    def _ask_group(self, group: list[str], medium: str, address: str) -> Found | None:
        for base in group:
            if not self._usable(base):
                continue
            try:
                return self._ask(base, medium, address)
            except FetcherError as exc:
                self._failed(base, exc)
        return None

    def _bulk_group(
        self, group: list[str], threepids: list[ThreePid]
    ) -> dict[ThreePid, str]:
        for base in group:
            if not self._usable(base):
                continue
            try:
                found: dict[ThreePid, str] = {}
                for start in range(0, len(threepids), BATCH):
                    batch = threepids[start : start + BATCH]
                    found.update(self._ask_bulk(base, batch))
                return found
            except FetcherError as exc:
                self._failed(base, exc)
        return {}

    def _fetcher(self, base: str) -> RemoteIdentityServerFetcher:
        return RemoteIdentityServerFetcher(
            self._outbound, base, self._via, self._config.timeout_s
        )

    def _ask(self, base: str, medium: str, address: str) -> Found | None:
        fetcher = self._fetcher(base)
        answers = self._ask_v2(fetcher, [(medium, address)])
        if answers is not None:
            mxid = answers.get((medium, address))
            return Found(mxid) if mxid else None
        association = fetcher.lookup_v1(medium, address)
        if association is None:
            return None
        return self._checked(fetcher, medium, address, association)

    def _ask_bulk(self, base: str, threepids: list[ThreePid]) -> dict[ThreePid, str]:
        fetcher = self._fetcher(base)
        answers = self._ask_v2(fetcher, threepids)
        if answers is None:
            answers = fetcher.bulk_lookup_v1(threepids)
        return {tp: mxid for tp, mxid in answers.items() if _valid_mxid(mxid)}

    def _ask_v2(
        self, fetcher: RemoteIdentityServerFetcher, threepids: Sequence[ThreePid]
    ) -> dict[ThreePid, str] | None:
        """v2 answers, or None when the remote does not serve v2 to us."""
        base = fetcher.base_url
        if self._v1_only_until.get(base, 0.0) > self._clock():
            return None
        try:
            details = fetcher.hash_details()
            if "sha256" in details.algorithms:
                # Hashed under the remote's pepper: the remote never sees
                # the addresses we look for in the clear.
                keys = {lookup_hash(a, m, details.pepper): (m, a) for m, a in threepids}
                algorithm = "sha256"
            elif "none" in details.algorithms:
                keys = {f"{a} {m}": (m, a) for m, a in threepids}
                algorithm = "none"
            else:
                raise HttpStatusError(f"{base}: no lookup algorithm we know", 400)
            mappings = fetcher.lookup_v2(algorithm, details.pepper, list(keys))
        except HttpStatusError as exc:
            if 400 <= exc.status < 500:
                logger.debug("remote refuses v2, asking v1 url=%s: %s", base, exc)
                self._v1_only_until[base] = self._clock() + V1_ONLY_S
            return None
        return {keys[k]: mxid for k, mxid in mappings.items() if _valid_mxid(mxid)}

    # Checking what a remote signed

    def _checked(
        self,
        fetcher: RemoteIdentityServerFetcher,
        medium: str,
        address: str,
        association: dict[str, Any],
    ) -> Found | None:
        """The association, if it is for the 3PID we asked, current, and
        signed by a key the remote publishes; else None (logged)."""
        mxid = association.get("mxid")
        if not (
            association.get("medium") == medium
            and _same_address(medium, association.get("address"), address)
            and isinstance(mxid, str)
            and _valid_mxid(mxid)
            and self._current(association)
            and self._signed(fetcher, association)
        ):
            logger.warning(
                "remote association refused url=%s: not for the asked 3PID, "
                "expired or not signed by the remote",
                fetcher.base_url,
            )
            return None
        return Found(mxid, copy.deepcopy(association))

    def _current(self, association: dict[str, Any]) -> bool:
        now = self._wall_clock_ms()
        not_before = association.get("not_before", now)
        not_after = association.get("not_after", now)
        if not isinstance(not_before, int) or not isinstance(not_after, int):
            return False
        return not_before <= now <= not_after

    def _signed(
        self, fetcher: RemoteIdentityServerFetcher, association: dict[str, Any]
    ) -> bool:
        signatures = association.get("signatures")
        if not isinstance(signatures, dict):
            return False
        for server_name, by_key in signatures.items():
            if not isinstance(by_key, dict):
                continue
            for key_id in by_key:
                public_key = self._pubkey(fetcher, str(key_id))
                if public_key and verify_signature(
                    association, str(server_name), str(key_id), public_key
                ):
                    return True
        return False

    def _pubkey(self, fetcher: RemoteIdentityServerFetcher, key_id: str) -> str | None:
        """The remote's published key (cached): the key of the server we chose
        to ask, fetched over the same (TLS-checked) connection."""
        cache_key = (fetcher.base_url, key_id)
        cached = self._pubkeys.get(cache_key)
        if cached and cached[0] > self._clock():
            return cached[1]
        try:
            public_key = fetcher.pubkey(key_id)
        except HttpStatusError:
            public_key = None  # 404: no such key
        self._pubkeys[cache_key] = (self._clock() + PUBKEY_TTL_S, public_key)
        return public_key


def _valid_mxid(mxid: object) -> bool:
    try:
        check_mxid(mxid)
    except MatrixError:
        return False
    return True


def _same_address(medium: str, given: object, asked: str) -> bool:
    if not isinstance(given, str):
        return False
    try:
        return normalise_address(medium, given) == asked
    except MatrixError:
        return False


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host
