"""Recursive lookups: the DNS resolver, DNS federation and forward servers,
against a real DNS server (dnsmasq) and other instances of our server on
loopback, over real HTTP(S)."""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from fixtures_dns import DnsServer, IdentityServer, ServerFactory, Srv, TlsCert
from fixtures_homeserver import FakeHomeserver, federation_to
from flask import Flask
from flask.testing import FlaskClient

from conftest import (
    V1,
    V2,
    ConfigFactory,
    FakeClock,
    Homeserver,
    JsonHandler,
    bearer,
    deep_merge,
    free_port,
    homeserver_config,
    register,
    serve_http,
)
from mxisd_flask.app import create_app
from mxisd_flask.config.recursion import Nameserver, recursion_config
from mxisd_flask.crypto.hashing import lookup_hash
from mxisd_flask.crypto.keys import verify_signature
from mxisd_flask.errors import ConfigError, FetcherError
from mxisd_flask.outbound import OutboundClient
from mxisd_flask.services.onbind import ONBIND_PATH
from mxisd_flask.stores.remote import MARKER_HEADER

LOOPBACK = ["127.0.0.0/8"]
REMOTE_USERS = {"bob@example.net": "bob", "carol@example.net": "carol"}
OUTSIDER = "203.0.113.9"
SRV_NAME = "_matrix-identity._tcp.example.net"

AppFactory = Callable[..., Flask]


@pytest.fixture
def backend() -> str:
    """Recursion does not depend on our storage: SQLite only, for speed."""
    return "sqlite"


def outbound_for(
    dns_server: DnsServer, allowed: list[str] | None = None
) -> OutboundClient:
    ns = Nameserver("127.0.0.1", dns_server.port)
    nets = tuple(ipaddress.ip_network(n) for n in allowed or [])
    return OutboundClient(nets, timeout_s=1, nameservers=(ns,))


