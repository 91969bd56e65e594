"""Our own database: SQLite or PostgreSQL, one schema, versioned migrations.

SQL in this package is written with ``?`` placeholders and portable types;
``Database`` adapts the placeholders for psycopg2. Connections are opened
lazily per thread (never at import time: gunicorn forks workers).
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

import psycopg2

from mxisd_flask.config.sections import StorageConfig
from mxisd_flask.errors import ConfigError
from mxisd_flask.storage.counter import ChangeCounters

logger = logging.getLogger(__name__)

MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE sessions (
            sid TEXT PRIMARY KEY,
            client_secret TEXT NOT NULL,
            medium TEXT NOT NULL,
            address TEXT NOT NULL,
            token TEXT NOT NULL,
            send_attempt BIGINT NOT NULL,
            next_link TEXT,
            validated_ts BIGINT,
            created_ts BIGINT NOT NULL,
            last_ts BIGINT NOT NULL)""",
        "CREATE INDEX sessions_secret ON sessions (client_secret, medium, address)",
        """CREATE TABLE bindings (
            medium TEXT NOT NULL,
            address TEXT NOT NULL,
            mxid TEXT NOT NULL,
            lookup_hash TEXT NOT NULL,
            created_ts BIGINT NOT NULL,
            PRIMARY KEY (medium, address))""",
        # Covering index: a hashed lookup never touches the table rows.
        "CREATE INDEX bindings_hash ON bindings (lookup_hash, mxid)",
        """CREATE TABLE hash_state (
            id INTEGER PRIMARY KEY,
            pepper TEXT NOT NULL,
            created_ts BIGINT NOT NULL)""",
        """CREATE TABLE invites (
            token TEXT PRIMARY KEY,
            medium TEXT NOT NULL,
            address TEXT NOT NULL,
            room_id TEXT NOT NULL,
            sender TEXT NOT NULL,
            ephemeral_public_key TEXT NOT NULL,
            ephemeral_private_key TEXT NOT NULL,
            extra TEXT NOT NULL,
            created_ts BIGINT NOT NULL)""",
        "CREATE INDEX invites_threepid ON invites (medium, address)",
        "CREATE INDEX invites_ephemeral ON invites (ephemeral_public_key)",
        """CREATE TABLE accounts (
            token TEXT PRIMARY KEY,
            user_id TEXT NOT NULL,
            created_ts BIGINT NOT NULL)""",
        """CREATE TABLE accepted_terms (
            user_id TEXT NOT NULL,
            url TEXT NOT NULL,
            PRIMARY KEY (user_id, url))""",
    ],
    # 2: onbind delivery of resolved invites, with retry state (issue #4).
    [
        """CREATE TABLE invite_deliveries (
            token TEXT PRIMARY KEY,
            server_name TEXT NOT NULL,
            mxid TEXT NOT NULL,
            reason TEXT NOT NULL,
            state TEXT NOT NULL,
            attempts INTEGER NOT NULL,
            next_ts BIGINT NOT NULL,
            claimed_by TEXT,
            claim_until BIGINT,
            last_error TEXT,
            resolved_ts BIGINT NOT NULL,
            updated_ts BIGINT NOT NULL)""",
        "CREATE INDEX invite_deliveries_due ON invite_deliveries (state, next_ts)",
    ],
    # 3: wrong tokens submitted to a session (issue #5: short SMS codes).
    ["ALTER TABLE sessions ADD COLUMN failed_submits INTEGER NOT NULL DEFAULT 0"],
    # 4: each bind's and unbind's hash, which keeps every process's in-memory
    # table of our bindings exact (services/binding_cache.py; SQLite only).
    [
        """CREATE TABLE binding_changes (
            seq INTEGER PRIMARY KEY,
            lookup_hash TEXT NOT NULL,
            mxid TEXT)"""
    ],
]


class Cursor(Protocol):
    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any: ...
    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> Any: ...
    def fetchone(self) -> Any: ...
    def fetchmany(self, size: int) -> list[Any]: ...
    def fetchall(self) -> list[Any]: ...

    @property
    def rowcount(self) -> int: ...


class _PgCursor:
    """Adapts ``?`` placeholders to psycopg2's ``%s``."""

    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._cursor.execute(sql.replace("?", "%s"), tuple(params))

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> Any:
        return self._cursor.executemany(sql.replace("?", "%s"), rows)

    def fetchone(self) -> Any:
        return self._cursor.fetchone()

    def fetchmany(self, size: int) -> list[Any]:
        return list(self._cursor.fetchmany(size))

    def fetchall(self) -> list[Any]:
        return list(self._cursor.fetchall())

    @property
    def rowcount(self) -> int:
        return int(self._cursor.rowcount)


class _SqliteConnection(sqlite3.Connection):
    """A connection that knows the change counters beside its database, where
    the binding change log's writers store each row's number
    (storage/bindings.py)."""

    change_counters: ChangeCounters | None = None


