"""Fixtures: a real DNS server (dnsmasq) on loopback, serving the records a
test gives it, and more identity servers of ours over real HTTP(S).

``dns_server`` is a :class:`DnsServer`: dnsmasq from Debian, in the
foreground, on a free loopback port (UDP and TCP), with no upstream, no
/etc/hosts and no system configuration file, so it answers only what the
test asked for and NXDOMAIN for every other name. It is stopped after the
test. Use it like this::

    def test_x(dns_server: DnsServer, make_config: ConfigFactory) -> None:
        dns_server.serve(
            srv=[Srv("_matrix-identity._tcp.example.test", "id.example.test", 8090)],
            hosts={"id.example.test": ["127.0.0.1"]},
        )
        config = make_config(**dns_server.config())

``serve`` (re)starts dnsmasq with exactly the given records, so a test can
change the answers half-way (call it again; the port stays the same).
``config()`` is the fragment ``dns.resolver.nameservers: ["127.0.0.1:PORT"]``
to merge into a test's configuration (e.g. with conftest's ``deep_merge``);
``nameserver`` is the bare ``127.0.0.1:PORT``. Records:

- ``srv``: :class:`Srv` entries (dnsmasq's ``--srv-host``), e.g. for
  ``_matrix-identity._tcp.<domain>``, ``_matrix-fed._tcp.<server name>`` or
  ``_matrix._tcp.<server name>``;
- ``hosts``: name -> IPv4/IPv6 addresses (``--host-record``), for A/AAAA;
- ``addresses``: domain -> one address for the domain *and every name below
  it* (``--address=/domain/ip``).

``dns_server.queries`` counts the queries dnsmasq logged, so a test can show
that a name was (or was not) looked up.

``identity_server(domain, {address: localpart}, tls=tls_cert, **config)``
starts another instance of our server (werkzeug in a thread, on a free
loopback port, HTTPS with ``tls_cert``: a self-signed certificate for
``TLS_NAMES``; point ``SSL_CERT_FILE`` and ``REQUESTS_CA_BUNDLE`` at
``tls_cert.cert`` before building the server that calls it). Its
``requests`` list what it received.
"""

from __future__ import annotations

import ipaddress
import os
import pwd
import re
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.exception
import dns.message
import dns.query
import pytest
from werkzeug.serving import WSGIRequestHandler, make_server

from conftest import deep_merge, free_port
from mxisd_flask.app import create_app
from mxisd_flask.config import Config, parse_config
from mxisd_flask.stores.remote import MARKER_HEADER

DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
START_TIMEOUT_S = 5.0
# The name asked to see that dnsmasq is up; left out of ``queries``.
READY_NAME = "ready.invalid"


@dataclass(frozen=True)
class Srv:
    """One SRV record: ``name`` is the full owner (``_service._proto.domain``)."""

    name: str
    target: str
    port: int
    priority: int = 0
    weight: int = 0


