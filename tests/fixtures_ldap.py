"""Fixtures: OpenLDAP (slapd) server with a seeded directory.

:class:`Slapd` runs Debian's slapd with a configuration of its own (an mdb
database in a temporary directory, our AD-style schema from tests/ldap/) on a
free loopback port; the system's slapd service is never touched. The seed is
loaded with slapadd before the first start. Tests may stop, start or restart
the server; the data stays in the directory between runs.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fixtures_ca import make_ca

LDAP_DIR = Path(__file__).resolve().parent / "ldap"
SEED_LDIF = LDAP_DIR / "seed.ldif"
SUFFIX = "dc=example,dc=org"
ROOT_DN = f"cn=admin,{SUFFIX}"
ROOT_PW = "root-secret"
BIND_DN = f"cn=mxisd,ou=services,{SUFFIX}"
BIND_PW = "mxisd-bind-pw"
SLAPD = shutil.which("slapd") or "/usr/sbin/slapd"
SLAPADD = shutil.which("slapadd") or "/usr/sbin/slapadd"

SLAPD_CONF = """\
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include {schema}
pidfile {root}/slapd.pid
argsfile {root}/slapd.args
modulepath /usr/lib/ldap
moduleload back_mdb
# A directory's usual limit: answers past 500 entries need paging (the
# store's listing pages) ...
sizelimit 500

database mdb
suffix "{suffix}"
rootdn "{root_dn}"
rootpw {root_pw}
directory {root}/data
maxsize 1073741824
# ... and the service account may page through everything, as
# docs/stores-ldap.md asks of OpenLDAP admins.
limits dn.exact="{bind_dn}" size.prtotal=unlimited
index objectClass eq
index uid,mail,cn,displayName,sAMAccountName,userPrincipalName eq,sub
index proxyAddresses,employeeNumber,telephoneNumber,mobile eq,sub
access to attrs=userPassword
  by self write
  by anonymous auth
  by * none
