"""A directory held in a SQL table, read and written as its profile says, over its own engine.

The directory's engine is its own: with DIRECTORY_URL set it is another database than
resetbot's state, so nothing here ever shares a transaction with the task tables. Every method
opens, uses and ends its own connection, except `write_hash_groups`, which writes in the
transaction it is handed: on resetbot's own table (no DIRECTORY_URL) the worker writes a batch's
hashes in the transaction of its items' lease and states.

On a table resetbot does not own, only SELECTs and the UPDATE of `write_hashes` are ever run:
no DDL, no INSERT, no DELETE (beside, with Koha's BorrowersLog on and the grant, the INSERT of
Koha's own log rows into `action_logs`, in the same transaction as the hashes).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import (
    Column,
    ColumnElement,
    Connection,
    Engine,
    MetaData,
    Select,
    Table,
    and_,
    bindparam,
    case,
    false,
    func,
    inspect,
    literal,
    not_,
    null,
    or_,
    select,
    text,
    true,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchTableError
from sqlalchemy.types import NullType

from core.addresses import (
    PLAIN_ADDRESS_SQL,
    AddressProblem,
    address_problem,
    usable_address,
)
from core.db import make_engine, shown_url, url_secrets
from core.directory.protocol import checked
from core.directory.sql.koha_log import KOHA, KohaChangeLog
from core.directory.sql.profile import (
    ExtraReset,
    Profile,
    load_profile,
    resetbot_profile,
    shipped_profiles,
)
from core.directory.users import SEARCH_LIMIT, DirectoryUser, Preview
from core.errors import ConfigError, InputError
from core.models import Scope, users_table
from core.passwords import PasswordHasher, contains_username, normalised
from core.schemes import rounds_problem
from core.settings import DirectoryNames, Settings

MIN_TRIGRAM_TERM = 3
# Joins the searchable columns; a character nobody types into a search box.
SEARCH_SEPARATOR = "\t"
#: The LIKE escape on a foreign directory: not a backslash, which MySQL strings treat apart.
FOREIGN_ESCAPE = "!"
#: Names the directory compares per query when users are picked by name.
COMPARED_PER_QUERY = 50
#: Rows fetched per round trip when a query's rows are streamed (addresses, usernames).
STREAM_BATCH = 10_000
#: Users one UPDATE of hashes names at most (three bound values each: SQLite takes 32,766).
ROWS_PER_STATEMENT = 1_000


#: Runs in the directory's transaction just before a batch of hashes is written (user id, hash).
BeforeWrite = Callable[[Connection, Sequence[tuple[int, str]]], None]


class UserSearch(Protocol):
    """Where the picker's matches come from, when not from the directory table itself."""

    def search(self, term: str, limit: int) -> list[DirectoryUser]: ...


