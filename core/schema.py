"""Creating the schema: resetbot's tables, the users table (if absent) and its search index."""

from __future__ import annotations

from sqlalchemy import Engine, MetaData, inspect

from core.directory import Directory, create_search_index
from core.models import Base, users_table


def create_schema(engine: Engine, directory: Directory) -> None:
    """Idempotent: creates what is missing, leaves a library's existing users table alone."""
    with engine.begin() as connection:
        if not inspect(connection).has_table(directory.names.table):
            users_table(directory.names, MetaData()).create(connection)
        Base.metadata.create_all(connection)
        create_search_index(connection, directory)
