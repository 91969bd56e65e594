"""Frozen configuration sections, built from checked flat values."""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from mxisd_flask.errors import ConfigError

logger = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Secret(str):
    """A configured credential: usable as a string, hidden in reprs."""

    def __repr__(self) -> str:
        return "'***'"


@dataclass(frozen=True)
class ServerConfig:
    name: str
    hostname: str
    port: int
    public_url: str
    workers: int
    threads: int
    worker_class: str
    trusted_proxies: tuple[Network, ...]
    tls_cert_file: str | None
    tls_key_file: str | None


@dataclass(frozen=True)
class StorageConfig:
    backend: str
    sqlite_database: str
    # Each worker keeps our bindings' lookup hashes in memory (SQLite only).
    sqlite_bindings_in_memory: bool
    pg_host: str
    pg_port: int
    pg_database: str
    pg_user: str
    pg_password: Secret


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int
    tls: int
    login: str
    password: Secret
    verbatim: bool


@dataclass(frozen=True)
class EmailConfig:
    from_address: str
    from_name: str
    smtp: SmtpConfig
    invite_template: str
    validation_template: str
    placeholders: dict[str, str]


@dataclass(frozen=True)
class HashingConfig:
    enabled: bool
    algorithms: tuple[str, ...]
    pepper_length: int
    rotation_delay_s: int


@dataclass(frozen=True)
class Policy:
    name: str
    version: str
    terms: dict[str, dict[str, str]]
    regexps: tuple[re.Pattern[str], ...]


@dataclass(frozen=True)
class MemoryIdentity:
    localpart: str
    mxid: str
    password: Secret | None
    display_name: str | None
    threepids: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Config:
    domain: str
    serve_v1: bool
    serve_v2: bool
    server: ServerConfig
    key_path: str
    storage: StorageConfig
    email: EmailConfig
    success_view: str
    failure_view: str
    validation_enabled: bool
    session_ttl_s: int
    hashing: HashingConfig
    policies: tuple[Policy, ...]
    federation_overrides: dict[str, str]
    verify_certs: bool
    memory_identities: tuple[MemoryIdentity, ...]
    outbound_allowed: tuple[Network, ...]
    outbound_timeout_s: float
    log_level: str
    base_dir: str = field(default=".")
    # Every checked value by dotted key, for the feature sections that parse
    # their own keys (stores, recursion, ...; see mxisd_flask.config.keys).
    values: Mapping[str, Any] = field(default_factory=dict, repr=False)


def _template_dir() -> str:
    """The built-in templates: $MXISD_TEMPLATE_DIR, templates/ of a checkout,
    or <prefix>/share/mxisd/templates where ``pip install`` put them."""
    if os.environ.get("MXISD_TEMPLATE_DIR"):
        return os.environ["MXISD_TEMPLATE_DIR"]
    package_parent = os.path.dirname(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    )
    checkout = os.path.join(package_parent, "templates")
    if os.path.isdir(checkout):
        return checkout
    return os.path.join(sys.prefix, "share", "mxisd", "templates")


TEMPLATE_DIR = _template_dir()


def build_config(v: dict[str, Any], base_dir: str) -> Config:
    domain = v["matrix.domain"].strip()
    if not domain:
        raise ConfigError("matrix.domain: must not be empty")
    server = _server(v, domain)
    return Config(
        domain=domain,
        serve_v1=v["matrix.v1"],
        serve_v2=v["matrix.v2"],
        server=server,
        key_path=_path(v["key.path"], base_dir),
        storage=_storage(v, base_dir),
        email=_email(v, domain, base_dir),
        success_view=_template(
            v["view.session.onTokenSubmit.success"], "view/success.html", base_dir
        ),
        failure_view=_template(
            v["view.session.onTokenSubmit.failure"], "view/failure.html", base_dir
        ),
        validation_enabled=v["session.policy.validation.enabled"],
        session_ttl_s=v["session.policy.validation.ttl"],
        hashing=_hashing(v),
        policies=_policies(v["policy.policies"]),
        federation_overrides=_overrides(v["dns.overwrite.homeserver.federation"]),
        verify_certs=v["federation.verifyCerts"],
        memory_identities=_memory(v, domain),
        outbound_allowed=_networks(v["outbound.allowedCidr"], "outbound.allowedCidr"),
        outbound_timeout_s=float(v["outbound.timeout"]),
        log_level=v["logging.level"].upper(),
        base_dir=base_dir,
        values=MappingProxyType(dict(v)),
    )


