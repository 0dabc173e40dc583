"""`SqlDirectory`: the SQL table directories (resetbot's own table, Koha's `borrowers`, a
described table) behind the Directory protocol (core/directory/protocol.py).

`SqlDirectory` wraps the table directory of core/directory/sql/table.py: ids go in as text and come
out as text (the table's integer ids written in decimal), and `set_passwords` hashes in the
worker, as the table's system reads, then writes the hashes in one transaction. The worker's
pipeline hashes a batch on its own thread while the previous one is written (`hash_passwords`,
`write_hashes`), so the hash floor is what it was.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime

from sqlalchemy import Connection, Engine, Table, literal, select

from core.directory.protocol import (
    Counts,
    Directory,
    PasswordRules,
    PasswordSet,
    PickerRow,
    ScopeRules,
    SetOutcome,
    SetResult,
    User,
    UserId,
)
from core.directory.sql.koha_rules import KOHA, KohaScopeRules, read_koha_rules
from core.directory.sql.profile import Profile
from core.directory.sql.table import BeforeWrite, UserSearch
from core.directory.sql.table import Directory as TableDirectory
from core.directory.users import SEARCH_LIMIT, DirectoryUser, Preview
from core.models import Scope, utcnow
from core.passwords import PasswordHasher
from core.settings import DirectoryNames

#: The largest id a SQL table's integer key is asked for (PostgreSQL's int4: a bigger number
#: as a parameter is an error, not a missing row); larger text names nobody.
MAX_SQL_ID = 2**31 - 1


def sql_id(value: object) -> int | None:
    """A text id as the table's integer key; None when it cannot name a row."""
    text = str(value)
    if not (text.isascii() and text.isdigit()) or len(text) > 12:
        return None
    number = int(text)
    return number if number <= MAX_SQL_ID else None


def sql_ids(values: Sequence[object]) -> list[int]:
    return [number for number in (sql_id(value) for value in values) if number is not None]


def as_protocol(directory: TableDirectory | Directory) -> Directory:
    """A directory behind the protocol: a table directory wrapped, any other as it is (for
    helpers that take either, as tests and older callers hand them a table directory)."""
    return SqlDirectory(directory) if isinstance(directory, TableDirectory) else directory


def user_of(user: DirectoryUser) -> User:
    return User(id=str(user.id), username=user.username, full_name=user.full_name,
                email=user.email, role=user.role, locked_on_purpose=user.locked)


def counts_of(preview: Preview) -> Counts:
    return preview


