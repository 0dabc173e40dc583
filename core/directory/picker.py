"""The user picker on a directory without resetbot's search index: one in-memory search copy
per app.

A library system's table gets no search index from resetbot, so the picker searches a copy of
it (core/search_copy.py) built from the profile's own columns. So does resetbot's own table on
a database where it has no index to make (MariaDB: its LIKE over three columns took 120 ms for
a rare term at 100,000 users). The copy only suggests ids: the preview checks every picked id
against the directory itself (`Directory.missing_ids`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, Select, String, case, cast, func, literal, null, select

from core.directory.ldap.directory import LdapDirectory
from core.directory.protocol import Directory as AnyDirectory
from core.directory.protocol import DirectoryUnavailable, ScopeRules, User
from core.directory.sql import SqlDirectory
from core.directory.sql.directory import sql_ids
from core.directory.sql.koha_rules import (
    KOHA,
    KohaScopeRules,
    categories_readable,
    category_column,
)
from core.directory.sql.table import Directory
from core.directory.users import DirectoryUser, Preview
from core.models import Scope
from core.search_copy import LOAD_ERRORS, SearchCopy, SearchRow, Snapshot, load_lines
from core.settings import Settings

if TYPE_CHECKING:  # numpy is imported only by an app that keeps a copy
    from core.copy_counts import UserFacts

#: Where resetbot's own table has its search index (core/directory/search_index.py).
INDEXED_DIALECTS = frozenset({"postgresql", "sqlite"})
#: The role a staff member found in the copy is shown with (what makes them staff is the
#: profile's rule, which the copy keeps as a flag only).
STAFF_ROLE = "staff"


def needs_search_copy(settings: Settings, directory: Directory) -> bool:
    """A directory resetbot does not own (another database, or a profile other than its
    own table), or its own table where it has no search index (MariaDB): searched through a
    copy rather than the table itself."""
    return (
        bool(settings.directory_url)
        or not directory.profile.owned
        or directory.engine.dialect.name not in INDEXED_DIALECTS
    )


def search_select(directory: Directory) -> Select[Any]:
    """The columns the copy reads, from the profile: id, username (with its fallback),
    display name, card number, e-mail, staff, locked on purpose, and Koha's category."""
    profile = directory.profile
    return select(
        directory.table.c[profile.id],
        directory.username_expression(),
        _display_name(directory),
        _card_number(directory),
        directory.table.c[profile.email] if profile.email else null(),
        case((directory.staff_condition(), 1), else_=0),
        case((directory.locked_condition(), 1), else_=0),
        *([category_column(directory)] if reads_categories(directory) else []),
    )


def reads_categories(directory: Directory) -> bool:
    """Whether the copy keeps each user's category: Koha's, whose password rules differ by
    category (a preview with a typed password reads the scope's), when it may be read."""
    return directory.profile.password_rules == KOHA and categories_readable(directory)


def _display_name(directory: Directory) -> ColumnElement[Any]:
    parts: list[ColumnElement[Any]] = [
        func.coalesce(cast(directory.table.c[name], String), "")
        for name in directory.profile.name_columns
    ]
    if not parts:
        return literal("")
    joined = parts[0]
    for part in parts[1:]:
        joined = joined + literal(" ") + part
    return joined


def _card_number(directory: Directory) -> ColumnElement[Any]:
    """The username's last fallback column (Koha: `cardnumber`), searched on its own too."""
    fallbacks = directory.profile.username[1:]
    if not fallbacks:
        return null()
    return directory.table.c[fallbacks[-1]]


class CopySearch:
    """A UserSearch answered from the search copy (SearchRow -> DirectoryUser)."""

    def __init__(self, copy: SearchCopy) -> None:
        self.copy = copy

    def search(self, term: str, limit: int) -> list[DirectoryUser]:
        return [_user(row) for row in self.copy.search(term, limit)]


class CopySearchUsers:
    """The protocol's search (text ids) answered from the search copy, for an LDAP directory."""

    def __init__(self, copy: SearchCopy) -> None:
        self.copy = copy

    def search(self, term: str, limit: int) -> list[User]:
        return [
            User(id=str(row.id), username=row.username,
                 full_name=" ".join(row.display_name.split()), email=row.email,
                 role=STAFF_ROLE if row.is_staff else None)
            for row in self.copy.search(term, limit)
        ]


