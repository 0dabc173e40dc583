"""Directory profiles: how a library system's users table is read and written, as data.

A profile is a TOML file (the shipped ones live in `core/directory/sql/profiles/`), or `resetbot`:
resetbot's own users table under the names of USERS_TABLE and USERS_COLUMNS. The code knows a
handful of rule kinds (staff: non-zero, not empty, in a list; must-change: a flag or an expiry
date; resets of other columns), not a handful of library systems.

A file is checked for shape when it is read (`load_profile`), and its columns against the real
table when the directory is first used (`Directory.check`). Each refusal is one line naming the
file, the key and the reason.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from core.errors import ConfigError
from core.schemes import is_accepted, rounds_problem
from core.settings import DirectoryNames

RESETBOT = "resetbot"
StaffRuleKind = Literal["nonzero", "not_empty", "in"]
MustChangeKind = Literal["flag", "expiry"]
STAFF_RULES: tuple[StaffRuleKind, ...] = ("nonzero", "not_empty", "in")
MUST_CHANGE_KINDS: tuple[MustChangeKind, ...] = ("flag", "expiry")
BCRYPT_IDENTS = ("2a", "2b", "2y")
#: Library systems whose own password rules resetbot knows how to read.
PASSWORD_RULES = ("koha",)
#: Library systems whose own log of password changes resetbot knows how to write.
CHANGE_LOGS = ("koha",)
#: Values an extra reset may `set` that are not literals: the moment of the reset, or NULL.
SPECIAL_VALUES = ("now", "today", "null")
Literal_ = str | int | float | bool


@dataclass(frozen=True)
class StaffRule:
    """Who is staff: `column` compared by `rule` (with `values` for `in`). Others are patrons."""

    column: str
    rule: StaffRuleKind
    values: tuple[Literal_, ...] = ()


@dataclass(frozen=True)
class HashFormat:
    """How the password column is hashed; scheme None: PASSWORD_SCHEMES and PASSWORD_ROUNDS."""

    scheme: str | None = None
    ident: str | None = None
    rounds: int | None = None
    #: The cost is the one the library system itself writes, below resetbot's minimum if need
    #: be: for shipped profiles only (koha: 8). A profile file meets PASSWORD_ROUNDS' floor.
    system_cost: bool = False


@dataclass(frozen=True)
class MustChange:
    """`flag`: a boolean column set to the task's choice. `expiry`: a date column set to today
    when a change is required; otherwise a date of today or earlier is cleared (a new password
    is not born expired) and a later one is kept."""

    column: str
    kind: MustChangeKind


@dataclass(frozen=True)
class ExtraReset:
    """Another column a reset sets: a literal `value`, or `special` (now, today, null); left
    alone where its current value is one of `unless`."""

    column: str
    value: Literal_ | None = None
    special: str | None = None
    unless: tuple[Literal_, ...] = ()


@dataclass(frozen=True)
class LockedRule:
    """Accounts locked on purpose (by staff, not by failed sign-ins): `column` holds one of
    `values`. A new password does not open them, so a reset may leave them out."""

    column: str
    values: tuple[Literal_, ...]


@dataclass(frozen=True)
class Profile:
    name: str
    #: Where it was read from, for refusals: the file, or the settings that make it.
    source: str
    table: str
    id: str
    #: The first column not empty is the username (Koha: userid, else cardnumber).
    username: tuple[str, ...]
    #: Joined with spaces into the display name.
    name_columns: tuple[str, ...]
    email: str | None
    staff: StaffRule | None
    password: str
    hash: HashFormat = field(default_factory=HashFormat)
    must_change: MustChange | None = None
    on_reset: tuple[ExtraReset, ...] = ()
    locked: LockedRule | None = None
    #: The library system's own password rules resetbot also checks (`koha`), when readable.
    password_rules: str | None = None
    #: The library system's own log of password changes resetbot also writes (`koha`).
    change_log: str | None = None
    #: resetbot's own table: its own search index, `users import` and `export`.
    owned: bool = False

    def columns(self) -> dict[str, str]:
        """Every column the profile names, by the key that names it (for refusals)."""
        named = {"id": self.id, "password.column": self.password}
        named |= {f"username[{i}]": column for i, column in enumerate(self.username)}
        named |= {f"name[{i}]": column for i, column in enumerate(self.name_columns)}
        if self.email:
            named["email"] = self.email
        if self.staff:
            named["staff.column"] = self.staff.column
        if self.must_change:
            named["must_change.column"] = self.must_change.column
        named |= {f"on_reset[{i}].column": r.column for i, r in enumerate(self.on_reset)}
        if self.locked:
            named["locked.column"] = self.locked.column
        return named

    @property
    def search_columns(self) -> tuple[str, ...]:
        """What the picker searches: usernames (card numbers too), names, e-mail."""
        extra = (self.email,) if self.email else ()
        return tuple(dict.fromkeys((*self.username, *self.name_columns, *extra)))


def resetbot_profile(names: DirectoryNames) -> Profile:
    """resetbot's own users table, under the configured names."""
    c = names.column
    return Profile(
        name=RESETBOT,
        source="DIRECTORY_PROFILE=resetbot (USERS_TABLE, USERS_COLUMNS)",
        table=names.table,
        id=c("id"),
        username=(c("username"),),
        name_columns=(c("full_name"),),
        email=c("email"),
        staff=StaffRule(c("role"), "not_empty"),
        password=c("password_hash"),
        must_change=MustChange(c("must_change_password"), "flag"),
        on_reset=(ExtraReset(c("password_changed_at"), special="now"),),
        owned=True,
    )


