"""Connections to an organisation's SQL database, for the sql and synapseSql
stores: SQLite, PostgreSQL and MySQL/MariaDB.

Queries come from the configuration with JDBC's ``?`` placeholders; they
are tokenised (sqlparse) so only real placeholders become the driver's
``%s`` and a ``%`` or ``?`` inside a literal, identifier or comment stays
as written. Values are always bound by the driver, never pasted into SQL.

Each thread has its own connection, opened on first use (gunicorn forks
after start-up), read-only where the database allows it, with a time limit
per statement. A connection the server dropped (restart, idle kill) is
reopened once; any other failure is a StoreError.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg2
import psycopg2.errors
import pymysql
import sqlparse
from sqlparse import tokens

from mxisd_flask.config.sections import Secret
from mxisd_flask.errors import ConfigError, StoreError

logger = logging.getLogger(__name__)

KINDS = {"sqlite": "sqlite", "postgresql": "postgresql", "mysql": "mysql"}
KINDS["mariadb"] = "mysql"  # one driver (PyMySQL) speaks to both
DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306}
BATCH_ROWS = 10000  # rows per fetch when listing a whole table
# A listing feeds the hash index in the background and may rightly take far
# longer than a lookup; this only ends one that hangs.
LISTING_TIMEOUT_S = 600
# MySQL client errors meaning the connection is gone, not the query wrong.
MYSQL_LOST = {2006, 2013, 2055}

Row = tuple[Any, ...]
DRIVER_ERRORS = (sqlite3.Error, psycopg2.Error, pymysql.err.MySQLError)


@dataclass(frozen=True)
class Target:
    """Where the store's database is, from ``<section>.type``/``.connection``."""

    kind: str
    path: str = ""
    host: str = ""
    port: int = 0
    database: str = ""
    user: str = ""
    password: Secret = Secret("")
    timeout_s: float = 5.0


@dataclass(frozen=True)
class Query:
    """A configured query in the driver's placeholder style."""

    key: str  # the configuration key it came from, for messages
    text: str
    placeholders: int


def parse_target(
    section: str, kind: str, connection: str, timeout: float, base_dir: str
) -> Target:
    """Read mxisd's ``type`` and ``connection`` values."""
    if kind not in KINDS:
        raise ConfigError(f"{section}.type: must be one of {', '.join(KINDS)}")
    kind = KINDS[kind]
    if timeout <= 0:
        raise ConfigError(f"{section}.timeout: must be more than 0 seconds")
    if not connection:
        raise ConfigError(f"{section}.connection: required when the store is enabled")
    if kind == "sqlite":
        path = os.path.expanduser(connection)
        return Target(kind, path=os.path.join(base_dir, path), timeout_s=timeout)
    return _server_target(section, kind, connection, timeout)


def _server_target(section: str, kind: str, connection: str, timeout: float) -> Target:
    # mxisd's form is a JDBC URL without its "jdbc:<type>:" head:
    # //HOST[:PORT]/DB?user=U&password=P. Accept the head too.
    text = connection.removeprefix("jdbc:").removeprefix(f"{kind}:")
    parts = urllib.parse.urlsplit(text if "//" in text else "//" + text)
    query = urllib.parse.parse_qs(parts.query)
    try:
        port = parts.port or DEFAULT_PORTS[kind]
    except ValueError as exc:
        raise ConfigError(f"{section}.connection: bad port") from exc
    database = urllib.parse.unquote(parts.path.lstrip("/"))
    if not parts.hostname or not database:
        raise ConfigError(f"{section}.connection: expected //HOST[:PORT]/DB?user=...")
    user = query.get("user", [parts.username or ""])[0]
    password = query.get("password", [parts.password or ""])[0]
    return Target(
        kind,
        host=parts.hostname,
        port=port,
        database=database,
        user=urllib.parse.unquote(user),
        password=Secret(urllib.parse.unquote(password)),
        timeout_s=timeout,
    )


def prepare(key: str, sql: str, kind: str) -> Query:
    """Tokenise ``sql`` and adapt its ``?`` placeholders to ``kind``'s driver."""
    statements = [s for s in sqlparse.parse(sql.strip().rstrip(";")) if str(s).strip()]
    if len(statements) != 1:
        raise ConfigError(f"{key}: expected exactly one SQL statement")
    parts = []
    count = 0
    flat = statements[0].flatten()  # type: ignore[no-untyped-call]  # sqlparse
    for token in flat:
        if token.ttype in tokens.Name.Placeholder:
            if token.value != "?":
                raise ConfigError(f"{key}: use ? placeholders, not {token.value}")
            count += 1
            parts.append("?" if kind == "sqlite" else "%s")
        elif kind == "sqlite":
            parts.append(token.value)
        else:
            # pyformat drivers read every % once values are bound.
            parts.append(token.value.replace("%", "%%"))
    return Query(key, "".join(parts), count)


