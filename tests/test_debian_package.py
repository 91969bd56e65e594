"""The Debian package as an admin gets it: built with dpkg-buildpackage,
checked by lintian and systemd-analyze, installed with dpkg on this machine
without network, its unit's ExecStart run as user mxisd (the first start in
a network namespace with nothing but loopback), its key rotated, upgraded,
removed and purged.

The package tests need root and a host whose systemd does not run (CI's
container): there, dpkg's postinst cannot start a real mxisd.service next to
the one the test runs. Elsewhere they skip; deselect them with
``-m "not debian_package"``. Builds are cached by source hash under
/var/tmp/mxisd-deb, so only a changed source is built again.
"""

from __future__ import annotations

import configparser
import contextlib
import ctypes
import email.utils
import errno
import fcntl
import grp
import hashlib
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import time
import urllib.parse
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, ClassVar, TypeVar

import pytest
import requests
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import mxisd_flask
from conftest import Mailbox, free_port
from mxisd_flask.config import WARNINGS, load_config

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("MXISD_DEB_CACHE", "/var/tmp/mxisd-deb"))
UNIT = Path("/lib/systemd/system/mxisd.service")
CONFIG = Path("/etc/mxisd/mxisd.yaml")
STATE = Path("/var/lib/mxisd")
# Written before the test installs the package, removed after its purge: a
# leftover means a crashed run of ours, not an admin's installation.
MARKER = Path("/run/mxisd-package-test")
# Not shipped: changing them must not rebuild the package.
NOT_SHIPPED = ("tests/", "bench/")
BUILD_ENV = {
    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "DEBIAN_FRONTEND": "noninteractive",
}
V2 = "/_matrix/identity/v2"
V1 = "/_matrix/identity/api/v1"
DROP_IN = Path("/etc/systemd/system/mxisd.service.d")
# <linux/sched.h>: the namespace type setns(2) is asked to join.
CLONE_NEWNET = 0x40000000
T = TypeVar("T")

debian_package = pytest.mark.debian_package


# --- What the package is built from (fast, no root) ---------------------------


def changelog_version() -> str:
    first = (ROOT / "debian" / "changelog").read_text().splitlines()[0]
    match = re.match(r"mxisd \(([^)]+)\)", first)
    assert match, first
    return match.group(1)


def test_changelog_version_is_the_program_version() -> None:
    upstream = changelog_version().split("-")[0].split("+")[0]
    assert upstream == mxisd_flask.__version__


