"""Pooled LDAP connections, bound as the configured service account.

Opening and binding costs a round trip or two, so connections are kept and
reused; one thread uses a connection at a time. When the server went away
(restart, idle timeout) the next operation fails with SERVER_DOWN: the pool
then drops every idle connection, opens a new one and retries once, so a
restart is invisible to callers. Anything else becomes a StoreError.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import ldap

from mxisd_flask.errors import StoreError
from mxisd_flask.stores.ldap_config import LdapConfig

logger = logging.getLogger(__name__)

T = TypeVar("T")
MAX_IDLE = 8  # one per thread up to 8 gunicorn threads per worker (default 4)
# The server went away under an open connection: reconnecting may help.
GONE = (ldap.SERVER_DOWN, ldap.CONNECT_ERROR)


def describe(exc: ldap.LDAPError) -> str:
    """python-ldap's message, without the request (it may hold an address)."""
    detail = exc.args[0] if exc.args else {}
    if isinstance(detail, dict):
        return str(detail.get("desc") or type(exc).__name__)
    return type(exc).__name__


class LdapConnectionPool:
    def __init__(self, config: LdapConfig, max_idle: int = MAX_IDLE) -> None:
        self._config = config
        self._max_idle = max_idle
        self._idle: list[Any] = []
        self._lock = threading.Lock()

    def run(self, operation: Callable[[Any], T]) -> T:
        """``operation(connection)`` on a pooled connection.

        Raises:
            StoreError: the server cannot be reached or refused the operation.
        """
        try:
            return self._attempt(operation)
        except GONE as exc:
            self.clear()  # the idle ones were opened to the same lost server
            logger.debug("ldap connection lost, reconnecting: %s", describe(exc))
        try:
            return self._attempt(operation)
        except GONE as exc:
            raise self._error(exc) from exc

    def _attempt(self, operation: Callable[[Any], T]) -> T:
        """One try; a lost connection is dropped and its error passed on."""
        conn = self._acquire()
        try:
            result = operation(conn)
        except GONE:
            self._discard(conn)
            raise
        except ldap.LDAPError as exc:
            # A timeout may leave an answer in flight on this connection.
            if isinstance(exc, ldap.TIMEOUT):
                self._discard(conn)
            else:
                self._release(conn)
            raise self._error(exc) from exc
        self._release(conn)
        return result

    @contextmanager
    def connection(self) -> Iterator[Any]:
        """A pooled connection for a long operation (no retry)."""
        conn = self._acquire()
        try:
            yield conn
        except ldap.LDAPError as exc:
            self._discard(conn)
            raise self._error(exc) from exc
        except BaseException:
            self._discard(conn)  # a generator closed halfway: state unknown
            raise
        self._release(conn)

    def check_password(self, dn: str, password: str) -> bool:
        """Whether ``dn`` binds with ``password``, on a connection of its own."""
        conn = self._open()
        try:
            conn.simple_bind_s(dn, password)
            return True
        except ldap.INVALID_CREDENTIALS:
            return False
        except ldap.LDAPError as exc:
            raise self._error(exc) from exc
        finally:
            self._unbind(conn)

    def clear(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            self._unbind(conn)

    def _acquire(self) -> Any:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        conn = self._open()
        try:
            if self._config.bind_dn:
                conn.simple_bind_s(self._config.bind_dn, self._config.bind_password)
        except ldap.LDAPError as exc:
            self._unbind(conn)
            raise self._error(exc) from exc
        return conn

    def _open(self) -> Any:
        timeout = self._config.timeout_s
        try:
            conn = ldap.initialize(self._config.uri)
        except ldap.LDAPError as exc:
            raise self._error(exc) from exc
        try:
            conn.set_option(ldap.OPT_PROTOCOL_VERSION, ldap.VERSION3)
            # Active Directory answers searches at a domain root with
            # referrals to other partitions; following them would bind
            # anonymously elsewhere.
            conn.set_option(ldap.OPT_REFERRALS, 0)
            conn.set_option(ldap.OPT_NETWORK_TIMEOUT, timeout)
            conn.set_option(ldap.OPT_TIMEOUT, timeout)
            conn.timeout = timeout  # python-ldap's own wait for synchronous calls
            if self._config.uri.startswith("ldaps:") or self._config.start_tls:
                self._set_tls(conn)
            if self._config.start_tls:
                # Before any bind: the service account's and users'
                # passwords only ever cross the upgraded connection.
                conn.start_tls_s()
        except ldap.LDAPError as exc:
            self._unbind(conn)
            raise self._error(exc) from exc
        return conn

    def _set_tls(self, conn: Any) -> None:
        conn.set_option(ldap.OPT_X_TLS_REQUIRE_CERT, ldap.OPT_X_TLS_DEMAND)
        # The same CA bundle as our other outbound TLS (see docs/security.md).
        ca_file = os.environ.get("SSL_CERT_FILE")
        if ca_file:
            conn.set_option(ldap.OPT_X_TLS_CACERTFILE, ca_file)
        conn.set_option(ldap.OPT_X_TLS_NEWCTX, 0)

    def _release(self, conn: Any) -> None:
        with self._lock:
            if len(self._idle) < self._max_idle:
                self._idle.append(conn)
                return
        self._unbind(conn)

    def _discard(self, conn: Any) -> None:
        self._unbind(conn)

    @staticmethod
    def _unbind(conn: Any) -> None:
        try:
            conn.unbind_s()
        except ldap.LDAPError:
            pass  # already gone: nothing left to release

    def _error(self, exc: ldap.LDAPError) -> StoreError:
        hint = ""
        if isinstance(exc, ldap.SIZELIMIT_EXCEEDED):
            hint = " (the bind DN needs an unlimited size limit for paged searches)"
        return StoreError(f"ldap {self._config.uri}: {describe(exc)}{hint}")
