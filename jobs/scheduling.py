"""Scheduled resets in the workers: the reaper starts each one when its time comes.

The database is the truth: a scheduled task is a row (`status = 'scheduled'`, `start_at` in
UTC), never only a delayed job in Redis, so it starts within a reaper interval of its time even
when Redis was emptied, every worker restarted or the host rebooted meanwhile; one whose time
passed while nothing ran starts at the first reaper pass, and its thread says how late.

Each worker's reaper (`run_schedule`, every RESET_REAPER_INTERVAL) does, for every task:
- before its start (RESET_SCHEDULE_REMINDER): a reminder in its thread, once (`reminded_at`);
- at its start: the preview is taken again; a conditional UPDATE
  (`WHERE status = 'scheduled' AND start_at <= now AND start_held_at IS NULL`) lets exactly one
  worker move it on, to `queued` (its plan is enqueued) or, when the count differs from the
  scheduled preview by more than 10 %, to held (`start_held_at`): it waits for someone to
  confirm again (core.tasks.confirm_held_start); or, when the approval rule asks a second
  admin for the count taken now and no approval covers it (`core.tasks.approval_needed`: it
  crossed RESET_APPROVAL_MIN_USERS, or grew more than 10 % over what was approved), back to
  `awaiting_approval` with the new counts: never started by whoever asked for it alone;

A scheduled task whose parent message never reached Slack (a delivery Redis lost) has it posted
again by `jobs.slack_reporter.resend_lost_announcements`, as one awaiting approval has.
A scheduled task that needed approval only gets here approved: one still awaiting approval when
its time comes expires instead (core/approval.py, `core.tasks.approval_deadline`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update

from core import audit
from core.directory.ids import user_ids
from core.models import ResetTask, Scope, TaskStatus
from core.schedule import as_utc, counts_drifted, is_late, lateness
from core.tasks import approval_needed, ask_approval_again
from jobs.context import WorkerContext
from jobs.queueing import enqueue_task
from jobs.reporting import SafeReporter
from jobs.rows import ACTOR, rowcount

logger = logging.getLogger(__name__)

@dataclass
class ScheduleReport:
    started: int = 0
    held: int = 0
    reminded: int = 0


def run_schedule(context: WorkerContext, now: datetime) -> ScheduleReport:
    """One reaper pass over the scheduled tasks (see the module's docstring)."""
    report = ScheduleReport()
    send_reminders(context, now, report)
    for task_id in due_tasks(context, now):
        outcome = start_scheduled(context, task_id, now)
        if outcome is TaskStatus.QUEUED:
            report.started += 1
        elif outcome in (TaskStatus.SCHEDULED, TaskStatus.AWAITING_APPROVAL):
            report.held += 1
    return report


def due_tasks(context: WorkerContext, now: datetime) -> list[int]:
    with context.sessions() as session:
        return [int(task_id) for task_id in session.scalars(
            select(ResetTask.id).where(
                ResetTask.status == TaskStatus.SCHEDULED,
                ResetTask.start_at <= now,
                ResetTask.start_held_at.is_(None),
            ).order_by(ResetTask.start_at, ResetTask.id)
        )]


def start_scheduled(context: WorkerContext, task_id: int, now: datetime) -> TaskStatus | None:
    """Start one due task, hold it if its count changed, or ask for approval again if the
    count needs one its approval does not cover; None when another worker did.

    The preview is taken before the conditional UPDATE (a worker that loses the race only
    wasted a count), so the row is locked only for the UPDATE and the audit entries.
    """
    due = (ResetTask.status == TaskStatus.SCHEDULED, ResetTask.start_at <= now,
           ResetTask.start_held_at.is_(None))
    with context.sessions() as session:
        task = session.get(ResetTask, task_id)
        if task is None or task.status != TaskStatus.SCHEDULED or task.start_at is None:
            return None
        # The count it was asked for: the requester's preview, or what approvers last saw.
        start_at, scheduled_users = task.start_at, task.preview_users
        counts = context.directory.preview(Scope(task.scope), user_ids(task.selection))
        users = counts.users
        to_approve = approval_needed(context.settings, task, users)
        session.rollback()  # the count is read; the decision is a transaction of its own
        held = to_approve or counts_drifted(scheduled_users, users)
        if to_approve:
            won = ask_approval_again(session, context.settings, task_id, counts, ACTOR, now,
                                     *due)
        else:
            values: dict[str, object] = {"recheck_users": users}
            values.update({"start_held_at": now} if held else {"status": TaskStatus.QUEUED})
            won = bool(rowcount(session.execute(
                update(ResetTask).where(ResetTask.id == task_id, *due).values(**values)
                .execution_options(synchronize_session=False)
            )))
        if not won:
            session.rollback()
            return None
        late = lateness(start_at, now)
        audit.record(
            session, ACTOR, "schedule_held" if held else "schedule_start", task_id,
            start_at=as_utc(start_at).isoformat(timespec="seconds"),
            late=is_late(start_at, now), late_seconds=int(late.total_seconds()),
            users=users, scheduled_users=scheduled_users,
            **({"needs_approval": True} if to_approve else {}),
        )
        session.commit()
    if to_approve:
        logger.warning("scheduled task %s awaits approval again: %s users now, %s approved or "
                       "scheduled", task_id, users, scheduled_users)
    elif held:
        logger.warning("scheduled task %s held: %s users now, %s when scheduled", task_id,
                       users, scheduled_users)
    else:
        logger.info("scheduled task %s started %s s after its time", task_id,
                    int(late.total_seconds()))
        enqueue_task(context.queue, task_id)
    SafeReporter(context.reporter).schedule_reached(task_id, int(late.total_seconds()))
    if to_approve:
        return TaskStatus.AWAITING_APPROVAL
    return TaskStatus.SCHEDULED if held else TaskStatus.QUEUED


def send_reminders(context: WorkerContext, now: datetime, report: ScheduleReport) -> None:
    """A reminder, once per task, RESET_SCHEDULE_REMINDER before its start (Slack tasks)."""
    lead = context.settings.schedule_reminder
    if not lead:
        return
    with context.sessions() as session:
        coming = list(session.scalars(
            select(ResetTask.id).where(
                ResetTask.status == TaskStatus.SCHEDULED,
                ResetTask.start_at > now,
                ResetTask.start_at <= now + timedelta(seconds=lead),
                ResetTask.reminded_at.is_(None),
                ResetTask.slack_channel.is_not(None),
            )
        ))
    for task_id in coming:
        with context.sessions() as session:
            won = rowcount(session.execute(
                update(ResetTask)
                .where(ResetTask.id == task_id, ResetTask.reminded_at.is_(None))
                .values(reminded_at=now)
                .execution_options(synchronize_session=False)
            ))
            session.commit()
        if won:
            SafeReporter(context.reporter).schedule_reminder(int(task_id))
            report.reminded += 1