def test_every_install_requirement_is_pinned_for_the_package() -> None:
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    wanted = {
        canonicalize_name(Requirement(line).name)
        for line in setup["options"]["install_requires"].split("\n")
        if line.strip()
    }
    pinned = {}
    for line in (ROOT / "debian" / "requirements.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            requirement = Requirement(line)
            pinned[canonicalize_name(requirement.name)] = requirement
    missing = wanted - pinned.keys()
    assert not missing, f"add to debian/requirements.txt (make lock): {missing}"
    loose = [str(r) for r in pinned.values() if not str(r.specifier).startswith("==")]
    assert not loose, f"pins must be exact: {loose}"


def test_shipped_configuration_is_a_production_one() -> None:
    config = load_config(str(ROOT / "etc" / "mxisd.production.yaml"))

    assert WARNINGS == []
    assert (config.server.hostname, config.server.port) == ("127.0.0.1", 8090)
    assert config.key_path == "/var/lib/mxisd/signing.key"
    assert config.storage.backend == "sqlite"
    assert config.storage.sqlite_database == "/var/lib/mxisd/mxisd.db"


# --- Building, cached by source hash ------------------------------------------


def shipped_sources() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.decode()
    return sorted(
        name
        for name in listed.split("\0")
        if name and not name.startswith(NOT_SHIPPED) and (ROOT / name).is_file()
    )


def source_hash(files: list[str], version: str) -> str:
    digest = hashlib.sha256(version.encode())
    for name in files:
        digest.update(name.encode() + b"\0" + (ROOT / name).read_bytes() + b"\0")
    return digest.hexdigest()[:20]


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """One holder at a time across processes (other checkouts run tests too)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass
class Built:
    version: str
    deb: Path
    changes: Path


def bump_changelog(changelog: Path, version: str) -> None:
    """A newer entry on top, as a maintainer's next upload would add."""
    date = email.utils.format_datetime(email.utils.localtime())
    entry = (
        f"mxisd ({version}) unstable; urgency=medium\n\n"
        "  * Rebuilt to test upgrades.\n\n"
        f" -- mxisd-flask developers <mxisd-flask@lists.example.org>  {date}\n\n"
    )
    changelog.write_text(entry + changelog.read_text())


def build(version: str) -> Built:
    """dpkg-buildpackage on a copy of the shipped sources, at ``version``."""
    files = shipped_sources()
    key = source_hash(files, version)
    done = CACHE / key
    with locked(CACHE / "build.lock"):
        if not done.is_dir():
            _build_into(done, files, version)
    deb = next(done.glob("mxisd_*.deb"))
    return Built(version, deb, next(done.glob("mxisd_*.changes")))


def _build_into(done: Path, files: list[str], version: str) -> None:
    work = done.with_name(done.name + ".tmp")
    shutil.rmtree(work, ignore_errors=True)
    source = work / "src"
    for name in files:
        target = source / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    if version != changelog_version():
        bump_changelog(source / "debian" / "changelog", version)
    env = {**BUILD_ENV, "MXISD_WHEELHOUSE": str(CACHE / "wheelhouse")}
    log = work / "build.log"
    with open(log, "w") as out:
        code = subprocess.call(
            ["dpkg-buildpackage", "-us", "-uc", "-b"],
            cwd=source,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    assert code == 0, "dpkg-buildpackage failed:\n" + log.read_text()[-6000:]
    shutil.rmtree(source)
    work.rename(done)
    _prune_cache(keep=6)


def _prune_cache(keep: int) -> None:
    """Old builds go: each source change adds two packages."""
    built = sorted(
        (path for path in CACHE.iterdir() if path.is_dir() and len(path.name) == 20),
        key=lambda path: path.stat().st_mtime,
    )
    for path in built[:-keep]:
        shutil.rmtree(path, ignore_errors=True)


class Builds:
    """The package at its version, and a newer one to upgrade to, built in
    the background while the first one is checked and installed."""

    def __init__(self, pool: ThreadPoolExecutor) -> None:
        self.version = changelog_version()
        self._pool = pool
        self._current: Built | None = None
        self._next: Future[Built] | None = None

    @property
    def current(self) -> Built:
        if self._current is None:
            self._current = build(self.version)
            self._next = self._pool.submit(build, self.version + "+upgradetest1")
        return self._current

    @property
    def next(self) -> Built:
        assert self.current and self._next is not None
        return self._next.result()


@pytest.fixture(scope="module")
def builds() -> Iterator[Builds]:
    if shutil.which("dpkg-buildpackage") is None:
        pytest.fail("dpkg-buildpackage is missing: run `make sysdeps`")
    with ThreadPoolExecutor(max_workers=1) as pool:
        yield Builds(pool)


@debian_package
def test_package_builds_and_lintian_reports_no_error(builds: Builds) -> None:
    built = builds.current
    contents = subprocess.run(
        ["dpkg-deb", "--contents", str(built.deb)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    for path in (
        "./etc/mxisd/mxisd.yaml",
        "./lib/systemd/system/mxisd.service",
        "./usr/bin/mxisd",
        "./usr/share/mxisd/templates/email/validation.eml",
        "./usr/share/doc/mxisd/examples/mxisd.example.yaml",
        "./usr/share/doc/mxisd/examples/mxisd.conf",
    ):
        assert path in contents, path
    # Every doc the unit, the manual page and the configuration point to.
    named = set()
    for source in (
        "debian/mxisd.service",
        "debian/mxisd.1",
        "etc/mxisd.production.yaml",
    ):
        named.update(
            re.findall(r"/usr/share/doc/mxisd/[\w.-]+\.md", (ROOT / source).read_text())
        )
    assert named
    for doc in sorted(named):
        assert f".{doc}" in contents.split(), doc

    linted = subprocess.run(
        ["lintian", "--fail-on", "error", str(built.changes)],
        capture_output=True,
        text=True,
        env=BUILD_ENV,
    )

    errors = [line for line in linted.stdout.splitlines() if line.startswith("E:")]
    assert linted.returncode == 0 and not errors, linted.stdout + linted.stderr


# --- Installing on this machine -----------------------------------------------


def installed_version() -> str | None:
    shown = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status} ${Version}", "mxisd"],
        capture_output=True,
        text=True,
    )
    if shown.returncode != 0 or "not-installed" in shown.stdout:
        return None
    status, _, version = shown.stdout.rpartition(" ")
    return version if "ok installed" in status else f"{status} {version}"


def dpkg(*args: str, offline: bool = False) -> str:
    """dpkg, waiting while another dpkg or apt holds its lock; ``offline``
    runs it (and so the maintainer scripts) in a network namespace of its
    own, where nothing but an unconfigured loopback exists."""
    deadline = time.monotonic() + 120
    prefix = ["unshare", "--net"] if offline else []
    while True:
        done = subprocess.run(
            [*prefix, "dpkg", *args],
            capture_output=True,
            text=True,
            env=BUILD_ENV,
            stdin=subprocess.DEVNULL,
        )
        output = done.stdout + done.stderr
        if done.returncode == 0:
            return output
        if "lock" not in output or time.monotonic() > deadline:
            raise AssertionError(f"dpkg {' '.join(args)} failed:\n{output}")
        time.sleep(2)


@pytest.fixture
def host() -> Iterator[None]:
    """This machine, ready to take the package, and clean again afterwards."""
    if os.geteuid() != 0:
        pytest.skip("installs a package: needs root (CI runs as root)")
    if Path("/run/systemd/system").is_dir():
        pytest.skip("systemd runs this host: postinst would start a real service")
    with locked(CACHE / "install.lock"):
        if installed_version() is not None or STATE.exists():
            if not MARKER.exists():
                pytest.skip("mxisd was installed here, not by this test: left alone")
            dpkg("--purge", "mxisd")
        MARKER.write_text(str(os.getpid()))
        try:
            yield
        finally:
            if installed_version() is not None:
                dpkg("--purge", "mxisd")
            MARKER.unlink(missing_ok=True)


@contextlib.contextmanager
def offline_namespace() -> Iterator[Path]:
    """A network namespace holding only loopback: no route out, no DNS."""
    name = f"mxisd-offline-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield Path("/run/netns") / name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=True)


def _join_namespace(path: Path) -> None:
    """Move the calling thread (only it: setns is per thread) into ``path``."""
    libc = ctypes.CDLL(None, use_errno=True)
    handle = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(handle, CLONE_NEWNET) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"setns {path}: {os.strerror(code)}")
    finally:
        os.close(handle)


def assert_no_route_out() -> None:
    """The namespace really is offline: a public address cannot be reached."""
    with pytest.raises(OSError) as refused:
        socket.create_connection(("192.0.2.1", 80), timeout=2).close()
    assert refused.value.errno == errno.ENETUNREACH, refused.value


@dataclass
class Unit:
    """The [Service] settings that decide how the server runs."""

    settings: dict[str, list[str]]

    @classmethod
    def read(cls, path: Path) -> Unit:
        settings: dict[str, list[str]] = {}
        section = ""
        for raw in path.read_text().splitlines():
            line = raw.strip()
            if not line or line.startswith(("#", ";")):
                continue
            if line.startswith("["):
                section = line
                continue
            if section == "[Service]":
                key, _, value = line.partition("=")
                settings.setdefault(key.strip(), []).append(value.strip())
        return cls(settings)

    def one(self, key: str) -> str:
        values = self.settings.get(key, [])
        assert len(values) == 1, f"{key}: {values}"
        return values[0]

    def environment(self) -> dict[str, str]:
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
        for value in self.settings.get("Environment", []):
            for assignment in shlex.split(value):
                name, _, setting = assignment.partition("=")
                env[name] = setting
        return env


class Service:
    """The unit's ExecStart, run the way systemd would: as its user, in its
    working directory, with its environment and umask. With ``netns`` the
    server runs in that network namespace, and the test's requests to it are
    made from a thread that joined it."""

    # Every server started, for the_servers_stopped to stop after a failure.
    started: ClassVar[list[Service]] = []

    def __init__(
        self, unit: Unit, port: int, log: Path, netns: Path | None = None
    ) -> None:
        command = shlex.split(unit.one("ExecStart"))
        assert not command[0].startswith(("-", "@", "+", "!")), command
        umask = int(unit.one("UMask"), 8)
        self.url = f"http://127.0.0.1:{port}"
        self._client: ThreadPoolExecutor | None = None
        prefix: list[str] = []
        if netns is not None:
            # nsenter and setpriv exec what follows: the server keeps the
            # pid that stop() signals.
            prefix = ["nsenter", f"--net={netns}"]
            self._client = ThreadPoolExecutor(
                max_workers=1, initializer=_join_namespace, initargs=(netns,)
            )
        self.log: IO[str] = open(log, "a")  # noqa: SIM115  # closed in stop()
        self.process = subprocess.Popen(
            [
                *prefix,
                "setpriv",
                f"--reuid={unit.one('User')}",
                f"--regid={unit.one('Group')}",
                "--init-groups",
                "--",
                *command,
            ],
            cwd=unit.one("WorkingDirectory"),
            env=unit.environment(),
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=lambda: os.umask(umask),
        )
        Service.started.append(self)
        self._wait_until_up(log)

    def in_its_network(self, call: Callable[[], T]) -> T:
        """Run ``call`` where the server's network is (a joined thread)."""
        if self._client is None:
            return call()
        return self._client.submit(call).result()

    def _wait_until_up(self, log: Path) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                self.in_its_network(lambda: requests.get(self.url + V2, timeout=1))
                return
            except requests.ConnectionError:
                if self.process.poll() is not None:
                    break
                time.sleep(0.2)
        self.stop()
        raise AssertionError("the unit's ExecStart did not serve:\n" + log.read_text())

    def get(self, path: str) -> Any:
        response = self.in_its_network(
            lambda: requests.get(self.url + path, timeout=10)
        )
        assert response.status_code == 200, response.text
        return response.json()

    def post(self, path: str, body: dict[str, Any]) -> Any:
        response = self.in_its_network(
            lambda: requests.post(self.url + path, json=body, timeout=10)
        )
        assert response.status_code == 200, response.text
        return response.json()

    def public_key(self) -> str:
        return str(self.get(f"{V2}/pubkey/ed25519:0")["public_key"])

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=30)
        self.log.close()
        if self._client is not None:
            self._client.shutdown()
        return code


