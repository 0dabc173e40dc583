"""The scopes, modes and the states of tasks and items, as plain enums.

Apart from core/models.py (the tables that store them) so that what only names a state or a
scope (the command line's parsers, the terminal's words, Slack's texts) does not load the ORM
and SQLAlchemy with it: `resetbot --help` reads these.
"""

from __future__ import annotations

import enum


class Scope(enum.StrEnum):
    ALL = "all"
    ALL_EXCEPT_SELECTED = "all_except_selected"
    ALL_WITHOUT_ROLE = "all_without_role"
    SELECTED_ONLY = "selected_only"

    @property
    def needs_selection(self) -> bool:
        return self in (Scope.ALL_EXCEPT_SELECTED, Scope.SELECTED_ONLY)


class Mode(enum.StrEnum):
    GENERATED = "generated"  # a new random password per user, e-mailed
    DEFAULT = "default"  # one password set for all, nobody e-mailed
    UNDO = "undo"  # an Undo task (core/undo.py): each user's previous password put back


class NoEmailChoice(enum.StrEnum):
    """What an e-mailed reset does to users without an address (nobody can mail them)."""

    RESET = "reset"  # a random password nobody is told: they use "forgot password", or staff help
    SKIP = "skip"  # left alone: their password does not change
    SET = "set"  # a password staff typed, which staff tell them; changed at next sign-in


class TaskStatus(enum.StrEnum):
    #: Waits for its `start_at`; the reaper starts it (core/schedule.py, jobs/scheduling.py).
    SCHEDULED = "scheduled"
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    COMPLETED_WITH_ERRORS = "completed_with_errors"
    CANCELLED = "cancelled"
    FAILED = "failed"
    # Four-eyes approval (core/approval.py): waiting for a second admin, then one of these ends.
    AWAITING_APPROVAL = "awaiting_approval"
    REJECTED = "rejected"  # an approver (or the requester) said no: nothing changed
    EXPIRED = "expired"  # nobody approved within RESET_APPROVAL_TTL: nothing changed

    @property
    def is_final(self) -> bool:
        return self not in (TaskStatus.SCHEDULED, TaskStatus.QUEUED, TaskStatus.RUNNING,
                            TaskStatus.AWAITING_APPROVAL)

    @property
    def words(self) -> str:
        """The status as people read it: "completed with errors"."""
        return self.value.replace("_", " ")


class ItemState(enum.StrEnum):
    PENDING = "pending"  # waiting to be claimed
    CLAIMED = "claimed"  # leased by a worker: hashing, writing, mailing
    RETRY_WAIT = "retry_wait"  # hash written, mail failed transiently, next attempt scheduled
    RESET = "reset"  # default password set (final)
    NOTIFIED = "notified"  # generated password e-mailed (final)
    NO_EMAIL = "no_email"  # generated password set, no address: staff must tell them (final)
    NOTIFY_FAILED = "notify_failed"  # password set, mail failed for good (final)
    CANCELLED = "cancelled"  # never touched: the task was cancelled first (final)
    SKIPPED = "skipped"  # no address, and staff chose to leave them alone (final)
    HANDED_OUT = "handed_out"  # no address: set to the password staff typed, to tell (final)
    # The directory's policy said no (its reason in `last_error`): not changed, not mailed.
    REFUSED = "refused"
    LOCKED = "locked"  # locked on purpose, and the task leaves such accounts out (final)
    # An Undo task's items (core/undo.py):
    RESTORED = "restored"  # the password before the task is back (final)
    CHANGED_SINCE = "changed_since"  # changed after the task: left alone (final)

    @property
    def is_final(self) -> bool:
        return self in FINAL_ITEM_STATES


FINAL_ITEM_STATES = frozenset(
    {
        ItemState.RESET,
        ItemState.NOTIFIED,
        ItemState.NO_EMAIL,
        ItemState.NOTIFY_FAILED,
        ItemState.CANCELLED,
        ItemState.SKIPPED,
        ItemState.HANDED_OUT,
        ItemState.REFUSED,
        ItemState.LOCKED,
        ItemState.RESTORED,
        ItemState.CHANGED_SINCE,
    }
)
#: Outcomes whose users staff must contact by hand.
FOLLOW_UP_STATES = frozenset(
    {ItemState.NO_EMAIL, ItemState.NOTIFY_FAILED, ItemState.SKIPPED, ItemState.HANDED_OUT,
     ItemState.REFUSED}
)