def shipped_profiles() -> list[str]:
    folder = resources.files("core.directory.sql").joinpath("profiles")
    return sorted(
        item.name.removesuffix(".toml") for item in folder.iterdir()
        if item.name.endswith(".toml")
    )


def load_profile(name: str, names: DirectoryNames | None = None) -> Profile:
    """The profile DIRECTORY_PROFILE names: `resetbot`, a shipped one, or a .toml file's path.

    Raises ConfigError naming the file, the key and the reason.
    """
    if name == RESETBOT:
        return resetbot_profile(names or DirectoryNames())
    if name in shipped_profiles():
        resource = resources.files("core.directory.sql").joinpath(f"profiles/{name}.toml")
        return parse_profile(resource.read_text("utf-8"), name=name, source=f"{name}.toml",
                             shipped=True)
    path = Path(name)
    if not path.is_file():
        raise ConfigError(
            f"DIRECTORY_PROFILE: {name!r} is neither a profile resetbot ships "
            f"({', '.join([RESETBOT, *shipped_profiles()])}) nor a file"
        )
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot be read ({error})") from None
    return parse_profile(text, name=str(path), source=str(path))


def parse_profile(text: str, *, name: str, source: str, shipped: bool = False) -> Profile:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{source}: not a TOML file ({error})") from None
    return _Reader(data, source, shipped=shipped).profile(name)


