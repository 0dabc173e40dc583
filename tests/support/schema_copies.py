"""create_schema and `db upgrade` on a new SQLite file, made once per process and copied.

On a new SQLite file `create_schema` costs 10-40 ms (its DDL, and the file's syncs) and
Alembic's upgrade to head 100-300 ms; a test taking the `engine` or a `state_engine` fixture
only needs the resulting file. The first test on a users-table layout runs `create_schema` (or
`upgrade`) itself on a file of this process's own; every later one copies that file, byte for
byte what the call would have written (tables, indexes, Alembic's version, WAL mode). Any other
case (another database, a file already there, a library's users table in the same database)
runs the call itself, as before.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

from sqlalchemy import URL, Engine
from sqlalchemy.engine import make_url

from core.db import make_engine
from core.directory import Directory
from core.migrate import own_users_names, same_database, upgrade
from core.schema import create_schema
from core.settings import Settings


class SqliteSchemas:
    """The schema files made so far, in `folder`, by users-table layout."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.made: dict[tuple[str, str], Path] = {}

    def create(self, engine: Engine, directory: Directory) -> None:
        """`create_schema(engine, directory)`, by a copy when it can be one."""
        target = sqlite_file(engine.url)
        if target is None or target.exists() or not directory.profile.owned:
            create_schema(engine, directory)
            return
        key = (f"create_schema own_index={directory.own_index}", repr(directory.names))
        if key not in self.made:
            self.made[key] = self._template(directory, len(self.made))
        shutil.copyfile(self.made[key], target)

    def upgrade(self, settings: Settings) -> None:
        """`core.migrate.upgrade(settings)` to head, by a copy when it can be one."""
        target = sqlite_file(make_url(settings.database_url))
        if target is None or target.exists() or (
            settings.directory_url and same_database(settings.directory_url,
                                                     settings.database_url)
        ):
            upgrade(settings)  # refused (ConfigError), or not a new SQLite file
            return
        key = ("upgrade head", repr(own_users_names(settings)))
        if key not in self.made:
            path = self.folder / f"upgraded-{len(self.made)}.db"
            upgrade(replace(settings, database_url=f"sqlite:///{path}"))
            self.made[key] = path
        shutil.copyfile(self.made[key], target)

    def _template(self, directory: Directory, number: int) -> Path:
        path = self.folder / f"schema-{number}.db"
        template = make_engine(f"sqlite:///{path}")
        try:
            # The same directory, on the template's engine: the same tables and index.
            create_schema(template, Directory.own_table(template, directory.names)
                          if directory.own_index else directory)
        finally:
            template.dispose()  # the last connection checkpoints the WAL: the file is whole
        return path


def sqlite_file(url: URL) -> Path | None:
    """The file of a SQLite URL, None for any other database (or an in-memory one)."""
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(str(url.database))
