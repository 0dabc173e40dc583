"""resetbot's own users table only: the search index the picker uses on it.

Never made in a library system's database: a foreign directory is searched without it.
"""

from __future__ import annotations

from sqlalchemy import Connection, Engine, text

from core.settings import DirectoryNames


def create_search_index(engine: Engine | Connection, names: DirectoryNames) -> None:
    """Trigram search: pg_trgm GIN index on PostgreSQL, an FTS5 trigram table on SQLite."""
    table = names.table
    col = names.column

    def run(connection: Connection) -> None:
        if connection.dialect.name == "postgresql":
            connection.execute(text("CREATE EXTENSION IF NOT EXISTS pg_trgm"))
            expression = (
                f"lower({col('username')} || E'\\t' || coalesce({col('full_name')}, '') "
                f"|| E'\\t' || coalesce({col('email')}, ''))"
            )
            connection.execute(
                text(
                    f"CREATE INDEX IF NOT EXISTS ix_{table}_search_trgm ON {table} "
                    f"USING gin (({expression}) gin_trgm_ops)"
                )
            )
        elif connection.dialect.name == "sqlite":
            _create_sqlite_fts(connection, table, col("id"), [
                col("username"), col("full_name"), col("email")
            ])

    if isinstance(engine, Engine):
        with engine.begin() as connection:
            run(connection)
    else:
        run(engine)


def _create_sqlite_fts(connection: Connection, table: str, id_col: str, cols: list[str]) -> None:
    fts = f"{table}_search"
    listed = ", ".join(cols)
    new_values = ", ".join(f"new.{c}" for c in cols)
    old_values = ", ".join(f"old.{c}" for c in cols)
    statements = [
        f"CREATE VIRTUAL TABLE IF NOT EXISTS {fts} USING fts5({listed}, content='{table}', "
        f"content_rowid='{id_col}', tokenize='trigram')",
        f"CREATE TRIGGER IF NOT EXISTS {fts}_ai AFTER INSERT ON {table} BEGIN "
        f"INSERT INTO {fts}(rowid, {listed}) VALUES (new.{id_col}, {new_values}); END",
        f"CREATE TRIGGER IF NOT EXISTS {fts}_ad AFTER DELETE ON {table} BEGIN "
        f"INSERT INTO {fts}({fts}, rowid, {listed}) VALUES ('delete', old.{id_col}, {old_values}); "
        "END",
        f"CREATE TRIGGER IF NOT EXISTS {fts}_au AFTER UPDATE OF {listed} ON {table} BEGIN "
        f"INSERT INTO {fts}({fts}, rowid, {listed}) VALUES ('delete', old.{id_col}, {old_values}); "
        f"INSERT INTO {fts}(rowid, {listed}) VALUES (new.{id_col}, {new_values}); END",
        f"INSERT INTO {fts}({fts}) VALUES ('rebuild')",
    ]
    for statement in statements:
        connection.execute(text(statement))