def edit_config(smtp_port: int) -> tuple[int, str]:
    """What an admin does after installing: own domain, own mail relay. The
    port moves off 8090 only so the test never meets a server of yours."""
    raw = yaml.safe_load(CONFIG.read_text())
    port = free_port()
    raw["matrix"]["domain"] = "test.example.org"
    raw["server"]["port"] = port
    raw["threepid"]["medium"]["email"]["connectors"]["smtp"] = {
        "host": "127.0.0.1",
        "port": smtp_port,
        "tls": 0,
    }
    text = "# Edited by test_debian_package.\n" + yaml.safe_dump(raw)
    CONFIG.write_text(text)
    return port, text


def owner(path: Path) -> tuple[str, str, int]:
    info = path.stat()
    return (
        pwd.getpwuid(info.st_uid).pw_name,
        grp.getgrgid(info.st_gid).gr_name,
        stat.S_IMODE(info.st_mode),
    )


def check_fresh_install() -> None:
    user = pwd.getpwnam("mxisd")
    assert user.pw_uid < 1000 and user.pw_shell.endswith("nologin")
    assert owner(STATE) == ("mxisd", "mxisd", 0o750)
    assert owner(CONFIG) == ("root", "mxisd", 0o640)
    conffiles = subprocess.run(
        ["dpkg-query", "-W", "-f=${Conffiles}", "mxisd"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert str(CONFIG) in conffiles
    assert list(STATE.iterdir()) == []  # the server creates the key and DB


def verify_unit() -> str:
    """``systemd-analyze verify`` of the installed unit: what it printed."""
    verified = subprocess.run(
        ["systemd-analyze", "verify", str(UNIT)], capture_output=True, text=True
    )
    output = verified.stdout + verified.stderr
    assert verified.returncode == 0, output
    return output


def check_unit_is_valid_and_hardened(unit: Unit) -> None:
    assert "mxisd" not in verify_unit()
    # Exposure at most 2.5 of 10 ("OK"; the unit scores 1.7): the threshold
    # is given in tenths.
    review = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--threshold=25"]
        + [str(UNIT)],
        capture_output=True,
        text=True,
    )
    assert review.returncode == 0, review.stdout[-3000:]
    for key, value in {
        "User": "mxisd",
        "Restart": "on-failure",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ReadWritePaths": "/var/lib/mxisd",
        "PrivateTmp": "yes",
    }.items():
        assert unit.one(key) == value, key


def documented_drop_in() -> str:
    """The ``ini`` example of docs/deployment.md: a drop-in for the unit."""
    text = (ROOT / "docs" / "deployment.md").read_text()
    blocks: list[str] = re.findall(r"```ini\n(.*?)```", text, re.S)
    assert len(blocks) == 1, blocks
    return blocks[0]


def check_documented_drop_in_is_valid() -> None:
    """What ``systemctl edit mxisd`` would write, from the docs, verifies."""
    DROP_IN.mkdir(parents=True)
    try:
        # verify reads this directory: a bad line there is named.
        canary = DROP_IN / "canary.conf"
        canary.write_text("[Service]\nNoSuchSetting=1\n")
        assert str(canary) in verify_unit()
        canary.unlink()

        (DROP_IN / "override.conf").write_text(documented_drop_in())

        output = verify_unit()
        assert "mxisd" not in output, output
    finally:
        shutil.rmtree(DROP_IN)


def as_mxisd(*command: str) -> subprocess.CompletedProcess[str]:
    """A command run as user mxisd, as the docs' ``sudo -u mxisd`` does."""
    return subprocess.run(
        ["setpriv", "--reuid=mxisd", "--regid=mxisd", "--init-groups", "--"]
        + list(command),
        capture_output=True,
        text=True,
        cwd="/",
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        stdin=subprocess.DEVNULL,
    )


def shown_key() -> list[str]:
    shown = as_mxisd("/usr/bin/mxisd", "keys", "show", "--config", str(CONFIG))
    assert shown.returncode == 0, shown.stderr
    return shown.stdout.split()


@pytest.fixture
def the_servers_stopped() -> Iterator[None]:
    """No server outlives a failed test (before the host fixture purges)."""
    yield
    for service in Service.started:
        service.stop()
    Service.started.clear()


def documented_backup(backup: Path) -> str:
    """docs/operations.md's backup commands, writing to ``backup`` (root runs
    the test: no sudo)."""
    text = (ROOT / "docs" / "operations.md").read_text()
    section = text.split("## Backups", 1)[1].split("\n## ", 1)[0]
    blocks: list[str] = re.findall(r"```sh\n(.*?)```", section, re.S)
    assert len(blocks) == 1, blocks
    assert "/var/backups/mxisd" in blocks[0]
    return blocks[0].replace("sudo ", "").replace("/var/backups/mxisd", str(backup))


def restore(backup: Path) -> None:
    """docs/operations.md's restore: the files back, then chown -R."""
    for name in ("signing.key", "mxisd.db"):
        shutil.copy2(backup / name, STATE / name)
    shutil.copy2(backup / "mxisd" / "mxisd.yaml", CONFIG)
    subprocess.run(["chown", "-R", "mxisd:mxisd", str(STATE)], check=True)


def check_journal(journal: str, never: list[str]) -> None:
    """What the unit sends to the journal is what docs/operations.md says
    INFO shows: one ``LEVEL logger: message`` line per state change, the
    address redacted, no secret."""
    for line in (
        "INFO mxisd_flask.crypto.keys: signing key created key_id=ed25519:0",
        "INFO mxisd_flask.services.sessions: session created sid=",
        "to=email:e***@example.org",
        "INFO mxisd_flask.services.sessions: session validated sid=",
        "INFO mxisd_flask.app: mxisd-flask ready",
    ):
        assert line in journal, line
    assert not re.search(r"^DEBUG ", journal, re.M)
    assert "Traceback" not in journal
    for text in never:
        assert text not in journal, text


def test_shipped_unit_file_is_the_one_in_debian() -> None:
    unit = Unit.read(ROOT / "debian" / "mxisd.service")
    assert unit.one("ExecStart") == "/usr/bin/mxisd run --config /etc/mxisd/mxisd.yaml"
    assert unit.one("User") == "mxisd"


@debian_package
def test_install_run_upgrade_remove_purge(
    builds: Builds,
    host: None,
    smtp_server: tuple[int, Mailbox],
    tmp_path: Path,
    the_servers_stopped: None,
) -> None:
    mailbox = smtp_server[1]
    log = tmp_path / "server.log"
    dpkg("--install", str(builds.current.deb), offline=True)
    assert installed_version() == builds.version
    check_fresh_install()
    unit = Unit.read(UNIT)
    check_unit_is_valid_and_hardened(unit)
    check_documented_drop_in_is_valid()
    port, edited = edit_config(smtp_server[0])
    # The README's first validation step, as the server's user.
    checked = as_mxisd(
        "/usr/bin/mxisd", "check-config", "--strict", "--config", str(CONFIG)
    )
    assert checked.stdout == "configuration OK\n", checked.stdout + checked.stderr

    # First start, offline: the key and the database appear in /var/lib/mxisd.
    with offline_namespace() as netns:
        service = Service(unit, port, log, netns)
        service.in_its_network(assert_no_route_out)
        assert service.get(V2) == {}
        key = service.public_key()
        assert service.stop() == 0
    assert owner(STATE / "signing.key") == ("mxisd", "mxisd", 0o600)
    assert owner(STATE / "mxisd.db")[:2] == ("mxisd", "mxisd")
    key_file = (STATE / "signing.key").read_bytes()
    assert shown_key() == ["ed25519:0", key]

    # A restart keeps the key; on this host's network the mail goes out.
    service = Service(unit, port, log)
    assert service.public_key() == key
    secret = "deb-secret-1"
    sid = service.post(
        f"{V1}/validate/email/requestToken",
        {"client_secret": secret, "email": "eve@example.org", "send_attempt": 1},
    )["sid"]
    token = mailbox.token()
    assert service.stop() == 0

    # Upgrade: the edited conffile and the state stay as they were.
    dpkg("--install", str(builds.next.deb))
    assert installed_version() == builds.next.version
    assert CONFIG.read_text() == edited
    assert (STATE / "signing.key").read_bytes() == key_file
    service = Service(Unit.read(UNIT), port, log)
    assert service.public_key() == key
    submitted = service.post(
        f"{V1}/validate/email/submitToken",
        {"sid": sid, "client_secret": secret, "token": token},
    )
    assert submitted == {"success": True}  # the session made before upgrading
    assert service.stop() == 0

    # Key rotation as docs/operations.md has it: stop, move the key, start.
    shutil.move(STATE / "signing.key", tmp_path / "signing.key.old")
    service = Service(Unit.read(UNIT), port, log)
    rotated = service.public_key()
    assert rotated != key
    for public_key, valid in ((key, False), (rotated, True)):
        query = urllib.parse.urlencode({"public_key": public_key})
        assert service.get(f"{V2}/pubkey/isvalid?{query}") == {"valid": valid}
    # The backup of docs/operations.md, taken while the server runs.
    backup = tmp_path / "backup"
    subprocess.run(["sh", "-ec", documented_backup(backup)], check=True)
    assert service.stop() == 0
    assert shown_key() == ["ed25519:0", rotated]
    key_file = (STATE / "signing.key").read_bytes()

    # Remove keeps the data and the configuration; purge deletes both.
    dpkg("--remove", "mxisd")
    assert not Path("/usr/lib/mxisd").exists()
    assert not Path("/usr/bin/mxisd").exists()
    assert (STATE / "signing.key").read_bytes() == key_file
    assert CONFIG.read_text() == edited
    dpkg("--purge", "mxisd")
    assert installed_version() is None
    assert not STATE.exists()
    assert not CONFIG.parent.exists()

    # A reinstall restored from the backup is the same server again: its
    # key, its configuration and the session validated before.
    dpkg("--install", str(builds.next.deb))
    restore(backup)
    assert owner(STATE / "signing.key") == ("mxisd", "mxisd", 0o600)
    service = Service(Unit.read(UNIT), port, log)
    assert service.public_key() == rotated
    query = urllib.parse.urlencode({"sid": sid, "client_secret": secret})
    validated = service.get(f"{V1}/3pid/getValidated3pid?{query}")
    assert (validated["medium"], validated["address"]) == ("email", "eve@example.org")
    assert service.stop() == 0
    dpkg("--purge", "mxisd")
    assert not STATE.exists()
    check_journal(log.read_text(), [secret, token, "eve@example.org"])
