"""The ``ldap`` section: checked once at start-up into :class:`LdapConfig`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from mxisd_flask.config.sections import Secret
from mxisd_flask.errors import ConfigError

# mxisd's defaults, chosen for Active Directory.
DEFAULT_THREEPID_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "email": ("mailPrimaryAddress", "mail", "otherMailbox"),
    "msisdn": (
        "telephoneNumber",
        "mobile",
        "homePhone",
        "otherTelephone",
        "otherMobile",
        "otherHomePhone",
    ),
}


@dataclass(frozen=True)
class LdapConfig:
    uri: str
    start_tls: bool  # upgrade an ldap:// connection before the bind
    bind_dn: str
    bind_password: Secret
    base_dns: tuple[str, ...]
    timeout_s: float
    domain: str
    uid_type: str  # "uid" (a localpart) or "mxid"
    uid_attribute: str
    name_attribute: str
    threepid_attributes: Mapping[str, tuple[str, ...]]
    global_filter: str
    identity_filter: str  # each feature's filter is the global one when not set
    identity_token: str
    medium_queries: Mapping[str, str]
    auth_filter: str
    directory_filter: str
    directory_other: tuple[str, ...]


def parse_ldap_config(v: Mapping[str, Any], domain: str) -> LdapConfig:
    """Raises ConfigError naming the key for any bad value."""
    host = v["ldap.connection.host"].strip()
    if not host:
        raise ConfigError("ldap.connection.host: required when ldap.enabled is true")
    tls = v["ldap.connection.tls"]
    start_tls = v["ldap.connection.startTls"]
    if tls and start_tls:
        # ldaps:// is TLS already; StartTLS on it is a protocol error.
        raise ConfigError("ldap.connection.startTls: not with ldap.connection.tls")
    port = v["ldap.connection.port"] or (636 if tls else 389)
    if not 0 < port < 65536:
        raise ConfigError("ldap.connection.port: must be between 1 and 65535")
    if v["ldap.connection.timeout"] <= 0:
        raise ConfigError("ldap.connection.timeout: must be positive")
    uid_type = v["ldap.attribute.uid.type"]
    if uid_type not in ("uid", "mxid"):
        raise ConfigError("ldap.attribute.uid.type: must be uid or mxid")
    if v["ldap.connection.bindDn"] and not v["ldap.connection.bindPassword"]:
        # A DN without a password is an "unauthenticated bind" (RFC 4513),
        # which some servers take as anonymous without a word.
        raise ConfigError("ldap.connection.bindPassword: required with bindDn")
    token = v["ldap.identity.token"]
    if not token:
        raise ConfigError("ldap.identity.token: must not be empty")
    global_filter = _filter(v["ldap.filter"], "ldap.filter")
    return LdapConfig(
        uri=f"{'ldaps' if tls else 'ldap'}://{_host(host)}:{port}",
        start_tls=start_tls,
        bind_dn=v["ldap.connection.bindDn"],
        bind_password=Secret(v["ldap.connection.bindPassword"]),
        base_dns=_base_dns(v),
        timeout_s=float(v["ldap.connection.timeout"]),
        domain=domain,
        uid_type=uid_type,
        uid_attribute=_attribute(v["ldap.attribute.uid.value"], "attribute.uid.value"),
        name_attribute=_attribute(v["ldap.attribute.name"], "attribute.name"),
        threepid_attributes=_threepid_attributes(v["ldap.attribute.threepid"]),
        global_filter=global_filter,
        identity_filter=_specific(v, "ldap.identity.filter", global_filter),
        identity_token=token,
        medium_queries=_medium_queries(v["ldap.identity.medium"], token),
        auth_filter=_specific(v, "ldap.auth.filter", global_filter),
        directory_filter=_specific(v, "ldap.directory.filter", global_filter),
        directory_other=_attributes(
            v["ldap.directory.attribute.other"], "ldap.directory.attribute.other"
        ),
    )


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _base_dns(v: Mapping[str, Any]) -> tuple[str, ...]:
    bases = _attributes(v["ldap.connection.baseDNs"], "ldap.connection.baseDNs")
    single = v["ldap.connection.baseDn"].strip()
    if single and single not in bases:
        bases = (*bases, single)
    if not bases:
        raise ConfigError("ldap.connection.baseDNs: at least one base DN is required")
    return bases


def _filter(value: str, key: str) -> str:
    """A filter expression, parenthesised ("a=b" is taken as "(a=b)")."""
    value = value.strip()
    if not value:
        return ""
    if not value.startswith("("):
        value = f"({value})"
    depth = 0
    for char in value.replace("\\(", "").replace("\\)", ""):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth < 0:
            break
    if depth != 0:
        raise ConfigError(f"{key}: unbalanced parentheses")
    return value


def _specific(v: Mapping[str, Any], key: str, global_filter: str) -> str:
    # mxisd: a feature's own filter replaces the global one when set.
    return _filter(v[key], key) or global_filter


def _attribute(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value.strip() or " " in value.strip():
        raise ConfigError(f"ldap.{key}: must be one attribute name")
    return value.strip()


def _attributes(values: Any, key: str) -> tuple[str, ...]:
    if not isinstance(values, list):
        raise ConfigError(f"{key}: must be a list of attribute names")
    return tuple(_attribute(item, key.removeprefix("ldap.")) for item in values)


def _threepid_attributes(raw: Mapping[Any, Any]) -> Mapping[str, tuple[str, ...]]:
    merged = dict(DEFAULT_THREEPID_ATTRIBUTES)
    for medium, values in raw.items():
        key = f"ldap.attribute.threepid.{medium}"
        if values is None:
            values = []
        merged[str(medium)] = _attributes(values, key)
    return MappingProxyType({m: a for m, a in merged.items() if a})


def _medium_queries(raw: Mapping[Any, Any], token: str) -> Mapping[str, str]:
    queries = {}
    for medium, query in raw.items():
        key = f"ldap.identity.medium.{medium}"
        if query is None or query == "":
            continue  # mxisd's default file lists the media with ''
        if not isinstance(query, str):
            raise ConfigError(f"{key}: must be a filter")
        if token not in query:
            # Without the address the filter would match the same users for
            # every 3PID.
            raise ConfigError(f"{key}: must contain {token} where the address goes")
        queries[str(medium)] = _filter(query, key)
    return MappingProxyType(queries)
