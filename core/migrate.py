"""Schema migrations with Alembic, run in code: `resetbot db upgrade` and the test fixtures.

The revisions live in `core/migrations/` and ship inside the package, so an installed resetbot
needs no alembic.ini and no source checkout to upgrade its database.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, MetaData, inspect
from sqlalchemy.engine import make_url

from core.db import MYSQL_BACKENDS, make_engine, with_shipped_driver
from core.errors import ConfigError
from core.models import Base, users_table
from core.settings import DirectoryNames, Settings, uses_ldap

if TYPE_CHECKING:  # Alembic is imported where it runs: each command reads own_users_names
    from alembic.config import Config

SCRIPT_LOCATION = "core:migrations"
VERSION_TABLE = "resetbot_alembic_version"
DIRECTORY_NAMES_KEY = "resetbot_directory_names"


def alembic_config(connection: Connection, names: DirectoryNames | None) -> Config:
    """An Alembic configuration in code, carrying the open connection and the users' names
    (None: the users are not resetbot's own table in this database; no users table here)."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    config.attributes["connection"] = connection
    config.attributes[DIRECTORY_NAMES_KEY] = names
    return config


def upgrade(settings: Settings, revision: str = "head") -> str | None:
    """Bring the database of `settings` up to `revision`; returns the revision it is now at.

    Refuses (ConfigError, nothing created) a DATABASE_URL that is a library system's database.
    """
    engine = make_engine(settings.database_url)
    try:
        refuse_library_database(settings, engine)
        return upgrade_engine(engine, own_users_names(settings), revision)
    finally:
        engine.dispose()


def refuse_library_database(settings: Settings, engine: Engine) -> None:
    """resetbot never writes its tables into the library system's database: DATABASE_URL may
    not be DIRECTORY_URL's database, nor hold the users table of a library system's profile
    (the one DIRECTORY_PROFILE names, or one resetbot ships: Koha's `borrowers`)."""
    from core.db import shown_url
    from core.directory.sql.profile import load_profile, shipped_profiles

    shown = shown_url(engine.url)
    ldap = uses_ldap(settings)  # the users are on an LDAP server: no table profile applies
    if settings.directory_url and not ldap and same_database(settings.directory_url,
                                                             settings.database_url):
        raise ConfigError(
            f"DATABASE_URL: {shown} is the database of DIRECTORY_URL, the library system's: "
            "resetbot keeps its tables in a database of its own; set DATABASE_URL to another "
            "database (nothing was created)"
        )
    configured = None if ldap else load_profile(settings.directory_profile, settings.directory)
    foreign = [configured] if configured is not None and not configured.owned else []
    foreign += [load_profile(name) for name in shipped_profiles()]
    with engine.connect() as connection:
        held = next((p for p in foreign if inspect(connection).has_table(p.table)), None)
    if held is not None:
        raise ConfigError(
            f"DATABASE_URL: {shown} holds {held.table!r}, the users table of DIRECTORY_PROFILE="
            f"{held.name} (a library system's database): resetbot never writes its tables "
            "there; set DATABASE_URL to a database of resetbot's own, and DIRECTORY_URL to this "
            "one (nothing was created)"
        )


def same_database(first: str, second: str) -> bool:
    """Whether two URLs name the same database, whoever connects and with whatever driver."""
    return _where(first) == _where(second)


def _where(raw: str) -> tuple[str, str, int | None, str]:
    url = make_url(with_shipped_driver(raw))
    backend = "mysql" if url.get_backend_name() in MYSQL_BACKENDS else url.get_backend_name()
    database = url.database or ""
    if backend == "sqlite":
        memory = database in ("", ":memory:") or database.startswith("file:")
        return backend, "", None, database if memory else str(Path(database).resolve())
    host = "" if url.host in (None, "", "localhost", "127.0.0.1", "::1") else str(url.host)
    return backend, host, url.port or _DEFAULT_PORTS.get(backend), database


_DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306}


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
    from alembic import command

    with migration_connection(engine) as connection:
        command.upgrade(alembic_config(connection, names), revision)
        return current_revision(connection)


def downgrade_engine(engine: Engine, names: DirectoryNames | None, revision: str) -> str | None:
    """Take the database back to `revision` ("base": no table of resetbot's left)."""
    from alembic import command

    with migration_connection(engine) as connection:
        command.downgrade(alembic_config(connection, names), revision)
        return current_revision(connection)


@contextmanager
def migration_connection(engine: Engine) -> Iterator[Connection]:
    """A connection in a transaction for revisions to run in; on SQLite, with foreign keys off.

    On SQLite a revision in batch mode rebuilds a table (copy, DROP, rename); with foreign keys
    on, dropping `reset_tasks` deletes every task's items (ON DELETE CASCADE) or fails on the
    rows that name a task. The pragma is a no-op inside a transaction, so it is set before the
    transaction begins, and the references are checked before it commits.
    """
    with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:
            # Before BEGIN: inside a transaction the pragma is ignored.
            connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
            connection.commit()  # ends the transaction SQLAlchemy began, for begin() below
        try:
            with connection.begin():
                yield connection
                if sqlite:
                    refuse_broken_references(connection)
        finally:
            if sqlite:
                connection.rollback()  # nothing is open here: a clean start for the pragma
                connection.exec_driver_sql("PRAGMA foreign_keys=ON")
                connection.commit()


def refuse_broken_references(connection: Connection) -> None:
    """Raise (the transaction rolls back) when a row names a row that is not there."""
    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
    if broken:
        tables = sorted({str(row[0]) for row in broken})
        raise RuntimeError(f"the migration left rows naming missing rows in {tables}")


def sqlite_foreign_keys_on(connection: Connection) -> bool:
    return bool(connection.exec_driver_sql("PRAGMA foreign_keys").scalar())


def current_revision(connection: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


def head_revision() -> str | None:
    from alembic.config import Config
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
