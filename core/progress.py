"""A task as people see it: status and counts from the database, one read for every edge."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from core.models import FINAL_ITEM_STATES, FOLLOW_UP_STATES, ItemState, ResetTask, TaskStatus
from core.tasks import state_counts


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

    @property
    def done(self) -> int:
        """Users whose outcome is final."""
        return sum(self.counts[state] for state in FINAL_ITEM_STATES)

    @property
    def fraction(self) -> float:
        if not self.total:
            return 1.0 if self.status.is_final else 0.0
        return min(1.0, self.done / self.total)

    @property
    def follow_up_count(self) -> int:
        return sum(self.counts[state] for state in FOLLOW_UP_STATES)


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
    )
