"""Mail outages pause a task: nobody's password changes while nobody could be told.

In e-mailed mode a batch is hashed only once the mail server has taken a connection (and our
login). When it will not, the batch goes back untouched and the task *pauses*: claims of pending
users stop until `paused_until`, when the reaper puts the task's chunks back on the queue and the
first batch tries the server again. Each try waits twice as long as the last, up to
`MAX_PAUSE_SECONDS`; an outage longer than MAIL_OUTAGE_GIVE_UP fails the task, and its untouched
users are listed as not reset. The pause is in the database, so it outlives Redis and workers.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, or_, select, update

from core.models import ResetTask, TaskStatus, utcnow
from jobs.context import WorkerContext
from jobs.finishing import fail_task
from jobs.reporting import SafeReporter
from jobs.rows import rowcount

logger = logging.getLogger(__name__)

#: The longest wait between two tries of a mail server that is down.
MAX_PAUSE_SECONDS = 15 * 60
#: Transient refusals in a row (421, dropped connections) that count as an outage.
OUTAGE_STREAK = 5


def not_paused(now: datetime) -> ColumnElement[bool]:
    """The claim condition for pending users: the task is not paused (or its pause is over)."""
    return or_(ResetTask.paused_until.is_(None), ResetTask.paused_until <= now)


def pause_delay(first: float, pauses: int) -> float:
    """Seconds before try number `pauses + 1`: the first wait, doubled each time, capped."""
    return float(min(first * 2.0 ** min(pauses, 20), MAX_PAUSE_SECONDS))


def pause_for_mail(
    context: WorkerContext, task_id: int, reason: str, *, what: str = "The mail server"
) -> None:
    """Pause the task until the mail server (or `what`: the directory) may answer; fail it if
    it has been down too long."""
    now = utcnow()
    with context.sessions() as session:
        row = session.execute(
            select(ResetTask.paused_since, ResetTask.pauses).where(
                ResetTask.id == task_id, ResetTask.status == TaskStatus.RUNNING)
        ).one_or_none()
        if row is None:
            return
        since, pauses = row.paused_since or now, row.pauses
        if now - since >= timedelta(seconds=context.settings.mail_outage_give_up):
            session.rollback()
            fail_task(context, task_id, f"{what} could not be used for "
                      f"{_duration(now - since)}: {reason}")
            return
        until = now + timedelta(seconds=pause_delay(context.settings.mail_outage_retry, pauses))
        first = rowcount(session.execute(
            update(ResetTask)
            .where(ResetTask.id == task_id, ResetTask.status == TaskStatus.RUNNING)
            .values(paused_until=until, paused_since=since, pauses=pauses + 1,
                    pause_reason=reason[:500])
        )) and row.paused_since is None
        session.commit()
    logger.warning("task %s paused until %s: %s", task_id, until.isoformat(timespec="seconds"),
                   reason)
    if first:
        SafeReporter(context.reporter).task_paused(task_id)


def resume_after_mail_outage(context: WorkerContext, task_id: int) -> None:
    """The mail server answers again: clear the pause (said once, by whoever clears it)."""
    with context.sessions() as session:
        cleared = rowcount(session.execute(
            update(ResetTask)
            .where(ResetTask.id == task_id, ResetTask.paused_since.is_not(None))
            .values(paused_until=None, paused_since=None, pauses=0, pause_reason=None)
        ))
        session.commit()
    if cleared:
        logger.info("task %s resumed: the mail server answers", task_id)
        SafeReporter(context.reporter).task_resumed(task_id)


def _duration(elapsed: timedelta) -> str:
    minutes = int(elapsed.total_seconds() // 60)
    if minutes < 60:
        return f"{max(minutes, 0)} min"
    return f"{minutes // 60} h {minutes % 60} min"
