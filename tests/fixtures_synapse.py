"""Fixtures: a real Synapse homeserver beside our server served over TLS.

``synapse_stack`` (module scope) starts, on loopback and free ports:

- our server, ``python -m mxisd_flask`` under gunicorn with
  ``server.tls.certFile``/``keyFile`` from a throw-away CA, allowed to call
  loopback (``outbound.allowedCidr``) and told where Synapse's federation
  API is (``dns.overwrite.homeserver.federation``);
- Synapse from PyPI, in its own virtualenv, on SQLite, trusting that CA
  (``SSL_CERT_FILE``), allowed to call loopback (``ip_range_whitelist``),
  with our password module from contrib/synapse configured under
  ``modules:``.

Both are stopped after the module's tests. The virtualenv is cached by
version under ``$MXISD_TEST_CACHE`` (default ``~/.cache/mxisd-tests``), so
only the first run installs (about 30 s); contrib/synapse is installed
afresh each run, with pip, into a directory of its own on Synapse's
PYTHONPATH, so the cached virtualenv is never changed by a checkout.
``MXISD_TEST_SYNAPSE_VERSION`` picks another Synapse release.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import signedjson.key
import yaml
from fixtures_ca import TestCa, make_ca
from fixtures_ldap import Slapd

from conftest import Mailbox, free_port

ROOT = Path(__file__).resolve().parent.parent
CONTRIB = ROOT / "contrib" / "synapse"
SYNAPSE_VERSION = os.environ.get("MXISD_TEST_SYNAPSE_VERSION", "1.163.2")
CACHE = Path(os.environ.get("MXISD_TEST_CACHE", Path.home() / ".cache" / "mxisd-tests"))
# setuptools builds contrib/synapse without build isolation (no download
# per run); 70.1 is the first that builds wheels without the wheel package.
REQUIREMENTS = (f"matrix-synapse=={SYNAPSE_VERSION}", "setuptools>=70.1")
SERVER_NAME = "example.test"
SHARED_SECRET = "registration-shared-secret-for-tests"
START_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class StoreUser:
    localpart: str
    password: str
    display_name: str
    email: str


# In the LDAP directory (tests/ldap/seed.ldif) only, not in Synapse.
DAVE = StoreUser("ldapdave", "ldapdave-pw", "Dave Upper", "dave.upper@example.org")


# ---- the Synapse virtualenv ---------------------------------------------


def synapse_python() -> Path:
    """Python of a virtualenv holding matrix-synapse, installed once per version."""
    venv = CACHE / f"synapse-{SYNAPSE_VERSION}"
    marker = venv / ".installed"
    if _installed(marker):
        return venv / "bin" / "python"
    CACHE.mkdir(parents=True, exist_ok=True)
    # Several checkouts may run the suite at once: one installs, the others wait.
    with open(CACHE / f"synapse-{SYNAPSE_VERSION}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _installed(marker):
            shutil.rmtree(venv, ignore_errors=True)
            base = getattr(sys, "_base_executable", sys.executable)
            _run([base, "-m", "venv", str(venv)], venv.parent / "install.log")
            _run(
                [
                    str(venv / "bin" / "pip"),
                    "install",
                    "--quiet",
                    *REQUIREMENTS,
                ],
                venv.parent / "install.log",
            )
            marker.write_text(" ".join(REQUIREMENTS))
    return venv / "bin" / "python"


def _installed(marker: Path) -> bool:
    return marker.exists() and marker.read_text() == " ".join(REQUIREMENTS)


def _run(command: list[str], log: Path) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    log.write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise AssertionError(f"{command[0]} failed:\n{done.stdout}{done.stderr}")


def install_module(python: Path, target: Path) -> None:
    """pip-install contrib/synapse (a copy: builds write beside the sources)."""
    source = target.parent / "mxisd-synapse-src"
    shutil.copytree(CONTRIB, source, ignore=shutil.ignore_patterns("build", "*.egg*"))
    _run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(source),
        ],
        target.parent / "module-install.log",
    )


# ---- processes --------------------------------------------------------------


class Process:
    """A server process writing to a log file, stopped with SIGTERM."""

    def __init__(self, command: list[str], workdir: Path, env: dict[str, str]) -> None:
        self.log_path = workdir / "output.log"
        self._command = command
        self._workdir = workdir
        self._env = env
        self._log = open(self.log_path, "w")  # noqa: SIM115  # closed in stop()
        self.process = self._spawn()

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            self._command,
            cwd=self._workdir,
            env=self._env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def start_again(self) -> None:
        """Run the stopped process again, appending to the same log."""
        assert self.process.poll() is not None, "still running"
        self._log = open(self.log_path, "a")  # noqa: SIM115  # closed in stop()
        self.process = self._spawn()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_until(self, url: str, verify: bool | str = True) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.process.poll() is None, "exited early:\n" + self.output()
            try:
                if requests.get(url, timeout=2, verify=verify).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"{url} did not come up:\n{self.output()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def start_mxisd(
    workdir: Path,
    port: int,
    ca: TestCa,
    smtp_port: int,
    synapse_url: str,
    stores: dict[str, Any],
) -> Process:
    workdir.mkdir()
    config = {
        "matrix": {"domain": SERVER_NAME},
        "server": {
            "port": port,
            "publicUrl": f"https://127.0.0.1:{port}",
            "workers": 1,
            "tls": {"certFile": str(ca.cert_file), "keyFile": str(ca.key_file)},
        },
        "key": {"path": str(workdir / "signing.key")},
        "storage": {"provider": {"sqlite": {"database": str(workdir / "mxisd.db")}}},
        "threepid": {
            "medium": {
                "email": {
                    "identity": {"from": f"identity@{SERVER_NAME}"},
                    "connectors": {
                        "smtp": {"host": "127.0.0.1", "port": smtp_port, "tls": 0}
                    },
                }
            }
        },
        **stores,
        "dns": {
            "overwrite": {
                "homeserver": {
                    # Onbind and OpenID checks, then directory search and
                    # login interception: Synapse serves both on one port.
                    "federation": [{"name": SERVER_NAME, "value": synapse_url}],
                    "client": [{"name": SERVER_NAME, "value": synapse_url}],
                }
            }
        },
        "outbound": {"allowedCidr": ["127.0.0.1/32"]},
    }
    path = workdir / "mxisd.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = Process(
        [sys.executable, "-m", "mxisd_flask", "--config", str(path)], workdir, env
    )
    server.wait_until(f"https://127.0.0.1:{port}/_matrix/identity/v2", str(ca.ca_file))
    return server


def synapse_config(workdir: Path, port: int, mxisd_url: str) -> dict[str, Any]:
    generous = {"per_second": 100, "burst_count": 1000}
    return {
        "server_name": SERVER_NAME,
        "public_baseurl": f"http://127.0.0.1:{port}/",
        "pid_file": str(workdir / "homeserver.pid"),
        "listeners": [
            {
                "port": port,
                "bind_addresses": ["127.0.0.1"],
                "type": "http",
                "tls": False,
                "x_forwarded": False,
                "resources": [{"names": ["client", "federation"], "compress": False}],
            }
        ],
        "database": {
            "name": "sqlite3",
            "args": {"database": str(workdir / "homeserver.db")},
        },
        "media_store_path": str(workdir / "media"),
        "signing_key_path": str(workdir / "signing.key"),
        "registration_shared_secret": SHARED_SECRET,
        "macaroon_secret_key": uuid.uuid4().hex,
        "form_secret": uuid.uuid4().hex,
        "report_stats": False,
        "enable_metrics": False,
        "trusted_key_servers": [],
        "suppress_key_server_warning": True,
        # Our server is on loopback, which Synapse refuses to call by default.
        "ip_range_whitelist": ["127.0.0.1/32", "::1/128"],
        "enable_registration": False,
        "password_config": {"enabled": True, "localdb_enabled": True},
        "user_directory": {"enabled": True, "search_all_users": True},
        "presence": {"enabled": False},
        "rc_login": {
            "address": generous,
            "account": generous,
            "failed_attempts": generous,
        },
        "rc_message": generous,
        "rc_registration": generous,
        "rc_invites": {
            "per_room": generous,
            "per_user": generous,
            "per_issuer": generous,
        },
        "rc_third_party_invite": generous,
        "modules": [
            {
                "module": "mxisd_synapse.MxisdPasswordProvider",
                "config": {"endpoint": mxisd_url},
            }
        ],
    }


def start_synapse(
    workdir: Path, port: int, ca: TestCa, mxisd_url: str, python: Path
) -> Process:
    workdir.mkdir()
    modules = workdir / "modules"
    install_module(python, modules)
    key = signedjson.key.generate_signing_key("a_test")
    with open(workdir / "signing.key", "w") as handle:
        signedjson.key.write_signing_keys(handle, [key])
    path = workdir / "homeserver.yaml"
    path.write_text(yaml.safe_dump(synapse_config(workdir, port, mxisd_url)))
    env = {
        **os.environ,
        "PYTHONPATH": str(modules),
        # Twisted verifies TLS with OpenSSL's default paths, which this names.
        "SSL_CERT_FILE": str(ca.ca_file),
    }
    synapse = Process(
        [str(python), "-m", "synapse.app.homeserver", "-c", str(path)], workdir, env
    )
    synapse.wait_until(f"http://127.0.0.1:{port}/health")
    return synapse


# ---- talking to them ----------------------------------------------------------


class MatrixUser:
    """A Synapse user's client-server API session."""

    def __init__(self, base: str, user_id: str, access_token: str) -> None:
        self.base = base
        self.user_id = user_id
        self.access_token = access_token

    def call(self, method: str, path: str, body: Any = None) -> requests.Response:
        return requests.request(
            method,
            self.base + path,
            json=body,
            headers={"Authorization": f"Bearer {self.access_token}"},
            timeout=30,
        )

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        response = self.call(method, path, body)
        assert response.status_code == 200, (path, response.text)
        return response.json()


