"""Koha's own password rules, read from its database when resetbot may: what Koha would refuse.

Koha checks a new password (Koha::AuthUtils::is_password_valid) against the patron's category:
its `min_password_length` and `require_strong_password`, each falling back, when NULL, to the
system preferences `minPasswordLength` and `RequireStrongPassword`. A length under 3 counts as
3; "strong" means at least one uppercase letter, one lowercase letter and one digit (ASCII);
and no white space at either end.

Reading them needs an optional grant: SELECT on `categories` (categorycode,
min_password_length, require_strong_password), on `systempreferences` (variable, value), and
on `borrowers.categorycode` to know the categories of a scope (without that one, every category
is checked). Without the first two, resetbot does without, and says so (`koha_rules_readable`).
Only SELECTs; never a password in them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, column, false, literal_column, select, table
from sqlalchemy.exc import DBAPIError

from core.models import Scope

if TYPE_CHECKING:
    from core.directory.sql.table import Directory

KOHA = "koha"
#: Koha's own floor: a shorter minimum counts as 3.
KOHA_FLOOR = 3
_STRONG = re.compile(r"(?=.*\d)(?=.*[a-z])(?=.*[A-Z])", re.DOTALL)
_CATEGORIES = table("categories", column("categorycode"), column("min_password_length"),
                    column("require_strong_password"))
_PREFERENCES = table("systempreferences", column("variable"), column("value"))
_BORROWERS_CATEGORY = "categorycode"
RULES_NOT_READ = ("Koha's own password rules were not read (resetbot may not SELECT "
                  "categories and systempreferences): they were not checked.")


@dataclass(frozen=True)
class KohaRule:
    """What Koha asks of a password for one category (preferences already applied)."""

    category: str
    min_length: int
    strong: bool

    def problem(self, password: str) -> str | None:
        """Koha's reason for refusing `password`, in words; None when Koha takes it."""
        if len(password) < self.min_length:
            return f"it must be at least {self.min_length} characters long"
        if self.strong and not _STRONG.match(password):
            return "it must hold an uppercase letter, a lowercase letter and a digit"
        if password != password.strip():
            return "it must not begin or end with a space"
        return None


@dataclass(frozen=True)
class KohaRules:
    #: Category code -> its rule.
    categories: dict[str, KohaRule]
    #: The preferences alone: for a patron whose category has no row.
    fallback: KohaRule

    def refusals(self, password: str, categories: Sequence[str] | None) -> list[str]:
        """Koha's reasons, one per category in `categories` (None: every one) that refuses."""
        wanted = list(self.categories) if categories is None else list(categories)
        reasons: list[str] = []
        for code in sorted(set(wanted)):
            rule = self.categories.get(code, self.fallback)
            problem = rule.problem(password)
            if problem:
                reasons.append(f"Koha refuses it for patrons of category {code}: {problem}.")
        return reasons

    @property
    def longest_minimum(self) -> int:
        return max([self.fallback.min_length,
                    *(rule.min_length for rule in self.categories.values())])


def read_koha_rules(directory: Directory) -> KohaRules | None:
    """Koha's rules from its tables; None when they cannot be read (the grant is missing)."""
    try:
        with directory.engine.connect() as connection:
            preferences = {
                str(name).lower(): value for name, value in connection.execute(
                    select(_PREFERENCES.c.variable, _PREFERENCES.c.value).where(
                        _PREFERENCES.c.variable.in_(["minPasswordLength",
                                                     "RequireStrongPassword"])
                    )
                )
            }
            rows = connection.execute(select(*_CATEGORIES.c)).all()
    except DBAPIError:
        return None
    min_length = _whole(preferences.get("minpasswordlength"), 0)
    strong = _whole(preferences.get("requirestrongpassword"), 0) != 0
    fallback = KohaRule("", max(min_length, KOHA_FLOOR), strong)
    categories = {
        str(code): KohaRule(
            str(code),
            max(_whole(length, min_length), KOHA_FLOOR),
            strong if required is None else _whole(required, 0) != 0,
        )
        for code, length, required in rows
    }
    return KohaRules(categories, fallback)


def koha_rules_readable(directory: Directory) -> bool:
    """Whether resetbot may read Koha's password rules (for `directory check`)."""
    return read_koha_rules(directory) is not None


def category_column(directory: Directory) -> ColumnElement[Any]:
    """`borrowers.categorycode`. The directory's table holds only the profile's columns
    (nothing else is reflected, see Directory): the category is named beside them."""
    code: ColumnElement[Any] | None = directory.table.c.get(_BORROWERS_CATEGORY)
    if code is None:
        table_name = directory.engine.dialect.identifier_preparer.format_table(directory.table)
        code = literal_column(f"{table_name}.{_BORROWERS_CATEGORY}")
    return code


def categories_readable(directory: Directory) -> bool:
    """Whether resetbot may read the patrons' categories (for `directory check`)."""
    try:
        with directory.engine.connect() as connection:
            connection.execute(select(category_column(directory)).select_from(directory.table)
                               .where(false()))
    except DBAPIError:
        return False
    return True


def categories_in_scope(
    directory: Directory, scope: Scope, selection: Sequence[int]
) -> list[str] | None:
    """The category codes of the scope's patrons; None when `borrowers.categorycode` may not
    be read (then every category is checked)."""
    # FROM named: for "everyone" the condition names no column, and the category is a
    # literal column (not the table's), so the query would have no table to read.
    query = select(category_column(directory)).select_from(directory.table).where(
        directory.scope_condition(scope, selection)).distinct()
    try:
        with directory.engine.connect() as connection:
            return [str(value) for (value,) in connection.execute(query)]
    except DBAPIError:
        return None


class KohaScopeRules:
    """Koha's rules for the patrons of a scope: their categories' rules, read once when needed
    (a ScopeRules of core/directory/protocol.py)."""

    def __init__(
        self, directory: Directory, scope: Scope, selection: Sequence[int],
        categories: Sequence[str] | None = None,
    ) -> None:
        """`categories`: the scope's categories when known already (counted in the app's
        search copy), else read from `borrowers` when needed."""
        self.directory = directory
        self.scope = scope
        self.selection = selection
        self._rules: KohaRules | None = None
        self._known = None if categories is None else list(categories)
        self._categories: list[str] | None = None
        self._read = False

    def _load(self) -> KohaRules | None:
        if not self._read:
            self._read = True
            self._rules = read_koha_rules(self.directory)
            if self._rules is not None and self._known is not None:
                self._categories = self._known
            elif self._rules is not None:
                self._categories = categories_in_scope(
                    self.directory, self.scope, self.selection
                )
        return self._rules

    @property
    def unread(self) -> str | None:
        """RULES_NOT_READ when resetbot may not read Koha's rules."""
        return RULES_NOT_READ if self._load() is None else None

    def violations(self, password: str) -> list[str]:
        """Koha's reasons to refuse `password` for a patron in scope (none when unread)."""
        rules = self._load()
        return [] if rules is None else rules.refusals(password, self._categories)


def _whole(value: Any, default: int) -> int:
    if value is None:
        return default
    try:
        return int(str(value).strip() or default)
    except ValueError:
        return default
