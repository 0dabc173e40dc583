"""Throw-away databases on the local servers, for the tests and the benchmark alike.

Each one is new and empty, and dropped afterwards even while connections are still open, so a
failed test leaves nothing behind on the shared server.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine, text

POSTGRES_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"
POSTGRES_ADMIN_URL = f"{POSTGRES_SERVER}/test"
MARIADB_SERVER = "mysql+pymysql://root@127.0.0.1:3306"
MARIADB_ADMIN_URL = f"{MARIADB_SERVER}/test"


@contextmanager
def postgres_database(prefix: str = "resetbot") -> Iterator[str]:
    """The URL of a new database on the local PostgreSQL, dropped on leaving."""
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


@contextmanager
def mariadb_database(prefix: str = "resetbot_t") -> Iterator[str]:
    """The URL of a new database on the local MariaDB, dropped on leaving.

    MariaDB's DROP DATABASE waits for the locks of open transactions rather than ending them:
    connections still open on it are killed first, as PostgreSQL's WITH (FORCE) does.
    """
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(MARIADB_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
    try:
        yield f"{MARIADB_SERVER}/{name}"
    finally:
        with admin.connect() as connection:
            others = connection.scalars(
                text(
                    "SELECT id FROM information_schema.processlist "
                    "WHERE db = :name AND id <> CONNECTION_ID()"
                ),
                {"name": name},
            ).all()
            for process in others:
                connection.execute(text(f"KILL {int(process)}"))
            connection.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
        admin.dispose()
