from __future__ import annotations

import logging
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from mxisd_flask.config import WARNINGS, load_config, parse_config
from mxisd_flask.crypto.keys import load_or_create_signing_key
from mxisd_flask.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
MINIMAL: dict[str, Any] = {
    "matrix": {"domain": "example.org"},
    "key": {"path": "/tmp/unused.key"},
    "storage": {"provider": {"sqlite": {"database": "/tmp/unused.db"}}},
}


def with_changes(**sections: Any) -> dict[str, Any]:
    raw: dict[str, Any] = yaml.safe_load(yaml.safe_dump(MINIMAL))
    raw.update(sections)
    return raw


def test_example_and_dev_configs_load() -> None:
    example = load_config(str(ROOT / "etc" / "mxisd.example.yaml"))
    dev = load_config(str(ROOT / "etc" / "mxisd.dev.yaml"))

    assert example.domain == "example.org"
    assert example.server.port == 8090
    assert dev.server.public_url == "http://127.0.0.1:8090"
    assert [i.mxid for i in dev.memory_identities] == [
        "@alice:example.org",
        "@bob:example.org",
    ]


def test_defaults_follow_the_documented_values() -> None:
    config = parse_config(MINIMAL)

    assert config.serve_v1 and config.serve_v2
    assert config.server.name == "example.org"
    assert config.server.public_url == "https://example.org"
    assert config.verify_certs is True
    assert config.hashing.algorithms == ("none", "sha256")
    assert [str(n) for n in config.server.trusted_proxies] == [
        "127.0.0.1/32",
        "::1/128",
    ]


@pytest.mark.parametrize(
    "raw, key",
    [
        ({"key": {"path": "/k"}}, "matrix.domain"),
        (with_changes(key={}), "key.path"),
        (with_changes(server={"port": "eighty"}), "server.port"),
        (with_changes(server={"port": 70000}), "server.port"),
        (with_changes(matrix={"domain": "example.org", "v1": "yes"}), "matrix.v1"),
        (
            with_changes(
                threepid={"medium": {"email": {"connectors": {"smtp": {"tls": 7}}}}}
            ),
            "threepid.medium.email.connectors.smtp.tls",
        ),
        (with_changes(hashing={"algorithms": ["md5"]}), "hashing.algorithms"),
        (with_changes(storage={"backend": "oracle"}), "storage.backend"),
        (
            with_changes(
                storage={
                    "provider": {"sqlite": {"database": "/d", "bindingsInMemory": 0}}
                }
            ),
            "storage.provider.sqlite.bindingsInMemory",
        ),
        (
            with_changes(memory={"identities": [{"password": "x"}]}),
            "memory.identities[0].username",
        ),
        (with_changes(outbound={"allowedCidr": ["not-a-net"]}), "outbound.allowedCidr"),
    ],
)
def test_bad_values_name_the_key(raw: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(raw)

    assert str(info.value).startswith(key)


def test_unknown_key_is_a_warning_naming_it(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)

    parse_config(with_changes(server={"prot": 1, "publicURL": "https://x"}))

    assert "key=server.prot" in caplog.text
    assert "key=server.publicURL (did you mean server.publicUrl?)" in caplog.text


def test_empty_section_is_not_an_unknown_key(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)

    with pytest.raises(ConfigError):
        parse_config({"matrix": None, "key": {"path": "/k"}})

    assert "unknown" not in caplog.text


def test_check_config_strict_fails_on_unknown_keys(tmp_path: Path) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(with_changes(server={"publicURL": "https://x"})))

    lenient = run_cli("check-config", "--config", str(path))
    strict = run_cli("check-config", "--strict", "--config", str(path))

    assert lenient.returncode == 0
    assert lenient.stderr.count("did you mean server.publicUrl?") == 1
    assert strict.returncode == 1


def test_mxisd_style_file_with_unknown_sections_loads(tmp_path: Path) -> None:
    raw = with_changes(
        ldap={"enabled": False},
        session={"policy": {"validation": {"enabled": True, "forLocal": {}}}},
    )
    path = tmp_path / "mxisd.yaml"
    path.write_text(yaml.safe_dump(raw))

    assert load_config(str(path)).validation_enabled is True


