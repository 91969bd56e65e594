"""Fixtures: a real Apache reverse proxy with TLS, on the example we ship.

``start_apache`` starts Debian's ``/usr/sbin/apache2`` in the foreground as
the current user (no systemd, no /etc/apache2): a ServerRoot of its own under
tmp, one free loopback port, the modules the example needs loaded from
/usr/lib/apache2/modules, and a certificate from a throw-away CA made for
the run. The site it serves is ``etc/apache2/mxisd.conf`` itself, with the
ports, certificate paths and backends replaced, so the tests exercise the
file admins copy. With ``optional=True`` the example's commented optional
lines are switched on. Every Apache started is stopped after the module.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from fixtures_ca import TestCa, make_ca
from fixtures_synapse import START_TIMEOUT_S, Process

from conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "etc" / "apache2" / "mxisd.conf"
APACHE = Path("/usr/sbin/apache2")
MODULES = Path("/usr/lib/apache2/modules")
# mod_unixd and mod_log_config are built into Debian's binary.
NEEDED_MODULES = (
    "mpm_event",
    "authz_core",
    "authz_host",
    "headers",
    "proxy",
    "proxy_http",
    "ssl",
    "socache_shmcb",
)
# The example's commented directives start "#Directive" or "#<Section";
# its prose starts "# ". Switching the options on uncomments the former.
OPTIONAL_LINE = re.compile(r"^(\s*)#(?=[^\s#])", re.MULTILINE)
# The client addresses the tests connect from may pass Apache's own check
# on the internal path; our server's auth.internal.allowedCidr decides.
TEST_CLIENTS = "127.0.0.0/8"


@dataclass(frozen=True)
class ApacheSite:
    url: str  # https://127.0.0.1:<port>
    ca_file: str  # the CA to verify its certificate with
    site: str  # the rendered example, for failure messages
    process: Process


StartApache = Callable[..., ApacheSite]


def render_site(
    listen: str, ca: TestCa, identity_url: str, homeserver_url: str, optional: bool
) -> str:
    """The shipped example with this run's addresses and certificate."""
    text = EXAMPLE.read_text()
    replacements = {
        "<VirtualHost *:443>": f"<VirtualHost {listen}>",
        "/etc/ssl/certs/matrix.example.org.pem": str(ca.cert_file),
        "/etc/ssl/private/matrix.example.org.key": str(ca.key_file),
        "http://127.0.0.1:8090/": identity_url + "/",
        "http://127.0.0.1:8008/": homeserver_url + "/",
        "Require ip 192.0.2.10": f"Require ip {TEST_CLIENTS}",
    }
    for old, new in replacements.items():
        # A changed example must change this test too, not slip past it.
        assert old in text, f"{EXAMPLE} no longer contains {old!r}"
        text = text.replace(old, new)
    if optional:
        text, count = OPTIONAL_LINE.subn(r"\1", text)
        assert count > 0, f"{EXAMPLE} has no optional lines"
    return text


def server_config(workdir: Path, listen: str) -> str:
    """Apache's main configuration: everything Debian's /etc/apache2 would give."""
    modules = "\n".join(
        f"LoadModule {name}_module {MODULES / f'mod_{name}.so'}"
        for name in NEEDED_MODULES
    )
    # Apache refuses to serve as root. It drops to this user after the
    # parent has read the certificate and opened the logs, so www-data
    # needs no access to the test's directory.
    user = "User www-data\nGroup www-data" if os.geteuid() == 0 else ""
    return f"""
ServerRoot {workdir}
ServerName localhost
PidFile {workdir}/apache2.pid
DefaultRuntimeDir {workdir}
Listen {listen}
{modules}
{user}
ErrorLog {workdir}/error.log
LogLevel warn
Define APACHE_LOG_DIR {workdir}
# As Debian's mods-available/ssl.conf has it.
SSLSessionCache shmcb:{workdir}/ssl_scache(512000)
# One child with a few threads: enough for the tests, quick to start.
StartServers 1
ServerLimit 1
ThreadsPerChild 16
MaxRequestWorkers 16
MinSpareThreads 1
MaxSpareThreads 16
Include {workdir}/site.conf
"""


def wait_for_tls(url: str, ca: TestCa, process: Process, log: Path, site: str) -> None:
    """Wait for any HTTPS answer: where Apache routes it is for the tests."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.process.poll() is not None:
            break
        try:
            requests.get(url, verify=str(ca.ca_file), timeout=2)
            return
        except requests.ConnectionError:
            time.sleep(0.05)
    errors = log.read_text(errors="replace") if log.exists() else ""
    raise AssertionError(
        f"Apache did not answer on {url}:\n{process.output()}{errors}\nsite:\n{site}"
    )


@pytest.fixture(scope="module")
def start_apache(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[StartApache]:
    """Start an Apache proxying to ``identity_url`` and ``homeserver_url``."""
    ca = make_ca(tmp_path_factory.mktemp("apache-ca"))
    started: list[Process] = []

    def start(identity_url: str, homeserver_url: str, optional: bool) -> ApacheSite:
        workdir = tmp_path_factory.mktemp("apache")
        listen = f"127.0.0.1:{free_port()}"
        site = render_site(listen, ca, identity_url, homeserver_url, optional)
        (workdir / "site.conf").write_text(site)
        (workdir / "apache2.conf").write_text(server_config(workdir, listen))
        command = [str(APACHE), "-d", str(workdir), "-f", "apache2.conf"]
        process = Process([*command, "-DFOREGROUND"], workdir, dict(os.environ))
        started.append(process)
        url = f"https://{listen}"
        wait_for_tls(url, ca, process, workdir / "error.log", site)
        return ApacheSite(url, str(ca.ca_file), site, process)

    yield start
    for process in started:
        process.stop()
