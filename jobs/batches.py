"""The small records a job's work on items passes between its stages.

A claimed batch is hashed on the job's thread, then written and mailed on the helper thread
(see `jobs.chunks`); these records, and the hashed batch of `jobs.settling`, are all the two
threads hand each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import ColumnElement

from core.models import ItemState, Mode, NoEmailChoice
from core.tally import planned_outcome

#: Which items a job works on, given the time of the claim (a retry waits for its due time).
Conditions = Callable[[datetime], list[ColumnElement[bool]]]


@dataclass(frozen=True)
class KnownPasswords:
    """The passwords staff typed for a task, unsealed for one job: in memory only."""

    default: str | None = field(default=None, repr=False)
    #: For users without an address when staff chose `set`.
    handout: str | None = field(default=None, repr=False)
    #: The least length of a generated password: the library system's own minimum (Koha's).
    generated_at_least: int = 0


@dataclass(frozen=True)
class TaskView:
    """What the work on items needs to know of its task, read once per job."""

    id: int
    mode: Mode
    require_change: bool
    sealed: str | None
    #: The task was paused for a mail outage when the job read it.
    paused: bool = False
    no_email: NoEmailChoice = NoEmailChoice.RESET
    no_email_sealed: str | None = None

    @property
    def unmailed_state(self) -> ItemState:
        """The outcome of a user this task will not mail (the rule the exact list says too)."""
        return planned_outcome(self.mode, self.no_email, has_email=False)
    #: Users in the task when the job began (final once it is planned): paces progress checks.
    total: int = 0


@dataclass(frozen=True)
class Claimed:
    id: int
    user_id: str
    chunk: int
    username: str
    full_name: str
    email: str | None
    attempts: int


@dataclass(frozen=True)
class Claim:
    items: list[Claimed]
    #: time.monotonic() when the lease was taken: it runs from then, not from when hashing starts
    taken: float


@dataclass(frozen=True)
class ItemOutcome:
    """How an item's mail went: its new state, written only if this worker still holds it."""

    item_id: int
    state: ItemState
    attempts: int
    next_attempt_at: datetime | None = None
    error: str | None = None


@dataclass
class Settled:
    """What a settled batch hands back to the job's thread."""

    #: Item ids waiting for a mail retry, by the number of the attempt coming up.
    retries: dict[int, list[int]] = field(default_factory=dict)
    stop: bool = False
    #: The batch claimed in the same transaction, to hash after the one being hashed now.
    claimed: Claim | None = None
    #: States not written yet (a batch nobody is mailed, its hashes in another database): they
    #: go with the next batch's lease, in its transaction.
    carried: list[ItemOutcome] = field(default_factory=list)