class Directory:
    """The users table under its profile, and every query resetbot makes of it."""

    def __init__(
        self,
        profile: Profile,
        engine: Engine,
        *,
        hasher: PasswordHasher,
        owns_engine: bool = False,
        own_index: bool = False,
        names: DirectoryNames | None = None,
        setting: str = "DATABASE_URL",
    ) -> None:
        self.profile = profile
        self.engine = engine
        self.hasher = hasher
        self.owns_engine = owns_engine
        #: resetbot's own search index is in this database (pg_trgm, SQLite FTS5).
        self.own_index = own_index
        self.names = names if names is not None else DirectoryNames(table=profile.table)
        #: The setting whose URL `engine` was made from, named when the database refuses.
        self.setting = setting
        self.search_source: UserSearch | None = None
        #: The library system's own log of password changes (Koha's action_logs), if any.
        self.change_log = KohaChangeLog(engine) if profile.change_log == KOHA else None
        self._table: Table | None = users_table(self.names) if profile.owned else None

    @classmethod
    def from_settings(
        cls, settings: Settings, state_engine: Engine | None = None, *, check: bool = True
    ) -> Directory:
        """The directory of `settings`: DIRECTORY_URL's database, else DATABASE_URL's.

        Without DIRECTORY_URL the users live beside resetbot's state: `state_engine` (when
        given) is shared rather than a second pool opened. `check` reflects a foreign table now
        (ConfigError on a missing column), so a wrong profile is refused at start.
        """
        profile = load_profile(settings.directory_profile, settings.directory)
        hasher = hasher_for(profile, settings)
        if settings.directory_url:
            _require_sqlite_file(settings.directory_url)
            engine = make_engine(settings.directory_url, setting="DIRECTORY_URL")
            directory = cls(profile, engine, hasher=hasher, owns_engine=True,
                            names=settings.directory, setting="DIRECTORY_URL")
        elif state_engine is not None:
            directory = cls(profile, state_engine, hasher=hasher, own_index=profile.owned,
                            names=settings.directory)
        else:
            engine = make_engine(settings.database_url)
            directory = cls(profile, engine, hasher=hasher, owns_engine=True,
                            own_index=profile.owned, names=settings.directory)
        return checked(directory) if check else directory

    @classmethod
    def own_table(
        cls, engine: Engine, names: DirectoryNames, hasher: PasswordHasher | None = None
    ) -> Directory:
        """resetbot's own users table in `engine`'s database (with its search index)."""
        return cls(
            resetbot_profile(names), engine, own_index=True, names=names,
            hasher=hasher if hasher is not None else PasswordHasher(("bcrypt",)),
        )

    def dispose(self) -> None:
        if self.owns_engine:
            self.engine.dispose()

    def use_search(self, source: UserSearch | None) -> None:
        """Answer the picker from `source` (a search copy) instead of the table itself."""
        self.search_source = source

    # -- the table -----------------------------------------------------------------------------

    @property
    def table(self) -> Table:
        """The users table: built from the names (own table), else reflected and checked."""
        if self._table is None:
            self._table = self._reflect()
        return self._table

    def check(self) -> None:
        """Refuse (ConfigError) a foreign table or column the profile names that is not there,
        or a column it reads that the database user may not read.

        Read-only: reads the users table's column list and no row. resetbot's own
        table beside its state may not exist yet (`db upgrade` makes it), so it is looked at
        only in a database of its own (DIRECTORY_URL), where nothing of resetbot's would ever
        make it.
        """
        if not self.profile.owned:
            self._table = self._reflect()
        elif self.setting == "DIRECTORY_URL":
            self._reflect()  # the names are known; only whether the table is there is checked

    def _reflect(self) -> Table:
        """The users table, made of the profile's columns only, with the types the database
        gives them.

        Only this table's column list is read: no other table, not even those its foreign keys
        name (Koha's `borrowers` points to `categories`, `branches`, `sms_providers`), so a
        database user with SELECT on the columns resetbot reads and UPDATE on those it writes
        is enough. Then one SELECT of no rows proves those columns may be read.
        """
        profile = self.profile
        try:
            with self.engine.connect() as connection:
                found = visible_columns(connection, profile.table)
                if not found:
                    raise ConfigError(self._no_table(connection))
                for key, column in profile.columns().items():
                    if column not in found:
                        raise ConfigError(
                            f"{profile.source}: {key}: there is no column {column!r} in table "
                            f"{profile.table!r}" + self._hidden_hint("column")
                        )
                table = Table(profile.table, MetaData(), *[
                    Column(name, found[name], primary_key=name == profile.id)
                    for name in dict.fromkeys(profile.columns().values())
                ])
                read = [table.c[name] for name in self._read_columns()]
                connection.execute(select(*read).where(false()))
        except DBAPIError as error:
            raise ConfigError(self.unreachable(error)) from None
        return table

    def _read_columns(self) -> list[str]:
        """The columns a reset reads (SELECT, WHERE, CASE): all but those it only writes."""
        profile = self.profile
        names = [profile.id, *profile.username, *profile.name_columns]
        names += [profile.email] if profile.email else []
        names += [profile.staff.column] if profile.staff else []
        if profile.must_change and profile.must_change.kind == "expiry":
            names.append(profile.must_change.column)  # a past date is cleared: it is compared
        names += [extra.column for extra in profile.on_reset if extra.unless]
        return list(dict.fromkeys(names))

    def _hidden_hint(self, what: str) -> str:
        """MariaDB hides from a user what it has no right to: a missing table or column may be
        one the user may not use."""
        if self.engine.dialect.name != "mysql":
            return ""
        return (f" (or the database user has no right on that {what}; "
                "see the GRANTs in docs/koha.md)")

    def _no_table(self, connection: Connection) -> str:
        """There is no such table: said with the setting that is wrong. When the profile is the
        default `resetbot` and the database holds a library system's table, DIRECTORY_PROFILE
        was forgotten, and the profile to set is named."""
        profile = self.profile
        missing = (f"there is no table {profile.table!r} in the directory database "
                   f"{self.shown_url} ({self.setting})")
        if not profile.owned or self.setting != "DIRECTORY_URL":
            return f"{profile.source}: table: {missing}" + self._hidden_hint("table")
        held = [
            (name, shipped.table) for name, shipped in _shipped_foreign_profiles()
            if visible_columns(connection, shipped.table)
        ]
        if held:
            name, table = held[0]
            return (f"DIRECTORY_PROFILE: {missing}, the users table of DIRECTORY_PROFILE="
                    f"{profile.name} (the default); the database holds {table!r}: set "
                    f"DIRECTORY_PROFILE={name}")
        return (f"DIRECTORY_PROFILE: {missing}, the users table of DIRECTORY_PROFILE="
                f"{profile.name} (the default, named by USERS_TABLE): set DIRECTORY_PROFILE to "
                "the library system's profile (" + ", ".join(shipped_profiles())
                + ", or a profile file), or USERS_TABLE")

    def unreachable(self, error: DBAPIError) -> str:
        """One line for a directory database that refuses: the setting, the URL (password
        hidden) and the driver's first line (the password taken out, should it hold it)."""
        first = _first_line(error.orig if error.orig is not None else error)
        for secret in url_secrets(self.engine.url):
            first = first.replace(secret, "***")
        return f"{self.setting}: the directory database {self.shown_url} cannot be read: {first}"

    @property
    def shown_url(self) -> str:
        """The directory database's URL, its password hidden (in the query too)."""
        return shown_url(self.engine.url)

    def _c(self, name: str) -> ColumnElement[Any]:
        table = self.table
        for column in table.columns:
            if column.name == name:
                return column
        raise ConfigError(f"{self.profile.source}: no column {name!r} in {self.profile.table!r}")

    @property
    def _id(self) -> ColumnElement[int]:
        return self._c(self.profile.id)

    def username_expression(self) -> ColumnElement[str]:
        """The username: the first of the profile's username columns that is not empty."""
        columns = [self._c(name) for name in self.profile.username]
        if len(columns) == 1:
            return columns[0]
        whens = [(and_(c.is_not(None), c != ""), c) for c in columns[:-1]]
        return case(*whens, else_=columns[-1])

    def staff_condition(self) -> ColumnElement[bool]:
        staff = self.profile.staff
        if staff is None:
            return false()
        column = self._c(staff.column)
        return and_(column.is_not(None), self._staff_rule(column))

    def patron_condition(self) -> ColumnElement[bool]:
        """Not staff, NULLs included (the negation of `staff_condition` in SQL's three values:
        NOT on a NULL comparison would be NULL, and the patron left out)."""
        staff = self.profile.staff
        if staff is None:
            return true()
        column = self._c(staff.column)
        return or_(column.is_(None), not_(self._staff_rule(column)))

    def _staff_rule(self, column: ColumnElement[Any]) -> ColumnElement[bool]:
        """The profile's staff comparison on a value that is not NULL."""
        staff = self.profile.staff
        assert staff is not None
        if staff.rule == "nonzero":
            return column != 0
        if staff.rule == "not_empty":
            return column != ""
        return column.in_(list(staff.values))

    def locked_condition(self) -> ColumnElement[bool]:
        """Locked on purpose, as the profile's `locked` rule says; never without one."""
        locked = self.profile.locked
        if locked is None:
            return false()
        column = self._c(locked.column)
        return and_(column.is_not(None), or_(*[column == literal(v) for v in locked.values]))

    # -- reading -------------------------------------------------------------------------------

    def _select_users(self) -> Select[Any]:
        profile = self.profile
        email = self._c(profile.email) if profile.email else null()
        role = (
            self._c(profile.staff.column) if profile.owned and profile.staff
            else case((self.staff_condition(), "staff"), else_=None)
        )
        return select(
            self._id.label("id"),
            self.username_expression().label("username"),
            *[self._c(name) for name in profile.name_columns],
            email.label("email"),
            role.label("role"),
            case((self.locked_condition(), 1), else_=0).label("locked"),
        )

    def _user(self, row: Sequence[Any]) -> DirectoryUser:
        names = row[2 : 2 + len(self.profile.name_columns)]
        email, role, locked = row[-3], row[-2], row[-1]
        return DirectoryUser(
            id=int(row[0]),
            username="" if row[1] is None else str(row[1]),
            full_name=" ".join(str(part).strip() for part in names if part and str(part).strip()),
            email=usable_address(None if email is None else str(email)),
            role=None if role is None else str(role),
            locked=bool(locked),
        )

    def _users(self, query: Select[Any]) -> list[DirectoryUser]:
        with self.engine.connect() as connection:
            return [self._user(row) for row in connection.execute(query)]

    def search(self, term: str, limit: int = SEARCH_LIMIT) -> list[DirectoryUser]:
        """Case-insensitive substring search over usernames, names and e-mail; at most `limit`
        matches, sorted by username.

        When more users match, which `limit` of them come back is up to the database: picking
        the first ones *by username* would make it scan the username index past every
        non-match (100 ms at 100,000 users for a first name), while any `limit` matches come
        straight from the trigram index (a few ms).
        """
        if self.search_source is not None:
            return self.search_source.search(term, limit)
        needle = term.strip().lower()[:100]
        if self.profile.owned:
            return self._search_own(needle, limit)
        return self._search_like(needle, limit)

    def _search_own(self, needle: str, limit: int) -> list[DirectoryUser]:
        """resetbot's own table, through its trigram (PostgreSQL) or FTS5 (SQLite) index."""
        query = self._select_users()
        c = self.table.c
        if needle:
            if self.engine.dialect.name == "sqlite" and self.own_index and (
                len(needle) >= MIN_TRIGRAM_TERM
            ):
                query = query.where(c.id.in_(self._sqlite_fts_ids(needle, limit)))
            else:
                pattern = "%" + _escape_like(needle, "\\") + "%"
                query = query.where(self.search_expression().like(pattern, escape="\\"))
        else:
            query = query.order_by(c.username)  # nothing typed: the first by name
        matches = query.limit(limit).subquery()
        return self._users(select(*matches.c).order_by(matches.c.username))

    def search_expression(self) -> ColumnElement[str]:
        """The lower-cased text searched in resetbot's own table; its trigram index is on it."""
        c = self.table.c
        sep = literal(SEARCH_SEPARATOR)
        return func.lower(
            c.username + sep + func.coalesce(c.full_name, "") + sep + func.coalesce(c.email, "")
        )

    def _sqlite_fts_ids(self, needle: str, limit: int) -> ColumnElement[int]:
        phrase = '"' + needle.replace('"', '""') + '"'
        fts = f"{self.names.table}_search"
        return text(
            f"SELECT rowid FROM {fts} WHERE {fts} MATCH :phrase LIMIT :limit"
        ).bindparams(phrase=phrase, limit=limit).columns(
            rowid=self.table.c.id.type
        )  # type: ignore[return-value]

    def _search_like(self, needle: str, limit: int) -> list[DirectoryUser]:
        """A library system's table: a plain LIKE over each searched column (no index added)."""
        query = self._select_users()
        if needle:
            pattern = "%" + _escape_like(needle, FOREIGN_ESCAPE) + "%"
            query = query.where(or_(*[
                func.lower(self._c(name)).like(pattern, escape=FOREIGN_ESCAPE)
                for name in self.profile.search_columns
            ]))
        else:
            query = query.order_by(self.username_expression())
        return sorted(self._users(query.limit(limit)), key=lambda user: (user.username, user.id))

    def get_many(self, ids: Iterable[int]) -> list[DirectoryUser]:
        wanted = sorted(set(ids))
        if not wanted:
            return []
        return self._users(self._select_users().where(self._id_in(wanted)).order_by(self._id))

    def by_username(self, usernames: Iterable[str]) -> list[DirectoryUser]:
        wanted = sorted(set(usernames))
        if not wanted:
            return []
        return self._users(self._select_users().where(self.username_expression().in_(wanted)))

    def usernames_as_compared(self, names: Sequence[str]) -> dict[str, list[tuple[str, int]]]:
        """Each name (in NFC) -> the (username, id) pairs the directory's database finds equal
        to it: its own comparison, so its collation decides (MariaDB's utf8mb4_unicode_ci
        ignores case and accents, as the library system's own sign-in does).

        The database is asked which name each username equals, a few names per query; the
        username columns' own indexes narrow the rows first.
        """
        wanted = list(dict.fromkeys(normalised(name) for name in names if name))
        found: dict[str, list[tuple[str, int]]] = {}
        username = self.username_expression()
        columns = [self._c(name) for name in self.profile.username]
        with self.engine.connect() as connection:
            for start in range(0, len(wanted), COMPARED_PER_QUERY):
                group = wanted[start : start + COMPARED_PER_QUERY]
                query = select(
                    username, self._id, *[(username == name) for name in group]
                ).where(or_(*[column.in_(group) for column in columns]), username.in_(group))
                for row in connection.execute(query):
                    for name, equal in zip(group, row[2:], strict=True):
                        if equal:
                            found.setdefault(name, []).append((str(row[0]), int(row[1])))
        return found

    def usernames_ignoring_case(self, names: Sequence[str]) -> dict[str, list[tuple[str, int]]]:
        """Lower-cased name -> the (username, id) pairs it matches when case is ignored.

        The database narrows by lower(); Python's lower() decides. (SQLite's lower() folds
        ASCII letters only, so there a username with a capital non-ASCII letter needs its exact
        case.)
        """
        if not names:
            return {}
        username = self.username_expression()
        lowered = sorted({name.lower() for name in names})
        query = select(username, self._id).where(func.lower(username).in_(lowered))
        found: dict[str, list[tuple[str, int]]] = {}
        with self.engine.connect() as connection:
            for name, user_id in connection.execute(query):
                found.setdefault(str(name).lower(), []).append((str(name), int(user_id)))
        return found

    def emails_ignoring_case(self, emails: Sequence[str]) -> dict[str, list[tuple[str, int]]]:
        """Lower-cased address -> the (username, id) of each user who has it, case ignored
        (as usernames_ignoring_case: the database narrows by lower(), Python decides)."""
        if not emails or not self.profile.email:
            return {}
        column = self._c(self.profile.email)
        wanted = {email.lower() for email in emails}
        lowered = sorted(wanted)
        query = select(column, self.username_expression(), self._id).where(
            func.lower(column).in_(lowered)
        )
        found: dict[str, list[tuple[str, int]]] = {}
        with self.engine.connect() as connection:
            for email, username, user_id in connection.execute(query):
                key = str(email).lower()
                if key in wanted:
                    found.setdefault(key, []).append((str(username), int(user_id)))
        return found

    def missing_ids(self, ids: Iterable[int]) -> list[int]:
        wanted = set(ids)
        if not wanted:
            return []
        # Ids only: a selection from a file holds up to 100,000 of them.
        query = select(self._id).where(self._id_in(sorted(wanted)))
        with self.engine.connect() as connection:
            found = {int(user_id) for user_id in connection.scalars(query)}
        return sorted(wanted - found)

    def patrons_among(self, ids: Iterable[int]) -> int:
        """How many of these users are not staff."""
        query = select(func.count()).select_from(self.table).where(
            self._id_in(sorted(set(ids))), self.patron_condition()
        )
        with self.engine.connect() as connection:
            return int(connection.execute(query).scalar_one())

    def password_hash(self, user_id: int) -> str | None:
        query = select(self._c(self.profile.password)).where(self._id == user_id)
        with self.engine.connect() as connection:
            value = connection.execute(query).scalar_one_or_none()
        return None if value is None else str(value)

    # -- scopes --------------------------------------------------------------------------------

    def scope_condition(self, scope: Scope, selection: Sequence[int]) -> ColumnElement[bool]:
        if scope.needs_selection and not selection:
            raise InputError("Pick at least one user for this scope.", field="users")
        if scope is Scope.ALL:
            return true()
        if scope is Scope.ALL_EXCEPT_SELECTED:
            return not_(self._id_in(selection))
        if scope is Scope.ALL_WITHOUT_ROLE:
            return self.patron_condition()
        return self._id_in(selection)

    def _id_in(self, ids: Sequence[int]) -> ColumnElement[bool]:
        """`id IN (...)` with the ids written into the SQL: a selection from a file holds up
        to 100,000 of them, more than SQLite (32,766) or PostgreSQL (65,535) bind as
        parameters. They are integers (checked here), so writing them in is safe."""
        numbers = [int(user_id) for user_id in ids]
        return self._id.in_(bindparam("ids", numbers, expanding=True, literal_execute=True,
                                      unique=True))

    def preview(self, scope: Scope, selection: Sequence[int]) -> Preview:
        condition = self.scope_condition(scope, selection)
        plain = self._plain_address()
        query = select(
            func.count(),
            func.coalesce(func.sum(case((self.staff_condition(), 1), else_=0)), 0),
            func.coalesce(func.sum(case((self.locked_condition(), 1), else_=0)), 0),
            func.coalesce(func.sum(case((plain, 1), else_=0)), 0),
        ).select_from(self.table).where(condition)
        with self.engine.connect() as connection:
            total, staff, locked, plain_count = connection.execute(query).one()
            problems = self._address_problems(connection, condition, plain)
        usable = int(plain_count) + problems.pop(None, 0)
        return Preview(
            users=int(total),
            emailable=usable,
            without_email=int(total) - usable,
            staff=int(staff),
            unusable={str(problem): count for problem, count in problems.items()
                      if problem != "missing"},
            locked=int(locked),
        )

    def _plain_address(self) -> ColumnElement[bool]:
        """A plain dot-atom address, which the one rule (core.addresses) always takes: counted
        by the database itself. Compared byte by byte on MariaDB/MySQL, whose REGEXP would
        otherwise follow the column's case-insensitive collation beyond ASCII."""
        if not self.profile.email:
            return false()
        column: ColumnElement[Any] = self._c(self.profile.email)
        compared = func.binary(column) if self.engine.dialect.name == "mysql" else column
        # `$` also matches before a last newline in PCRE and Python: such a value is not plain.
        return and_(compared.regexp_match(PLAIN_ADDRESS_SQL), not_(column.like("%\n")))

    def _address_problems(
        self, connection: Connection, condition: ColumnElement[bool],
        plain: ColumnElement[bool],
    ) -> Counter[AddressProblem | None]:
        """The scope's other addresses by what is wrong with them (None: usable), judged by
        the one rule in Python: SQL cannot say what a mailable address is (and MariaDB's
        `'   ' = ''` would hide blanks), so the values not plain are streamed and looked at
        here."""
        problems: Counter[AddressProblem | None] = Counter()
        if not self.profile.email:
            return problems
        column = self._c(self.profile.email)
        rows = connection.execution_options(stream_results=True, yield_per=STREAM_BATCH).execute(
            select(column).where(condition, column.is_not(None), not_(plain))
        )
        for (value,) in rows:
            problems[address_problem(str(value))] += 1
        return problems

    def scope_batch(
        self, scope: Scope, selection: Sequence[int], after_id: int, limit: int
    ) -> list[DirectoryUser]:
        """The next `limit` users of the scope with id > after_id, in id order (keyset paging).

        Fewer than `limit` only when the scope has no more. A selection (up to 100,000 ids from
        a file) is cut to the ids past the cursor, so that no page names them all again.
        """
        if scope.needs_selection and selection:
            ahead = sorted({user_id for user_id in selection if user_id > after_id})
            if scope is Scope.SELECTED_ONLY:
                return self._selected_batch(ahead, limit)
            # Everyone except: ids at or before the cursor are behind it anyway.
            selection = ahead or [after_id]
        query = (
            self._select_users()
            .where(self.scope_condition(scope, selection), self._id > after_id)
            .order_by(self._id)
            .limit(limit)
        )
        return self._users(query)

    def _selected_batch(self, ahead: Sequence[int], limit: int) -> list[DirectoryUser]:
        """The first `limit` users among these ascending ids, read `limit` ids at a time (ids
        no longer in the directory are passed over)."""
        users: list[DirectoryUser] = []
        for start in range(0, len(ahead), limit):
            chunk = ahead[start : start + limit]
            users += self._users(
                self._select_users().where(self._id_in(chunk)).order_by(self._id)
            )
            if len(users) >= limit:
                break
        return users[:limit]

    def usernames_in_password(
        self, password: str, scope: Scope, selection: Sequence[int], *,
        without_email_only: bool = False,
    ) -> int:
        """How many users of the scope have a username the password contains (with
        `without_email_only`, of those without a usable address: who a `set` password is for).

        Judged here, over the scope's usernames streamed from the directory: the password never
        goes to the directory's database (its logs, its process list, the wire), and a `_` or
        `%` in a username is a character like any other.
        """
        email = self._c(self.profile.email) if self.profile.email else null()
        query = select(self.username_expression(), email if without_email_only else null())
        query = query.where(self.scope_condition(scope, selection))
        folded = normalised(password).lower()
        clashes = 0
        with self.engine.connect() as connection:
            rows = connection.execution_options(
                stream_results=True, yield_per=STREAM_BATCH
            ).execute(query)
            for username, address in rows:
                if without_email_only and usable_address(
                    None if address is None else str(address)
                ):
                    continue
                if username is not None and contains_username(folded, str(username)):
                    clashes += 1
        return clashes

    # -- writing -------------------------------------------------------------------------------

    def write_hashes(
        self,
        hashes: Sequence[tuple[int, str]],
        *,
        require_change: bool,
        changed_at: datetime,
        before_write: BeforeWrite | None = None,
    ) -> set[int]:
        """Store many new hashes, all with the same must-change value, in the directory's own
        transaction; the ids whose rows were there (see `write_hash_groups`)."""
        with self.engine.begin() as connection:
            return self.write_hash_groups(connection, {require_change: hashes},
                                          changed_at=changed_at, before_write=before_write)

    def write_hash_groups(
        self,
        connection: Connection,
        groups: Mapping[bool, Sequence[tuple[int, str]]],
        *,
        changed_at: datetime,
        before_write: BeforeWrite | None = None,
    ) -> set[int]:
        """Store new hashes by must-change value, each group in one executemany (on MariaDB one
        UPDATE), in `connection`'s transaction (the caller commits); the ids whose rows were
        there to write.

        Only the password column, the must-change column and the profile's extra resets are
        written, and only in the rows of these users. `before_write` runs first in the same
        transaction (Undo keeps what is about to be replaced: core/undo.py). The UPDATEs' row
        counts tell whether every user was there: only when some are missing does one SELECT
        ask which (a user deleted since the task was planned).
        """
        everyone = [pair for group in groups.values() for pair in group]
        if not everyone:
            return set()
        if before_write is not None:
            before_write(connection, everyone)
        written = sum(self._update_hashes(connection, list(hashes), require_change, changed_at)
                      for require_change, hashes in groups.items() if hashes)
        ids = [user_id for user_id, _ in everyone]
        present = set(ids) if written >= len(ids) else set(connection.scalars(
            select(self._id).where(self._id.in_(sorted(set(ids))))
        ))
        if self.change_log is not None:  # in the same transaction: both, or neither
            self.change_log.write(connection, [user_id for user_id in ids if user_id in present])
        return present

    def _update_hashes(
        self,
        connection: Connection,
        hashes: list[tuple[int, str]],
        require_change: bool,
        changed_at: datetime,
    ) -> int:
        """One must-change group's UPDATE; how many rows it matched.

        One statement for the whole group (on PostgreSQL the hashes as an array joined by id,
        elsewhere each row's hash picked by its id in a CASE): one round trip, and one
        execution for the server to plan and run rather than one a user (an executemany).
        """
        password = self._c(self.profile.password)
        others: dict[Any, Any] = self._must_change_values(require_change, changed_at)
        for extra in self.profile.on_reset:
            column = self._c(extra.column)
            others[column] = self._extra_value(extra, column, changed_at)
        if connection.dialect.name == "postgresql":
            # The batch as two arrays joined to the table: the same text whatever the number
            # of users, so planned once and cached by SQLAlchemy and psycopg alike.
            given = select(
                func.unnest(bindparam("rb_ids", type_=postgresql.ARRAY(self._id.type)))
                .label("id"),
                func.unnest(bindparam("rb_hashes", type_=postgresql.ARRAY(password.type)))
                .label("hash"),
            ).subquery("rb_given")
            return rowcount(connection.execute(
                update(self.table).where(self._id == given.c.id)
                .values({password: given.c.hash} | others),
                {"rb_ids": [user_id for user_id, _ in hashes],
                 "rb_hashes": [new_hash for _, new_hash in hashes]},
            ))
        # The count is of the rows matched, also those whose values were already these
        # (SQLAlchemy connects to MariaDB with CLIENT_FOUND_ROWS).
        matched = 0
        for start in range(0, len(hashes), ROWS_PER_STATEMENT):
            some = hashes[start : start + ROWS_PER_STATEMENT]
            values = {password: case(dict(some), value=self._id)} | others
            matched += rowcount(connection.execute(
                update(self.table).where(self._id.in_([user_id for user_id, _ in some]))
                .values(values)))
        return matched

    # -- Undo (core/undo.py) ---------------------------------------------------------------------

    @property
    def written_columns(self) -> list[str]:
        """Every column a reset writes: the password, the must-change column, the extra resets."""
        names = [self.profile.password]
        if self.profile.must_change is not None:
            names.append(self.profile.must_change.column)
        names += [extra.column for extra in self.profile.on_reset]
        return list(dict.fromkeys(names))

    def written_values(
        self, connection: Connection, ids: Sequence[int], *, lock: bool = True
    ) -> dict[int, dict[str, Any]]:
        """The columns a reset writes, as they are now, of these users, by id; `lock`: locked
        until the transaction ends, where the database locks rows."""
        columns = [self._c(name) for name in self.written_columns]
        query = select(self._id, *columns).where(self._id.in_(sorted(set(ids))))
        if lock and connection.dialect.name != "sqlite":
            query = query.with_for_update()
        return {
            int(row[0]): dict(zip(self.written_columns, row[1:], strict=True))
            for row in connection.execute(query)
        }

    def put_back(
        self, expected: dict[int, str], previous: dict[int, dict[str, Any]]
    ) -> tuple[set[int], set[int]]:
        """Write `previous` back for each user whose password hash is still `expected[id]`,
        in one transaction with their rows locked; (ids put back, ids already back).

        A user already holding their previous hash (a crashed Undo's re-do) is counted as back;
        anyone else has changed their password since, and is left alone.
        """
        password = self.profile.password
        with self.engine.begin() as connection:
            now = self.written_values(connection, list(expected))
            current = {user_id: values[password] for user_id, values in now.items()}
            to_write = [user_id for user_id in sorted(expected)
                        if user_id in current and current[user_id] == expected[user_id]]
            already = {user_id for user_id in expected if user_id not in to_write
                       and user_id in current and user_id in previous
                       and current[user_id] == previous[user_id].get(password)}
            if to_write:
                names = self.written_columns
                statement = update(self.table).where(
                    self._id == bindparam("rb_user_id"),
                    self._c(password) == bindparam("rb_expected"),
                ).values({self._c(name): bindparam(f"rb_{index}")
                          for index, name in enumerate(names)})
                connection.execute(statement, [
                    {"rb_user_id": user_id, "rb_expected": expected[user_id],
                     **{f"rb_{index}": previous[user_id].get(name)
                        for index, name in enumerate(names)}}
                    for user_id in to_write
                ])
        return set(to_write), already

    def _must_change_values(self, require_change: bool, changed_at: datetime) -> dict[Any, Any]:
        rule = self.profile.must_change
        if rule is None:
            return {}
        column = self._c(rule.column)
        if rule.kind == "flag":
            return {column: require_change}
        today = _local_date(changed_at)
        if require_change:
            return {column: today}  # the library system asks for a new password from today
        # A new password is not born expired (the library system asks for a new one on the
        # date itself, so today counts as expired); a date still to come is the library's choice.
        return {column: case((column <= today, None), else_=column)}

    @staticmethod
    def _extra_value(
        extra: ExtraReset, column: ColumnElement[Any], changed_at: datetime
    ) -> Any:
        value: Any
        if extra.special == "now":
            value = changed_at
        elif extra.special == "today":
            value = _local_date(changed_at)
        elif extra.special == "null":
            value = None
        else:
            value = extra.value
        if not extra.unless:
            return value
        # Each value compared on its own: an IN list cannot be bound in an executemany.
        kept = or_(*[column == literal(item) for item in extra.unless])
        return case((kept, column), else_=value)


