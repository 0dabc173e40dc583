"""Throw-away databases on the local servers, for the tests and the benchmark alike.

Each one is new and empty, and dropped afterwards even while connections are still open, so a
failed test leaves nothing behind on the shared server.

On PostgreSQL a test's own database is usually a schema (`PostgresSchemas`): CREATE DATABASE
copies template1 through the WAL, and with DROP DATABASE it took about 0.7 s a test with the
suite running on two cores; CREATE and DROP SCHEMA take about 65 ms. Each pytest process (each
xdist worker) makes one database of its own, and each test a new schema in it, named in the
URL's search_path, so whatever the test hands the URL to (engines, the `resetbot` CLI in a
subprocess) works in that schema alone. A test that needs a whole database of its own (a
library system's, read with its tables in `public`, or one more besides DATABASE_URL's) takes
`postgres_database()`; so does the bench.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from psycopg.errors import LockNotAvailable
from sqlalchemy import Connection, create_engine, make_url, text
from sqlalchemy.exc import OperationalError

from tests.support.services import MARIADB_ADMIN_URL, POSTGRES_ADMIN_URL, server_of

#: The servers, from RESETBOT_TEST_POSTGRES_URL and RESETBOT_TEST_MARIADB_URL
#: (tests/support/services.py): a database's name is appended to them.
POSTGRES_SERVER = server_of(POSTGRES_ADMIN_URL)


@contextmanager
def postgres_database(prefix: str = "resetbot") -> Iterator[str]:
    """The URL of a new database on the test PostgreSQL, dropped on leaving.

    Its name is random (48 bits), so tests running in parallel, in several xdist workers or
    several runs at once, never make the same database."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{POSTGRES_SERVER}/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


#: How long dropping a test's schema waits for a lock held by a session that connected again
#: after the others were ended (a process the test left running), before ending them again.
DROP_LOCK_WAIT = "1s"
#: ... and how many times, before the teardown fails (the database goes at the run's end).
DROP_ATTEMPTS = 10


class PostgresSchemas:
    """A database of one pytest process's own, in which each test gets a new, empty schema.

    The process runs one test at a time, so every other session on the database when a test
    ends is that test's (or a leftover of an earlier one's): they are ended before its schema
    is dropped, as DROP DATABASE ... WITH (FORCE) would. Schema names are random, so a
    leftover process never sees a later test's tables, only that its own schema is gone.
    Extensions belong to the database: the pg_trgm resetbot's CREATE EXTENSION makes lands in
    the test's schema and goes with it, so the next test makes its own.
    """

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self._admin = create_engine(
            database_url, isolation_level="AUTOCOMMIT",
            connect_args={"options": f"-clock_timeout={DROP_LOCK_WAIT}"},
        )

    @contextmanager
    def schema(self, prefix: str = "t") -> Iterator[str]:
        """The URL of a new schema, dropped on leaving with everything in it (and every other
        session on the database ended: one schema at a time is in use)."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with self._admin.connect() as connection:
            connection.execute(text(f'CREATE SCHEMA "{name}"'))
        try:
            yield schema_url(self.database_url, name)
        finally:
            with self._admin.connect() as connection:
                drop_schema(connection, name)

    def dispose(self) -> None:
        self._admin.dispose()


@contextmanager
def postgres_schemas(prefix: str = "resetbot") -> Iterator[PostgresSchemas]:
    """A new database on the test PostgreSQL for this process's tests' schemas, dropped (with
    any schema a test left) on leaving."""
    with postgres_database(prefix) as url:
        schemas = PostgresSchemas(url)
        try:
            yield schemas
        finally:
            schemas.dispose()


def schema_url(database_url: str, schema: str) -> str:
    """`database_url` with `schema` as the only one on its search_path (libpq's `options`):
    unqualified names, CREATE EXTENSION and the inspector's default schema all mean it."""
    url = make_url(database_url).update_query_dict({"options": f"-csearch_path={schema}"})
    return url.render_as_string(hide_password=False)


def drop_schema(connection: Connection, name: str) -> None:
    """End every other session on the database, then drop the schema; again while a session
    that connected meanwhile holds a lock in it."""
    for _ in range(DROP_ATTEMPTS):
        connection.execute(text(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "
            "current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
        ))
        try:
            connection.execute(text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
            return
        except OperationalError as error:
            if not isinstance(error.orig, LockNotAvailable):
                raise
    raise AssertionError(f"schema {name}: sessions kept connecting to it, it could not be dropped")


MARIADB_SERVER = server_of(MARIADB_ADMIN_URL)
#: MariaDB's error for KILL of a connection that is gone already.
UNKNOWN_THREAD = 1094


@contextmanager
def mariadb_database(prefix: str = "resetbot_t") -> Iterator[str]:
    """The URL of a new database on the test MariaDB (as an administrator), dropped on leaving.

    MariaDB has no DROP DATABASE ... WITH (FORCE): the connections still open on it are
    killed first, so a test that failed halfway leaves nothing behind.
    """
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(MARIADB_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(
            text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
        )
    try:
        yield f"{MARIADB_SERVER}/{name}?charset=utf8mb4"
    finally:
        with admin.connect() as connection:
            sessions = connection.execute(
                text("SELECT id FROM information_schema.processlist WHERE db = :db"),
                {"db": name},
            ).scalars().all()
            for session_id in sessions:
                try:
                    connection.execute(text(f"KILL {int(session_id)}"))
                except OperationalError as error:
                    if error.orig.args[0] != UNKNOWN_THREAD:  # type: ignore[union-attr]
                        raise  # a connection that ended by itself meanwhile is fine
            connection.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
        admin.dispose()
