"""The one HTTP client for every request we make to other servers.

A client of ours can name a homeserver (account/register) or, later, make us
call remote identity servers and homeservers. Without a guard that would let
anyone make us call into the internal network, so targets that resolve to
loopback, private or link-local addresses are refused unless
``outbound.allowedCidr`` lists them.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import socket
import urllib.parse
from typing import Any

import dns.exception
import dns.resolver
import requests

from mxisd_flask.config.sections import Network
from mxisd_flask.errors import FetcherError

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20


class OutboundClient:
    def __init__(
        self,
        allowed: tuple[Network, ...],
        timeout_s: float,
        verify_certs: bool = True,
    ) -> None:
        self._allowed = allowed
        self._timeout_s = timeout_s
        # requests reads REQUESTS_CA_BUNDLE itself; SSL_CERT_FILE is OpenSSL's
        # name for the same thing, which admins and test harnesses set.
        bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("SSL_CERT_FILE")
        self._verify: bool | str = (bundle or True) if verify_certs else False
        self._session = requests.Session()
        if not verify_certs:
            logger.warning(
                "federation.verifyCerts is false: TLS certificates of "
                "remote servers are not checked"
            )

    def check_target(self, url: str) -> None:
        """Raise FetcherError unless every address of the URL's host is allowed."""
        try:
            parts = urllib.parse.urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise FetcherError("refused URL: malformed") from exc
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise FetcherError("refused URL: not http(s)")
        try:
            infos = socket.getaddrinfo(parts.hostname, port or 443)
        except (socket.gaierror, UnicodeError) as exc:
            raise FetcherError(f"cannot resolve {parts.hostname}: {exc}") from exc
        for info in infos:
            address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
            if self._is_internal(address) and not any(
                address in net for net in self._allowed
            ):
                raise FetcherError(
                    f"refused {parts.hostname}: {address} is an internal address"
                )

    @staticmethod
    def _is_internal(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        """Anything not globally routable (shared 100.64/10 included), and IPv6
        forms that embed such an IPv4 address (mapped, 6to4, Teredo)."""
        embedded: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [address]
        if isinstance(address, ipaddress.IPv6Address):
            if address.ipv4_mapped:
                embedded.append(address.ipv4_mapped)
            if address.sixtofour:
                embedded.append(address.sixtofour)
            if address.teredo:
                embedded.extend(address.teredo)
        return any(not a.is_global or a.is_multicast for a in embedded)

    def get_json(self, url: str, **kwargs: Any) -> Any:
        return self.request_json("GET", url, **kwargs)

    def request_json(self, method: str, url: str, **kwargs: Any) -> Any:
        """Call ``url`` and parse a JSON answer; FetcherError on any failure."""
        # TODO(#3): pin the checked address for the connection; a DNS answer
        # that changes between check and connect is not caught meanwhile.
        self.check_target(url)
        logger.debug("outbound request method=%s url=%s", method, _redact_url(url))
        try:
            response = self._session.request(
                method,
                url,
                timeout=self._timeout_s,
                verify=self._verify,
                allow_redirects=False,
                stream=True,
                **kwargs,
            )
            body = response.raw.read(MAX_BODY_BYTES + 1, decode_content=True)
        except requests.RequestException as exc:
            # The exception's text quotes the URL with its query (a token).
            name = type(exc).__name__
            raise FetcherError(f"{method} {_redact_url(url)}: {name}") from exc
        if len(body) > MAX_BODY_BYTES:
            raise FetcherError(f"{_redact_url(url)}: answer too large")
        if response.status_code != 200:
            raise FetcherError(f"{_redact_url(url)}: HTTP {response.status_code}")
        try:
            return json.loads(body)
        except ValueError as exc:
            raise FetcherError(f"{_redact_url(url)}: answer is not JSON") from exc

    def resolve_homeserver(self, server_name: str, overrides: dict[str, str]) -> str:
        """Base URL of a homeserver's federation API (spec: server discovery)."""
        if server_name in overrides:
            return overrides[server_name]
        host, _, port = server_name.rpartition(":")
        if host and port.isdigit() and not server_name.endswith("]"):
            return f"https://{server_name}"
        try:
            well_known = self.get_json(
                f"https://{server_name}/.well-known/matrix/server"
            )
            delegated = (
                well_known.get("m.server") if isinstance(well_known, dict) else None
            )
            if isinstance(delegated, str) and delegated:
                return f"https://{delegated}"
        except FetcherError as exc:
            logger.debug("no .well-known for server_name=%s: %s", server_name, exc)
        for service in ("_matrix-fed._tcp", "_matrix._tcp"):
            try:
                answer = dns.resolver.resolve(
                    f"{service}.{server_name}", "SRV", lifetime=3
                )
            except dns.exception.DNSException:
                continue
            record = sorted(answer, key=lambda r: (r.priority, -r.weight))[0]
            return f"https://{str(record.target).rstrip('.')}:{record.port}"
        return f"https://{server_name}:8448"


def _redact_url(url: str) -> str:
    """Drop the query string: it may carry access tokens."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
