"""Password checks for the homeserver (Synapse's check_credentials call).

The stores that offer Capability.AUTH are asked in order; the first that
accepts the password wins. The profile it returns is completed by the
stores that offer Capability.PROFILE, so a directory that only checks
passwords can still give Synapse a display name and 3PIDs from elsewhere.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mxisd_flask.config.sections import Network
from mxisd_flask.errors import ConfigError, InvalidParam, StoreError
from mxisd_flask.model import MXID_RE
from mxisd_flask.stores.base import (
    AuthResult,
    Capability,
    IdentityStore,
    Profile,
    ThreePid,
    stored_profiles,
)

logger = logging.getLogger(__name__)

ALLOWED_KEY = "auth.internal.allowedCidr"


@dataclass(frozen=True)
class AuthConfig:
    domain: str
    # Who may call the internal endpoint: the homeserver, never the public.
    internal_allowed: tuple[Network, ...]


def auth_config(values: Mapping[str, Any], domain: str) -> AuthConfig:
    try:
        networks = tuple(
            ipaddress.ip_network(str(n), strict=False) for n in values[ALLOWED_KEY]
        )
    except ValueError as exc:
        raise ConfigError(f"{ALLOWED_KEY}: {exc}") from exc
    return AuthConfig(domain=domain, internal_allowed=networks)


@dataclass(frozen=True)
class UserId:
    mxid: str
    localpart: str
    server_name: str


def parse_user_id(raw: str, domain: str) -> UserId:
    """The canonical (lower-case) mxid for what the homeserver sent.

    Synapse canonicalises user IDs to lower case, but a user may type
    ``@Alice:Example.org`` or a bare ``alice`` at login.
    """
    text = raw.strip()
    if not text.startswith("@"):
        text = f"@{text}:{domain}"
    if len(text) > 255 or not MXID_RE.match(text):
        raise InvalidParam("Invalid user.id")
    mxid = text.lower()
    localpart, _, server_name = mxid[1:].partition(":")
    return UserId(mxid, localpart, server_name)


class AuthService:
    def __init__(self, stores: Sequence[IdentityStore], config: AuthConfig) -> None:
        self._config = config
        self._auth_stores = [s for s in stores if s.supports(Capability.AUTH)]
        self._profile_stores = [s for s in stores if s.supports(Capability.PROFILE)]

    def is_internal(self, address: str) -> bool:
        """Whether a client at ``address`` may ask us to check passwords."""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self._config.internal_allowed)

    def check_credentials(self, raw_user_id: str, password: str) -> AuthResult | None:
        """The user's canonical mxid and profile if a store accepts the password.

        Raises:
            InvalidParam: the user ID is not a user ID.
        """
        user = parse_user_id(raw_user_id, self._config.domain)
        if user.server_name != self._config.domain.lower():
            # Our stores hold this server's users only; another domain's
            # user can never be ours, whatever its localpart matches.
            logger.info("credentials refused mxid=%s reason=foreign", user.mxid)
            return None

        result = self._authenticate(user, password)
        if result is None:
            logger.info("credentials refused mxid=%s", user.mxid)
            return None

        profile = self._complete_profile(result.mxid, result.profile)
        logger.info("credentials accepted mxid=%s", result.mxid)
        return AuthResult(mxid=result.mxid.lower(), profile=profile)

    def _authenticate(self, user: UserId, password: str) -> AuthResult | None:
        for store in self._auth_stores:
            try:
                result = store.authenticate(user.mxid, user.localpart, password)
            except StoreError as exc:
                # Try the next store: one directory down must not lock out
                # users another store knows.
                logger.warning("auth store failed store=%s: %s", store.name, exc)
                continue
            if result is not None:
                logger.debug("auth answered store=%s", store.name)
                return result
        return None

    def _complete_profile(self, mxid: str, profile: Profile) -> Profile:
        display_name = profile.display_name
        threepids: list[ThreePid] = list(profile.threepids)
        roles: list[str] = list(profile.roles)
        for found in stored_profiles(self._profile_stores, mxid):
            display_name = display_name or found.display_name
            threepids += [tp for tp in found.threepids if tp not in threepids]
            roles += [role for role in found.roles if role not in roles]
        return Profile(display_name, tuple(threepids), tuple(roles))
