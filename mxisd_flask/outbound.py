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
from dataclasses import dataclass
from typing import Any

import dns.exception
import dns.nameserver
import dns.resolver
import requests

from mxisd_flask.config.recursion import Nameserver
from mxisd_flask.config.sections import Network
from mxisd_flask.errors import FetcherError, HttpStatusError

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20
DNS_LIFETIME_S = 3.0


@dataclass(frozen=True)
class Relayed:
    """A remote answer as it came: status, body, content type."""

    status: int
    body: bytes
    content_type: str

    def json(self) -> Any:
        """The body as JSON; FetcherError when it is not."""
        try:
            return json.loads(self.body)
        except ValueError as exc:
            raise FetcherError("answer is not JSON") from exc


class OutboundClient:
    def __init__(
        self,
        allowed: tuple[Network, ...],
        timeout_s: float,
        verify_certs: bool = True,
        nameservers: tuple[Nameserver, ...] = (),
        ca_file: str | None = None,
    ) -> None:
        self._allowed = allowed
        self._timeout_s = timeout_s
        self._resolver = _resolver(nameservers)
        # requests reads REQUESTS_CA_BUNDLE itself; SSL_CERT_FILE is OpenSSL's
        # name for the same thing, which admins and test harnesses set.
        bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("SSL_CERT_FILE")
        verify = ca_file or bundle or True
        self._verify: bool | str = verify if verify_certs else False
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
        answer = self._send(method, url, **kwargs)
        if answer.status != 200:
            raise HttpStatusError(
                f"{_redact_url(url)}: HTTP {answer.status}", answer.status, answer.body
            )
        try:
            return json.loads(answer.body)
        except ValueError as exc:
            raise FetcherError(f"{_redact_url(url)}: answer is not JSON") from exc

    def relay(self, method: str, url: str, **kwargs: Any) -> Relayed:
        """Call an address the admin configured (``dns.overwrite.homeserver.
        client``) and return its answer whatever the status.

        No internal-address check: the URL is the configuration's, never a
        client's, and is usually the homeserver's loopback port.
        """
        return self._send(method, url, **kwargs)

    def _send(self, method: str, url: str, **kwargs: Any) -> Relayed:
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
        content_type = response.headers.get("Content-Type", "application/json")
        return Relayed(response.status_code, body, content_type)

    def resolve_homeserver(self, server_name: str, overrides: dict[str, str]) -> str:
        """Base URL of a homeserver's federation API (spec: server discovery)."""
        if server_name in overrides:
            return overrides[server_name]
        host, _, port = server_name.rpartition(":")
        if host and port.isdigit() and not server_name.endswith("]"):
            return f"https://{server_name}"
        if _is_ip_literal(server_name):
            return f"https://{server_name}:8448"
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
            targets = self.resolve_srv(f"{service}.{server_name}")
            if targets:
                return f"https://{targets[0][0]}:{targets[0][1]}"
        return f"https://{server_name}:8448"

    def resolve_srv(self, name: str) -> list[tuple[str, int]]:
        """(host, port) targets of an SRV name, best first; empty when none.

        Asks ``dns.resolver.nameservers`` when configured, else the system's
        resolver. Weights only order targets of one priority (no random pick:
        a lookup tries the best one and stops).
        """
        try:
            answer = self._resolver.resolve(name, "SRV", lifetime=DNS_LIFETIME_S)
        except dns.exception.DNSException as exc:
            logger.debug("no SRV record name=%s: %s", name, type(exc).__name__)
            return []
        records = sorted(answer, key=lambda r: (r.priority, -r.weight))
        targets = [(str(r.target).rstrip("."), int(r.port)) for r in records]
        # RFC 2782: a lone "." target says the service is not offered there.
        return [(host, port) for host, port in targets if host]


def _resolver(nameservers: tuple[Nameserver, ...]) -> dns.resolver.Resolver:
    if not nameservers:
        try:
            return dns.resolver.Resolver()
        except dns.resolver.NoResolverConfiguration:
            # No /etc/resolv.conf: every query fails (as "not found") rather
            # than the server refusing to start.
            logger.warning("no system DNS resolver configured")
            return dns.resolver.Resolver(configure=False)
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [
        dns.nameserver.Do53Nameserver(ns.address, ns.port) for ns in nameservers
    ]
    return resolver


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _redact_url(url: str) -> str:
    """Drop the query string: it may carry access tokens."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
