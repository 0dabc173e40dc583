"""Alembic environment: run by `core.migrate`, which hands over the connection and the names.

resetbot needs no alembic.ini: `core.migrate.alembic_config` builds the configuration in code and
puts the open connection and the users table's configured names into `config.attributes`.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, MetaData, text

from core.migrate import VERSION_TABLE, migration_directory_names, schema_metadata

# Any constant will do: it only has to be the same for every resetbot process.
_POSTGRES_MIGRATION_LOCK = 0x7265736574  # "reset"


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
        if connection.dialect.name == "postgresql":
            # Hosts that upgrade at the same moment take turns instead of racing on DDL.
            connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": _POSTGRES_MIGRATION_LOCK}
            )
        context.run_migrations()


if context.is_offline_mode():
    raise RuntimeError("resetbot migrations run online only: use `resetbot db upgrade`")
run_migrations_online()