def test_secret_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MXISD_STORAGE__PROVIDER__POSTGRESQL__PASSWORD", "s3cret")

    config = parse_config(with_changes())

    assert config.storage.pg_password == "s3cret"
    assert "s3cret" not in repr(config)


def test_environment_values_take_the_keys_types(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MXISD_STORAGE__PROVIDER__SQLITE__BINDINGSINMEMORY", "false")
    monkeypatch.setenv("MXISD_OUTBOUND__TIMEOUT", "0.5")
    monkeypatch.setenv("MXISD_SERVER__TRUSTEDPROXIES", "[10.0.0.1]")
    monkeypatch.setenv("MXISD_SERVER__PORT", "8091")

    config = parse_config(with_changes())

    assert config.storage.sqlite_bindings_in_memory is False
    assert config.outbound_timeout_s == 0.5
    assert [str(n) for n in config.server.trusted_proxies] == ["10.0.0.1/32"]
    assert config.server.port == 8091


def test_environment_variable_naming_no_key_is_a_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MXISD_SERVER__PROT", "8091")

    config = parse_config(with_changes())

    assert config.server.port == 8090
    assert WARNINGS == ["environment variable MXISD_SERVER__PROT names no key, ignored"]


def test_environment_fills_an_empty_section(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MXISD_SERVER__PORT", "8091")

    config = parse_config(with_changes(server=None))

    assert config.server.port == 8091


def test_environment_under_a_section_that_is_no_mapping_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MXISD_SERVER__PORT", "8091")

    with pytest.raises(ConfigError, match="server: expected a mapping"):
        parse_config(with_changes(server=5))


def test_environment_value_that_is_no_yaml_is_named_not_shown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MXISD_OUTBOUND__TIMEOUT", "[s3cret")

    with pytest.raises(ConfigError, match="MXISD_OUTBOUND__TIMEOUT") as caught:
        parse_config(with_changes())

    assert "s3cret" not in str(caught.value)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mxisd_flask", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def test_check_config_exits_1_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(with_changes(server={"port": "x"})))

    bad = run_cli("check-config", "--config", str(path))
    good = run_cli("check-config", "--config", str(ROOT / "etc" / "mxisd.example.yaml"))

    assert bad.returncode == 1
    assert "server.port" in bad.stderr
    assert "Traceback" not in bad.stderr
    assert good.returncode == 0


def test_run_stops_at_a_wrong_type_with_one_line_naming_the_key(
    tmp_path: Path,
) -> None:
    sqlite = {"database": str(tmp_path / "db"), "bindingsInMemory": "off"}
    raw = with_changes(
        key={"path": str(tmp_path / "k")}, storage={"provider": {"sqlite": sqlite}}
    )
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))

    refused = run_cli("run", "--config", str(path))

    assert refused.returncode == 1
    assert refused.stderr.splitlines() == [
        "mxisd: configuration error: storage.provider.sqlite.bindingsInMemory: "
        "expected bool, got str"
    ]
    assert not (tmp_path / "db").exists()


def test_keys_show_prints_the_public_key(tmp_path: Path) -> None:
    raw = with_changes(key={"path": str(tmp_path / "k")})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))

    missing = run_cli("keys", "show", "--config", str(path))
    assert missing.returncode == 1
    assert not (tmp_path / "k").exists()
    load_or_create_signing_key(str(tmp_path / "k"))

    first = run_cli("keys", "show", "--config", str(path))
    second = run_cli("keys", "show", "--config", str(path))

    assert first.returncode == 0
    assert first.stdout.startswith("ed25519:0 ")
    assert first.stdout == second.stdout
    assert (tmp_path / "k").stat().st_mode & 0o777 == 0o600


def test_run_refuses_a_port_another_server_listens_on(tmp_path: Path) -> None:
    # Our workers listen with SO_REUSEPORT, which alone would let a second
    # instance share the port with the first without a word.
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        raw = with_changes(
            server={"port": port},
            key={"path": str(tmp_path / "k")},
            storage={"provider": {"sqlite": {"database": str(tmp_path / "db")}}},
        )
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump(raw))

        busy = run_cli("run", "--config", str(path))

    assert busy.returncode == 1
    assert "server.port: cannot listen: Address already in use" in busy.stderr
    assert "Traceback" not in busy.stderr
