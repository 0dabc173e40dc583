"""A task as people see it: status and counts from the database, one read for every edge.

Also its pace, worked out from what the database holds (users done, when it started, when it
was read), in the same words wherever it is shown: "41 users/s · about 2 min left".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.approval import ApprovalState, approval_state
from core.models import (
    FINAL_ITEM_STATES,
    FOLLOW_UP_STATES,
    ItemState,
    ResetItem,
    ResetTask,
    TaskStatus,
    utcnow,
)
from core.tally import Tally, task_tally
from core.tasks import state_counts

#: No estimate before this share of the users is done, nor before the task has run this long:
#: the first seconds (planning, a cold worker, the first batch) say little about the pace.
MIN_SAMPLE_FRACTION = 0.01
MIN_SAMPLE_SECONDS = 5.0


@dataclass(frozen=True)
class Pace:
    """Users per second so far, and the seconds left at that rate; None where unknown."""

    rate: float | None = None
    seconds_left: float | None = None


@dataclass(frozen=True)
class FirstDone:
    """When the task's first users were done, and how many were done at that moment."""

    at: datetime
    users: int


def pace(
    done: int,
    total: int,
    started_at: datetime | None,
    now: datetime,
    *,
    planned: bool = True,
    finished: bool = False,
    first: FirstDone | None = None,
) -> Pace:
    """The rate so far and, while it runs, the time left at that rate.

    `now` is when the counts were read (or when the task ended). A long average, not a recent
    window: a task's cost per user is even (one hash each), so it is the steadiest estimate.
    While the task runs it is taken from the moment its `first` users were done, so the
    start-up (planning, a cold worker, the first batch in flight) does not make the whole task
    look slower; once it has ended, over the whole run. All of it is what the database holds.
    No figure before a meaningful sample (MIN_SAMPLE_FRACTION done and MIN_SAMPLE_SECONDS run);
    no time left before planning has counted every user, or once every user is done.
    """
    if started_at is None or done <= 0:
        return Pace()
    elapsed = (now - started_at).total_seconds()
    if elapsed < MIN_SAMPLE_SECONDS:
        return Pace()
    rate = done / elapsed
    if first is not None and not finished:
        since_first = (now - first.at).total_seconds()
        if since_first >= MIN_SAMPLE_SECONDS / 2 and done > first.users:
            rate = (done - first.users) / since_first
    if finished or not planned or done >= total or done < total * MIN_SAMPLE_FRACTION:
        return Pace(rate=rate)
    return Pace(rate=rate, seconds_left=(total - done) / rate)


def rate_words(rate: float) -> str:
    """"41 users/s", "4.2 users/s", "0.35 users/s": two significant figures at least."""
    if rate >= 10:
        return f"{round(rate):,} users/s"
    if rate >= 1:
        return f"{rate:.1f} users/s"
    return f"{rate:.2f} users/s"


def duration_words(seconds: float) -> str:
    """A remaining time as people say it: "less than a minute", "about 2 min", "about 3 hours"."""
    if seconds < 60:
        return "less than a minute"
    minutes = round(seconds / 60)
    if minutes < 10:
        return f"about {minutes} min"
    if minutes < 55:
        return f"about {5 * round(minutes / 5)} min"  # "about 43 min" would promise too much
    hours = round(seconds / 1800) / 2  # to the half hour
    if hours < 24:
        shown = f"{hours:g}"
        return f"about {shown} hour" if hours == 1 else f"about {shown} hours"
    days = math.floor(seconds / 86400 + 0.5)
    return "about 1 day" if days == 1 else f"about {days} days"


def pace_words(measured: Pace) -> str:
    """"41 users/s · about 2 min left"; only the parts known; "" when nothing is."""
    parts = []
    if measured.rate is not None:
        parts.append(rate_words(measured.rate))
    if measured.seconds_left is not None:
        parts.append(f"{duration_words(measured.seconds_left)} left")
    return " · ".join(parts)


