"""Schema migrations with Alembic, run in code: `resetbot db upgrade` and the test fixtures.

The revisions live in `core/migrations/` and ship inside the package, so an installed resetbot
needs no alembic.ini and no source checkout to upgrade its database.
"""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, Engine, MetaData

from core.db import make_engine
from core.models import Base, users_table
from core.settings import DirectoryNames, Settings

SCRIPT_LOCATION = "core:migrations"
VERSION_TABLE = "resetbot_alembic_version"
DIRECTORY_NAMES_KEY = "resetbot_directory_names"


def alembic_config(connection: Connection, names: DirectoryNames) -> Config:
    """An Alembic configuration in code, carrying the open connection and the users' names."""
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    config.attributes["connection"] = connection
    config.attributes[DIRECTORY_NAMES_KEY] = names
    return config


def upgrade(settings: Settings, revision: str = "head") -> str | None:
    """Bring the database of `settings` up to `revision`; returns the revision it is now at."""
    engine = make_engine(settings.database_url)
    try:
        return upgrade_engine(engine, settings.directory, revision)
    finally:
        engine.dispose()


def upgrade_engine(engine: Engine, names: DirectoryNames, revision: str = "head") -> str | None:
    with engine.begin() as connection:
        command.upgrade(alembic_config(connection, names), revision)
        return current_revision(connection)


def current_revision(connection: Connection) -> str | None:
    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    return ScriptDirectory.from_config(config).get_current_head()


def schema_metadata(names: DirectoryNames) -> MetaData:
    """What the database should hold: resetbot's tables and the users table under its names."""
    metadata = MetaData()
    for table in Base.metadata.tables.values():
        table.to_metadata(metadata)
    users_table(names, metadata)
    return metadata


def migration_directory_names() -> DirectoryNames:
    """Inside a revision: the users table's configured names, handed over by `alembic_config`."""
    from alembic import context

    names = context.config.attributes.get(DIRECTORY_NAMES_KEY)
    return names if isinstance(names, DirectoryNames) else DirectoryNames()
