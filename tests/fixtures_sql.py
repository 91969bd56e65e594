"""Fixtures: SQL and synapseSql store databases.

``org_db`` is an organisation's own database (a people table, their
contacts and roles) on SQLite, the real PostgreSQL and the real MariaDB;
``synapse_db`` holds the tables Synapse creates (``users``, ``profiles``,
``user_threepids``, as in its full schema) on SQLite and PostgreSQL. The
server databases are created once per run under a name of their own and
dropped afterwards (PostgreSQL's is conftest's ``pg_database``); each test
gets freshly seeded tables.
"""

from __future__ import annotations

import os
import sqlite3
import urllib.parse
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions
import pymysql
import pytest

from conftest import PG_DSN

MYSQL_HOST = os.environ.get("MXISD_TEST_MYSQL_HOST", "127.0.0.1")
MYSQL_PORT = int(os.environ.get("MXISD_TEST_MYSQL_PORT", "3306"))
MYSQL_USER = os.environ.get("MXISD_TEST_MYSQL_USER", "root")
ORG_KINDS = ["sqlite", "postgresql", "mysql"]
SYNAPSE_KINDS = ["sqlite", "postgresql"]

ORG_SCHEMA = [
    "CREATE TABLE people (login VARCHAR(64) PRIMARY KEY, display_name VARCHAR(200),"
    " employee_no VARCHAR(20))",
    "CREATE TABLE contacts (login VARCHAR(64) NOT NULL, kind VARCHAR(20) NOT NULL,"
    " value VARCHAR(254) NOT NULL)",
    "CREATE TABLE roles (login VARCHAR(64) NOT NULL, role VARCHAR(64) NOT NULL)",
]
PEOPLE = [
    ("jdoe", "John Doe", "E1001"),
    ("asmith", "Anna Smith", "E1002"),
    ("obrien", "Pat O'Brien", "E1003"),
    ("nomail", "No Mail", "E1004"),
]
CONTACTS = [
    ("jdoe", "email", "John.Doe@Example.ORG"),
    ("jdoe", "msisdn", "+44 20 7946 0750"),
    ("asmith", "email", "anna@example.org"),
    ("asmith", "email", "A.Smith@Sales.Example.org"),
    ("obrien", "email", "o'brien@example.org"),
    ("obrien", "email", "not an address"),  # bad data: never listed
]
ROLES = [("jdoe", "admins"), ("jdoe", "staff"), ("asmith", "staff")]

# Synapse's definitions of the three tables (its full schema, version 72).
SYNAPSE_SCHEMA = [
    "CREATE TABLE users( name TEXT, password_hash TEXT, creation_ts BIGINT,"
    " admin SMALLINT DEFAULT 0 NOT NULL, upgrade_ts BIGINT,"
    " is_guest SMALLINT DEFAULT 0 NOT NULL, appservice_id TEXT, consent_version TEXT,"
    " consent_server_notice_sent TEXT, user_type TEXT DEFAULT NULL,"
    " deactivated SMALLINT DEFAULT 0 NOT NULL, shadow_banned BOOLEAN,"
    " consent_ts bigint, UNIQUE(name) )",
    "CREATE TABLE profiles( user_id TEXT NOT NULL, displayname TEXT,"
    " avatar_url TEXT, UNIQUE(user_id) )",
    "CREATE TABLE user_threepids ( user_id TEXT NOT NULL, medium TEXT NOT NULL,"
    " address TEXT NOT NULL, validated_at BIGINT NOT NULL, added_at BIGINT NOT NULL,"
    " CONSTRAINT medium_address UNIQUE (medium, address) )",
    "CREATE INDEX user_threepids_user_id ON user_threepids(user_id)",
]
SYNAPSE_USERS = [
    ("@alice:example.org", 0, "Alice Liddell"),
    ("@bob:example.org", 0, "Bob 100% Real"),
    ("@carol:example.org", 1, "Carol Gone"),  # deactivated
]
SYNAPSE_THREEPIDS = [
    ("@alice:example.org", "email", "alice@example.org"),
    ("@alice:example.org", "msisdn", "447700900123"),
    ("@bob:example.org", "email", "bob@example.org"),
]