class _Reader:
    """Reads one profile's keys, each refusal naming `source` and the key."""

    KNOWN = frozenset({"table", "id", "username", "name", "email", "staff", "password",
                       "must_change", "on_reset", "locked", "password_rules",
                       "change_log", "description"})

    def __init__(self, data: Mapping[str, Any], source: str, *, shipped: bool = False) -> None:
        self.data = data
        self.source = source
        self.shipped = shipped

    def refuse(self, key: str, reason: str) -> ConfigError:
        return ConfigError(f"{self.source}: {key}: {reason}")

    def profile(self, name: str) -> Profile:
        for key in self.data:
            if key not in self.KNOWN:
                raise self.refuse(key, "unknown key (expected one of "
                                  + ", ".join(sorted(self.KNOWN)) + ")")
        return Profile(
            name=name,
            source=self.source,
            table=self.identifier(self.data, "table"),
            id=self.identifier(self.data, "id"),
            username=self.identifiers(self.data, "username"),
            name_columns=self.identifiers(self.data, "name"),
            email=self.identifier(self.data, "email") if "email" in self.data else None,
            staff=self.staff(),
            password=self.identifier(self.section("password", required=True), "column",
                                     "password."),
            hash=self.hash_format(),
            must_change=self.must_change(),
            on_reset=self.on_reset(),
            locked=self.locked(),
            password_rules=self.password_rules(),
            change_log=self.known_system("change_log", CHANGE_LOGS),
        )

    def section(self, key: str, *, required: bool = False) -> Mapping[str, Any]:
        value = self.data.get(key)
        if value is None and not required:
            return {}
        if not isinstance(value, Mapping):
            raise self.refuse(key, "expected a table ([" + key + "])")
        return value

    def identifier(self, data: Mapping[str, Any], key: str, prefix: str = "") -> str:
        value = data.get(key)
        if not isinstance(value, str) or not _is_identifier(value):
            raise self.refuse(prefix + key, "expected a column or table name (letters, digits, _)")
        return value

    def identifiers(self, data: Mapping[str, Any], key: str) -> tuple[str, ...]:
        value = data.get(key)
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list) or not values or not all(
            isinstance(item, str) and _is_identifier(item) for item in values
        ):
            raise self.refuse(key, "expected a column name or a list of them")
        return tuple(values)

    def staff(self) -> StaffRule | None:
        section = self.section("staff")
        if not section:
            return None
        column = self.identifier(section, "column", "staff.")
        rule = section.get("rule")
        if rule not in STAFF_RULES:
            raise self.refuse("staff.rule", f"unknown rule {rule!r} (expected "
                              + ", ".join(STAFF_RULES) + ")")
        values = section.get("values", [])
        if rule == "in" and (not isinstance(values, list) or not values or not all(
            isinstance(item, str | int | float | bool) for item in values
        )):
            raise self.refuse("staff.values", "expected a list of values for rule 'in'")
        return StaffRule(column, rule, tuple(values) if rule == "in" else ())

    def hash_format(self) -> HashFormat:
        section = self.section("password", required=True)
        scheme = section.get("scheme")
        if scheme is None:
            return HashFormat()
        if not isinstance(scheme, str) or not is_accepted(scheme):
            raise self.refuse("password.scheme", f"{scheme!r} is not a password hash resetbot "
                              "writes (see PASSWORD_SCHEMES)")
        ident = section.get("ident")
        if ident is not None and (scheme != "bcrypt" or ident not in BCRYPT_IDENTS):
            raise self.refuse("password.ident", f"{ident!r}: expected one of "
                              + ", ".join(BCRYPT_IDENTS) + " with scheme 'bcrypt'")
        rounds = section.get("rounds")
        if rounds is not None:
            if not isinstance(rounds, int) or isinstance(rounds, bool):
                raise self.refuse("password.rounds", "expected a whole number")
            # What the scheme can do; resetbot's floor is applied with the settings
            # (core.directory.sql.table.hasher_for).
            problem = rounds_problem(scheme, rounds, allow_weak=True)
            if problem:
                raise self.refuse("password.rounds", problem)
        return HashFormat(scheme, ident, rounds, system_cost=self.shipped)

    def must_change(self) -> MustChange | None:
        section = self.section("must_change")
        if not section:
            return None
        column = self.identifier(section, "column", "must_change.")
        kind = section.get("kind")
        if kind not in MUST_CHANGE_KINDS:
            raise self.refuse("must_change.kind", f"unknown kind {kind!r} (expected "
                              + ", ".join(MUST_CHANGE_KINDS) + ")")
        return MustChange(column, kind)

    def password_rules(self) -> str | None:
        return self.known_system("password_rules", PASSWORD_RULES)

    def known_system(self, key: str, known: tuple[str, ...]) -> str | None:
        value = self.data.get(key)
        if value is not None and value not in known:
            raise self.refuse(key, f"unknown value {value!r} (expected " + ", ".join(known)
                              + ")")
        return value if isinstance(value, str) else None

    def locked(self) -> LockedRule | None:
        section = self.section("locked")
        if not section:
            return None
        column = self.identifier(section, "column", "locked.")
        values = section.get("values")
        if not isinstance(values, list) or not values or not all(
            isinstance(item, str | int | float | bool) for item in values
        ):
            raise self.refuse("locked.values", "expected a list of the values that mean "
                              "locked on purpose")
        return LockedRule(column, tuple(values))

    def on_reset(self) -> tuple[ExtraReset, ...]:
        entries = self.data.get("on_reset", [])
        if not isinstance(entries, list):
            raise self.refuse("on_reset", "expected a list of tables ([[on_reset]])")
        return tuple(self.extra_reset(i, entry) for i, entry in enumerate(entries))

    def extra_reset(self, index: int, entry: object) -> ExtraReset:
        key = f"on_reset[{index}]"
        if not isinstance(entry, Mapping):
            raise self.refuse(key, "expected a table")
        column = self.identifier(entry, "column", key + ".")
        has_value, special = "value" in entry, entry.get("set")
        if has_value == (special is not None):
            raise self.refuse(key, "expected exactly one of value (a literal) or set ("
                              + ", ".join(SPECIAL_VALUES) + ")")
        if special is not None and special not in SPECIAL_VALUES:
            raise self.refuse(key + ".set", f"unknown value {special!r} (expected "
                              + ", ".join(SPECIAL_VALUES) + ")")
        value = entry.get("value")
        if has_value and not isinstance(value, str | int | float | bool):
            raise self.refuse(key + ".value", "expected a string, number or boolean")
        unless = entry.get("unless", [])
        if not isinstance(unless, list) or not all(
            isinstance(item, str | int | float | bool) for item in unless
        ):
            raise self.refuse(key + ".unless", "expected a list of values")
        return ExtraReset(column, value, special, tuple(unless))


def _is_identifier(name: str) -> bool:
    return bool(name) and name.replace("_", "a").isalnum() and name.isascii() and not (
        name[0].isdigit()
    )
