"""Every configuration key we know: its type and default.

Keys are mxisd's dotted names (and the ones ma1sd added), so an existing
mxisd or ma1sd file loads unchanged. A value of type ``dict`` or ``list`` is
taken whole: its inner keys are checked by the section that reads it.
"""

from __future__ import annotations

from typing import Any

from mxisd_flask.config.keys import FEATURE_KEYS

REQUIRED = object()

# dotted key -> (accepted types, default)
SCHEMA: dict[str, tuple[tuple[type, ...], Any]] = {
    "matrix.domain": ((str,), REQUIRED),
    "matrix.v1": ((bool,), True),
    "matrix.v2": ((bool,), True),
    "server.name": ((str,), None),
    "server.hostname": ((str,), "127.0.0.1"),
    "server.port": ((int,), 8090),
    "server.publicUrl": ((str,), None),
    "server.workers": ((int,), 2),
    "server.threads": ((int,), 4),
    "server.workerClass": ((str,), "gthread"),
    "server.trustedProxies": ((list,), ["127.0.0.1", "::1"]),
    "server.tls.certFile": ((str,), None),
    "server.tls.keyFile": ((str,), None),
    "key.path": ((str,), REQUIRED),
    "storage.backend": ((str,), "sqlite"),
    "storage.provider.sqlite.database": ((str,), None),
    "storage.provider.sqlite.bindingsInMemory": ((bool,), True),
    "storage.provider.postgresql.host": ((str,), "127.0.0.1"),
    "storage.provider.postgresql.port": ((int,), 5432),
    "storage.provider.postgresql.database": ((str,), "mxisd"),
    "storage.provider.postgresql.user": ((str,), "mxisd"),
    "storage.provider.postgresql.password": ((str,), ""),
    "threepid.medium.email.identity.from": ((str,), None),
    "threepid.medium.email.identity.name": ((str,), "Matrix Identity"),
    "threepid.medium.email.connectors.smtp.host": ((str,), "localhost"),
    "threepid.medium.email.connectors.smtp.port": ((int,), 587),
    "threepid.medium.email.connectors.smtp.tls": ((int,), 1),
    "threepid.medium.email.connectors.smtp.login": ((str,), ""),
    "threepid.medium.email.connectors.smtp.password": ((str,), ""),
    "threepid.medium.email.connectors.smtp.verbatim": ((bool,), False),
    "threepid.medium.email.generators.template.invite": ((str,), None),
    "threepid.medium.email.generators.template.session.validation": ((str,), None),
    "threepid.medium.email.generators.template.placeholder": ((dict,), {}),
    "view.session.onTokenSubmit.success": ((str,), None),
    "view.session.onTokenSubmit.failure": ((str,), None),
    "session.policy.validation.enabled": ((bool,), True),
    "session.policy.validation.ttl": ((int,), 86400),
    "hashing.enabled": ((bool,), True),
    "hashing.algorithms": ((list,), ["none", "sha256"]),
    "hashing.pepperLength": ((int,), 20),
    "hashing.rotationPolicy": ((str,), "per_seconds"),
    "hashing.delay": ((int, str), 86400),
    "policy.policies": ((dict,), {}),
    "dns.overwrite.homeserver.federation": ((list,), []),
    "federation.verifyCerts": ((bool,), True),
    "memory.enabled": ((bool,), True),
    "memory.identities": ((list,), []),
    # Like every store's: one capability turned off, the others kept.
    "memory.identity.enabled": ((bool,), True),
    "memory.listing.enabled": ((bool,), True),
    "memory.auth.enabled": ((bool,), True),
    "memory.directory.enabled": ((bool,), True),
    "memory.profile.enabled": ((bool,), True),
    "outbound.allowedCidr": ((list,), []),
    "outbound.timeout": ((int, float), 5),
    "logging.level": ((str,), "INFO"),
}

SCHEMA.update(FEATURE_KEYS)

# Free-form subtrees: everything below these is read by the section itself.
FREE_FORM = {
    key for key, (types, _default) in SCHEMA.items() if dict in types or list in types
}
