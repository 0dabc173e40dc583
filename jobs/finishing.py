"""How a task ends: failing it, settling the users it never reached, its final status.

A task ends when it is planned and no item is left to work on; whichever worker sees that first
ends it (a conditional UPDATE), reports the end once and wakes the queued tasks. A failed
or cancelled task first gives every user not yet reached an outcome.
"""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core import audit
from core.models import ItemState, Mode, ResetItem, ResetTask, TaskStatus, utcnow
from core.tasks import state_counts
from jobs.context import WorkerContext
from jobs.progress import report_progress
from jobs.queueing import enqueue_task
from jobs.reporting import SafeReporter
from jobs.rows import ACTIVE_ITEM_STATES, ACTOR, rowcount

logger = logging.getLogger(__name__)

#: Queued tasks woken when a task ends; any beyond are woken by the reaper, a few seconds on.
WAKE_AT_MOST = 100


def fail_task(context: WorkerContext, task_id: int, error: str) -> None:
    """Record why the task cannot go on; finishing it settles the users not yet touched."""
    logger.error("task %s failed: %s", task_id, error)
    with context.sessions() as session:
        session.execute(
            update(ResetTask)
            .where(ResetTask.id == task_id, ResetTask.error.is_(None))
            .values(error=error[:2000])
        )
        session.execute(
            update(ResetTask)
            .where(ResetTask.id == task_id, ResetTask.status == TaskStatus.RUNNING)
            .values(planned=True, plan_lease_until=None)
        )
        session.commit()
    finish_if_done(context, task_id)


def cancel_unstarted(context: WorkerContext, session: Session, task_id: int) -> None:
    """A task cancelled while it waited to start ends without ever starting."""
    ended = rowcount(
        session.execute(
            update(ResetTask)
            .where(ResetTask.id == task_id, ResetTask.status == TaskStatus.QUEUED)
            .values(
                status=TaskStatus.CANCELLED, finished_at=utcnow(), default_password_sealed=None,
                no_email_password_sealed=None, planned=True,
            )
            .execution_options(synchronize_session=False)
        )
    )
    if ended:
        audit.record(session, ACTOR, "finish", task_id, status=TaskStatus.CANCELLED.value)
    session.commit()
    if ended:
        SafeReporter(context.reporter).task_finished(task_id)


def final_status(
    cancel_requested: bool, error: str | None, counts: dict[ItemState, int]
) -> TaskStatus:
    if error:
        return TaskStatus.FAILED
    if cancel_requested:
        return TaskStatus.CANCELLED
    if counts.get(ItemState.NOTIFY_FAILED) or counts.get(ItemState.REFUSED):
        return TaskStatus.COMPLETED_WITH_ERRORS
    return TaskStatus.COMPLETED


def finish_if_done(context: WorkerContext, task_id: int) -> bool:
    """End a planned task with no user left to work on; True for the one caller that ended it.

    A cancelled or failed task first settles what had not started (see `_settle_untouched`).
    """
    if _not_to_end(context, task_id):
        return False
    now = utcnow()
    with context.sessions() as session:
        task = session.get(ResetTask, task_id)
        if task is None or task.status != TaskStatus.RUNNING or not task.planned:
            return False
        _settle_untouched(session, task, now)
        if _has_active_items(session, task_id):
            session.commit()
            return False
        status = _end(session, task, now)
        if status is None:
            session.rollback()
            return False
        session.commit()
    logger.info("task %s ended: %s", task_id, status.value)
    # Its last progress step, unless a check already told it: jobs no longer count at each end.
    report_progress(context, task_id)
    SafeReporter(context.reporter).task_finished(task_id)
    start_next_queued(context)
    return True


