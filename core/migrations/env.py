"""Alembic environment: run by `core.migrate`, which hands over the connection and the names.

resetbot needs no alembic.ini: `core.migrate.alembic_config` builds the configuration in code and
puts the open connection and the users table's configured names into `config.attributes`.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, MetaData, text

from core.db import MYSQL_BACKENDS
from core.migrate import (
    VERSION_TABLE,
    migration_directory_names,
    schema_metadata,
    sqlite_foreign_keys_on,
)

# Any constant will do: it only has to be the same for every resetbot process.
_POSTGRES_MIGRATION_LOCK = 0x7265736574  # "reset"
_MYSQL_MIGRATION_LOCK = "resetbot_migrations"
_MYSQL_LOCK_WAIT = 600  # seconds another host's upgrade may take


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if not isinstance(connection, Connection):
        raise RuntimeError("run migrations through core.migrate.upgrade, not the alembic command")
    target: MetaData = schema_metadata(migration_directory_names())
    context.configure(
        connection=connection,
        target_metadata=target,
        version_table=VERSION_TABLE,
        # SQLite cannot ALTER most things; batch mode rebuilds the table when a revision must.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        # Hosts that upgrade at the same moment take turns instead of racing on DDL.
        if connection.dialect.name == "postgresql":
            connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": _POSTGRES_MIGRATION_LOCK}
            )
            context.run_migrations()
        elif connection.dialect.name in MYSQL_BACKENDS:
            # DDL commits at once on MariaDB/MySQL: the lock is the connection's, not a
            # transaction's, and is given back by hand.
            taken = connection.scalar(
                text("SELECT GET_LOCK(:name, :seconds)"),
                {"name": _MYSQL_MIGRATION_LOCK, "seconds": _MYSQL_LOCK_WAIT},
            )
            if taken != 1:
                raise RuntimeError("another resetbot's `db upgrade` held the migration lock")
            try:
                context.run_migrations()
            finally:
                connection.execute(
                    text("SELECT RELEASE_LOCK(:name)"), {"name": _MYSQL_MIGRATION_LOCK}
                )
        else:
            # Batch mode rebuilds tables on SQLite: with foreign keys on, dropping the old
            # `reset_tasks` would delete every task's items. core.migrate turns them off first.
            if connection.dialect.name == "sqlite" and sqlite_foreign_keys_on(connection):
                raise RuntimeError("run migrations through core.migrate, which turns SQLite's "
                                   "foreign keys off for them")
            context.run_migrations()


if context.is_offline_mode():
    raise RuntimeError("resetbot migrations run online only: use `resetbot db upgrade`")
run_migrations_online()