class DnsServer:
    """dnsmasq on 127.0.0.1:``port`` answering only the records it was given."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self._workdir = workdir
        self._log = workdir / "dnsmasq.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def nameserver(self) -> str:
        return f"127.0.0.1:{self.port}"

    def config(self) -> dict[str, Any]:
        """The configuration fragment that points our resolver at this server."""
        return {"dns": {"resolver": {"nameservers": [self.nameserver]}}}

    def serve(
        self,
        srv: Iterable[Srv] = (),
        hosts: Mapping[str, Sequence[str]] | None = None,
        addresses: Mapping[str, str] | None = None,
    ) -> None:
        """(Re)start dnsmasq with exactly these records."""
        self.stop()
        args = [*self._base_args()]
        for record in srv:
            args.append(
                f"--srv-host={record.name},{record.target},{record.port},"
                f"{record.priority},{record.weight}"
            )
        for name, ips in (hosts or {}).items():
            for ip in ips:
                ipaddress.ip_address(ip)  # a typo in a test fails here, not later
                args.append(f"--host-record={name},{ip}")
        for domain, ip in (addresses or {}).items():
            args.append(f"--address=/{domain}/{ip}")
        self._log.write_bytes(b"")
        with self._log.open("ab") as log:
            self._process = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        self._wait_ready()

    def _base_args(self) -> list[str]:
        return [
            DNSMASQ,
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "--conf-file=/dev/null",
            f"--pid-file={self._workdir / 'dnsmasq.pid'}",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            f"--port={self.port}",
            # Every name is ours: no upstream, NXDOMAIN for what we do not serve.
            "--local=/#/",
            "--log-queries",
            "--log-facility=-",
            "--cache-size=0",
            # As root dnsmasq would switch to "nobody"; the log file is ours.
            f"--user={_current_user()}",
        ]

    def _wait_ready(self) -> None:
        """Return once dnsmasq answers a query; fail with its log if it exits."""
        assert self._process is not None
        query = dns.message.make_query(READY_NAME, "A")
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                pytest.fail(f"dnsmasq exited: {self._log.read_text()}")
            try:
                # TCP first: a refused connection says "not yet" at once,
                # where a UDP query would wait for its whole timeout.
                dns.query.tcp(query, "127.0.0.1", port=self.port, timeout=1)
                dns.query.udp(query, "127.0.0.1", port=self.port, timeout=1)
                return
            except (dns.exception.Timeout, OSError):
                time.sleep(0.005)
        pytest.fail(f"dnsmasq did not answer on port {self.port}")

    @property
    def queries(self) -> list[str]:
        """Names asked so far (since the last ``serve``), in order."""
        text = self._log.read_text() if self._log.exists() else ""
        names = re.findall(r"query\[\w+\] (\S+) from", text)
        return [name for name in names if name != READY_NAME]

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None


def _current_user() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


@pytest.fixture
def dns_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DnsServer]:
    """A real DNS server on loopback; call ``serve(...)`` to give it records."""
    server = DnsServer(tmp_path_factory.mktemp("dnsmasq"))
    server.serve()
    yield server
    server.stop()


# A second identity server of ours, served over real HTTP(S) on loopback.


@dataclass(frozen=True)
class TlsCert:
    cert: Path
    key: Path
    names: tuple[str, ...]


# Names the test certificate is valid for; "wrong.example.test" is not one.
TLS_NAMES = ("id.example.test", "id2.example.test", "localhost")


@pytest.fixture(scope="session")
def tls_cert(tmp_path_factory: pytest.TempPathFactory) -> TlsCert:
    """A self-signed certificate (its own CA) for TLS_NAMES and 127.0.0.1."""
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    san = ",".join([f"DNS:{n}" for n in TLS_NAMES] + ["IP:127.0.0.1"])
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
         "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
         "-subj", f"/CN={TLS_NAMES[0]}", "-addext", f"subjectAltName={san}",
         "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return TlsCert(cert, key, TLS_NAMES)


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, *args: Any, **kwargs: Any) -> None:
        pass  # the request line holds the looked-up address


class IdentityServer:
    """create_app() of a config, served by werkzeug in a thread; ``requests``
    lists (method, path, marker header or None) of what it received."""

    def __init__(self, config: Config, port: int, tls: TlsCert | None) -> None:
        self.config = config
        self.port = port
        self.requests: list[tuple[str, str, str | None]] = []
        self.app = create_app(config)
        context = None
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(tls.cert, tls.key)
        self._server = make_server(
            "127.0.0.1",
            port,
            self._counting,
            threaded=True,
            request_handler=_QuietHandler,
            ssl_context=context,
        )
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://127.0.0.1:{port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )
        self._thread.start()

    def _counting(self, environ: Any, start_response: Any) -> Any:
        marker = environ.get("HTTP_" + MARKER_HEADER.upper().replace("-", "_"))
        self.requests.append((environ["REQUEST_METHOD"], environ["PATH_INFO"], marker))
        return self.app(environ, start_response)

    def paths(self) -> list[str]:
        return [path for _, path, _ in self.requests]

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self.app.extensions["mxisd"].db.close()


ServerFactory = Callable[..., IdentityServer]


@pytest.fixture
def identity_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServerFactory]:
    """Start servers of ours: ``identity_server(domain, identities, tls=...,
    port=..., **config)``. ``identities`` maps email address -> localpart (memory
    store); extra keyword arguments are merged into the YAML configuration.
    The server's name is ``domain``; it listens on 127.0.0.1 on a free port
    (``server.port`` says which) and uses SQLite under its own directory."""
    started: list[IdentityServer] = []

    def start(
        domain: str,
        identities: Mapping[str, str] | None = None,
        tls: TlsCert | None = None,
        port: int | None = None,
        **extra: Any,
    ) -> IdentityServer:
        directory = tmp_path_factory.mktemp(domain)
        port = port or free_port()
        raw: dict[str, Any] = {
            "matrix": {"domain": domain},
            "server": {
                "name": domain,
                "hostname": "127.0.0.1",
                "port": port,
                "publicUrl": f"{'https' if tls else 'http'}://127.0.0.1:{port}",
            },
            "key": {"path": str(directory / "signing.key")},
            "storage": {"provider": {"sqlite": {"database": str(directory / "db")}}},
            "memory": {
                "identities": [
                    {
                        "username": localpart,
                        "threepids": [{"medium": "email", "address": address}],
                    }
                    for address, localpart in (identities or {}).items()
                ]
            },
        }
        server = IdentityServer(parse_config(deep_merge(raw, extra)), port, tls)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