def rowcount(result: Any) -> int:
    """How many rows an UPDATE (or an executemany of it: the sum) matched."""
    return int(result.rowcount)


def hasher_for(profile: Profile, settings: Settings) -> PasswordHasher:
    """The hash the profile's system reads: its scheme, ident and cost (PASSWORD_ROUNDS wins);
    without a scheme of its own, PASSWORD_SCHEMES as before."""
    fmt = profile.hash
    if fmt.scheme is None:
        return PasswordHasher.from_settings(settings)
    rounds = settings.password_rounds if settings.password_rounds is not None else fmt.rounds
    if settings.password_rounds is not None:
        problem = rounds_problem(
            fmt.scheme, settings.password_rounds, allow_weak=settings.password_allow_weak_rounds
        )
        if problem:
            raise ConfigError(f"PASSWORD_ROUNDS: {problem} (profile {profile.name})")
    elif not fmt.system_cost:  # a profile file's cost meets the same floor as PASSWORD_ROUNDS
        problem = rounds_problem(
            fmt.scheme, fmt.rounds, allow_weak=settings.password_allow_weak_rounds
        )
        if problem:
            raise ConfigError(f"{profile.source}: password.rounds: {problem}")
    return PasswordHasher((fmt.scheme,), rounds, ident=fmt.ident)


