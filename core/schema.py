"""Creating the schema: resetbot's tables, and its own users table (if absent) with its index."""

from __future__ import annotations

from sqlalchemy import Engine, MetaData, inspect

from core.db import shown_url
from core.directory import Directory, create_search_index
from core.errors import ConfigError
from core.models import Base, users_table


def create_schema(engine: Engine, directory: Directory) -> None:
    """Idempotent: creates what is missing, leaves a library's existing users table alone.

    The users table and its search index only when they are resetbot's own and live in this
    database: nothing is ever created in a library system's directory, nor in a database that
    holds one (ConfigError).
    """
    if not directory.profile.owned and (
        directory.engine is engine or directory.engine.url == engine.url
    ):
        raise ConfigError(
            f"DATABASE_URL: {shown_url(engine.url)} holds {directory.profile.table!r}, the users "
            f"table of DIRECTORY_PROFILE={directory.profile.name} (a library system's "
            "database): resetbot never writes its tables there; set DATABASE_URL to a database "
            "of resetbot's own, and DIRECTORY_URL to this one (nothing was created)"
        )
    with engine.begin() as connection:
        if directory.own_index and not inspect(connection).has_table(directory.names.table):
            users_table(directory.names, MetaData()).create(connection)
        Base.metadata.create_all(connection)
        if directory.own_index:
            create_search_index(connection, directory.names)
