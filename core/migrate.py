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


def alembic_config(connection: Connection, names: DirectoryNames | None) -> Config:
    """An Alembic configuration in code, carrying the open connection and the users' names
    (None: the users are not resetbot's own table in this database; no users table here)."""
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    config.attributes["connection"] = connection
    config.attributes[DIRECTORY_NAMES_KEY] = names
    return config


def upgrade(settings: Settings, revision: str = "head") -> str | None:
    """Bring the database of `settings` up to `revision`; returns the revision it is now at."""
    engine = make_engine(settings.database_url)
    try:
        return upgrade_engine(engine, own_users_names(settings), revision)
    finally:
        engine.dispose()


def own_users_names(settings: Settings) -> DirectoryNames | None:
    """The names of resetbot's own users table when it lives in DATABASE_URL, else None.

    With DIRECTORY_URL set, or a library system's profile, the users are someone else's and
    elsewhere: resetbot's migrations make no users table and no search index at all.
    """
    if settings.directory_url or settings.directory_profile != "resetbot":
        return None
    return settings.directory


def upgrade_engine(
    engine: Engine, names: DirectoryNames | None, revision: str = "head"
) -> str | None:
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


def schema_metadata(names: DirectoryNames | None) -> MetaData:
    """What the database should hold: resetbot's tables and (names given) its users table."""
    metadata = MetaData()
    for table in Base.metadata.tables.values():
        table.to_metadata(metadata)
    if names is not None:
        users_table(names, metadata)
    return metadata


def migration_directory_names() -> DirectoryNames | None:
    """Inside a revision: the users table's configured names, handed over by `alembic_config`;
    None when this database holds no users table of resetbot's."""
    from alembic import context

    names = context.config.attributes.get(DIRECTORY_NAMES_KEY, DirectoryNames())
    return names if isinstance(names, DirectoryNames) else None