class CopyCounts:
    """A SQL table's preview counted in the app's search copy (core/copy_counts.py): at a
    million Koha borrowers a few milliseconds, where the table took 2-4 s.

    Only a copy that is not old (what a search would use as it is) counts; None otherwise,
    and when a selected user is not in the copy or a user in the scope holds the copy's
    separator: the directory itself counts then. The counts say, in a note, how old the copy
    is; the task itself (its confirm, approval and planning) is counted by the directory.
    """

    def __init__(self, copy: SearchCopy, table: Directory | None = None) -> None:
        """`table`: the SQL table the copy is read from (Koha's rules by category)."""
        self.copy = copy
        self.table = table
        self._categories = table is not None and reads_categories(table)

    def _scope(
        self, scope: Scope, selection: Sequence[str]
    ) -> tuple[Snapshot, UserFacts, Any] | None:
        snapshot = self.copy.fresh()
        if snapshot is None or snapshot.facts is None:
            return None
        if not scope.needs_selection:
            return snapshot, snapshot.facts, None
        ids = sql_ids(selection)
        picked = snapshot.facts.users_of(ids) if ids else None
        return None if picked is None else (snapshot, snapshot.facts, picked)

    def preview(self, scope: Scope, selection: Sequence[str]) -> Preview | None:
        found = self._scope(scope, selection)
        if found is None:
            return None
        snapshot, facts, picked = found
        counts = facts.count(scope, picked)
        if counts is None:
            return None
        return Preview(
            users=counts.users, emailable=counts.emailable,
            without_email=counts.users - counts.emailable, staff=counts.staff,
            unusable={problem: count for problem, count in counts.problems.items()
                      if problem != "missing"},
            locked=counts.locked,
            notes=(copy_note(self.copy.age(snapshot)),),
        )

    def usernames_in_password(
        self, password: str, scope: Scope, selection: Sequence[str], *,
        without_email_only: bool = False,
    ) -> int | None:
        found = self._scope(scope, selection)
        if found is None:
            return None
        snapshot, facts, picked = found
        return facts.usernames_in(password, scope, picked, snapshot.username,
                                  without_email_only=without_email_only)


    def categories(self, scope: Scope, selection: Sequence[str]) -> list[str] | None:
        """The (Koha) categories of the scope's users; None: not known here."""
        found = self._scope(scope, selection) if self._categories else None
        if found is None:
            return None
        _snapshot, facts, picked = found
        return facts.categories_in(scope, picked)

    def rules_for_scope(self, scope: Scope, selection: Sequence[str]) -> ScopeRules | None:
        """Koha's rules for the scope, its categories found in the copy."""
        categories = self.categories(scope, selection)
        if self.table is None or categories is None:
            return None
        return KohaScopeRules(self.table, scope, sql_ids(selection), categories)


def copy_note(age: float) -> str:
    """What the preview says of counts made in the copy."""
    seconds = round(age)
    when = f"{seconds} s" if seconds < 120 else f"{round(seconds / 60)} min"
    return (f"Counted in resetbot's copy of the directory, read {when} ago; the reset "
            "itself reads the directory.")


def _user(row: SearchRow) -> DirectoryUser:
    return DirectoryUser(
        id=int(row.id),
        username=row.username,
        full_name=" ".join(row.display_name.split()),
        email=row.email,
        role=STAFF_ROLE if row.is_staff else None,
    )


def attach_search_copy(
    settings: Settings, directory: AnyDirectory | Directory
) -> SearchCopy | None:
    """Give `directory` a search copy when it needs one (None when it does not), and plug it
    in as the directory's picker search. The copy is not read yet: `reload()` it at start.

    An LDAP directory's copy is read from its paged `picker_rows`; a SQL table's from the
    profile's columns."""
    if isinstance(directory, SqlDirectory):
        return _attach_to_table(settings, directory.sql)
    if isinstance(directory, Directory):
        return _attach_to_table(settings, directory)
    if not isinstance(directory, LdapDirectory):
        return None
    ldap = directory

    def ldap_rows() -> Iterator[SearchRow]:
        return (SearchRow(*row) for row in ldap.picker_rows())

    copy = SearchCopy(ldap_rows, settings.directory_search_refresh,
                      errors=(*LOAD_ERRORS, DirectoryUnavailable))
    ldap.use_search(CopySearchUsers(copy))
    return copy


def _attach_to_table(settings: Settings, directory: Directory) -> SearchCopy | None:
    if not needs_search_copy(settings, directory):
        return None
    query = search_select(directory)

    def rows() -> Iterator[str]:
        return load_lines(directory.engine, query)

    copy = SearchCopy(rows, settings.directory_search_refresh)
    directory.use_search(CopySearch(copy))
    return copy