@dataclass
class SqlDb:
    """A seeded database a store reads, and a way to change it from outside."""

    kind: str  # sqlite | postgresql | mysql
    connection: str  # the value of <section>.connection
    admin: Any = field(repr=False)  # a DB-API connection that may write
    store_user: str = ""  # MySQL: the account the store connects with

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        cursor = self.admin.cursor()
        if self.kind == "sqlite":
            cursor.execute(sql, tuple(params))
        else:
            # Without values the drivers leave % alone ('%' hosts in MySQL).
            cursor.execute(sql.replace("?", "%s"), tuple(params) or None)
        rows = list(cursor.fetchall()) if cursor.description else []
        cursor.close()
        if self.kind == "sqlite":
            self.admin.commit()
        return rows

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        cursor = self.admin.cursor()
        text = sql if self.kind == "sqlite" else sql.replace("?", "%s")
        cursor.executemany(text, rows)
        cursor.close()
        if self.kind == "sqlite":
            self.admin.commit()

    def drop_store_connections(self) -> int:
        """End the store's server sessions, as a server restart would."""
        if self.kind == "postgresql":
            rows = self.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = 'mxisd' AND datname = current_database()"
            )
            return len(rows)
        ids = self.execute(
            "SELECT id FROM information_schema.processlist WHERE user = ?",
            (self.store_user,),
        )
        for (pid,) in ids:
            self.execute(f"KILL {int(pid)}")
        return len(ids)

    def go_down(self) -> None:
        """Make the database unusable for the store until :meth:`come_back`."""
        if self.kind == "sqlite":
            # A file cannot go down; a migration moving the tables away is
            # the nearest failure at use.
            for table in self._tables():
                self.execute(f"ALTER TABLE {table} RENAME TO {table}_away")
            return
        if self.kind == "postgresql":
            self._pg_allow_connections(False)
        else:
            self.execute(f"ALTER USER '{self.store_user}'@'%' ACCOUNT LOCK")
        self.drop_store_connections()

    def come_back(self) -> None:
        if self.kind == "sqlite":
            for table in self._tables():
                self.execute(f"ALTER TABLE {table}_away RENAME TO {table}")
        elif self.kind == "postgresql":
            self._pg_allow_connections(True)
        else:
            self.execute(f"ALTER USER '{self.store_user}'@'%' ACCOUNT UNLOCK")

    def _tables(self) -> list[str]:
        tables = self.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        return [str(name).removesuffix("_away") for (name,) in tables]

    def _pg_allow_connections(self, allow: bool) -> None:
        name = self.execute("SELECT current_database()")[0][0]
        # A database's own sessions may not close its door: ask from another.
        other = psycopg2.connect(PG_DSN + " dbname=postgres")
        other.autocommit = True
        with other.cursor() as cur:
            cur.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS {str(allow).lower()}")
        other.close()

    def section(self, **extra: Any) -> dict[str, Any]:
        """An enabled store section for this database (for sql or synapseSql)."""
        return {
            "enabled": True,
            "type": self.kind,
            "connection": self.connection,
            **extra,
        }


def _concat(kind: str, *parts: str) -> str:
    # MySQL reads || as OR; SQLite before 3.44 has no concat().
    return f"concat({', '.join(parts)})" if kind == "mysql" else " || ".join(parts)


def org_queries(kind: str) -> dict[str, Any]:
    """The queries an organisation would write for ``org_db``'s tables."""
    mxid = _concat(kind, "'@'", "{t}login", "':example.org'")
    return {
        "identity": {
            "type": "localpart",
            "query": "SELECT login AS uid FROM contacts WHERE kind = ?"
            " AND lower(value) = ?",
            "medium": {
                "msisdn": "SELECT login FROM contacts WHERE kind = 'msisdn'"
                " AND replace(replace(value, ' ', ''), '+', '') = ?",
                "employee": "SELECT login AS uid FROM people WHERE employee_no = ?",
            },
        },
        "lookup": {
            "query": f"SELECT {mxid.format(t='')} AS mxid, kind AS medium,"
            " value AS address FROM contacts"
        },
        "directory": {
            "query": {
                "name": {
                    "type": "localpart",
                    "value": "SELECT login, display_name FROM people"
                    " WHERE lower(display_name) LIKE lower(?)",
                },
                "threepid": {
                    "type": "localpart",
                    "value": "SELECT p.login, p.display_name FROM people p"
                    " JOIN contacts c ON c.login = p.login"
                    " WHERE lower(c.value) LIKE lower(?)",
                },
            }
        },
        "profile": {
            "displayName": {
                "query": "SELECT display_name FROM people"
                f" WHERE {mxid.format(t='')} = ?"
            },
            "threepid": {
                "query": "SELECT c.kind, c.value FROM contacts c"
                f" WHERE {mxid.format(t='c.')} = ?"
            },
            "role": {
                "type": "localpart",
                "query": "SELECT role FROM roles WHERE login = ? ORDER BY role",
            },
        },
    }


