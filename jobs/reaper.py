"""The reaper: puts back work that a dead worker or an emptied Redis lost. The database decides.

Runs every `reaper_interval` seconds in every worker (and once before a burst worker starts):
- items whose lease expired go back to `pending` and their chunk is enqueued again, so a
  SIGKILLed worker costs one lease (seconds), not RQ's abandoned-job timeout;
- a running task whose planner died is planned again from its `plan_cursor`;
- a running task with no job of its own queued, running or scheduled in Redis gets its work
  enqueued again from the database (pending chunks, waiting mail retries);
- mail retries overdue by a grace period with no retry job are enqueued again;
- a task whose users are all done but that never ended is finished;
- a queued task with no job to start it is woken (it waits on if it still shares users);
- an ended task whose Slack summary or CSV delivery was lost gets its end re-reported;
- an expired preview's sealed default password is erased;
- the previous values a task kept for its Undo are erased once its RESET_UNDO_WINDOW closed
  (or its Undo ended);
- an approval request nobody decided on within RESET_APPROVAL_TTL, or before the start time
  of a scheduled task, expires (its passwords erased, its thread told);
- a scheduled task whose time has come is started (or held), its reminder sent
  (jobs/scheduling.py); expiries go first, so a task still awaiting approval at its time
  never starts;
- a task awaiting approval or its start time whose Slack post Redis lost is posted again.

Every job is idempotent (conditional UPDATEs), so a duplicate costs a no-op; `rescued_at` keeps
many workers' reapers from enqueuing the same rescue each interval.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import exists, select, update
from sqlalchemy.orm import Session

from core.approval import expire_overdue
from core.errors import QueueUnavailable
from core.models import ItemState, ResetItem, ResetTask, TaskStatus, utcnow
from core.tasks import forget_expired_passwords
from core.undo import erase_expired
from jobs.context import WorkerContext, use_context
from jobs.finishing import finish_if_done
from jobs.queueing import (
    enqueue_chunk,
    enqueue_retry,
    enqueue_task,
    job_ids_in_redis,
    task_of_job,
)
from jobs.reporting import SafeReporter
from jobs.rows import ACTIVE_ITEM_STATES, update_returning
from jobs.scheduling import run_schedule

logger = logging.getLogger(__name__)

#: How late a scheduled mail retry may be before the reaper assumes its job was lost.
RETRY_GRACE = timedelta(seconds=60)


@dataclass
class ReapReport:
    leases_returned: int = 0
    chunks_enqueued: int = 0
    retries_enqueued: int = 0
    plans_enqueued: int = 0
    tasks_finished: int = 0
    #: Scheduled tasks this pass started (queued) or held.
    schedules_started: int = 0
    schedules_held: int = 0
    #: Not work put back, so not part of `changed`.
    passwords_erased: int = 0
    #: Users whose values kept for an Undo were erased (its window closed, or it ran).
    undo_values_erased: int = 0
    approvals_expired: int = 0

    @property
    def changed(self) -> bool:
        return any(
            (
                self.leases_returned,
                self.chunks_enqueued,
                self.retries_enqueued,
                self.plans_enqueued,
                self.tasks_finished,
            )
        )


def reap(context: WorkerContext, now: datetime | None = None) -> ReapReport:
    """One pass of the reaper; `now` lets tests look into the future instead of sleeping."""
    # Reporters it may call (a task it finishes) can rely on the context, as in a job.
    with use_context(context):
        return _reap(context, now if now is not None else utcnow())


def _reap(context: WorkerContext, now: datetime) -> ReapReport:
    report = ReapReport()
    _erase_expired_passwords(context, now, report)
    _erase_closed_undo_windows(context, now, report)
    _expire_approvals(context, now, report)
    scheduled = run_schedule(context, now)
    report.schedules_started, report.schedules_held = scheduled.started, scheduled.held
    _return_expired_leases(context, now, report)
    jobs = task_jobs(context)
    with context.sessions() as session:
        running = list(
            session.scalars(select(ResetTask).where(ResetTask.status == TaskStatus.RUNNING))
        )
        session.expunge_all()
    for task in running:
        _rescue_running(context, task, jobs.get(task.id, set()), now, report)
    _wake_queued(context, jobs, now, report)
    if context.settings.slack_bot_token:
        # A task's end told to Slack by a delivery that Redis lost is told again. Imported here:
        # a worker without Slack never loads slack_sdk.
        from jobs.slack_reporter import resend_lost_announcements, resend_lost_ends

        resend_lost_ends(context)
        resend_lost_announcements(context)
    return report


def task_jobs(context: WorkerContext) -> dict[int, set[str]]:
    """Kinds of job ('plan', 'chunk', 'retry') each task has queued, running or scheduled."""
    found: dict[int, set[str]] = defaultdict(set)
    for entry in job_ids_in_redis(context.redis, context.queue):
        parsed = task_of_job(entry)
        if parsed is not None:
            found[parsed[0]].add(parsed[1])
    return dict(found)


def _erase_expired_passwords(context: WorkerContext, now: datetime, report: ReapReport) -> None:
    """A preview nobody confirmed keeps its sealed password no longer than a reaper pass."""
    with context.sessions() as session:
        report.passwords_erased = forget_expired_passwords(session, now)
        session.commit()
    if report.passwords_erased:
        logger.info("erased the sealed password of %s expired previews", report.passwords_erased)


def _erase_closed_undo_windows(context: WorkerContext, now: datetime, report: ReapReport) -> None:
    """The previous values a task kept for its Undo stay no longer than RESET_UNDO_WINDOW after
    it ended, nor once its Undo has ended (core/undo.py)."""
    with context.sessions() as session:
        report.undo_values_erased, tasks = erase_expired(session, context.settings, now)
        session.commit()
    if not tasks:
        return
    logger.info("erased the kept values of %s users (Undo window closed)",
                report.undo_values_erased)
    if context.settings.slack_bot_token:
        # Their threads drop the Undo button. Imported here: a worker without Slack never
        # loads slack_sdk.
        from jobs.slack_reporter import announce

        for task_id in tasks:
            try:
                announce(context.queue, task_id)
            except QueueUnavailable:
                logger.warning("could not have task %s's thread drop its Undo", task_id)


def _expire_approvals(context: WorkerContext, now: datetime, report: ReapReport) -> None:
    """Approval requests past RESET_APPROVAL_TTL end `expired`; each thread is told, as an end."""
    with context.sessions() as session:
        expired = expire_overdue(session, now)
        session.commit()
    for task_id in expired:
        SafeReporter(context.reporter).task_finished(task_id)
    if expired:
        logger.info("approval requests expired: tasks %s", ", ".join(map(str, expired)))
    report.approvals_expired += len(expired)


def _return_expired_leases(context: WorkerContext, now: datetime, report: ReapReport) -> None:
    with context.sessions() as session:
        rows = update_returning(
            session,
            [ResetItem.state == ItemState.CLAIMED, ResetItem.lease_until < now],
            {"state": ItemState.PENDING, "leased_by": None, "lease_until": None,
             "updated_at": now},
            [ResetItem.task_id, ResetItem.chunk],
        )
        session.commit()
    chunks = sorted({(int(task_id), int(chunk)) for task_id, chunk in rows})
    for task_id, chunk in chunks:
        enqueue_chunk(context.queue, task_id, chunk)
    if rows:
        logger.warning("returned %s expired leases in %s chunks", len(rows), len(chunks))
    report.leases_returned += len(rows)
    report.chunks_enqueued += len(chunks)


def _reserve_rescue(context: WorkerContext, task_id: int, now: datetime) -> bool:
    """Only one reaper (of however many workers) rescues a task per interval."""
    quiet_since = now - timedelta(seconds=max(context.settings.reaper_interval * 2, 1))
    with context.sessions() as session:
        won = session.execute(
            update(ResetTask)
            .where(
                ResetTask.id == task_id,
                (ResetTask.rescued_at.is_(None)) | (ResetTask.rescued_at < quiet_since),
            )
            .values(rescued_at=now)
        )
        session.commit()
    return int(won.rowcount) == 1  # type: ignore[attr-defined]


def _rescue_running(
    context: WorkerContext, task: ResetTask, kinds: set[str], now: datetime, report: ReapReport
) -> None:
    if not task.planned:
        lease = task.plan_lease_until
        if (lease is None or lease < now) and _reserve_rescue(context, task.id, now):
            # The planner died (its job may still look "started" in Redis): plan again.
            enqueue_task(context.queue, task.id)
            report.plans_enqueued += 1
        return
    with context.sessions() as session:
        active = _active_counts(session, task.id)
    paused = task.paused_until is not None and task.paused_until > now
    if not any(active.values()) or (paused and task.cancel_requested):
        # A task paused for a mail outage ends on Cancel now, not when its pause is over.
        if finish_if_done(context, task.id):
            report.tasks_finished += 1
        return
    if paused:
        return  # its chunks go back on the queue when the pause is over
    if not kinds:
        if _reserve_rescue(context, task.id, now):
            _requeue_from_database(context, task.id, report)
        return
    if "retry" not in kinds and active[ItemState.RETRY_WAIT]:
        overdue = _waiting_retries(context, task.id, before=now - RETRY_GRACE)
        if overdue and _reserve_rescue(context, task.id, now):
            _enqueue_retries(context, task.id, overdue, now, report)


def _requeue_from_database(context: WorkerContext, task_id: int, report: ReapReport) -> None:
    """Redis has nothing for this task: every piece of remaining work goes back on the queue."""
    with context.sessions() as session:
        chunks = list(
            session.scalars(
                select(ResetItem.chunk)
                .where(ResetItem.task_id == task_id, ResetItem.state == ItemState.PENDING)
                .distinct()
                .order_by(ResetItem.chunk)
            )
        )
    for chunk in chunks:
        enqueue_chunk(context.queue, task_id, chunk)
    report.chunks_enqueued += len(chunks)
    waiting = _waiting_retries(context, task_id, before=None)
    _enqueue_retries(context, task_id, waiting, utcnow(), report)
    logger.warning(
        "task %s had no work in Redis: enqueued %s chunks and %s retry jobs again",
        task_id, len(chunks), len({chunk for _id, chunk, _due in waiting}),
    )


def _waiting_retries(
    context: WorkerContext, task_id: int, before: datetime | None
) -> list[tuple[int, int, datetime | None]]:
    query = select(ResetItem.id, ResetItem.chunk, ResetItem.next_attempt_at).where(
        ResetItem.task_id == task_id, ResetItem.state == ItemState.RETRY_WAIT
    )
    if before is not None:
        query = query.where(ResetItem.next_attempt_at < before)
    with context.sessions() as session:
        return [(int(i), int(c), due) for i, c, due in session.execute(query)]


def _enqueue_retries(
    context: WorkerContext,
    task_id: int,
    waiting: list[tuple[int, int, datetime | None]],
    now: datetime,
    report: ReapReport,
) -> None:
    """One retry job per chunk, due when its last item is due."""
    by_chunk: dict[int, list[tuple[int, datetime | None]]] = defaultdict(list)
    for item_id, chunk, due in waiting:
        by_chunk[chunk].append((item_id, due))
    for chunk in sorted(by_chunk):
        entries = by_chunk[chunk]
        latest = max((due for _id, due in entries if due is not None), default=now)
        delay = max(0.0, (latest - now).total_seconds())
        enqueue_retry(context.queue, task_id, [item_id for item_id, _due in entries], delay)
        report.retries_enqueued += 1


def _wake_queued(
    context: WorkerContext, jobs: dict[int, set[str]], now: datetime, report: ReapReport
) -> None:
    """A queued task with no job to start it gets one: it checks again whether it may start.

    A task that waits for another one sharing its users is woken when that one ends; this
    catches a wake-up that was lost (a finisher killed between its commit and the enqueue).
    """
    with context.sessions() as session:
        queued = list(session.scalars(
            select(ResetTask.id).where(ResetTask.status == TaskStatus.QUEUED)
            .order_by(ResetTask.id)
        ))
    for task_id in queued:
        if jobs.get(int(task_id)) or not _reserve_rescue(context, int(task_id), now):
            continue
        enqueue_task(context.queue, int(task_id))
        report.plans_enqueued += 1


def _active_counts(session: Session, task_id: int) -> dict[ItemState, int]:
    """1 for each active state some item of the task is in, else 0. Whether, not how many:
    a COUNT walks every pending item (a million of them, every few seconds in every worker),
    where each EXISTS stops at its first row of the (task, state) index."""
    states = list(ACTIVE_ITEM_STATES)
    query = select(*[
        exists().where(ResetItem.task_id == task_id, ResetItem.state == state.value)
        for state in states
    ])
    present = session.execute(query).one()
    return {state: int(bool(found)) for state, found in zip(states, present, strict=True)}

