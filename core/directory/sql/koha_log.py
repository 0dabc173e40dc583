"""Koha's own log of password changes: the `action_logs` row Koha writes for each one.

When a member of staff changes a patron's password, Koha (Koha::Patron::set_password, through
C4::Log::logaction) adds a row to `action_logs` if its `BorrowersLog` preference is on: module
`MEMBERS`, action `CHANGE PASS`, the borrowernumber as object, an empty info, user 0 when no
one is signed in, and the interface it ran from. resetbot writes the same row, with interface
`commandline`, in the same transaction as the new hash: a failed commit leaves neither. (An
INSERT refused for want of the grant is undone alone, in a savepoint: the hashes still go in,
and nothing is tried again.)

It needs an optional grant: INSERT on `action_logs` (and SELECT on `systempreferences` to read
`BorrowersLog`). With the preference off, or either grant missing, nothing is written.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from sqlalchemy import Connection, Engine, column, insert, select, table, text
from sqlalchemy.exc import DBAPIError

logger = logging.getLogger(__name__)

#: The profile's `change_log` kind that writes Koha's action_logs.
KOHA = "koha"

#: How long a read of `BorrowersLog` is trusted before it is read again.
PREFERENCE_SECONDS = 60.0
_PREFERENCES = table("systempreferences", column("variable"), column("value"))
#: The columns C4::Log::logaction fills; `timestamp` is left to its default, now(), as there.
_ACTION_LOGS = table("action_logs", column("user"), column("module"), column("action"),
                     column("object"), column("info"), column("interface"))


def borrowers_log_on(engine: Engine) -> bool | None:
    """Koha's BorrowersLog preference: True/False, None when it cannot be read."""
    query = select(_PREFERENCES.c.value).where(_PREFERENCES.c.variable == "BorrowersLog")
    try:
        with engine.connect() as connection:
            value = connection.execute(query).scalar_one_or_none()
    except DBAPIError:
        return None
    return str(value or "").strip() not in ("", "0")


class KohaChangeLog:
    """Writes Koha's CHANGE PASS rows beside the hashes, when Koha logs and resetbot may."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._on: bool | None = None
        self._read_at = -PREFERENCE_SECONDS
        #: INSERT was refused once: the grant is missing, nothing is tried again.
        self.refused = False

    def wanted(self) -> bool:
        if self.refused:
            return False
        now = time.monotonic()
        if now - self._read_at >= PREFERENCE_SECONDS:
            self._on, self._read_at = borrowers_log_on(self.engine), now
        return bool(self._on)

    def write(self, connection: Connection, numbers: Sequence[int]) -> None:
        """One row per borrowernumber, in `connection`'s transaction (a savepoint: a refused
        INSERT leaves the hashes' transaction as it was)."""
        if not numbers or not self.wanted():
            return
        rows = [{"user": 0, "module": "MEMBERS",
                 "action": "CHANGE PASS", "object": number, "info": "",
                 "interface": "commandline"} for number in numbers]
        try:
            with connection.begin_nested():
                connection.execute(insert(_ACTION_LOGS), rows)
        except DBAPIError as error:
            self.refused = True
            logger.warning("Koha's action_logs is not written: resetbot may not INSERT there "
                           "(%s)", type(error.orig).__name__ if error.orig else "refused")


_GRANTEE = ("CONCAT('''', SUBSTRING_INDEX(CURRENT_USER(), '@', 1), '''@''', "
            "SUBSTRING_INDEX(CURRENT_USER(), '@', -1), '''')")
_INSERT_GRANTED = text(
    "SELECT (SELECT COUNT(*) FROM information_schema.table_privileges WHERE grantee = "
    f"{_GRANTEE} AND table_schema = DATABASE() AND table_name = 'action_logs' AND "
    "privilege_type = 'INSERT') + (SELECT COUNT(*) FROM information_schema.schema_privileges "
    f"WHERE grantee = {_GRANTEE} AND table_schema = DATABASE() AND privilege_type = 'INSERT') "
    "+ (SELECT COUNT(*) FROM information_schema.user_privileges WHERE grantee = "
    f"{_GRANTEE} AND privilege_type = 'INSERT')"
)


def koha_log_status(engine: Engine) -> tuple[bool | None, bool | None]:
    """(BorrowersLog on, INSERT on action_logs granted), each None when it cannot be told: what
    `directory check` says of Koha's log. The grant is read from MariaDB's information_schema
    (a role's grants are not seen: then the first reset finds out, and logs nothing)."""
    granted: bool | None = None
    if engine.dialect.name == "mysql":
        try:
            with engine.connect() as connection:
                granted = bool(connection.execute(_INSERT_GRANTED).scalar_one())
        except DBAPIError:
            granted = None
    return borrowers_log_on(engine), granted