def trust(tls_cert: TlsCert, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make OutboundClients built from now on trust the test certificate."""
    for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
        monkeypatch.setenv(name, str(tls_cert.cert))


@pytest.fixture
def remote(
    identity_server: ServerFactory, tls_cert: TlsCert, dns_server: DnsServer
) -> IdentityServer:
    """Our second server, over HTTPS, named by example.net's SRV record."""
    server = identity_server("example.net", REMOTE_USERS, tls=tls_cert)
    dns_server.serve(
        srv=[Srv(SRV_NAME, "id.example.test", server.port)],
        hosts={"id.example.test": ["127.0.0.1"]},
    )
    return server


@pytest.fixture
def first(
    make_config: ConfigFactory,
    clock: FakeClock,
    dns_server: DnsServer,
    tls_cert: TlsCert,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[AppFactory]:
    """Build the server under test (Flask's test client calls it) with our DNS
    server, loopback allowed outbound unless ``allowed`` says otherwise."""
    trust(tls_cert, monkeypatch)
    apps: list[Flask] = []

    def build(allowed: list[str] = LOOPBACK, **extra: Any) -> Flask:
        settings: dict[str, Any] = dns_server.config()
        settings["outbound"] = {"allowedCidr": allowed}
        settings["lookup"] = {"recursive": {"timeout": 1}}
        app = create_app(make_config(**deep_merge(settings, extra)), clock=clock)
        apps.append(app)
        return app

    yield build
    for app in apps:
        app.extensions["mxisd"].db.close()


def v1_lookup(client: FlaskClient, address: str, **kwargs: Any) -> Any:
    query = {"medium": "email", "address": address}
    response = client.get(f"{V1}/lookup", query_string=query, **kwargs)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def bulk(client: FlaskClient, *addresses: str) -> list[tuple[str, ...]]:
    threepids = [["email", a] for a in addresses]
    response = client.post(f"{V1}/bulk_lookup", json={"threepids": threepids})
    assert response.status_code == 200, response.get_json()
    return sorted(tuple(row) for row in response.get_json()["threepids"])


# Configuration


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


@pytest.mark.parametrize(
    "entry", ["dns.example.org:53", "127.0.0.1:0", "127.0.0.1:x", "[::1]53", "", 53]
)
def test_bad_nameserver_entries_are_refused(
    make_config: ConfigFactory, entry: object
) -> None:
    config = make_config(dns={"resolver": {"nameservers": [entry]}})

    with pytest.raises(ConfigError, match=r"dns\.resolver\.nameservers\[0\]"):
        recursion_config(config)


def test_forward_servers_expand_named_lists(make_config: ConfigFactory) -> None:
    config = make_config(
        forward={"servers": ["corp", "https://id.other.example/", "matrix-org"]},
        matrix={
            "domain": "example.org",
            "identity": {
                "servers": {
                    "corp": ["https://id1.corp.example", "https://id2.corp.example"],
                    "matrix-org": ["https://matrix.org"],
                }
            },
        },
    )

    assert recursion_config(config).forward_servers == (
        "https://id1.corp.example",
        "https://id2.corp.example",
        "https://id.other.example",
        "https://matrix.org",
    )


@pytest.mark.parametrize(
    "settings, key",
    [
        ({"forward": {"servers": ["nowhere"]}}, r"forward\.servers\[0\]"),
        ({"forward": {"servers": ["ftp://x.example"]}}, r"forward\.servers\[0\]"),
        ({"lookup": {"recursive": {"timeout": 0}}}, r"lookup\.recursive\.timeout"),
        (
            {"lookup": {"recursive": {"allowedCidr": ["10.0.0.0/33"]}}},
            r"lookup\.recursive\.allowedCidr",
        ),
        (
            {"matrix": {"domain": "example.org", "identity": {"servers": {"x": "u"}}}},
            r"matrix\.identity\.servers\.x",
        ),
    ],
)
def test_bad_recursion_settings_name_their_key(
    make_config: ConfigFactory, settings: dict[str, Any], key: str
) -> None:
    with pytest.raises(ConfigError, match=key):
        recursion_config(make_config(**settings))


def test_defaults_let_loopback_and_private_clients_recurse(
    make_config: ConfigFactory,
) -> None:
    section = recursion_config(make_config())
    allowed = section.allowed_clients

    assert section.enabled is True
    assert section.forward_servers == ()
    for inside in ("127.0.0.1", "10.1.2.3", "172.16.0.9", "192.168.1.1", "::1"):
        assert any(ipaddress.ip_address(inside) in net for net in allowed), inside
    assert not any(ipaddress.ip_address(OUTSIDER) in net for net in allowed)


# The resolver and the outbound client


def test_srv_targets_come_from_the_configured_dns_server(
    dns_server: DnsServer,
) -> None:
    dns_server.serve(
        srv=[
            Srv(SRV_NAME, "backup.example.test", 8091, 20),
            Srv(SRV_NAME, "id.example.test", 8090, 10),
        ]
    )
    outbound = outbound_for(dns_server)

    targets = outbound.resolve_srv(SRV_NAME)

    assert targets == [("id.example.test", 8090), ("backup.example.test", 8091)]
    assert outbound.resolve_srv("_matrix-identity._tcp.other.test") == []
    assert "_matrix-identity._tcp.other.test" in dns_server.queries


def test_the_dns_server_can_change_its_answers(dns_server: DnsServer) -> None:
    outbound = outbound_for(dns_server)
    dns_server.serve(srv=[Srv("_matrix._tcp.hs.test", "one.test", 1)])
    first_answer = outbound.resolve_srv("_matrix._tcp.hs.test")

    dns_server.serve(srv=[Srv("_matrix._tcp.hs.test", "two.test", 2)])

    assert first_answer == [("one.test", 1)]
    assert outbound.resolve_srv("_matrix._tcp.hs.test") == [("two.test", 2)]


def test_homeserver_discovery_asks_the_configured_dns_server(
    dns_server: DnsServer,
) -> None:
    dns_server.serve(srv=[Srv("_matrix-fed._tcp.hs.test", "fed.hs.test", 8448)])

    base = outbound_for(dns_server).resolve_homeserver("hs.test", {})

    assert base == "https://fed.hs.test:8448"


@pytest.fixture
def https_server(
    identity_server: ServerFactory, tls_cert: TlsCert, monkeypatch: pytest.MonkeyPatch
) -> IdentityServer:
    """A server of ours over HTTPS, whose certificate we trust."""
    trust(tls_cert, monkeypatch)
    return identity_server("example.net", tls=tls_cert)


def test_the_connection_goes_to_the_address_that_was_checked(
    dns_server: DnsServer, https_server: IdentityServer
) -> None:
    server = https_server
    dns_server.serve(hosts={"id.example.test": ["127.0.0.1"]})
    url = f"https://id.example.test:{server.port}{V1}/pubkey/ed25519:0"

    answer = outbound_for(dns_server, LOOPBACK).get_json(url)

    # The name exists only in our DNS server, and was asked once per record
    # type: the connection used the checked address, it did not resolve the
    # name again (the system resolver does not know it).
    assert answer == {"public_key": server.app.extensions["mxisd"].keys.public_key}
    assert dns_server.queries == ["id.example.test", "id.example.test"]
    with pytest.raises(socket.gaierror):
        socket.getaddrinfo("id.example.test", server.port)


def test_a_pinned_connection_still_checks_the_certificate_name(
    dns_server: DnsServer, https_server: IdentityServer
) -> None:
    server = https_server
    dns_server.serve(hosts={"wrong.example.test": ["127.0.0.1"]})
    outbound = outbound_for(dns_server, LOOPBACK)

    with pytest.raises(FetcherError, match="SSLError"):
        outbound.get_json(f"https://wrong.example.test:{server.port}{V1}")
    assert server.requests == []


def test_a_name_resolving_to_an_internal_address_is_refused_before_connecting(
    dns_server: DnsServer,
) -> None:
    dns_server.serve(hosts={"id.example.test": ["10.255.0.1"]})
    outbound = outbound_for(dns_server, LOOPBACK)

    with pytest.raises(FetcherError, match="10.255.0.1 is an internal address"):
        outbound.get_json("https://id.example.test/")


# DNS federation


def test_federation_finds_a_remote_user_signed_by_both_servers(
    first: AppFactory, remote: IdentityServer
) -> None:
    app = first()

    answer = v1_lookup(app.test_client(), "Bob@Example.net")

    assert answer["mxid"] == "@bob:example.net"
    assert answer["address"] == "bob@example.net"
    ours = app.extensions["mxisd"].keys.public_key
    theirs = remote.app.extensions["mxisd"].keys.public_key
    assert verify_signature(answer, "example.org", "ed25519:0", ours)
    assert verify_signature(answer, "example.net", "ed25519:0", theirs)
    assert f"{V1}/lookup" in remote.paths()
    # Every call we made carried our marker (and our name).
    assert {marker for _, _, marker in remote.requests} == {"example.org"}


def test_bulk_lookup_mixes_local_and_federated_answers(
    first: AppFactory, remote: IdentityServer
) -> None:
    client = first().test_client()

    found = bulk(
        client,
        "alice@example.org",
        "bob@example.net",
        "CAROL@example.net",
        "nobody@example.net",
        "nobody@elsewhere.org",
    )

    assert found == [
        ("email", "CAROL@example.net", "@carol:example.net"),
        ("email", "alice@example.org", "@alice:example.org"),
        ("email", "bob@example.net", "@bob:example.net"),
    ]
    # One bulk call for the domain, not one call per address.
    assert remote.paths().count(f"{V1}/bulk_lookup") == 1
    assert f"{V1}/lookup" not in remote.paths()


def test_v2_none_lookups_recurse_and_sha256_lookups_cannot(
    first: AppFactory, remote: IdentityServer, homeserver: Homeserver
) -> None:
    settings = homeserver_config(homeserver)
    del settings["outbound"]  # loopback is allowed already
    client = first(**settings).test_client()
    token = register(client, homeserver, "@user:example.org")
    pepper = client.get(f"{V2}/hash_details", headers=bearer(token)).get_json()[
        "lookup_pepper"
    ]

    def v2(algorithm: str, address: str) -> Any:
        body = {"algorithm": algorithm, "pepper": pepper, "addresses": [address]}
        response = client.post(f"{V2}/lookup", json=body, headers=bearer(token))
        assert response.status_code == 200
        return response.get_json()["mappings"]

    hashed = lookup_hash("bob@example.net", "email", pepper)

    assert v2("none", "bob@example.net email") == {
        "bob@example.net email": "@bob:example.net"
    }
    # Our pepper's hashes mean nothing to a remote: no recursion.
    calls = len(remote.requests)
    assert v2("sha256", hashed) == {}
    assert len(remote.requests) == calls


def test_an_unknown_address_at_the_remote_is_an_empty_answer(
    first: AppFactory, remote: IdentityServer
) -> None:
    assert v1_lookup(first().test_client(), "nobody@example.net") == {}
    assert f"{V1}/lookup" in remote.paths()


def test_addresses_of_our_own_domain_are_not_federated(
    first: AppFactory, dns_server: DnsServer
) -> None:
    assert v1_lookup(first().test_client(), "nobody@example.org") == {}
    assert not any(name.endswith("example.org") for name in dns_server.queries)


# Who may recurse


@pytest.mark.parametrize(
    "remote_addr, forwarded, recurses",
    [
        ("127.0.0.1", None, True),
        (OUTSIDER, None, False),
        # From our trusted proxy (127.0.0.1): the forwarded client decides.
        ("127.0.0.1", OUTSIDER, False),
        ("127.0.0.1", "10.1.2.3", True),
        # Not a trusted proxy: its X-Forwarded-For is not believed.
        (OUTSIDER, "127.0.0.1", False),
        ("::ffff:127.0.0.1", None, True),
    ],
)
def test_only_clients_in_allowed_cidr_recurse(
    first: AppFactory,
    remote: IdentityServer,
    remote_addr: str,
    forwarded: str | None,
    recurses: bool,
) -> None:
    client = first().test_client()
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}

    answer = v1_lookup(
        client,
        "bob@example.net",
        headers=headers,
        environ_base={"REMOTE_ADDR": remote_addr},
    )

    assert (answer.get("mxid") == "@bob:example.net") is recurses
    assert bool(remote.requests) is recurses


def test_a_request_carrying_our_marker_never_recurses(
    first: AppFactory, remote: IdentityServer
) -> None:
    client = first().test_client()

    answer = v1_lookup(client, "bob@example.net", headers={MARKER_HEADER: "x"})
    found = client.post(
        f"{V1}/bulk_lookup",
        json={"threepids": [["email", "bob@example.net"]]},
        headers={MARKER_HEADER: "x"},
    ).get_json()

    assert answer == {}
    assert found == {"threepids": []}
    assert remote.requests == []


def test_recursion_can_be_turned_off(first: AppFactory, remote: IdentityServer) -> None:
    client = first(lookup={"recursive": {"enabled": False}}).test_client()

    assert v1_lookup(client, "bob@example.net") == {}
    assert remote.requests == []


@pytest.mark.parametrize("recursive", [True, False])
def test_pending_invites_are_resolved_by_remotes_only_when_recursive(
    recursive: bool,
    first: AppFactory,
    remote: IdentityServer,
    fake_homeserver: FakeHomeserver,
) -> None:
    fake_homeserver.answer("POST", ONBIND_PATH, 200, {})
    app = first(
        invite={"resolution": {"recursive": recursive}},
        **federation_to(fake_homeserver),
    )
    invited = app.test_client().post(
        f"{V1}/store-invite",
        json={
            "medium": "email",
            "address": "bob@example.net",
            "room_id": "!room:example.org",
            "sender": "@alice:example.org",
        },
    )
    assert invited.status_code == 200, invited.get_json()
    token = invited.get_json()["token"]
    onbind = app.extensions["mxisd"].onbind

    onbind.run_once()

    delivery = onbind.delivery(token)
    calls = fake_homeserver.calls(ONBIND_PATH)
    if recursive:
        assert delivery is not None and delivery.state == "delivered"
        assert [c.json()["mxid"] for c in calls] == ["@bob:example.net"]
        assert f"{V1}/lookup" in remote.paths()
    else:
        assert delivery is None
        assert calls == []
        assert remote.requests == []


# Outbound policy (SSRF)


def test_an_srv_record_pointing_at_loopback_is_refused_unless_allowed(
    first: AppFactory, remote: IdentityServer, caplog: pytest.LogCaptureFixture
) -> None:
    client = first(allowed=[]).test_client()

    answer = v1_lookup(client, "bob@example.net")

    assert answer == {}
    assert remote.requests == []
    assert "127.0.0.1 is an internal address" in caplog.text


def test_an_srv_record_pointing_at_a_private_address_is_refused(
    first: AppFactory, dns_server: DnsServer, caplog: pytest.LogCaptureFixture
) -> None:
    dns_server.serve(
        srv=[Srv(SRV_NAME, "id.example.test", 443)],
        hosts={"id.example.test": ["10.255.0.1"]},
    )
    client = first().test_client()  # loopback allowed, 10/8 not
    started = time.monotonic()

    answer = v1_lookup(client, "bob@example.net")

    assert answer == {}
    assert "10.255.0.1 is an internal address" in caplog.text
    assert time.monotonic() - started < 0.5  # refused, not tried


# Forward servers, loops, failures


class StandIn:
    """A loopback HTTP server answering ``answer(method, path, body)`` with
    (status, JSON): for remotes our own server cannot play (one serving v2
    without an account, one forging associations, one that hangs)."""

    def __init__(
        self,
        answer: Callable[[str, str, Any], tuple[int, Any]],
        on_close: Callable[[], None] = lambda: None,
    ) -> None:
        self.bodies: list[Any] = []
        self._on_close = on_close
        outer = self

        class Handler(JsonHandler):
            def do_GET(self) -> None:  # noqa: N802  # http.server hook name
                self._reply(None)

            def do_POST(self) -> None:  # noqa: N802  # http.server hook name
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length))
                outer.bodies.append(body)
                self._reply(body)

            def _reply(self, body: Any) -> None:
                self.send_json(*answer(self.command, self.path, body))

        self.server, self.url = serve_http(Handler)

    def close(self) -> None:
        self._on_close()  # let hanging handlers finish first
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stand_ins() -> Iterator[list[StandIn]]:
    started: list[StandIn] = []
    yield started
    for server in started:
        server.close()