def _not_to_end(context: WorkerContext, task_id: int) -> bool:
    """Plainly not a task to end or settle now, told by one read: not running, not planned
    yet, or running as asked (no error, no cancel) with users left to work on. The usual case
    at the end of a chunk's job, so it costs neither a task loaded nor a transaction that
    writes."""
    active = (
        select(ResetItem.id)
        .where(ResetItem.task_id == task_id,
               ResetItem.state.in_([state.value for state in ACTIVE_ITEM_STATES]))
        .exists()
    )
    with context.sessions() as session:
        row = session.execute(
            select(ResetTask.status, ResetTask.planned, ResetTask.error,
                   ResetTask.cancel_requested, active)
            .where(ResetTask.id == task_id)
        ).one_or_none()
    if row is None:
        return True
    status, planned, error, cancel_requested, unfinished = row
    if status != TaskStatus.RUNNING or not planned:
        return True
    return not error and not cancel_requested and bool(unfinished)


def start_next_queued(context: WorkerContext) -> list[int]:
    """Wake the queued tasks, oldest first: any may have waited for the one that ended.

    Each checks again whether a running task shares its users; one still blocked waits on
    (quietly, having said so once). Waking after the end's commit is what makes a wait never
    miss the end it waits for. Returns the ids woken.
    """
    with context.sessions() as session:
        waiting = [
            int(task_id) for task_id in session.scalars(
                select(ResetTask.id)
                .where(ResetTask.status == TaskStatus.QUEUED)
                .order_by(ResetTask.id)
                .limit(WAKE_AT_MOST)
            )
        ]
    for task_id in waiting:
        enqueue_task(context.queue, task_id)
    return waiting


def _settle_untouched(session: Session, task: ResetTask, now: datetime) -> None:
    """A failed or cancelled task: users not yet reset, and mails waiting, get their outcome.

    After a failure, users to be mailed are listed for follow-up (`notify_failed`, "Not reset")
    so a retry task can pick them up once the cause is fixed; otherwise they are `cancelled`.
    """
    if task.error:
        if task.mode == Mode.GENERATED:
            untouched, reason = ItemState.NOTIFY_FAILED, f"Not reset: {task.error}"[:2000]
        else:
            untouched, reason = ItemState.CANCELLED, None
        waiting = f"The mail was not sent again: {task.error}"
    elif task.cancel_requested:
        untouched, reason = ItemState.CANCELLED, None
        waiting = "The task was cancelled before the mail could be sent again."
    else:
        return
    session.execute(
        update(ResetItem)
        .where(ResetItem.task_id == task.id, ResetItem.state == ItemState.PENDING)
        .values(state=untouched, last_error=reason, updated_at=now)
    )
    _give_up_waiting_mails(session, task.id, waiting, now)


def _give_up_waiting_mails(session: Session, task_id: int, reason: str, now: datetime) -> None:
    session.execute(
        update(ResetItem)
        .where(ResetItem.task_id == task_id, ResetItem.state == ItemState.RETRY_WAIT)
        .values(state=ItemState.NOTIFY_FAILED, last_error=reason[:2000], next_attempt_at=None,
                updated_at=now)
    )


def _has_active_items(session: Session, task_id: int) -> bool:
    unfinished = session.scalar(
        select(ResetItem.id)
        .where(
            ResetItem.task_id == task_id,
            ResetItem.state.in_([state.value for state in ACTIVE_ITEM_STATES]),
        )
        .limit(1)
    )
    return unfinished is not None


def _end(session: Session, task: ResetTask, now: datetime) -> TaskStatus | None:
    """Give the task its final status, audited; None when another worker ended it first."""
    counts = state_counts(session, task.id)
    status = final_status(task.cancel_requested, task.error, counts)
    ended = rowcount(
        session.execute(
            update(ResetTask)
            .where(ResetTask.id == task.id, ResetTask.status == TaskStatus.RUNNING)
            .values(
                status=status,
                finished_at=now,
                default_password_sealed=None,
                no_email_password_sealed=None,
                plan_lease_until=None,
            )
            .execution_options(synchronize_session=False)
        )
    )
    if not ended:
        return None
    audit.record(
        session, ACTOR, "finish", task.id, status=status.value, total=task.total,
        counts={state.value: count for state, count in counts.items() if count},
    )
    return status
