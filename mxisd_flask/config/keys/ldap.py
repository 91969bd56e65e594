"""Configuration keys of the LDAP / Active Directory store (issue #3).

Names and defaults are mxisd's (its defaults suit Active Directory);
``connection.timeout`` and ``connection.startTls`` are ours. The section is parsed by
:mod:`mxisd_flask.stores.ldap_config`.
"""

from __future__ import annotations

from typing import Any

KEYS: dict[str, tuple[tuple[type, ...], Any]] = {
    "ldap.enabled": ((bool,), False),
    # Global filter ANDed to every search unless a feature sets its own.
    "ldap.filter": ((str,), ""),
    "ldap.connection.host": ((str,), ""),
    # None: 636 with tls, else 389.
    "ldap.connection.port": ((int,), None),
    # mxisd's meaning: ldaps:// (TLS from the first byte).
    "ldap.connection.tls": ((bool,), False),
    # Ours: ldap:// upgraded by the StartTLS operation before the bind.
    "ldap.connection.startTls": ((bool,), False),
    "ldap.connection.bindDn": ((str,), ""),
    "ldap.connection.bindPassword": ((str,), ""),
    "ldap.connection.baseDNs": ((list,), []),
    # mxisd's older single base, still read.
    "ldap.connection.baseDn": ((str,), ""),
    # Seconds for connecting and for each operation.
    "ldap.connection.timeout": ((int, float), 5),
    "ldap.attribute.uid.type": ((str,), "uid"),
    "ldap.attribute.uid.value": ((str,), "userPrincipalName"),
    "ldap.attribute.name": ((str,), "displayName"),
    # medium -> list of attributes; merged over mxisd's email/msisdn defaults.
    "ldap.attribute.threepid": ((dict,), {}),
    "ldap.identity.enabled": ((bool,), True),
    "ldap.identity.filter": ((str,), ""),
    "ldap.identity.token": ((str,), "%3pid"),
    # medium -> filter with the token where the address goes.
    "ldap.identity.medium": ((dict,), {}),
    "ldap.listing.enabled": ((bool,), True),
    "ldap.auth.enabled": ((bool,), True),
    "ldap.auth.filter": ((str,), ""),
    "ldap.directory.enabled": ((bool,), True),
    "ldap.directory.filter": ((str,), ""),
    "ldap.directory.attribute.other": ((list,), []),
    "ldap.profile.enabled": ((bool,), True),
}