access to *
  by users read
  by * none
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Slapd:
    """One slapd process on 127.0.0.1:``port`` serving :data:`SUFFIX`.

    With ``tls`` (certificate and key files) it speaks ldaps:// only; with
    ``starttls`` as well, ldap:// that refuses every operation but StartTLS
    until the connection is upgraded (slapd's ``security tls=1``).
    """

    def __init__(
        self,
        root: Path,
        seed: Path = SEED_LDIF,
        tls: tuple[Path, Path] | None = None,
        starttls: bool = False,
    ) -> None:
        self.root = root
        self.port = _free_port()
        self.tls = tls is not None and not starttls
        self.starttls = tls is not None and starttls
        scheme = "ldaps" if self.tls else "ldap"
        self.uri = f"{scheme}://127.0.0.1:{self.port}"
        self.conf = root / "slapd.conf"
        self._process: subprocess.Popen[bytes] | None = None
        (root / "data").mkdir(parents=True, exist_ok=True)
        conf = SLAPD_CONF.format(
            schema=LDAP_DIR / "ad.schema",
            root=root,
            suffix=SUFFIX,
            root_dn=ROOT_DN,
            root_pw=ROOT_PW,
            bind_dn=BIND_DN,
        )
        if tls:
            conf = (
                f"TLSCertificateFile {tls[0]}\nTLSCertificateKeyFile {tls[1]}\n{conf}"
            )
        if self.starttls:
            conf = f"security tls=1\n{conf}"
        self.conf.write_text(conf)
        self.load(seed)

    def load(self, ldif: Path) -> None:
        """Add entries offline (slapadd): only while the server is stopped."""
        assert self._process is None, "slapadd needs the server stopped"
        subprocess.run(
            [SLAPADD, "-q", "-f", str(self.conf), "-l", str(ldif)],
            check=True,
            capture_output=True,
        )

    def start(self) -> None:
        assert self._process is None, "already running"
        # -d 0 keeps slapd in the foreground, so we own the process.
        self._process = subprocess.Popen(
            [SLAPD, "-f", str(self.conf), "-h", f"{self.uri}/", "-d", "0"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                err = self._process.stderr.read() if self._process.stderr else b""
                self._process = None
                raise RuntimeError(f"slapd exited: {err.decode(errors='replace')}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("slapd did not start listening in 15 s")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr:
            process.stderr.close()

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def config(self, **extra: Any) -> dict[str, Any]:
        """An ``ldap`` section for this server; ``extra`` keys override."""
        section: dict[str, Any] = {
            "enabled": True,
            "connection": {
                "host": "127.0.0.1",
                "port": self.port,
                "tls": self.tls,
                "startTls": self.starttls,
                "bindDn": BIND_DN,
                "bindPassword": BIND_PW,
                "baseDNs": [f"ou=people,{SUFFIX}", f"ou=ad,{SUFFIX}"],
                "timeout": 2,
            },
            "filter": "(&(objectClass=inetOrgPerson)(!(employeeType=contractor)))",
            "attribute": {
                "uid": {"type": "uid", "value": "uid"},
                "name": "displayName",
                "threepid": {
                    "email": ["mail"],
                    "msisdn": ["telephoneNumber", "mobile"],
                    "employee": ["employeeNumber"],
                },
            },
        }
        for key, value in extra.items():
            section[key] = value
        return section


@pytest.fixture(scope="session")
def slapd_server() -> Iterator[Slapd]:
    """The seeded slapd of the whole run."""
    root = Path(tempfile.mkdtemp(prefix="mxisd-slapd-"))
    server = Slapd(root)
    server.start()
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def slapd(slapd_server: Slapd) -> Iterator[Slapd]:
    """The session's slapd, running again after the test even if it stopped it."""
    if not slapd_server.running:
        slapd_server.start()
    yield slapd_server
    if not slapd_server.running:
        slapd_server.start()


def _tls_slapd(
    starttls: bool, names: tuple[str, ...] = ("localhost", "127.0.0.1")
) -> Iterator[tuple[Slapd, Path]]:
    """A seeded slapd whose certificate for ``names`` a throw-away CA signed;
    yields the server and the CA's certificate (what a client must trust)."""
    root = Path(tempfile.mkdtemp(prefix="mxisd-slapd-tls-"))
    ca = make_ca(root, names)
    server = Slapd(root / "slapd", tls=(ca.cert_file, ca.key_file), starttls=starttls)
    server.start()
    yield server, ca.ca_file
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def slapd_tls() -> Iterator[tuple[Slapd, Path]]:
    """ldaps:// only."""
    yield from _tls_slapd(starttls=False)


@pytest.fixture(scope="session")
def slapd_starttls() -> Iterator[tuple[Slapd, Path]]:
    """ldap:// that serves nothing before StartTLS."""
    yield from _tls_slapd(starttls=True)


@pytest.fixture
def slapd_misnamed() -> Iterator[tuple[Slapd, Path]]:
    """ldaps:// on 127.0.0.1 with a trusted CA's certificate for another name."""
    yield from _tls_slapd(starttls=False, names=("ldap.example.test",))


def ldif_users(count: int, suffix: str = SUFFIX) -> str:
    """``count`` inetOrgPerson entries under ou=people, for benchmarks."""
    chunks = []
    for i in range(count):
        chunks.append(
            f"dn: uid=user{i},ou=people,{suffix}\n"
            "objectClass: inetOrgPerson\n"
            f"uid: user{i}\ncn: User {i}\nsn: {i}\ndisplayName: User {i}\n"
            f"mail: user{i}@example.org\nuserPassword: user{i}-pw\n"
        )
    return "\n".join(chunks)


def write_temp(text: str, directory: Path) -> Path:
    fd, name = tempfile.mkstemp(suffix=".ldif", dir=directory)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    return Path(name)
