"""Calls to our homeserver's client API on its internal address.

Directory search and login are intercepted by the reverse proxy and sent to
us; we answer them after asking the homeserver itself, on the internal base
URL ``dns.overwrite.homeserver.client`` gives for the host the client used
(``Host`` as the proxy preserved it), or for ``matrix.domain``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from mxisd_flask.errors import ConfigError, FetcherError, Unknown
from mxisd_flask.outbound import OutboundClient, Relayed

logger = logging.getLogger(__name__)

CLIENT_KEY = "dns.overwrite.homeserver.client"


def client_overrides(values: Mapping[str, Any]) -> dict[str, str]:
    out = {}
    for i, item in enumerate(values[CLIENT_KEY]):
        if not isinstance(item, dict) or not all(
            isinstance(item.get(f), str) for f in ("name", "value")
        ):
            raise ConfigError(f"{CLIENT_KEY}[{i}]: needs name and value")
        if not item["value"].startswith(("http://", "https://")):
            raise ConfigError(f"{CLIENT_KEY}[{i}].value: must be an http(s) URL")
        out[item["name"].lower()] = item["value"].rstrip("/")
    return out


class HomeserverClient:
    def __init__(
        self, outbound: OutboundClient, overrides: dict[str, str], domain: str
    ) -> None:
        self._outbound = outbound
        self._overrides = overrides
        self._domain = domain.lower()

    def base_url(self, host: str | None) -> str:
        """Internal base URL for the homeserver a client reached as ``host``."""
        name = (host or "").rpartition(":")[0] if ":" in (host or "") else host
        for candidate in ((name or "").lower(), self._domain):
            if candidate in self._overrides:
                return self._overrides[candidate]
        # Without it we would call the public name, which the proxy sends
        # back to us: a loop, not an answer.
        logger.error("no internal homeserver URL for host=%s (%s)", host, CLIENT_KEY)
        raise Unknown("The homeserver's internal address is not configured")

    def call(self, method: str, path: str, host: str | None, **kwargs: Any) -> Relayed:
        """The homeserver's answer, any status; Unknown when it cannot be asked."""
        url = self.base_url(host) + path
        try:
            return self._outbound.relay(method, url, **kwargs)
        except FetcherError as exc:
            logger.error("homeserver call failed path=%s: %s", path, exc)
            raise Unknown("The homeserver could not be reached") from exc
