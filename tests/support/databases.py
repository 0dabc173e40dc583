"""Throw-away databases on the local servers, for the tests and the benchmark alike.

Each one is new and empty, and dropped afterwards even while connections are still open, so a
failed test leaves nothing behind on the shared server.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine, text
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