def _server(v: dict[str, Any], domain: str) -> ServerConfig:
    port = v["server.port"]
    if not 0 < port < 65536:
        raise ConfigError("server.port: must be between 1 and 65535")
    if v["server.workers"] < 1 or v["server.threads"] < 1:
        raise ConfigError("server.workers: workers and threads must be at least 1")
    if v["server.workerClass"] not in ("gthread", "sync"):
        raise ConfigError("server.workerClass: must be gthread or sync")
    name = v["server.name"] or domain
    public_url = v["server.publicUrl"] or f"https://{name}"
    return ServerConfig(
        name=name,
        hostname=v["server.hostname"],
        port=port,
        public_url=public_url.rstrip("/"),
        workers=v["server.workers"],
        threads=v["server.threads"],
        worker_class=v["server.workerClass"],
        trusted_proxies=_networks(v["server.trustedProxies"], "server.trustedProxies"),
        tls_cert_file=v["server.tls.certFile"],
        tls_key_file=v["server.tls.keyFile"],
    )


def _storage(v: dict[str, Any], base_dir: str) -> StorageConfig:
    backend = v["storage.backend"]
    if backend not in ("sqlite", "postgresql"):
        raise ConfigError("storage.backend: must be sqlite or postgresql")
    database = v["storage.provider.sqlite.database"]
    if backend == "sqlite" and not database:
        raise ConfigError("storage.provider.sqlite.database: required for sqlite")
    return StorageConfig(
        backend=backend,
        sqlite_database=_path(database, base_dir) if database else "",
        sqlite_bindings_in_memory=v["storage.provider.sqlite.bindingsInMemory"],
        pg_host=v["storage.provider.postgresql.host"],
        pg_port=v["storage.provider.postgresql.port"],
        pg_database=v["storage.provider.postgresql.database"],
        pg_user=v["storage.provider.postgresql.user"],
        pg_password=Secret(v["storage.provider.postgresql.password"]),
    )


def _email(v: dict[str, Any], domain: str, base_dir: str) -> EmailConfig:
    prefix = "threepid.medium.email."
    tls = v[prefix + "connectors.smtp.tls"]
    if tls not in (0, 1, 2, 3):
        raise ConfigError(f"{prefix}connectors.smtp.tls: must be 0, 1, 2 or 3")
    placeholders = v[prefix + "generators.template.placeholder"]
    if not all(isinstance(val, str) for val in placeholders.values()):
        raise ConfigError(f"{prefix}generators.template.placeholder: values are text")
    return EmailConfig(
        from_address=v[prefix + "identity.from"] or f"matrix-identity@{domain}",
        from_name=v[prefix + "identity.name"],
        smtp=SmtpConfig(
            host=v[prefix + "connectors.smtp.host"],
            port=v[prefix + "connectors.smtp.port"],
            tls=tls,
            login=v[prefix + "connectors.smtp.login"],
            password=Secret(v[prefix + "connectors.smtp.password"]),
            verbatim=v[prefix + "connectors.smtp.verbatim"],
        ),
        invite_template=_template(
            v[prefix + "generators.template.invite"], "email/invite.eml", base_dir
        ),
        validation_template=_template(
            v[prefix + "generators.template.session.validation"],
            "email/validation.eml",
            base_dir,
        ),
        placeholders={str(k).upper(): val for k, val in placeholders.items()},
    )


