"""Mail and directory outages pause a task: nobody's password changes while nobody could be
told, or while the directory cannot take it.

In e-mailed mode a batch is hashed only once the mail server has taken a connection (and our
login). When it will not, the batch goes back untouched and the task *pauses*: claims of pending
users stop until `paused_until`, when the reaper puts the task's chunks back on the queue and the
first batch tries the server again. Each try waits twice as long as the last, up to
`MAX_PAUSE_SECONDS`; an outage longer than MAIL_OUTAGE_GIVE_UP fails the task, and its untouched
users are listed as not reset. The pause is in the database, so it outlives Redis and workers.

A directory (an LDAP server) that stops answering mid-batch pauses the task the same way, with
DIRECTORY_OUTAGE_RETRY and DIRECTORY_OUTAGE_GIVE_UP; only the directory setting passwords again
ends that pause (a mail server that answers does not: it was never the cause).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, or_, select, update

from blocks.text import outage_failure_words
from core.models import ResetTask, TaskStatus, utcnow
from core.outage import DIRECTORY_REASON_START, Outage, directory_reason
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


def pause_for_mail(context: WorkerContext, task_id: int, reason: str) -> None:
    """Pause the task until the mail server may answer; fail it if it has been down longer
    than MAIL_OUTAGE_GIVE_UP."""
    settings = context.settings
    _pause(context, task_id, reason, settings.mail_outage_retry, settings.mail_outage_give_up)


def pause_for_directory(context: WorkerContext, task_id: int, said: str) -> None:
    """Pause the task until its directory may answer (`said`: the directory's own words); fail
    it if it has been down longer than DIRECTORY_OUTAGE_GIVE_UP."""
    settings = context.settings
    _pause(context, task_id, directory_reason(said), settings.directory_outage_retry,
           settings.directory_outage_give_up)


def _pause(
    context: WorkerContext, task_id: int, reason: str, first_wait: float, give_up: float
) -> None:
    now = utcnow()
    with context.sessions() as session:
        row = session.execute(
            select(ResetTask.paused_since, ResetTask.pauses).where(
                ResetTask.id == task_id, ResetTask.status == TaskStatus.RUNNING)
        ).one_or_none()
        if row is None:
            return
        since, pauses = row.paused_since or now, row.pauses
        if now - since >= timedelta(seconds=give_up):
            session.rollback()
            fail_task(context, task_id, outage_failure_words(
                reason, (now - since).total_seconds()))
            return
        until = now + timedelta(seconds=pause_delay(first_wait, pauses))
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
    """The mail server answers again: end a pause the mail server caused (not one of the
    directory's, which the directory's own answer ends)."""
    _resume(context, task_id, Outage.MAIL)


def resume_after_directory_outage(context: WorkerContext, task_id: int) -> None:
    """The directory set passwords again: end a pause it caused."""
    _resume(context, task_id, Outage.DIRECTORY)


def _resume(context: WorkerContext, task_id: int, outage: Outage) -> None:
    """Clear the pause (said once, by whoever clears it). The reason stays, so that the
    "resumed" line can say what answers again."""
    with context.sessions() as session:
        cleared = rowcount(session.execute(
            update(ResetTask)
            .where(ResetTask.id == task_id, ResetTask.paused_since.is_not(None),
                   _paused_by(outage))
            .values(paused_until=None, paused_since=None, pauses=0)
        ))
        session.commit()
    if cleared:
        logger.info("task %s resumed: the %s answers", task_id,
                    "directory" if outage is Outage.DIRECTORY else "mail server")
        SafeReporter(context.reporter).task_resumed(task_id)


def _paused_by(outage: Outage) -> ColumnElement[bool]:
    by_directory = ResetTask.pause_reason.startswith(DIRECTORY_REASON_START)
    if outage is Outage.DIRECTORY:
        return by_directory
    return or_(ResetTask.pause_reason.is_(None), ~by_directory)