class SqlDatabase:
    """Thread-local read-only connections to one configured database."""

    def __init__(self, target: Target, name: str) -> None:
        self.target = target
        self.name = name
        self._local = threading.local()

    def rows(
        self, query: Query, params: Sequence[Any], first: str | None = None
    ) -> list[Row]:
        """Every row of ``query``; reconnects once if the server dropped us.

        With ``first``, a column of that name (if any) is moved to the front.
        """
        for attempt in (1, 2):
            fresh = getattr(self._local, "conn", None) is None
            conn = self._connection()
            try:
                return self._run(conn, query, params, first)
            except DRIVER_ERRORS as exc:
                self._fail(exc, query, params, retry=attempt == 1 and not fresh)
        raise AssertionError("unreachable")  # _fail raised on the second attempt

    def stream(self, query: Query) -> Iterator[Row]:
        """Rows of ``query`` in batches, without holding them all in memory.

        Reconnects once if the server dropped us before the first row.
        """
        for attempt in (1, 2):
            fresh = getattr(self._local, "conn", None) is None
            conn = self._connection()
            started = False
            try:
                for row in self._batches(conn, query):
                    started = True
                    yield row
                return
            except DRIVER_ERRORS as exc:
                retry = attempt == 1 and not fresh and not started
                self._fail(exc, query, (), retry=retry)

    def columns(self, query: Query) -> list[str]:
        """The (lower-cased) column names ``query`` returns, without its rows.

        Raises ConfigError when the database rejects the query and StoreError
        when it cannot be reached (the check is skipped then).
        """
        conn = self._connection()
        wrapped = Query(
            query.key, f"SELECT * FROM ({query.text}) mxisd_q WHERE 1 = 0", 0
        )
        params = [None] * query.placeholders  # NULL fits any column type
        try:
            cursor = self._cursor(conn)
            self._execute(cursor, wrapped, params)
            names = [str(d[0]).lower() for d in cursor.description or ()]
            cursor.close()
        except DRIVER_ERRORS as exc:
            self.close()
            if self._is_lost(exc):
                raise StoreError(f"{self.name}: {exc}") from exc
            raise ConfigError(f"{query.key}: the database refused it: {exc}") from exc
        return names

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            try:
                conn.close()
            except DRIVER_ERRORS:  # closing a dead link cannot fail us
                logger.debug("closing a dead connection failed store=%s", self.name)

    def _fail(
        self, exc: Exception, query: Query, params: Sequence[Any], retry: bool
    ) -> None:
        lost = self._is_lost(exc)
        if lost:
            self.close()
        if lost and retry:
            logger.info("reconnecting store=%s after the server closed", self.name)
            return
        raise StoreError(f"{self.name}: {query.key}: {_scrub(exc, params)}") from exc

    def _connection(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = self._connect()
            except DRIVER_ERRORS as exc:
                raise StoreError(f"{self.name}: cannot connect: {exc}") from exc
            self._local.conn = conn
        return conn

    def _connect(self) -> Any:
        t = self.target
        if t.kind == "sqlite":
            # mode=ro: never create an empty file in place of a missing one.
            uri = f"file:{urllib.parse.quote(t.path)}?mode=ro"
            lite = sqlite3.connect(uri, uri=True, timeout=t.timeout_s)
            lite.set_progress_handler(self._past_deadline, 10000)
            return lite
        if t.kind == "postgresql":
            pg = psycopg2.connect(
                host=t.host,
                port=t.port,
                dbname=t.database,
                user=t.user,
                password=t.password or None,
                connect_timeout=max(1, int(t.timeout_s)),
                options=f"-c statement_timeout={int(t.timeout_s * 1000)}"
                " -c default_transaction_read_only=on",
                application_name="mxisd",
            )
            pg.autocommit = True  # each read sees the latest commits
            return pg
        conn = pymysql.connect(
            host=t.host,
            port=t.port,
            database=t.database,
            user=t.user,
            password=t.password,
            connect_timeout=t.timeout_s,
            # The server's own limit (below) fires first; this one catches a
            # server that stopped answering at all.
            read_timeout=t.timeout_s + 2,
            write_timeout=t.timeout_s + 2,
            autocommit=True,  # no snapshot kept across lookups
            charset="utf8mb4",
            init_command="SET SESSION TRANSACTION READ ONLY",
        )
        _limit_mysql_statements(conn, t.timeout_s)
        return conn

    def _past_deadline(self) -> int:
        # SQLite calls this during long statements; non-zero interrupts.
        deadline = getattr(self._local, "deadline", None)
        return 1 if deadline is not None and time.monotonic() > deadline else 0

    def _cursor(self, conn: Any) -> Any:
        return conn.cursor()

    def _execute(self, cursor: Any, query: Query, params: Sequence[Any]) -> None:
        self._local.deadline = time.monotonic() + self.target.timeout_s
        cursor.execute(query.text, tuple(params))

    def _run(
        self, conn: Any, query: Query, params: Sequence[Any], first: str | None
    ) -> list[Row]:
        cursor = self._cursor(conn)
        try:
            self._execute(cursor, query, params)
            rows = cursor.fetchall()
            names = [str(d[0]).lower() for d in cursor.description or ()]
        finally:
            cursor.close()
        if first is None or first not in names or names.index(first) == 0:
            return [tuple(row) for row in rows]
        at = names.index(first)
        return [(row[at], *row[:at], *row[at + 1 :]) for row in rows]

    def _batches(self, conn: Any, query: Query) -> Iterator[Row]:
        if self.target.kind == "postgresql":
            yield from self._pg_batches(conn, query)
            return
        if self.target.kind == "mysql":
            yield from self._mysql_batches(conn, query)
            return
        cursor = conn.cursor()
        try:
            self._local.deadline = time.monotonic() + LISTING_TIMEOUT_S
            cursor.execute(query.text)
            while batch := cursor.fetchmany(BATCH_ROWS):
                yield from batch
        finally:
            cursor.close()

    def _mysql_batches(self, conn: Any, query: Query) -> Iterator[Row]:
        # An unbuffered cursor streams the rows; the server counts the whole
        # stream as one statement.
        _limit_mysql_statements(conn, LISTING_TIMEOUT_S)
        cursor = conn.cursor(pymysql.cursors.SSCursor)
        try:
            cursor.execute(query.text)
            while batch := cursor.fetchmany(BATCH_ROWS):
                yield from batch
        finally:
            cursor.close()
        _limit_mysql_statements(conn, self.target.timeout_s)

    def _pg_batches(self, conn: Any, query: Query) -> Iterator[Row]:
        # A named cursor keeps the result on the server; it needs a transaction.
        conn.autocommit = False
        try:
            with conn.cursor() as plain:
                plain.execute(
                    "SET LOCAL statement_timeout = %s", (LISTING_TIMEOUT_S * 1000,)
                )
            with conn.cursor(name="mxisd_listing") as cursor:
                cursor.itersize = BATCH_ROWS
                cursor.execute(query.text)
                while batch := cursor.fetchmany(BATCH_ROWS):
                    yield from batch
            conn.rollback()
        finally:
            if not conn.closed:
                conn.rollback()
                conn.autocommit = True

    def _is_lost(self, exc: Exception) -> bool:
        if isinstance(exc, psycopg2.errors.QueryCanceled):
            return False  # our statement_timeout: the link is fine
        if isinstance(exc, psycopg2.InterfaceError | pymysql.err.InterfaceError):
            return True
        if isinstance(exc, psycopg2.OperationalError):
            return True
        if isinstance(exc, pymysql.err.OperationalError):
            return bool(exc.args) and exc.args[0] in MYSQL_LOST
        return False


def _limit_mysql_statements(conn: Any, timeout_s: float) -> None:
    """Have the server stop a statement after ``timeout_s`` (0: never)."""
    with conn.cursor() as cursor:
        try:
            cursor.execute("SET SESSION max_statement_time = %s", (timeout_s,))
        except pymysql.err.OperationalError:  # MySQL names it differently
            cursor.execute(
                "SET SESSION max_execution_time = %s", (int(timeout_s * 1000),)
            )


def _scrub(exc: Exception, params: Sequence[Any]) -> str:
    """The driver's message without the bound values (they may be 3PIDs)."""
    text = " ".join(str(exc).split())
    for value in params:
        if isinstance(value, str) and len(value) >= 3:
            text = text.replace(value, "***")
    return text