def seed_org(db: SqlDb) -> None:
    for statement in ORG_SCHEMA:
        db.execute(statement)
    db.executemany("INSERT INTO people VALUES (?, ?, ?)", PEOPLE)
    db.executemany("INSERT INTO contacts VALUES (?, ?, ?)", CONTACTS)
    db.executemany("INSERT INTO roles VALUES (?, ?)", ROLES)


def seed_synapse(db: SqlDb) -> None:
    for statement in SYNAPSE_SCHEMA:
        db.execute(statement)
    for mxid, deactivated, name in SYNAPSE_USERS:
        db.execute(
            "INSERT INTO users (name, creation_ts, deactivated) VALUES (?, ?, ?)",
            (mxid, 1_700_000_000, deactivated),
        )
        localpart = mxid[1:].split(":")[0]
        db.execute(
            "INSERT INTO profiles (user_id, displayname) VALUES (?, ?)",
            (localpart, name),
        )
    db.executemany(
        "INSERT INTO user_threepids VALUES (?, ?, ?, 1700000000000, 1700000000000)",
        SYNAPSE_THREEPIDS,
    )


@dataclass(frozen=True)
class MysqlStoreDatabase:
    name: str
    user: str  # the store's own account: SELECT only, a password with symbols
    password: str


@pytest.fixture(scope="session")
def mysql_store_database() -> Iterator[MysqlStoreDatabase]:
    """A MariaDB/MySQL database and read-only account, dropped after the run."""
    suffix = uuid.uuid4().hex[:10]
    db = MysqlStoreDatabase(f"mxisd_store_{suffix}", f"mxisd_{suffix}", "p@ss w/rd&1?")
    admin = pymysql.connect(
        host=MYSQL_HOST, port=MYSQL_PORT, user=MYSQL_USER, password="", autocommit=True
    )
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {db.name} CHARACTER SET utf8mb4")
        cur.execute(f"CREATE USER '{db.user}'@'%%' IDENTIFIED BY %s", (db.password,))
        cur.execute(f"GRANT SELECT ON {db.name}.* TO '{db.user}'@'%'")
    yield db
    with admin.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {db.name}")
        cur.execute(f"DROP USER IF EXISTS '{db.user}'@'%'")
    admin.close()


def open_db(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> SqlDb:
    """An empty database of ``kind``: a new SQLite file or a cleared server one."""
    if kind == "sqlite":
        path = tmp_path / "store.db"
        admin = sqlite3.connect(path)
        admin.execute("PRAGMA journal_mode=WAL")  # as Synapse runs it
        return SqlDb(kind, str(path), admin)
    if kind == "postgresql":
        # The storage tests' database: they clear it per test as we do.
        name = request.getfixturevalue("pg_database")
        conn = psycopg2.connect(PG_DSN + f" dbname={name}")
        conn.autocommit = True
        dsn = psycopg2.extensions.parse_dsn(PG_DSN)
        server = f"{dsn.get('host', '127.0.0.1')}:{dsn.get('port', 5432)}"
        user = dsn.get("user", "postgres")
        db = SqlDb(kind, f"//{server}/{name}?user={user}&password=", conn)
        db.execute("DROP SCHEMA public CASCADE")
        db.execute("CREATE SCHEMA public")
        return db
    store_db: MysqlStoreDatabase = request.getfixturevalue("mysql_store_database")
    conn = pymysql.connect(
        host=MYSQL_HOST,
        port=MYSQL_PORT,
        user=MYSQL_USER,
        password="",
        database=store_db.name,
        autocommit=True,
    )
    credentials = urllib.parse.urlencode(
        {"user": store_db.user, "password": store_db.password}
    )
    server = f"{MYSQL_HOST}:{MYSQL_PORT}"
    db = SqlDb(kind, f"//{server}/{store_db.name}?{credentials}", conn)
    db.store_user = store_db.user
    for (table,) in db.execute("SHOW TABLES"):
        db.execute(f"DROP TABLE `{table}`")
    return db


@pytest.fixture(params=ORG_KINDS)
def org_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlDb]:
    db = open_db(str(request.param), tmp_path, request)
    seed_org(db)
    yield db
    db.admin.close()


@pytest.fixture(params=SYNAPSE_KINDS)
def synapse_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlDb]:
    db = open_db(str(request.param), tmp_path, request)
    seed_synapse(db)
    yield db
    db.admin.close()
