"""Identity stores, built from the configuration in priority order.

Each store module offers a factory ``from_config(config) -> IdentityStore |
None`` (None when its section is not enabled). :data:`FACTORIES` lists them
in the order the lookup chain asks them.
"""

from __future__ import annotations

from collections.abc import Callable

from mxisd_flask.config.sections import Config
from mxisd_flask.stores import exec_store, ldap, memory, rest, sql, synapse_sql
from mxisd_flask.stores.base import IdentityStore

Factory = Callable[[Config], IdentityStore | None]

FACTORIES: list[Factory] = [
    memory.from_config,
    rest.from_config,
    ldap.from_config,
    sql.from_config,
    synapse_sql.from_config,
    exec_store.from_config,
]


def build_stores(config: Config) -> list[IdentityStore]:
    """The enabled stores, in the order the chain asks them."""
    stores = []
    for factory in FACTORIES:
        store = factory(config)
        if store is not None:
            stores.append(store)
    return stores