def _hashing(v: dict[str, Any]) -> HashingConfig:
    algorithms = tuple(v["hashing.algorithms"])
    unknown = set(algorithms) - {"none", "sha256"}
    if unknown:
        raise ConfigError(f"hashing.algorithms: unknown algorithm {sorted(unknown)[0]}")
    if v["hashing.rotationPolicy"] != "per_seconds":
        # per_requests would need a shared counter on the lookup hot path.
        raise ConfigError("hashing.rotationPolicy: only per_seconds is supported")
    if v["hashing.pepperLength"] < 8:
        raise ConfigError("hashing.pepperLength: must be at least 8")
    return HashingConfig(
        enabled=v["hashing.enabled"],
        algorithms=algorithms,
        pepper_length=v["hashing.pepperLength"],
        rotation_delay_s=_seconds(v["hashing.delay"], "hashing.delay"),
    )


def _seconds(value: int | str, key: str) -> int:
    if isinstance(value, int):
        return value
    match = re.fullmatch(r"\s*(\d+)\s*([smhd]?)\s*", value)
    if not match:
        raise ConfigError(f"{key}: expected seconds or a duration such as 12h")
    unit = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    return int(match.group(1)) * unit


def _policies(raw: dict[str, Any]) -> tuple[Policy, ...]:
    policies = []
    for name, body in raw.items():
        key = f"policy.policies.{name}"
        if not isinstance(body, dict) or not isinstance(body.get("terms"), dict):
            raise ConfigError(f"{key}.terms: required mapping of language to terms")
        terms: dict[str, dict[str, str]] = {}
        for lang, doc in body["terms"].items():
            if not isinstance(doc, dict) or not all(
                isinstance(doc.get(f), str) for f in ("name", "url")
            ):
                raise ConfigError(f"{key}.terms.{lang}: needs name and url")
            terms[str(lang)] = {"name": doc["name"], "url": doc["url"]}
        regexps = body.get("regexp", [])
        if isinstance(regexps, str):
            regexps = [regexps]
        try:
            compiled = tuple(re.compile(r) for r in regexps)
        except (re.error, TypeError) as exc:
            raise ConfigError(f"{key}.regexp: invalid regular expression") from exc
        policies.append(
            Policy(str(name), str(body.get("version", "1.0")), terms, compiled)
        )
    return tuple(policies)


def _overrides(raw: list[Any]) -> dict[str, str]:
    out = {}
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not all(
            isinstance(item.get(f), str) for f in ("name", "value")
        ):
            raise ConfigError(
                f"dns.overwrite.homeserver.federation[{i}]: needs name and value"
            )
        out[item["name"]] = item["value"].rstrip("/")
    return out


def _memory(v: dict[str, Any], domain: str) -> tuple[MemoryIdentity, ...]:
    if not v["memory.enabled"]:
        return ()
    out = []
    for i, item in enumerate(v["memory.identities"]):
        key = f"memory.identities[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("username"), str):
            raise ConfigError(f"{key}.username: required")
        username = item["username"]
        if username.startswith("@"):
            mxid = username.lower()
            localpart = mxid[1:].split(":", 1)[0]
        else:
            localpart = username.lower()
            mxid = f"@{localpart}:{domain}"
        threepids = []
        for j, tp in enumerate(item.get("threepids") or []):
            if not isinstance(tp, dict) or not all(
                isinstance(tp.get(f), str) for f in ("medium", "address")
            ):
                raise ConfigError(f"{key}.threepids[{j}]: needs medium and address")
            threepids.append((tp["medium"], tp["address"]))
        password = item.get("password")
        name = item.get("name", item.get("displayName"))
        out.append(
            MemoryIdentity(
                localpart=localpart,
                mxid=mxid,
                password=Secret(password) if password is not None else None,
                display_name=str(name) if name is not None else None,
                threepids=tuple(threepids),
            )
        )
    return tuple(out)


def _networks(raw: list[Any], key: str) -> tuple[Network, ...]:
    try:
        return tuple(ipaddress.ip_network(str(n), strict=False) for n in raw)
    except ValueError as exc:
        raise ConfigError(f"{key}: {exc}") from exc


def _path(value: str, base_dir: str) -> str:
    value = os.path.expanduser(value)
    return value if os.path.isabs(value) else os.path.join(base_dir, value)


def _template(value: str | None, default: str, base_dir: str) -> str:
    path = _path(value, base_dir) if value else os.path.join(TEMPLATE_DIR, default)
    if not os.path.isfile(path):
        raise ConfigError(f"template file not found: {path}")
    return path