def visible_columns(connection: Connection, table: str) -> dict[str, Any]:
    """The columns of `table` the database shows this user, name -> SQLAlchemy type; empty
    when there is no such table (or, on MariaDB, none of it the user may use).

    On MariaDB/MySQL SQLAlchemy's reflection runs SHOW CREATE TABLE, which needs a right on
    every column: information_schema lists the columns the user has a right on instead.
    Elsewhere the inspector reads the catalog, which holds no rows and needs no rights.
    """
    if connection.dialect.name == "mysql":
        types = connection.dialect.ischema_names  # type: ignore[attr-defined]
        rows = connection.execute(text(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = DATABASE() AND table_name = :table"
        ), {"table": table})
        return {str(name): types.get(str(kind).lower(), NullType)() for name, kind in rows}
    try:
        return {column["name"]: column["type"] for column in inspect(connection).get_columns(table)}
    except NoSuchTableError:
        return {}


def _shipped_foreign_profiles() -> list[tuple[str, Profile]]:
    """The library systems' profiles resetbot ships (koha), to name the one a database holds."""
    return [(name, load_profile(name)) for name in shipped_profiles()]


def _require_sqlite_file(url: str) -> None:
    """A SQLite directory that is not there: said, rather than an empty file made by opening."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return  # make_engine says what is wrong with it
    path = parsed.database
    if parsed.get_backend_name() == "sqlite" and path and path != ":memory:" and not (
        path.startswith("file:") or Path(path).exists()
    ):
        raise ConfigError(f"DIRECTORY_URL: there is no SQLite database {path!r} (the "
                          "directory is a database that exists already)")


def _first_line(error: object) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]


def _local_date(moment: datetime) -> date:
    """The date at the moment on this host's clock: library systems keep local dates."""
    return moment.astimezone().date()


def _escape_like(term: str, escape: str) -> str:
    for special in (escape, "%", "_"):
        term = term.replace(special, escape + special)
    return term