@dataclass(frozen=True)
class TaskSnapshot:
    id: int
    status: TaskStatus
    scope: str
    mode: str
    require_change: bool
    requester: str
    requester_name: str
    total: int
    planned: bool
    counts: dict[ItemState, int]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    slack_channel: str | None
    slack_thread_ts: str | None
    retry_of: int | None
    cancel_requested: bool
    error: str | None
    #: Set while the task waits for the mail server (see jobs/outage.py).
    paused_since: datetime | None = None
    paused_until: datetime | None = None
    pause_reason: str | None = None

    @property
    def paused(self) -> bool:
        return self.paused_since is not None and not self.status.is_final
    #: When the counts were read: the "now" of the pace (None: no pace while it runs).
    read_at: datetime | None = None
    first_done: FirstDone | None = None
    #: Set on a task that needed a second admin's approval (core/approval.py).
    approval: ApprovalState | None = None
    #: A scheduled reset: its start time, the users its preview counted (the same preview
    #: approvers are shown) and the count taken at its start, and since when it waits for a new
    #: confirmation because those differ (core/schedule.py).
    start_at: datetime | None = None
    preview_users: int | None = None
    recheck_users: int | None = None
    start_held_at: datetime | None = None
    #: How many users were picked (the "selected" scopes): the scope's words say it.
    selected: int = 0
    #: What an e-mailed reset does to users without an address (NoEmailChoice's value).
    no_email: str = "reset"

    @property
    def held(self) -> bool:
        return self.start_held_at is not None and self.status is TaskStatus.SCHEDULED

    @property
    def done(self) -> int:
        """Users whose outcome is final."""
        return sum(self.counts[state] for state in FINAL_ITEM_STATES)

    @property
    def ended_unstarted(self) -> bool:
        """It ended before it listed anyone: cancelled before its start, or never approved."""
        return self.status.is_final and self.started_at is None and not self.total

    @property
    def tally(self) -> Tally:
        """Its users and what became of them: the counts every edge shows (core/tally.py)."""
        return task_tally(self.counts, total=self.total, ended_unstarted=self.ended_unstarted,
                          preview_users=self.preview_users)

    @property
    def fraction(self) -> float:
        """The share done; users not reached (cancelled first) are not done."""
        if not self.total:
            return 0.0
        return self.tally.fraction

    @property
    def follow_up_count(self) -> int:
        return sum(self.counts[state] for state in FOLLOW_UP_STATES)

    @property
    def pace(self) -> Pace:
        """Its rate, and while it runs its time left; users cancelled are not work done."""
        cancelled = self.counts.get(ItemState.CANCELLED, 0)
        worked, total = self.done - cancelled, self.total - cancelled
        if self.status.is_final:
            if self.finished_at is None:
                return Pace()
            return pace(worked, total, self.started_at, self.finished_at, finished=True)
        if self.read_at is None or self.status is not TaskStatus.RUNNING:
            return Pace()
        return pace(worked, total, self.started_at, self.read_at, planned=self.planned,
                    finished=self.cancel_requested, first=self.first_done)


def snapshot(session: Session, task_id: int) -> TaskSnapshot | None:
    task = session.get(ResetTask, task_id)
    if task is None:
        return None
    return TaskSnapshot(
        id=task.id,
        status=TaskStatus(task.status),
        scope=task.scope,
        mode=task.mode,
        require_change=task.require_change,
        requester=task.requester,
        requester_name=task.requester_name,
        total=task.total,
        planned=task.planned,
        counts=state_counts(session, task.id),
        created_at=task.created_at,
        started_at=task.started_at,
        finished_at=task.finished_at,
        slack_channel=task.slack_channel,
        slack_thread_ts=task.slack_thread_ts,
        retry_of=task.retry_of,
        cancel_requested=task.cancel_requested,
        error=task.error,
        paused_since=task.paused_since,
        paused_until=task.paused_until,
        pause_reason=task.pause_reason,
        read_at=utcnow(),
        first_done=first_done(session, task.id) if task.status == TaskStatus.RUNNING else None,
        approval=approval_state(task),
        start_at=task.start_at,
        preview_users=task.preview_users,
        recheck_users=task.recheck_users,
        start_held_at=task.start_held_at,
        selected=len(task.selection or []),
        no_email=task.no_email,
    )


def first_done(session: Session, task_id: int) -> FirstDone | None:
    """The earliest moment items of the task became final, and how many did then.

    A batch's items are written in one statement with one timestamp, so this is the first
    batch done; one grouped read of the task's finished items.
    """
    row = session.execute(
        select(ResetItem.updated_at, func.count())
        .where(
            ResetItem.task_id == task_id,
            ResetItem.state.in_([state.value for state in FINAL_ITEM_STATES]),
        )
        .group_by(ResetItem.updated_at)
        .order_by(ResetItem.updated_at)
        .limit(1)
    ).first()
    return None if row is None else FirstDone(row[0], int(row[1]))
