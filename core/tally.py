"""How many users a reset covers and what became of them: the one count every edge shows.

The preview, its confirm button, the thread's parent and summary, App Home, `tasks show` and
the private list all say their numbers through a `Tally`: made from a preview's counts before
anything runs (`preview_tally`), from the task's items afterwards (`task_tally`). Users left
alone (no e-mail address, `skip`) or never reached (the task was cancelled or failed first)
are counted apart, never as passwords reset or as work done.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from core.directory.users import Preview
from core.models import FINAL_ITEM_STATES, ItemState, Mode, NoEmailChoice

#: Outcomes whose user's password was changed (a mail may still be due for RETRY_WAIT).
CHANGED_STATES = frozenset({
    ItemState.RESET, ItemState.NOTIFIED, ItemState.NO_EMAIL, ItemState.HANDED_OUT,
    ItemState.NOTIFY_FAILED, ItemState.RETRY_WAIT,
    ItemState.RESTORED,  # an Undo's: the previous password put back
})


@dataclass(frozen=True)
class Tally:
    """A reset's users: in scope, changed, left alone, not reached, and done so far.

    For a preview `changed` is the passwords a confirm would change; for a task, those changed
    so far. `done` is the users whose outcome is final, those not reached left out.
    """

    users: int
    changed: int
    left_alone: int = 0
    not_reached: int = 0
    done: int = 0
    mailed: int = 0
    mail_failed: int = 0

    @property
    def fraction(self) -> float:
        """The share of the users in scope whose outcome is final (not reached: not done)."""
        if not self.users:
            return 0.0
        return min(1.0, self.done / self.users)


def planned_outcome(mode: Mode, no_email: NoEmailChoice, has_email: bool) -> ItemState:
    """The outcome a reset gives a user when all goes well: the task's rule, said once."""
    if mode is Mode.DEFAULT:
        return ItemState.RESET
    if mode is Mode.UNDO:
        return ItemState.RESTORED
    if has_email:
        return ItemState.NOTIFIED
    return {
        NoEmailChoice.RESET: ItemState.NO_EMAIL,
        NoEmailChoice.SKIP: ItemState.SKIPPED,
        NoEmailChoice.SET: ItemState.HANDED_OUT,
    }[no_email]


def preview_tally(
    preview: Preview, mode: Mode, no_email: NoEmailChoice, *, skip_locked: bool = False,
) -> Tally:
    """What a confirm of this preview would do: users without an address left alone under
    `skip` in an e-mailed reset, and accounts locked on purpose left out, are not passwords
    reset. (The preview does not count who is both: the two are added, at most everyone.)"""
    left_alone = (preview.without_email
                  if mode is Mode.GENERATED and no_email is NoEmailChoice.SKIP else 0)
    if skip_locked:
        left_alone = min(preview.users, left_alone + preview.locked)
    mailed = preview.emailable if mode is Mode.GENERATED else 0
    return Tally(users=preview.users, changed=preview.users - left_alone,
                 left_alone=left_alone, mailed=mailed)


def task_tally(
    counts: Mapping[ItemState, int], *, total: int, ended_unstarted: bool = False,
    preview_users: int | None = None,
) -> Tally:
    """What a task did, from its items' states (`state_counts`).

    A task that ended without starting (cancelled before its start, or never approved) has
    no items: its users are the preview's count, none of them reached.
    """
    def count(*states: ItemState) -> int:
        return sum(counts.get(state, 0) for state in states)

    not_reached = count(ItemState.CANCELLED)
    users = total
    if ended_unstarted and not total and preview_users:
        users = not_reached = preview_users
    return Tally(
        users=users,
        changed=count(*CHANGED_STATES),
        # Left alone: no address under `skip`, locked on purpose, or (an Undo's) changed since.
        left_alone=count(ItemState.SKIPPED, ItemState.LOCKED, ItemState.CHANGED_SINCE),
        not_reached=not_reached,
        done=count(*FINAL_ITEM_STATES) - count(ItemState.CANCELLED),
        mailed=count(ItemState.NOTIFIED),
        mail_failed=count(ItemState.NOTIFY_FAILED),
    )