def plain_server(
    identity_server: ServerFactory,
    dns_server: DnsServer,
    domain: str,
    identities: dict[str, str] | None = None,
    port: int | None = None,
    forward: list[str] | None = None,
    **extra: Any,
) -> IdentityServer:
    """One of our servers over plain HTTP, with our DNS server and loopback
    allowed outbound."""
    return identity_server(
        domain,
        identities,
        port=port,
        forward={"servers": forward or []},
        outbound={"allowedCidr": LOOPBACK},
        lookup={"recursive": {"timeout": 1}},
        **dns_server.config(),
        **extra,
    )


def lookup_over_http(server: IdentityServer, address: str) -> Any:
    response = requests.get(
        f"{server.url}{V1}/lookup",
        params={"medium": "email", "address": address},
        timeout=10,
    )
    assert response.status_code == 200
    return response.json()


def test_forward_servers_from_a_named_list_are_asked_in_order(
    first: AppFactory, identity_server: ServerFactory, dns_server: DnsServer
) -> None:
    empty = plain_server(identity_server, dns_server, "empty.example")
    knows = plain_server(
        identity_server, dns_server, "corp.example", {"dave@corp.example": "dave"}
    )
    client = first(
        forward={"servers": ["corp"]},
        matrix={
            "domain": "example.org",
            "identity": {"servers": {"corp": [empty.url, knows.url]}},
        },
    ).test_client()

    answer = v1_lookup(client, "dave@corp.example")

    assert answer["mxid"] == "@dave:corp.example"
    assert set(answer["signatures"]) == {"corp.example", "example.org"}
    assert f"{V1}/lookup" in empty.paths()  # asked first, did not know
    assert "_matrix-identity._tcp.corp.example" in dns_server.queries