class SqlDirectory:
    """A table directory under the protocol: text ids, passwords in, hashes written."""

    def __init__(self, table: TableDirectory) -> None:
        #: The table directory itself, for what only a SQL table has (import/export, schema).
        self.sql = table

    def __repr__(self) -> str:
        return f"SqlDirectory({self.sql.profile.name!r})"

    # -- what only a SQL table has (the hash, the table) ---------------------------------------

    @property
    def owns_users(self) -> bool:
        return self.sql.profile.owned

    @property
    def hasher(self) -> PasswordHasher:
        return self.sql.hasher

    @property
    def profile(self) -> Profile:
        return self.sql.profile

    @property
    def engine(self) -> Engine:
        return self.sql.engine

    @property
    def table(self) -> Table:
        return self.sql.table

    @property
    def names(self) -> DirectoryNames:
        return self.sql.names

    def use_search(self, source: UserSearch | None) -> None:
        self.sql.use_search(source)

    def hash_passwords(self, batch: Sequence[PasswordSet]) -> list[tuple[PasswordSet, str]]:
        """Each password hashed as the table's system reads it (the worker's CPU work)."""
        return [(item, self.sql.hasher.hash(item.password)) for item in batch]

    def write_hashes(
        self, hashed: Sequence[tuple[PasswordSet, str]], changed_at: datetime, *,
        before_write: BeforeWrite | None = None, connection: Connection | None = None,
    ) -> list[SetOutcome]:
        """Write hashed passwords in one transaction; one outcome each. `before_write` runs in
        it before the hashes are written (Undo's keeper). With `connection` (resetbot's own
        table: the worker's transaction on its items), in that transaction, the caller
        committing; else in the directory's own, committed here.

        A user whose row is gone is NOT_FOUND (the UPDATE changed nothing for them)."""
        groups: dict[bool, list[tuple[int, str]]] = {True: [], False: []}
        for item, new_hash in hashed:
            number = sql_id(item.user_id)
            if number is not None:
                groups[item.must_change].append((number, new_hash))
        if connection is not None:
            present = self.sql.write_hash_groups(connection, groups, changed_at=changed_at,
                                                 before_write=before_write)
        else:
            with self.sql.engine.begin() as own:
                present = self.sql.write_hash_groups(own, groups, changed_at=changed_at,
                                                     before_write=before_write)
        return [
            SetOutcome(item.user_id, SetResult.SET if sql_id(item.user_id) in present
                       else SetResult.NOT_FOUND)
            for item, _hash in hashed
        ]

    # -- the protocol --------------------------------------------------------------------------

    def check(self) -> None:
        self.sql.check()

    def dispose(self) -> None:
        self.sql.dispose()

    def ping(self) -> None:
        """Its users table can be read: `LIMIT 0`, so no row is."""
        with self.sql.engine.connect() as connection:
            connection.execute(select(literal(1)).select_from(self.sql.table).limit(0))

    def users_by_id(self, ids: Sequence[UserId]) -> list[User]:
        return [user_of(user) for user in self.sql.get_many(sql_ids(ids))]

    def missing_ids(self, ids: Sequence[UserId]) -> list[UserId]:
        found = {user.id for user in self.users_by_id(ids)}
        return sorted({str(value) for value in ids} - found)

    def by_username(self, usernames: Sequence[str]) -> list[User]:
        return [user_of(user) for user in self.sql.by_username(usernames)]

    def usernames_ignoring_case(
        self, names: Sequence[str]
    ) -> dict[str, list[tuple[str, UserId]]]:
        return {
            lowered: [(name, str(number)) for name, number in pairs]
            for lowered, pairs in self.sql.usernames_ignoring_case(names).items()
        }

    def emails_ignoring_case(
        self, emails: Sequence[str]
    ) -> dict[str, list[tuple[str, UserId]]]:
        return {
            lowered: [(name, str(number)) for name, number in pairs]
            for lowered, pairs in self.sql.emails_ignoring_case(emails).items()
        }

    def patrons_among(self, ids: Sequence[UserId]) -> int:
        return self.sql.patrons_among(sql_ids(ids))

    def preview(self, scope: Scope, selection: Sequence[UserId]) -> Counts:
        return counts_of(self.sql.preview(scope, sql_ids(selection)))

    def scope_batch(
        self, scope: Scope, selection: Sequence[UserId], after: UserId | None, limit: int
    ) -> list[User]:
        after_id = 0 if after is None else sql_id(after)
        if after_id is None:
            return []
        return [user_of(user) for user in
                self.sql.scope_batch(scope, sql_ids(selection), after_id, limit)]

    def usernames_in_password(
        self, password: str, scope: Scope, selection: Sequence[UserId], *,
        without_email_only: bool = False,
    ) -> int:
        return self.sql.usernames_in_password(password, scope, sql_ids(selection),
                                              without_email_only=without_email_only)

    def search(self, term: str, limit: int = SEARCH_LIMIT) -> list[User]:
        return [user_of(user) for user in self.sql.search(term, limit)]

    def picker_rows(self) -> Iterator[PickerRow]:
        after = 0
        while True:
            users = self.sql.scope_batch(Scope.ALL, (), after, 1000)
            for user in users:
                yield PickerRow(str(user.id), user.username, user.full_name, None, user.email,
                                user.is_staff)
            if len(users) < 1000:
                return
            after = users[-1].id

    def set_passwords(self, batch: Sequence[PasswordSet]) -> list[SetOutcome]:
        return self.write_hashes(self.hash_passwords(batch), utcnow())

    def password_rules(self) -> PasswordRules:
        """A table has no rules of its own: resetbot's policy (PASSWORD_*) is the only one."""
        return PasswordRules(source=f"the {self.sql.profile.name} profile")

    def rules_for_scope(self, scope: Scope, selection: Sequence[UserId]) -> ScopeRules:
        """Koha's per-category rules for a Koha table (core/directory/sql/koha_rules.py)."""
        if self.sql.profile.password_rules == KOHA:
            return KohaScopeRules(self.sql, scope, sql_ids(selection))
        return self.password_rules()

    def generated_minimum(self) -> int:
        """Koha's longest category minimum, when its rules may be read."""
        if self.sql.profile.password_rules != KOHA:
            return 0
        rules = read_koha_rules(self.sql)
        return 0 if rules is None else rules.longest_minimum

    @property
    def hash_schemes(self) -> tuple[str, ...]:
        return tuple(self.sql.hasher.schemes)

    def survey(self) -> Counts:
        return self.preview(Scope.ALL, ())
