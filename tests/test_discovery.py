"""Finding a homeserver's federation address (spec: resolving server names)
against a real DNS server (dnsmasq) and homeservers on loopback over TLS:
``.well-known/matrix/server`` on port 443, SRV records, port 8448."""

from __future__ import annotations

import ipaddress
import random
import ssl
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fixtures_dns import DnsServer, Srv, TlsCert
from fixtures_homeserver import FakeHomeserver

from mxisd_flask.config.recursion import Nameserver
from mxisd_flask.outbound import OutboundClient

WELL_KNOWN = "/.well-known/matrix/server"
KEY_PATH = "/_matrix/key/v2/server"
# Names the test certificate holds (fixtures_dns.TLS_NAMES).
SERVER_NAME = "id.example.test"
DELEGATE = "id2.example.test"

Homeservers = Callable[..., FakeHomeserver]


@pytest.fixture
def backend() -> str:
    return "sqlite"  # no storage here at all


def loopback_address() -> str:
    """A loopback address of its own, so port 443 is free on it whoever else
    runs these tests."""
    return str(ipaddress.ip_address("127.0.0.0") + random.randrange(2, 1 << 24))


@pytest.fixture
def homeservers(tls_cert: TlsCert) -> Iterator[Homeservers]:
    """HTTPS servers with the test certificate, on a loopback address."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls_cert.cert, tls_cert.key)
    started: list[FakeHomeserver] = []

    def start(host: str = "127.0.0.1", port: int = 0) -> FakeHomeserver:
        try:
            server = FakeHomeserver(tls=context, host=host, port=port)
        except PermissionError:
            pytest.skip("port 443 needs root (or net.ipv4.ip_unprivileged_port_start)")
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


def outbound(dns_server: DnsServer, tls_cert: TlsCert) -> OutboundClient:
    return OutboundClient(
        (ipaddress.ip_network("127.0.0.0/8"),),
        timeout_s=2,
        nameservers=(Nameserver("127.0.0.1", dns_server.port),),
        ca_file=str(tls_cert.cert),
    )


def delegating(homeservers: Homeservers, delegated: Any) -> str:
    """SERVER_NAME's port 443 answers .well-known with ``m.server: delegated``."""
    address = loopback_address()
    homeservers(address, 443).answer("GET", WELL_KNOWN, 200, {"m.server": delegated})
    return address


def test_a_delegation_with_a_port_is_used_as_it_is(
    dns_server: DnsServer, tls_cert: TlsCert, homeservers: Homeservers
) -> None:
    federation = homeservers()
    federation.answer("GET", KEY_PATH, 200, {"server_name": SERVER_NAME})
    address = delegating(homeservers, f"{DELEGATE}:{federation.port}")
    dns_server.serve(hosts={SERVER_NAME: [address], DELEGATE: ["127.0.0.1"]})
    client = outbound(dns_server, tls_cert)

    base = client.resolve_homeserver(SERVER_NAME, {})

    assert base == f"https://{DELEGATE}:{federation.port}"
    assert client.get_json(f"{base}{KEY_PATH}") == {"server_name": SERVER_NAME}
    (asked,) = federation.calls(KEY_PATH)
    assert asked.headers["host"] == f"{DELEGATE}:{federation.port}"


def test_a_delegation_without_a_port_asks_the_delegates_srv_records(
    dns_server: DnsServer, tls_cert: TlsCert, homeservers: Homeservers
) -> None:
    federation = homeservers()
    address = delegating(homeservers, DELEGATE)
    dns_server.serve(
        hosts={SERVER_NAME: [address], DELEGATE: ["127.0.0.1"]},
        srv=[Srv(f"_matrix-fed._tcp.{DELEGATE}", DELEGATE, federation.port)],
    )

    base = outbound(dns_server, tls_cert).resolve_homeserver(SERVER_NAME, {})

    assert base == f"https://{DELEGATE}:{federation.port}"
    assert f"_matrix-fed._tcp.{DELEGATE}" in dns_server.queries
    assert f"_matrix-fed._tcp.{SERVER_NAME}" not in dns_server.queries


def test_a_delegation_without_port_or_srv_record_is_port_8448(
    dns_server: DnsServer, tls_cert: TlsCert, homeservers: Homeservers
) -> None:
    address = delegating(homeservers, DELEGATE)
    dns_server.serve(hosts={SERVER_NAME: [address]})

    base = outbound(dns_server, tls_cert).resolve_homeserver(SERVER_NAME, {})

    assert base == f"https://{DELEGATE}:8448"


@pytest.mark.parametrize(
    "delegated", ["evil.test/_matrix?x=", "user@evil.test", "", 8448, None]
)
def test_a_delegation_that_is_no_server_name_is_ignored(
    delegated: Any,
    dns_server: DnsServer,
    tls_cert: TlsCert,
    homeservers: Homeservers,
) -> None:
    address = delegating(homeservers, delegated)
    dns_server.serve(hosts={SERVER_NAME: [address]})

    base = outbound(dns_server, tls_cert).resolve_homeserver(SERVER_NAME, {})

    assert base == f"https://{SERVER_NAME}:8448"


@pytest.mark.parametrize("service", ["_matrix-fed._tcp", "_matrix._tcp"])
def test_without_well_known_the_server_names_srv_records_decide(
    service: str, dns_server: DnsServer, tls_cert: TlsCert
) -> None:
    # Nothing listens on the name's port 443.
    dns_server.serve(
        hosts={SERVER_NAME: [loopback_address()]},
        srv=[Srv(f"{service}.{SERVER_NAME}", DELEGATE, 8008)],
    )

    base = outbound(dns_server, tls_cert).resolve_homeserver(SERVER_NAME, {})

    assert base == f"https://{DELEGATE}:8008"


def test_without_well_known_or_srv_record_it_is_port_8448(
    dns_server: DnsServer, tls_cert: TlsCert
) -> None:
    dns_server.serve(hosts={SERVER_NAME: [loopback_address()]})

    base = outbound(dns_server, tls_cert).resolve_homeserver(SERVER_NAME, {})

    assert base == f"https://{SERVER_NAME}:8448"
    assert f"_matrix-fed._tcp.{SERVER_NAME}" in dns_server.queries


@pytest.mark.parametrize(
    "server_name, expected",
    [
        ("hs.example.test:8009", "https://hs.example.test:8009"),
        ("10.1.2.3", "https://10.1.2.3:8448"),
        ("[2001:db8::1]", "https://[2001:db8::1]:8448"),
        ("[2001:db8::1]:8009", "https://[2001:db8::1]:8009"),
    ],
)
def test_ip_literals_and_explicit_ports_skip_discovery(
    server_name: str, expected: str, dns_server: DnsServer, tls_cert: TlsCert
) -> None:
    dns_server.serve()

    base = outbound(dns_server, tls_cert).resolve_homeserver(server_name, {})

    assert base == expected
    assert dns_server.queries == []
