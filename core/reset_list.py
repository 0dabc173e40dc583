"""The exact list of a reset before it runs: everyone a confirm would reset, and what happens to
each, as a spreadsheet-safe CSV (never a password).

Made from the scope's stream the planner reads (`Directory.scope_batch`, pages in the
directory's stable order), so what it lists is what the task's items will be. Sent privately
in Slack ("Send me the list") and written by `resetbot reset … --dry-run --csv FILE`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from core.controls import blank_unsafe
from core.csvsafe import to_csv
from core.directory import Directory as TableDirectory
from core.directory.ids import user_ids
from core.directory.protocol import Directory, User
from core.directory.sql import as_protocol
from core.models import ItemState, Mode, NoEmailChoice, Scope
from core.tally import planned_outcome

#: Users read per round trip, as the planner does.
LIST_BATCH = 1000
LIST_HEADER = ("username", "full_name", "email", "staff", "locked", "what_happens")
NO_USABLE_ADDRESS = "no usable address"
#: What happens to a user, by the outcome the task will give them.
WHAT_HAPPENS = {
    ItemState.RESET: "gets the default password; you tell them",
    ItemState.NOTIFIED: "new random password, e-mailed",
    ItemState.NO_EMAIL: "new random password nobody is told: they use “forgot password”",
    ItemState.SKIPPED: "left alone: password unchanged",
    ItemState.HANDED_OUT: "gets the password you typed; you tell them",
    ItemState.LOCKED: "left alone: locked on purpose, password unchanged",
}

@dataclass(frozen=True)
class ListedUser:
    user: User
    locked: bool
    outcome: ItemState


def scope_stream(
    directory: Directory, scope: Scope, selection: Sequence[str], batch: int = LIST_BATCH
) -> Iterator[list[User]]:
    """The scope's users in the directory's order, a batch at a time: the planner's pages."""
    cursor: str | None = None
    while True:
        users = directory.scope_batch(scope, selection, cursor, batch)
        if users:
            yield users
        if len(users) < batch:
            return
        cursor = users[-1].id


def reset_list(
    directory: Directory | TableDirectory, scope: Scope, selection: Sequence[object],
    mode: Mode, no_email: NoEmailChoice, *, skip_locked: bool = False,
) -> Iterator[ListedUser]:
    """Everyone a confirm would reset, in the planner's order, with their outcome to come
    (`skip_locked`: the task leaves accounts locked on purpose out, as the planner does)."""
    directory = as_protocol(directory)
    for users in scope_stream(directory, scope, user_ids(selection)):
        for user in users:
            # Locked on purpose is the directory's to say (Koha's `login_attempts = -1`, a
            # ppolicy permanent lock, AD's disabled flag), as the planner reads it.
            outcome = (ItemState.LOCKED if skip_locked and user.locked_on_purpose
                       else planned_outcome(mode, no_email, user.has_email))
            yield ListedUser(user, user.locked_on_purpose, outcome)


def reset_list_csv(rows: Iterator[ListedUser]) -> str:
    """username, full name, e-mail (or "no usable address"), staff, locked, what happens."""
    return to_csv(LIST_HEADER, (
        (
            _cell(row.user.username),
            _cell(row.user.full_name),
            _cell(row.user.email) or NO_USABLE_ADDRESS,
            "yes" if row.user.is_staff else "no",
            "yes" if row.locked else "no",
            WHAT_HAPPENS[row.outcome],
        )
        for row in rows
    ))


def _cell(text: str | None) -> str:
    """Directory text on one line: control characters (CR, LF, bidi overrides) blanked."""
    return blank_unsafe(text or "").strip()


def reset_list_filename(label: str) -> str:
    return f"reset-{label}-list.csv"


UNUSED_HEADER = ("line", "value", "why", "could_be")
NOT_FOUND = "not in the directory"
SEVERAL_USERS = "matches several users"


def unused_lines_csv(unmatched: Sequence[dict[str, Any]]) -> str:
    """The lines of a file of users that were not used (`PendingRequest.file_report`'s
    "unmatched"), with their line numbers: why, and whom an ambiguous one could be."""
    return to_csv(UNUSED_HEADER, (
        (
            item["line"],
            _cell(item["value"]),
            SEVERAL_USERS if item["could_be"] else NOT_FOUND,
            "; ".join(_cell(name) for name in item["could_be"] or ()),
        )
        for item in unmatched
    ))


def unused_lines_filename(label: str) -> str:
    return f"reset-{label}-lines-not-used.csv"
