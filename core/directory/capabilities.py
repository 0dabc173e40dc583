"""What resetbot may do beyond a reset, in a directory it does not own: each an optional grant.

A reset needs SELECT on the columns it reads and UPDATE on those it writes (`Directory.check`
refuses to start without them). Some features need more, and a careful library grants only what
it wants: each such feature is an `OptionalFeature` here, probed read-only, and `resetbot
directory check` says which ones are missing, the GRANT that gives it, and what resetbot does
without it. Nothing fails for lack of an optional grant.

To add one: write a probe `(directory, connection) -> OptionalFeature | None` (None: the feature
does not apply to this profile) and list it in `PROBES`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Connection, Executable, false, select
from sqlalchemy.exc import DBAPIError

from core.directory.sql import koha_log, koha_rules
from core.directory.sql.table import Directory


@dataclass(frozen=True)
class OptionalFeature:
    #: What the feature is, as `directory check` names it.
    name: str
    available: bool
    #: The grant it needs, written for the profile's table (`SELECT (password) ON borrowers`).
    grant: str
    #: What resetbot does without it.
    without: str
    #: Said beside "granted" when the grant alone does not decide (Koha's log switched off).
    note: str | None = None

    def as_json(self) -> dict[str, object]:
        return {"name": self.name, "available": self.available, "grant": self.grant,
                "without": self.without, "note": self.note}


Probe = Callable[[Directory, Connection], "OptionalFeature | None"]


def hash_survey(directory: Directory, connection: Connection) -> OptionalFeature | None:
    """Reading the password column, only to count its hash formats (never a hash shown)."""
    profile = directory.profile
    if profile.owned:
        return None
    column = directory.table.c[profile.password]
    return OptionalFeature(
        name="hash survey",
        available=can_select(connection, select(column).where(false())),
        grant=f"SELECT ({profile.password}) ON {profile.table}",
        without=("the password formats the table holds are not counted, and no warning is "
                 "given should they differ from what a reset writes; resets work as before"),
    )


def undo(directory: Directory, connection: Connection) -> OptionalFeature | None:
    """Reading back the columns a reset writes, to keep them for Undo (core/undo.py)."""
    profile = directory.profile
    if profile.owned:
        return None
    names = directory.written_columns
    columns = [directory.table.c[name] for name in names]
    return OptionalFeature(
        name="undo",
        available=can_select(connection, select(*columns).where(false())),
        grant=f"SELECT ({', '.join(names)}) ON {profile.table}",
        without=("Undo is not offered: resetbot cannot keep the password a reset replaces, so "
                 "it could not put it back; resets work as before"),
    )


def koha_password_rules(directory: Directory, connection: Connection) -> OptionalFeature | None:
    """Reading Koha's password rules (categories, system preferences), to refuse a password
    Koha would refuse where it is typed (core/directory/sql/koha_rules.py)."""
    if directory.profile.password_rules != koha_rules.KOHA:
        return None
    readable = koha_rules.koha_rules_readable(directory)
    by_category = readable and koha_rules.categories_readable(directory)
    return OptionalFeature(
        name="Koha's password rules",
        available=readable,
        grant=("SELECT (categorycode, min_password_length, require_strong_password) ON "
               "categories and SELECT (variable, value) ON systempreferences"),
        without=("a default or typed password is checked against resetbot's own policy only "
                 "(the preview says Koha's rules were not read); resets work as before"),
        note=None if by_category or not readable else (
            f"without SELECT (categorycode) ON {directory.profile.table} every category's "
            "rules are checked, not only those of the patrons in scope"),
    )


def koha_change_log(directory: Directory, connection: Connection) -> OptionalFeature | None:
    """Writing Koha's CHANGE PASS entry to action_logs when Koha's BorrowersLog is on
    (core/directory/sql/koha_log.py)."""
    if directory.profile.change_log != koha_log.KOHA:
        return None
    logging, may_insert = koha_log.koha_log_status(directory.engine)
    missing = [*(["SELECT (variable, value) ON systempreferences"] if logging is None else []),
               *([] if may_insert else ["INSERT ON action_logs"])]
    return OptionalFeature(
        name="Koha's log",
        available=not missing,
        grant=" and ".join(missing or ["INSERT ON action_logs"]),
        without=("no CHANGE PASS entry is written to Koha's action_logs; resets work as "
                 "before"),
        note=None if logging or missing else (
            "Koha's BorrowersLog preference is off: nothing is written"),
    )


#: Every optional feature, in the order `directory check` lists them.
PROBES: list[Probe] = [hash_survey, undo, koha_password_rules, koha_change_log]


def optional_features(directory: Directory) -> list[OptionalFeature]:
    """Each optional feature that applies to the directory's profile, and whether the database
    user may use it: SELECTs of no rows, over one connection."""
    with directory.engine.connect() as connection:
        found = [probe(directory, connection) for probe in PROBES]
    return [feature for feature in found if feature is not None]


def feature_available(directory: Directory, probe: Probe) -> bool:
    """Whether the database user may use one optional feature (only its own probe runs)."""
    with directory.engine.connect() as connection:
        feature = probe(directory, connection)
    return feature is not None and feature.available


def available(features: list[OptionalFeature], name: str) -> bool:
    return any(feature.name == name and feature.available for feature in features)


def can_select(connection: Connection, query: Executable) -> bool:
    """Whether the query runs: a refusal (no right, no such table) is a no, not an error. The
    connection is left usable (a failed statement inside a transaction is rolled back)."""
    try:
        connection.execute(query)
    except DBAPIError:
        connection.rollback()
        return False
    return True
