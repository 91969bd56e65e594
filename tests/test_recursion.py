"""Recursive lookups: the DNS resolver, DNS federation and forward servers,
against a real DNS server (dnsmasq) and real HTTP servers on loopback."""

from __future__ import annotations

import pytest
from fixtures_dns import DnsServer, Srv

from conftest import ConfigFactory
from mxisd_flask.config.recursion import Nameserver, recursion_config
from mxisd_flask.errors import ConfigError
from mxisd_flask.outbound import OutboundClient


def outbound_for(dns_server: DnsServer) -> OutboundClient:
    ns = Nameserver("127.0.0.1", dns_server.port)
    return OutboundClient((), timeout_s=1, nameservers=(ns,))


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    "entry, expected",
    [
        ("127.0.0.1", Nameserver("127.0.0.1", 53)),
        ("127.0.0.1:5353", Nameserver("127.0.0.1", 5353)),
        ("::1", Nameserver("::1", 53)),
        ("[::1]:5353", Nameserver("::1", 5353)),
    ],
)
def test_nameserver_entries_take_a_port(
    make_config: ConfigFactory, entry: str, expected: Nameserver
) -> None:
    config = make_config(dns={"resolver": {"nameservers": [entry]}})

    assert recursion_config(config).nameservers == (expected,)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    "entry", ["dns.example.org:53", "127.0.0.1:0", "127.0.0.1:x", "[::1]53", "", 53]
)
def test_bad_nameserver_entries_are_refused(
    make_config: ConfigFactory, entry: object
) -> None:
    config = make_config(dns={"resolver": {"nameservers": [entry]}})

    with pytest.raises(ConfigError, match=r"dns\.resolver\.nameservers\[0\]"):
        recursion_config(config)


def test_srv_targets_come_from_the_configured_dns_server(
    dns_server: DnsServer,
) -> None:
    dns_server.serve(
        srv=[
            Srv("_matrix-identity._tcp.example.test", "backup.example.test", 8091, 20),
            Srv("_matrix-identity._tcp.example.test", "id.example.test", 8090, 10),
        ]
    )
    outbound = outbound_for(dns_server)

    targets = outbound.resolve_srv("_matrix-identity._tcp.example.test")

    assert targets == [("id.example.test", 8090), ("backup.example.test", 8091)]
    assert outbound.resolve_srv("_matrix-identity._tcp.other.test") == []
    assert "_matrix-identity._tcp.other.test" in dns_server.queries


def test_the_dns_server_can_change_its_answers(dns_server: DnsServer) -> None:
    outbound = outbound_for(dns_server)
    dns_server.serve(srv=[Srv("_matrix._tcp.hs.test", "one.test", 1)])
    first = outbound.resolve_srv("_matrix._tcp.hs.test")

    dns_server.serve(srv=[Srv("_matrix._tcp.hs.test", "two.test", 2)])

    assert first == [("one.test", 1)]
    assert outbound.resolve_srv("_matrix._tcp.hs.test") == [("two.test", 2)]


def test_homeserver_discovery_asks_the_configured_dns_server(
    dns_server: DnsServer,
) -> None:
    dns_server.serve(srv=[Srv("_matrix-fed._tcp.hs.test", "fed.hs.test", 8448)])

    base = outbound_for(dns_server).resolve_homeserver("hs.test", {})

    assert base == "https://fed.hs.test:8448"
