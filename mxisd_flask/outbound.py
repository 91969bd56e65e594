"""The one HTTP client for every request we make to other servers.

A client of ours can name a homeserver (account/register) or make us call
remote identity servers (recursive lookups, through DNS federation). Without
a guard that would let anyone make us call into the internal network, so
targets that resolve to loopback, private or link-local addresses are
refused unless ``outbound.allowedCidr`` lists them.

A name is resolved once per request: the connection goes to the address that
was checked (the URL's host name is kept for the Host header, TLS SNI and
certificate checks), so a DNS answer that changes between the check and the
connection (DNS rebinding) cannot steer us to an internal address.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

import certifi
import dns.exception
import dns.nameserver
import dns.rdatatype
import dns.resolver
import urllib3
import urllib3.exceptions

from mxisd_flask.config.recursion import Nameserver
from mxisd_flask.config.sections import Network
from mxisd_flask.errors import FetcherError, HttpStatusError, MatrixError
from mxisd_flask.model import check_server_name

logger = logging.getLogger(__name__)

# request_json's and relay's ``json`` argument (the callers' name for a JSON
# body, as in requests) hides the module inside them.
_dumps = json.dumps
_loads = json.loads

MAX_BODY_BYTES = 1 << 20
DNS_LIFETIME_S = 3.0
MAX_POOLS = 64
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


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
        except (ValueError, RecursionError) as exc:
            raise FetcherError("answer is not JSON") from exc


@dataclass(frozen=True)
class Target:
    """A checked URL: where to connect and what to ask for."""

    scheme: str
    host: str  # as in the URL: Host header, SNI and certificate name
    port: int
    addresses: tuple[IPAddress, ...]  # checked; connect to these only
    path: str  # path and query


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
        self._custom_dns = bool(nameservers)
        self._resolver = _resolver(nameservers)
        self._verify = verify_certs
        # federation.caFile, else SSL_CERT_FILE (OpenSSL's name for a CA
        # bundle, which admins and test harnesses set) or REQUESTS_CA_BUNDLE
        # (requests' name for it), else certifi's bundle, as requests used.
        self._ca_bundle = (
            ca_file
            or os.environ.get("REQUESTS_CA_BUNDLE")
            or os.environ.get("SSL_CERT_FILE")
            or certifi.where()
        )
        self._pools: dict[tuple[str, str, int, str], urllib3.HTTPConnectionPool] = {}
        self._pools_lock = threading.Lock()
        if not verify_certs:
            logger.warning(
                "federation.verifyCerts is false: TLS certificates of "
                "remote servers are not checked"
            )

    def check_target(self, url: str) -> Target:
        """Resolve the URL's host once; FetcherError unless every address is
        allowed. The request then connects to those addresses only."""
        target = self._target(url)
        for address in target.addresses:
            if self._is_internal(address) and not any(
                address in net for net in self._allowed
            ):
                raise FetcherError(
                    f"refused {target.host}: {address} is an internal address"
                )
        return target

    def _target(self, url: str) -> Target:
        try:
            parts = urllib.parse.urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise FetcherError("refused URL: malformed") from exc
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise FetcherError("refused URL: not http(s)")
        port = port or (443 if parts.scheme == "https" else 80)
        addresses = self._addresses(parts.hostname, port)
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        return Target(parts.scheme, parts.hostname, port, addresses, path)

    def _addresses(self, host: str, port: int) -> tuple[IPAddress, ...]:
        try:
            return (ipaddress.ip_address(host.split("%")[0]),)
        except ValueError:
            pass
        if self._custom_dns:
            return self._resolve_addresses(host)
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise FetcherError(f"cannot resolve {host}: {exc}") from exc
        found = [ipaddress.ip_address(str(i[4][0]).split("%")[0]) for i in infos]
        return tuple(dict.fromkeys(found))

    def _resolve_addresses(self, host: str) -> tuple[IPAddress, ...]:
        """A and AAAA records from dns.resolver.nameservers (split horizon)."""
        found: list[IPAddress] = []
        for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            try:
                answer = self._resolver.resolve(host, rdtype, lifetime=DNS_LIFETIME_S)
            except dns.exception.DNSException:
                continue
            found.extend(ipaddress.ip_address(r.address) for r in answer)
        if not found:
            raise FetcherError(f"cannot resolve {host}")
        return tuple(found)

    @staticmethod
    def _is_internal(address: IPAddress) -> bool:
        """Anything not globally routable (shared 100.64/10 included), and IPv6
        forms that embed such an IPv4 address (mapped, 6to4, Teredo)."""
        embedded: list[IPAddress] = [address]
        if isinstance(address, ipaddress.IPv6Address):
            if address.ipv4_mapped:
                embedded.append(address.ipv4_mapped)
            if address.sixtofour:
                embedded.append(address.sixtofour)
            if address.teredo:
                embedded.extend(address.teredo)
        return any(not a.is_global or a.is_multicast for a in embedded)

    def get_json(
        self,
        url: str,
        headers: dict[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> Any:
        return self.request_json("GET", url, headers=headers, timeout_s=timeout_s)

    def request_json(
        self,
        method: str,
        url: str,
        json: Any = None,
        headers: dict[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> Any:
        """Call ``url`` (with a ``json`` body if given) and parse a JSON answer.

        The whole call, connecting included, is abandoned after ``timeout_s``
        (default ``outbound.timeout``). Raises FetcherError on any failure,
        HttpStatusError when the remote answered with another status than 200.
        """
        answer = self._send(
            self.check_target(url), method, url, _json_bytes(json), headers, timeout_s
        )
        if answer.status != 200:
            raise HttpStatusError(
                f"{_redact_url(url)}: HTTP {answer.status}", answer.status, answer.body
            )
        try:
            return _loads(answer.body)
        # RecursionError: nested deeper than the parser goes. The remote is
        # often one a client named (matrix_server_name, an X-Matrix origin).
        except (ValueError, RecursionError) as exc:
            raise FetcherError(f"{_redact_url(url)}: answer is not JSON") from exc

    def relay(
        self,
        method: str,
        url: str,
        json: Any = None,
        headers: dict[str, str] | None = None,
        data: bytes | None = None,
    ) -> Relayed:
        """Call an address the admin configured (``dns.overwrite.homeserver.
        client``) and return its answer whatever the status. ``data`` is a
        body sent as it is (the caller's headers say its type).

        No internal-address check: the URL is the configuration's, never a
        client's, and is usually the homeserver's loopback port.
        """
        payload = data if data is not None else _json_bytes(json)
        return self._send(self._target(url), method, url, payload, headers, None)

    def _send(
        self,
        target: Target,
        method: str,
        url: str,
        payload: bytes | None,
        headers: dict[str, str] | None,
        timeout_s: float | None,
    ) -> Relayed:
        """Connect to the target's (checked) addresses in turn."""
        deadline = time.monotonic() + (timeout_s or self._timeout_s)
        logger.debug("outbound request method=%s url=%s", method, _redact_url(url))
        send = {"Host": _host_header(target), "Accept": "application/json"}
        if payload is not None:
            send["Content-Type"] = "application/json"
        send.update(headers or {})
        error: Exception | None = None
        for address in target.addresses:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                response = self._pool(target, address).urlopen(
                    method,
                    target.path,
                    body=payload,
                    headers=send,
                    redirect=False,
                    retries=False,
                    preload_content=False,
                    timeout=urllib3.Timeout(total=remaining),
                )
            except urllib3.exceptions.NewConnectionError as exc:
                error = exc  # this address refuses: the next one may not
                continue
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                # The exception's text quotes the URL with its query (a token).
                name = type(exc).__name__
                raise FetcherError(f"{method} {_redact_url(url)}: {name}") from exc
            content_type = response.headers.get("Content-Type", "application/json")
            body = _read_body(response, deadline, url)
            return Relayed(response.status, body, content_type)
        name = type(error).__name__ if error else "timeout"
        raise FetcherError(f"{method} {_redact_url(url)}: {name}")

    def _pool(self, target: Target, address: IPAddress) -> urllib3.HTTPConnectionPool:
        key = (target.scheme, str(address), target.port, target.host)
        with self._pools_lock:
            pool = self._pools.get(key)
            if pool is None:
                if len(self._pools) >= MAX_POOLS:
                    self._pools.pop(next(iter(self._pools))).close()
                pool = self._pools[key] = self._new_pool(target, address)
            return pool

    def _new_pool(
        self, target: Target, address: IPAddress
    ) -> urllib3.HTTPConnectionPool:
        if target.scheme == "http":
            return urllib3.HTTPConnectionPool(str(address), target.port, maxsize=4)
        return urllib3.HTTPSConnectionPool(
            str(address),
            target.port,
            maxsize=4,
            # The connection goes to the checked address; TLS still names
            # (SNI) and verifies the host the URL gave.
            server_hostname=target.host,
            assert_hostname=target.host if self._verify else False,
            cert_reqs="CERT_REQUIRED" if self._verify else "CERT_NONE",
            ca_certs=self._ca_bundle if self._verify else None,
        )

    def resolve_homeserver(self, server_name: str, overrides: dict[str, str]) -> str:
        """Base URL of a homeserver's federation API (spec: server discovery).

        A name delegated by ``.well-known/matrix/server`` goes through the
        same steps as the server name itself (IP literal or explicit port,
        else SRV records, else port 8448): a delegation without a port does
        not mean 443.
        """
        if server_name in overrides:
            return overrides[server_name]
        fixed = _fixed_address(server_name)
        if fixed is not None:
            return fixed
        name = self._delegated(server_name) or server_name
        fixed = _fixed_address(name)
        if fixed is not None:
            return fixed
        for service in ("_matrix-fed._tcp", "_matrix._tcp"):
            targets = self.resolve_srv(f"{service}.{name}")
            if targets:
                return f"https://{targets[0][0]}:{targets[0][1]}"
        return f"https://{name}:8448"

    def _delegated(self, server_name: str) -> str | None:
        """The server name ``.well-known/matrix/server`` delegates to, if any."""
        try:
            well_known = self.get_json(
                f"https://{server_name}/.well-known/matrix/server"
            )
        except FetcherError as exc:
            logger.debug("no .well-known for server_name=%s: %s", server_name, exc)
            return None
        delegated = well_known.get("m.server") if isinstance(well_known, dict) else None
        if not isinstance(delegated, str):
            return None
        try:
            # A remote's answer: anything but a server name (a path, a
            # user-info part) must not reach the URL we build from it.
            return check_server_name(delegated)
        except MatrixError:
            logger.debug("bad .well-known m.server server_name=%s", server_name)
            return None

    def resolve_srv(
        self, name: str, lifetime_s: float = DNS_LIFETIME_S
    ) -> list[tuple[str, int]]:
        """(host, port) targets of an SRV name, best first; empty when none.

        Asks ``dns.resolver.nameservers`` when configured, else the system's
        resolver. Weights only order targets of one priority (no random pick:
        a lookup tries the best one and stops).
        """
        try:
            answer = self._resolver.resolve(name, "SRV", lifetime=lifetime_s)
        except dns.exception.DNSException as exc:
            logger.debug("no SRV record name=%s: %s", name, type(exc).__name__)
            return []
        records = sorted(answer, key=lambda r: (r.priority, -r.weight))
        targets = [(str(r.target).rstrip("."), int(r.port)) for r in records]
        # RFC 2782: a lone "." target says the service is not offered there.
        return [(host, port) for host, port in targets if host]


def _read_body(response: urllib3.BaseHTTPResponse, deadline: float, url: str) -> bytes:
    """At most MAX_BODY_BYTES, read before the deadline (a remote that drips
    bytes must not hold the call past its time limit)."""
    chunks: list[bytes] = []
    size = 0
    try:
        while chunk := response.read1(65536):
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise FetcherError(f"{_redact_url(url)}: answer too large")
            if time.monotonic() > deadline:
                raise FetcherError(f"{_redact_url(url)}: answer too slow")
            chunks.append(chunk)
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        response.close()
        name = type(exc).__name__
        raise FetcherError(f"{_redact_url(url)}: {name}") from exc
    except FetcherError:
        response.close()  # not drained: the connection cannot be reused
        raise
    response.release_conn()
    return b"".join(chunks)


def _json_bytes(body: Any) -> bytes | None:
    return None if body is None else _dumps(body).encode()


def _fixed_address(server_name: str) -> str | None:
    """The base URL of an IP literal or a name with a port; None otherwise."""
    host, _, port = server_name.rpartition(":")
    if host and port.isdigit() and not server_name.endswith("]"):
        return f"https://{server_name}"
    if _is_ip_literal(server_name):
        return f"https://{server_name}:8448"
    return None


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _host_header(target: Target) -> str:
    host = f"[{target.host}]" if ":" in target.host else target.host
    default = 443 if target.scheme == "https" else 80
    return host if target.port == default else f"{host}:{target.port}"


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


def _redact_url(url: str) -> str:
    """Drop the query string: it may carry access tokens."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