@dataclass
class SynapseStack:
    synapse_url: str
    mxisd_url: str
    mxisd_server: str  # host:port, as clients name an identity server
    ca_file: str
    synapse: Process
    mxisd: Process
    synapse_python: Path
    module_dir: Path

    def register(
        self, localpart: str, password: str, admin: bool = False
    ) -> MatrixUser:
        """A Synapse account made with the registration shared secret."""
        url = f"{self.synapse_url}/_synapse/admin/v1/register"
        nonce = requests.get(url, timeout=10).json()["nonce"]
        parts = (nonce, localpart, password, "admin" if admin else "notadmin")
        signed = b"\x00".join(part.encode() for part in parts)
        mac = hmac.new(SHARED_SECRET.encode(), signed, hashlib.sha1).hexdigest()
        body = {
            "nonce": nonce,
            "username": localpart,
            "password": password,
            "admin": admin,
            "mac": mac,
        }
        answer = requests.post(url, json=body, timeout=30)
        assert answer.status_code == 200, answer.text
        found = answer.json()
        return MatrixUser(self.synapse_url, found["user_id"], found["access_token"])

    def synapse_user(self, login: dict[str, Any]) -> MatrixUser:
        return MatrixUser(self.synapse_url, login["user_id"], login["access_token"])

    def login(self, user: str, password: str) -> requests.Response:
        return requests.post(
            f"{self.synapse_url}/_matrix/client/v3/login",
            json={
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": user},
                "password": password,
            },
            timeout=30,
        )

    def identity(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """A call to our server, over TLS checked against the test CA."""
        return requests.request(
            method,
            self.mxisd_url + path,
            verify=self.ca_file,
            timeout=30,
            **kwargs,
        )


@pytest.fixture(scope="module")
def synapse_stack(
    tmp_path_factory: pytest.TempPathFactory,
    smtp_server: tuple[int, Mailbox],
    slapd_server: Slapd,
) -> Iterator[SynapseStack]:
    python = synapse_python()
    workdir = tmp_path_factory.mktemp("synapse-stack")
    ca = make_ca(workdir)
    synapse_port, mxisd_port = free_port(), free_port()
    synapse_url = f"http://127.0.0.1:{synapse_port}"
    mxisd_url = f"https://127.0.0.1:{mxisd_port}"
    mxisd = start_mxisd(
        workdir / "mxisd",
        mxisd_port,
        ca,
        smtp_server[0],
        synapse_url,
        {"ldap": slapd_server.config()},
    )
    try:
        synapse = start_synapse(
            workdir / "synapse", synapse_port, ca, mxisd_url, python
        )
    except BaseException:
        mxisd.stop()
        raise
    netloc = urllib.parse.urlsplit(mxisd_url).netloc
    yield SynapseStack(
        synapse_url,
        mxisd_url,
        netloc,
        str(ca.ca_file),
        synapse,
        mxisd,
        python,
        workdir / "synapse" / "modules",
    )
    synapse.stop()
    mxisd.stop()