def test_two_servers_forwarding_to_each_other_do_not_loop(
    identity_server: ServerFactory, dns_server: DnsServer
) -> None:
    port_a, port_b = free_port(), free_port()
    a = plain_server(
        identity_server, dns_server, "a.example", port=port_a,
        forward=[f"http://127.0.0.1:{port_b}"],
    )  # fmt: skip
    b = plain_server(
        identity_server, dns_server, "b.example", port=port_b,
        forward=[f"http://127.0.0.1:{port_a}"],
    )  # fmt: skip
    started = time.monotonic()

    answer = lookup_over_http(a, "nobody@elsewhere.org")

    assert answer == {}
    assert time.monotonic() - started < 1.0
    # a asked b once (v2 refused, then v1), marked; b did not ask a back.
    assert b.paths() == [f"{V2}/hash_details", f"{V1}/lookup"]
    assert {marker for _, _, marker in b.requests} == {"a.example"}
    assert a.requests == [("GET", f"{V1}/lookup", None)]


def test_we_never_ask_ourselves(
    identity_server: ServerFactory,
    dns_server: DnsServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()
    own = f"https://id2.example.test:{port}"
    dns_server.serve(
        srv=[Srv(SRV_NAME, "id2.example.test", port)],
        hosts={"id2.example.test": ["127.0.0.1"]},
    )
    server = plain_server(
        identity_server, dns_server, "example.org", port=port,
        forward=[f"http://127.0.0.1:{port}", own], server={"publicUrl": own},
    )  # fmt: skip

    answer = lookup_over_http(server, "nobody@example.net")

    assert answer == {}
    assert server.requests == [("GET", f"{V1}/lookup", None)]
    assert "forward server is this server" in caplog.text


def test_a_down_or_slow_remote_leaves_the_answer_to_the_others(
    first: AppFactory,
    identity_server: ServerFactory,
    dns_server: DnsServer,
    stand_ins: list[StandIn],
    caplog: pytest.LogCaptureFixture,
) -> None:
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    release = threading.Event()
    slow_calls: list[str] = []

    def hang(method: str, path: str, body: Any) -> tuple[int, Any]:
        slow_calls.append(path)
        release.wait(5)  # a remote that accepts and does not answer
        return 500, {}

    slow_server = StandIn(hang, on_close=release.set)
    stand_ins.append(slow_server)
    knows = plain_server(identity_server, dns_server, "corp.example", REMOTE_USERS)
    client = first(
        forward={"servers": [down, slow_server.url, knows.url]},
        lookup={"recursive": {"timeout": 0.5}},
    ).test_client()
    started = time.monotonic()

    found = bulk(client, "alice@example.org", "bob@example.net", "x@elsewhere.org")
    first_took = time.monotonic() - started
    again = time.monotonic()
    single = v1_lookup(client, "carol@example.net")

    assert found == [
        ("email", "alice@example.org", "@alice:example.org"),
        ("email", "bob@example.net", "@bob:corp.example"),
    ]
    assert single["mxid"] == "@carol:corp.example"
    assert first_took < 1.5  # one time limit for the slow one, not more
    assert time.monotonic() - again < 0.5  # failed remotes are skipped a while
    assert len(slow_calls) == 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any(down in r.getMessage() for r in warnings)
    assert any(slow_server.url in r.getMessage() for r in warnings)


def test_only_remotes_down_is_an_empty_answer_not_an_error(
    first: AppFactory, remote: IdentityServer
) -> None:
    remote.stop()
    client = first(
        forward={"servers": [f"http://127.0.0.1:{free_port()}"]}
    ).test_client()

    assert v1_lookup(client, "bob@example.net") == {}
    assert bulk(client, "alice@example.org", "bob@example.net") == [
        ("email", "alice@example.org", "@alice:example.org")
    ]


# What remotes answer


def test_a_v2_remote_is_asked_with_hashes_under_its_own_pepper(
    first: AppFactory, stand_ins: list[StandIn]
) -> None:
    pepper = "theirPepper"
    known = lookup_hash("dave@v2.example", "email", pepper)

    def v2_only(method: str, path: str, body: Any) -> tuple[int, Any]:
        if path == f"{V2}/hash_details":
            return 200, {"algorithms": ["none", "sha256"], "lookup_pepper": pepper}
        if path == f"{V2}/lookup":
            hits = {h: "@dave:v2.example" for h in body["addresses"] if h == known}
            return 200, {"mappings": hits}
        return 404, {"errcode": "M_UNRECOGNIZED", "error": "v2 only"}

    remote_v2 = StandIn(v2_only)
    stand_ins.append(remote_v2)
    client = first(forward={"servers": [remote_v2.url]}).test_client()

    answer = v1_lookup(client, "dave@v2.example")
    found = bulk(client, "dave@v2.example", "eve@v2.example")

    # A v2 answer carries no signature of the remote: ours vouches alone.
    assert answer["mxid"] == "@dave:v2.example"
    assert set(answer["signatures"]) == {"example.org"}
    assert found == [("email", "dave@v2.example", "@dave:v2.example")]
    sent = [b for b in remote_v2.bodies if "algorithm" in b]
    assert {b["algorithm"] for b in sent} == {"sha256"}
    assert {b["pepper"] for b in sent} == {pepper}
    assert "dave@v2.example" not in json.dumps(remote_v2.bodies)


@pytest.mark.parametrize(
    "forgery", ["none (relayed as signed)", "other mxid", "other address", "unsigned"]
)
def test_a_forged_association_is_refused(
    first: AppFactory,
    remote: IdentityServer,
    dns_server: DnsServer,
    stand_ins: list[StandIn],
    tls_cert: TlsCert,
    forgery: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The forger relays what our real second server signed, altered."""

    def relay(path: str) -> Any:
        url = f"https://127.0.0.1:{remote.port}{path}"
        return requests.get(url, verify=str(tls_cert.cert), timeout=5).json()

    def forger(method: str, path: str, body: Any) -> tuple[int, Any]:
        if path.startswith(f"{V1}/pubkey/"):
            return 200, relay(path)
        if not path.startswith(f"{V1}/lookup"):
            return 404, {"errcode": "M_UNRECOGNIZED", "error": "v1 only"}
        if forgery == "other address":
            path = path.replace("bob", "carol")
        association = relay(path)
        if forgery == "other mxid":
            association["mxid"] = "@mallory:example.net"
        if forgery == "unsigned":
            del association["signatures"]
        return 200, association

    forging = StandIn(forger)
    stand_ins.append(forging)
    client = first(forward={"servers": [forging.url]}).test_client()
    dns_server.serve()  # no SRV record: only the forger answers

    answer = v1_lookup(client, "bob@example.net")

    if forgery.startswith("none"):
        assert answer["mxid"] == "@bob:example.net"
        return
    assert answer == {}
    assert "remote association refused" in caplog.text
