"""Queries over the library's users: picker search, scopes, previews, batched hash writes."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Table,
    and_,
    bindparam,
    case,
    func,
    literal,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.orm import Session

from core.errors import InputError
from core.models import Scope, users_table
from core.settings import DirectoryNames

SEARCH_LIMIT = 100
MIN_TRIGRAM_TERM = 3
# Joins the searchable columns; a character nobody types into a search box.
SEARCH_SEPARATOR = "\t"


@dataclass(frozen=True)
class DirectoryUser:
    id: int
    username: str
    full_name: str
    email: str | None
    role: str | None

    @property
    def is_staff(self) -> bool:
        return bool(self.role)

    @property
    def has_email(self) -> bool:
        return bool(self.email)


@dataclass(frozen=True)
class Preview:
    """What a scope would do, counted before anything changes."""

    users: int
    emailable: int
    without_email: int
    staff: int


class Directory:
    """The users table under its configured names, and every query resetbot makes of it."""

    def __init__(self, names: DirectoryNames) -> None:
        self.names = names
        self.table: Table = users_table(names)

    # -- reading -------------------------------------------------------------------------------

    def _user(self, row: Sequence[Any]) -> DirectoryUser:
        return DirectoryUser(
            id=row[0], username=row[1], full_name=row[2] or "", email=row[3] or None, role=row[4]
        )

    @property
    def _user_columns(self) -> tuple[ColumnElement[object], ...]:
        c = self.table.c
        return (c.id, c.username, c.full_name, c.email, c.role)

    def search_expression(self) -> ColumnElement[str]:
        """The lower-cased text the picker searches; the trigram index is built on exactly this."""
        c = self.table.c
        sep = literal(SEARCH_SEPARATOR)
        return func.lower(
            c.username + sep + func.coalesce(c.full_name, "") + sep + func.coalesce(c.email, "")
        )

    def search(self, session: Session, term: str, limit: int = SEARCH_LIMIT) -> list[DirectoryUser]:
        """Case-insensitive substring search over username, full name and e-mail.

        At most `limit` matches, sorted by username. When more users match, which `limit` of
        them come back is up to the database: picking the first ones *by username* would make
        it scan the username index past every non-match (100 ms at 100,000 users for a first
        name), while any `limit` matches come straight from the trigram index (a few ms).
        """
        needle = term.strip().lower()[:100]
        query = select(*self._user_columns)
        if needle:
            if session.get_bind().dialect.name == "sqlite" and len(needle) >= MIN_TRIGRAM_TERM:
                query = query.where(self.table.c.id.in_(self._sqlite_fts_ids(needle, limit)))
            else:
                pattern = "%" + _escape_like(needle) + "%"
                query = query.where(self.search_expression().like(pattern, escape="\\"))
        else:
            query = query.order_by(self.table.c.username)  # nothing typed: the first by name
        matches = query.limit(limit).subquery()
        in_order = select(*matches.c).order_by(matches.c.username)
        return [self._user(row) for row in session.execute(in_order)]

    def _sqlite_fts_ids(self, needle: str, limit: int) -> ColumnElement[int]:
        from sqlalchemy import text

        phrase = '"' + needle.replace('"', '""') + '"'
        fts = f"{self.names.table}_search"
        return text(
            f"SELECT rowid FROM {fts} WHERE {fts} MATCH :phrase LIMIT :limit"
        ).bindparams(phrase=phrase, limit=limit).columns(
            rowid=self.table.c.id.type
        )  # type: ignore[return-value]

    def get_many(self, session: Session, ids: Iterable[int]) -> list[DirectoryUser]:
        wanted = sorted(set(ids))
        if not wanted:
            return []
        query = select(*self._user_columns).where(self.table.c.id.in_(wanted))
        return [self._user(row) for row in session.execute(query.order_by(self.table.c.id))]

    def by_username(self, session: Session, usernames: Iterable[str]) -> list[DirectoryUser]:
        wanted = sorted(set(usernames))
        if not wanted:
            return []
        query = select(*self._user_columns).where(self.table.c.username.in_(wanted))
        return [self._user(row) for row in session.execute(query)]

    def missing_ids(self, session: Session, ids: Iterable[int]) -> list[int]:
        wanted = set(ids)
        found = {user.id for user in self.get_many(session, wanted)}
        return sorted(wanted - found)

    # -- scopes --------------------------------------------------------------------------------

    def scope_condition(self, scope: Scope, selection: Sequence[int]) -> ColumnElement[bool]:
        c = self.table.c
        if scope.needs_selection and not selection:
            raise InputError("Pick at least one user for this scope.", field="users")
        if scope is Scope.ALL:
            return true()
        if scope is Scope.ALL_EXCEPT_SELECTED:
            return c.id.not_in(list(selection))
        if scope is Scope.ALL_WITHOUT_ROLE:
            return or_(c.role.is_(None), c.role == "")
        return c.id.in_(list(selection))

    def preview(self, session: Session, scope: Scope, selection: Sequence[int]) -> Preview:
        c = self.table.c
        has_email = and_(c.email.is_not(None), c.email != "")
        is_staff = and_(c.role.is_not(None), c.role != "")
        query = select(
            func.count(),
            func.coalesce(func.sum(case((has_email, 1), else_=0)), 0),
            func.coalesce(func.sum(case((is_staff, 1), else_=0)), 0),
        ).where(self.scope_condition(scope, selection))
        total, emailable, staff = session.execute(query).one()
        return Preview(
            users=int(total),
            emailable=int(emailable),
            without_email=int(total) - int(emailable),
            staff=int(staff),
        )

    def scope_batch(
        self,
        session: Session,
        scope: Scope,
        selection: Sequence[int],
        after_id: int,
        limit: int,
    ) -> list[DirectoryUser]:
        """The next `limit` users of the scope with id > after_id, in id order (keyset paging)."""
        query = (
            select(*self._user_columns)
            .where(self.scope_condition(scope, selection), self.table.c.id > after_id)
            .order_by(self.table.c.id)
            .limit(limit)
        )
        return [self._user(row) for row in session.execute(query)]

    # -- writing -------------------------------------------------------------------------------

    def write_hashes(
        self,
        connection: Connection | Session,
        hashes: Sequence[tuple[int, str]],
        *,
        require_change: bool,
        changed_at: datetime,
    ) -> None:
        """Store many new hashes in one executemany round trip."""
        if not hashes:
            return
        c = self.table.c
        statement = (
            update(self.table)
            .where(c.id == bindparam("user_id"))
            .values(
                password_hash=bindparam("new_hash"),
                password_changed_at=changed_at,
                must_change_password=require_change,
            )
        )
        rows = [{"user_id": user_id, "new_hash": new_hash} for user_id, new_hash in hashes]
        if isinstance(connection, Session):
            connection.connection().execute(statement, rows)
        else:
            connection.execute(statement, rows)

    def password_hash(self, session: Session, user_id: int) -> str | None:
        query = select(self.table.c.password_hash).where(self.table.c.id == user_id)
        return session.execute(query).scalar_one_or_none()


def _escape_like(term: str) -> str:
    return term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def create_search_index(engine: Engine | Connection, directory: Directory) -> None:
    """Trigram search: pg_trgm GIN index on PostgreSQL, an FTS5 trigram table on SQLite."""
    from sqlalchemy import text

    names = directory.names
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
    from sqlalchemy import text

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