class Database:
    """Thread-local connections and one transaction per unit of work."""

    def __init__(self, config: StorageConfig) -> None:
        self._config = config
        self._local = threading.local()
        self._counters: ChangeCounters | None = None
        self._counters_lock = threading.Lock()
        self._counters_opened = False

    @property
    def backend(self) -> str:
        return self._config.backend

    def _connect(self) -> Any:
        if self._config.backend == "sqlite":
            self._make_directory()
            conn = sqlite3.connect(
                self._config.sqlite_database,
                timeout=30,
                isolation_level=None,
                factory=_SqliteConnection,
            )
            conn.change_counters = self.change_counters
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            # Hashed lookups walk the bindings index at random; let the OS page
            # cache serve it instead of SQLite's 2 MiB default cache.
            conn.execute("PRAGMA mmap_size=1073741824")
            conn.execute("PRAGMA cache_size=-16384")
            return conn
        return psycopg2.connect(
            host=self._config.pg_host,
            port=self._config.pg_port,
            dbname=self._config.pg_database,
            user=self._config.pg_user,
            password=self._config.pg_password or None,
            connect_timeout=10,
        )

    @property
    def change_counters(self) -> ChangeCounters | None:
        """The counters shared by every process using this SQLite file
        (storage/counter.py); None on PostgreSQL and for ":memory:"."""
        with self._counters_lock:
            if not self._counters_opened:
                self._counters_opened = True
                path = self._config.sqlite_database
                if self.backend == "sqlite" and path != ":memory:":
                    self._make_directory()
                    self._counters = ChangeCounters.open(path)
            return self._counters

    def _make_directory(self) -> None:
        directory = os.path.dirname(self._config.sqlite_database)
        if directory:
            os.makedirs(directory, exist_ok=True)

    def _connection(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None or (self.backend == "postgresql" and conn.closed):
            conn = self._connect()
            self._local.conn = conn
        return conn

    @contextmanager
    def read(self) -> Iterator[Cursor]:
        """A cursor for reads. On SQLite (WAL) each statement sees a consistent
        snapshot, so reads skip BEGIN/COMMIT and their two round trips."""
        if self.backend == "sqlite":
            cursor = self._connection().cursor()
            try:
                yield cursor
            finally:
                # A query with rows left unfetched holds its snapshot until
                # closed, and a later BEGIN IMMEDIATE on this connection then
                # fails at once (SQLITE_BUSY_SNAPSHOT) if anyone committed.
                cursor.close()
            return
        with self._pg_transaction() as cur:
            yield cur

    @contextmanager
    def snapshot(self) -> Iterator[Cursor]:
        """A cursor whose statements all see the same committed state."""
        if self.backend == "postgresql":
            with self._pg_transaction() as cur:
                cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                yield cur
            return
        cursor = self._connection().cursor()
        cursor.execute("BEGIN")  # deferred: a read transaction, one snapshot
        try:
            yield cursor
        finally:
            cursor.execute("COMMIT")

    @contextmanager
    def write(self) -> Iterator[Cursor]:
        """One transaction: all of the block's writes or none of them."""
        if self.backend == "postgresql":
            with self._pg_transaction() as cur:
                yield cur
            return
        conn = self._connection()
        cursor = conn.cursor()
        # IMMEDIATE takes the write lock up front: no deadlock on upgrade.
        cursor.execute("BEGIN IMMEDIATE")
        try:
            yield cursor
        except BaseException:
            conn.rollback()
            raise
        conn.commit()

    def lock(self, cur: Cursor, key: str) -> None:
        """Hold ``key`` until this write transaction ends, so two transactions
        that read then write by the same key run one after the other. SQLite
        runs writes one at a time already (BEGIN IMMEDIATE)."""
        if self.backend == "postgresql":
            digest = hashlib.sha256(key.encode()).digest()
            number = int.from_bytes(digest[:8], "big", signed=True)
            cur.execute("SELECT pg_advisory_xact_lock(?)", (number,))

    @contextmanager
    def _pg_transaction(self) -> Iterator[Cursor]:
        conn = self._connection()
        try:
            with conn:
                with conn.cursor() as raw:
                    yield _PgCursor(raw)
        except psycopg2.InterfaceError:
            # The server closed the connection; the next call reconnects.
            self._local.conn = None
            raise

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def migrate(self) -> int:
        """Apply pending migrations; safe when several processes start at once."""
        try:
            return self._migrate()
        except (OSError, sqlite3.Error, psycopg2.Error) as exc:
            key = f"storage.provider.{self.backend}"
            raise ConfigError(f"{key}: cannot open the database: {exc}") from exc

    def _migrate(self) -> int:
        with self.write() as cur:
            if self.backend == "postgresql":
                cur.execute("SELECT pg_advisory_xact_lock(7135)")
            cur.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"
            )
            cur.execute("SELECT version FROM schema_version")
            row = cur.fetchone()
            current = row[0] if row else 0
            for version in range(current, len(MIGRATIONS)):
                for statement in MIGRATIONS[version]:
                    cur.execute(statement)
                logger.info("storage schema migrated version=%d", version + 1)
            if row is None:
                cur.execute(
                    "INSERT INTO schema_version (version) VALUES (?)",
                    (len(MIGRATIONS),),
                )
            elif current != len(MIGRATIONS):
                cur.execute("UPDATE schema_version SET version = ?", (len(MIGRATIONS),))
        return len(MIGRATIONS)
