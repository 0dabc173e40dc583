"""Starting a task and planning it: start when no running task shares a user, then write items.

Tasks whose users do not overlap run side by side (see `jobs.overlap`); a task that shares
users with a running one waits, says once for which, and is woken when a task ends. Planning
streams the scope's users into items a batch per transaction and enqueues each chunk as soon as
it is complete, so workers reset while planning goes on. A selection is read a page at a time
as well: a retry's selection (everyone whose mail failed) may hold a good part of a directory,
and no statement carries more than a batch of ids.
"""

from __future__ import annotations

import logging
import math
from bisect import bisect_right
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import insert, select, text, update
from sqlalchemy.orm import Session

from core import audit
from core.approval import preview_of
from core.directory.ids import id_order, user_ids
from core.directory.protocol import User
from core.errors import InputError, QueueUnavailable
from core.models import (
    ItemState,
    ResetItem,
    ResetTask,
    Scope,
    StartLock,
    TaskStatus,
    utcnow,
)
from core.tasks import approval_needed, ask_approval_again
from jobs.context import WorkerContext
from jobs.finishing import cancel_unstarted, fail_task, finish_if_done
from jobs.overlap import Reach, overlaps
from jobs.queueing import enqueue_chunk
from jobs.reporting import SafeReporter
from jobs.rows import ACTOR, insert_unless_present, items_table, rowcount
from jobs.undo import undo_users

logger = logging.getLogger(__name__)

#: Users read from the directory and inserted as items per planning round trip.
PLAN_BATCH = 1000
#: The one row of `task_start_lock`.
START_LOCK_ID = 1


def start_task(context: WorkerContext, task_id: int) -> bool | None:
    """True: started now; False: was running, still unplanned; None: nothing to plan now.

    Reports the wait for another task, once per task (the start is reported by `plan_items`).
    """
    with context.sessions() as session:
        task = session.get(ResetTask, task_id)
        if task is None:
            logger.warning("task %s does not exist; nothing to plan", task_id)
            return None
        status = TaskStatus(task.status)
        if status is TaskStatus.RUNNING:
            return None if task.planned else False
        if status is TaskStatus.SCHEDULED:
            return None  # not due: the reaper queues it when its time comes (jobs/scheduling.py)
        if status.is_final:
            return None
        if status is not TaskStatus.QUEUED:
            return None  # awaiting approval: its own gate enqueues it once approved
        if task.cancel_requested:
            cancel_unstarted(context, session, task_id)
            return None
        if approval_needed(context.settings, task, task.preview_users):
            _hold_for_approval(context, session, task)
            return None
        reach = Reach.of(task.scope, task.selection)
        detail = {"scope": task.scope, "mode": task.mode, "requester": task.requester}
        session.rollback()  # the start check begins a transaction of its own, lock first
        started, blocking, first_wait = _start_if_clear(context, session, task_id, reach, detail)
    if blocking is not None:
        logger.info("task %s waits for task %s, which shares users with it", task_id, blocking)
        if first_wait:
            SafeReporter(context.reporter).task_waiting(task_id, blocking)
        return None
    if not started:
        return None  # another job started it a moment ago and plans it
    logger.info("task %s started", task_id)
    return True  # the start is told by `plan_items`, once its first users are queued


def _hold_for_approval(context: WorkerContext, session: Session, task: ResetTask) -> None:
    """The last line of the approval rule: every edge judges `approval_needed` before it
    queues a task, so this never fires unless one forgot to (or a task was queued before the
    rule was set); then the task is not started but waits for another admin's approval, with
    the counts taken now."""
    task_id, scope, selection = task.id, Scope(task.scope), user_ids(task.selection)
    channel = task.slack_channel
    # An Undo's users are those its task kept (counted when it was asked), not its scope's.
    kept = preview_of(task.preview) if task.undo_of is not None else None
    counts = kept if kept is not None else context.directory.preview(scope, selection)
    session.rollback()
    asked = ask_approval_again(session, context.settings, task_id, counts, ACTOR, utcnow(),
                               ResetTask.status == TaskStatus.QUEUED)
    session.commit()
    if not asked:
        return
    logger.warning("task %s was queued without the approval its %s users need: it awaits "
                   "approval", task_id, counts.users)
    if channel:
        from jobs.slack_reporter import announce

        try:
            announce(context.queue, task_id)  # Approve and Reject in its thread
        except QueueUnavailable:
            logger.error("could not announce task %s awaiting approval; the reaper posts it "
                         "if it has no thread yet", task_id)


def _start_if_clear(
    context: WorkerContext, session: Session, task_id: int, reach: Reach, detail: dict[str, str]
) -> tuple[bool, int | None, bool]:
    """Start a queued task unless a running one shares users with it; committed and audited.

    (started, the running task it waits for, whether that wait is said for the first time).
    Every start check holds the start lock until its commit, so two checks never decide at
    once: a task marked running here is seen by the next check. A row lock taken by an UPDATE
    works the same on every database (PostgreSQL and MariaDB hold the row until commit, SQLite
    the whole database; MariaDB reads READ COMMITTED, so the next check sees what this one
    committed), where a serialisable check would make PostgreSQL fail one of two racing starts
    and SQLite would need another spelling; the checks are short, so taking turns costs
    nothing that shows. A task ending needs no lock: it only lets others start, and it wakes
    the waiting tasks after its commit (`start_next_queued`).
    """
    _lock_starts(session)
    blocking = _running_overlap(context, session, task_id, reach)
    if blocking is not None:
        first_wait = rowcount(
            session.execute(
                update(ResetTask)
                .where(ResetTask.id == task_id, ResetTask.reported_waiting.is_(False))
                .values(reported_waiting=True)
                .execution_options(synchronize_session=False)
            )
        )
        session.commit()
        return False, blocking, bool(first_wait)
    now = utcnow()
    started = rowcount(
        session.execute(
            update(ResetTask)
            .where(ResetTask.id == task_id, ResetTask.status == TaskStatus.QUEUED)
            .values(
                status=TaskStatus.RUNNING,
                started_at=now,
                # The starter plans: it holds the planning lease from the start.
                plan_lease_until=now + timedelta(seconds=context.settings.lease_seconds),
            )
            .execution_options(synchronize_session=False)
        )
    )
    if started:
        audit.record(session, ACTOR, "start", task_id, **detail)
    session.commit()
    return bool(started), None, False


def _lock_starts(session: Session) -> None:
    """Take the start lock for this transaction (the row is made on first use if missing)."""
    if _bump_lock(session):
        return
    # A database made by `create_schema` has no row yet. Of two starts making it at once, the
    # second one's insert waits for the first one's commit, then does nothing.
    insert_unless_present(session, StartLock.__table__, id=START_LOCK_ID, starts=0)
    if not _bump_lock(session):
        raise RuntimeError("the task start lock row could not be made")


def _bump_lock(session: Session) -> bool:
    return bool(rowcount(session.execute(
        update(StartLock)
        .where(StartLock.id == START_LOCK_ID)
        .values(starts=StartLock.starts + 1)
        .execution_options(synchronize_session=False)
    )))


def _running_overlap(
    context: WorkerContext, session: Session, task_id: int, reach: Reach
) -> int | None:
    """The oldest running task that may share a user with this one, if any."""
    running = session.execute(
        select(ResetTask.id, ResetTask.scope, ResetTask.selection)
        .where(ResetTask.status == TaskStatus.RUNNING, ResetTask.id != task_id)
        .order_by(ResetTask.id)
    ).all()

    def all_staff(ids: frozenset[str]) -> bool:
        return not context.directory.patrons_among(sorted(ids))

    for other_id, scope, selection in running:
        if overlaps(reach, Reach.of(scope, selection or ()), all_staff):
            return int(other_id)
    return None


def _take_plan_lease(context: WorkerContext, session: Session, task_id: int) -> bool:
    """For a planner resuming another's work: only when no live planner holds the lease."""
    now = utcnow()
    lease = now + timedelta(seconds=context.settings.lease_seconds)
    taken = rowcount(
        session.execute(
            update(ResetTask)
            .where(
                ResetTask.id == task_id,
                ResetTask.status == TaskStatus.RUNNING,
                ResetTask.planned.is_(False),
                (ResetTask.plan_lease_until.is_(None)) | (ResetTask.plan_lease_until < now),
            )
            .values(plan_lease_until=lease)
            .execution_options(synchronize_session=False)
        )
    )
    session.commit()
    return taken == 1


@dataclass
class _Plan:
    scope: Scope
    selection: list[str]
    #: The last user id planned (None: from the start).
    cursor: str | None
    count: int
    #: Accounts locked on purpose get an item already ended `locked`: never changed.
    skip_locked: bool = False
    #: An Undo task's: the task whose kept users it puts back (jobs/undo.py), not a scope.
    undo_of: int | None = None


def plan_items(context: WorkerContext, task_id: int, *, resuming: bool) -> None:
    """Stream the scope's users in the directory's stable order into items, a batch per transaction.

    Chunks are enqueued as soon as they are complete, so workers start while planning goes on;
    an interrupted plan resumes from `plan_cursor` (set with each batch, in the same commit).
    The starter (not `resuming`) reports the start once the first batch's chunks are queued:
    then the reporter knows the task's size (a one-batch task is told behind its own work).
    """
    settings = context.settings
    with context.sessions() as session:
        task = session.get(ResetTask, task_id)
        if task is None or task.status != TaskStatus.RUNNING or task.planned:
            return
        # The starter holds the planning lease; anyone else (a reaper's re-plan) must take it.
        if resuming and not _take_plan_lease(context, session, task_id):
            return
        plan = _Plan(Scope(task.scope), sorted(set(user_ids(task.selection)), key=id_order),
                     task.plan_cursor, task.total, bool(task.skip_locked), task.undo_of)
    if resuming:
        # Chunks written before an interruption may never have reached the queue.
        for chunk in _chunks_with_pending(context, task_id):
            enqueue_chunk(context.queue, task_id, chunk)
    enqueued = plan.count // settings.chunk_size
    start = _StartTeller(context, task_id, told=resuming)
    first = True
    while True:
        try:
            step = _plan_batch(context, task_id, plan)
        except InputError as error:
            start.tell()
            fail_task(context, task_id, f"The task could not be planned: {error}")
            return
        if step is None:
            start.tell()
            return  # another planner took over
        done = step
        size = settings.chunk_size
        chunks = math.ceil(plan.count / size) if done else plan.count // size
        if first or done:
            _refresh_item_statistics(context)
        first = False
        for chunk in range(enqueued, chunks):
            enqueue_chunk(context.queue, task_id, chunk)
        enqueued = max(enqueued, chunks)
        start.tell()
        if done:
            break
    logger.info("task %s planned: %s users in %s chunks", task_id, plan.count, enqueued)
    finish_if_done(context, task_id)


def _refresh_item_statistics(context: WorkerContext) -> None:
    """Have PostgreSQL look at the items table again once a task's first items and its last
    are written. Its planner otherwise goes by whatever it last saw (nothing at all where
    autovacuum is off, or a far smaller table): then a claim of chunk N walks the task's
    pending items in the (task, state) index up to chunk N rather than going straight to it
    through (task, chunk), and at 1,000,000 users each claim took ~0.4 s instead of ~1 ms.
    A sample of the table, a fraction of a second. (MariaDB's InnoDB keeps its own statistics
    up to date; SQLite's planner goes by its indexes' shapes.)"""
    with context.sessions() as session:
        if session.get_bind().dialect.name != "postgresql":
            return
        session.execute(text(f"ANALYZE {items_table.name}"))
        session.commit()


@dataclass
class _StartTeller:
    """Reports a task's start once, however planning goes on or stops."""

    context: WorkerContext
    task_id: int
    told: bool

    def tell(self) -> None:
        if not self.told:
            self.told = True
            SafeReporter(self.context.reporter).task_started(self.task_id)


def _plan_batch(context: WorkerContext, task_id: int, plan: _Plan) -> bool | None:
    """Write the next batch of items; True when planning is complete, None if not ours any more."""
    settings = context.settings
    now = utcnow()
    with context.sessions() as session:
        cancelled = session.scalar(
            select(ResetTask.cancel_requested).where(ResetTask.id == task_id)
        )
        # Read in the directory's own database (its own connection); written here.
        if cancelled:
            users, cursor, done = [], plan.cursor, True
        elif plan.undo_of is not None:
            users = undo_users(session, plan.undo_of, plan.cursor, PLAN_BATCH)
            cursor = users[-1].id if users else plan.cursor
            done = len(users) < PLAN_BATCH
        else:
            users, cursor, done = _next_users(context, plan)
        count = plan.count + len(users)
        # The cursor guard makes two planners never interleave: the second one changes no row.
        moved = rowcount(
            session.execute(
                update(ResetTask)
                .where(ResetTask.id == task_id,
                       ResetTask.plan_cursor.is_not_distinct_from(plan.cursor),
                       ResetTask.total == plan.count, ResetTask.planned.is_(False))
                .values(
                    plan_cursor=cursor,
                    total=count,
                    planned=done,
                    plan_lease_until=None if done else now + timedelta(
                        seconds=settings.lease_seconds
                    ),
                )
            )
        )
        if not moved:
            session.rollback()
            return None
        if users:
            session.execute(
                insert(items_table),
                _item_rows(task_id, plan.count, users, settings.chunk_size, now,
                           plan.skip_locked),
            )
        session.commit()
    plan.cursor, plan.count = cursor, count
    return done


def _next_users(
    context: WorkerContext, plan: _Plan
) -> tuple[list[User], str | None, bool]:
    """The next batch of the scope's users after the cursor, the cursor after them, and
    whether that was the last batch. A selected-only scope asks for the next page of its
    selection (sorted by `id_order`): ids no longer in the directory are passed over with
    their page. The page itself bounds what the directory returns, so any directory's own
    order of ids serves (no cursor is sent with a page)."""
    if plan.scope is not Scope.SELECTED_ONLY:
        users = context.directory.scope_batch(plan.scope, plan.selection, plan.cursor,
                                              PLAN_BATCH)
        return users, users[-1].id if users else plan.cursor, len(users) < PLAN_BATCH
    start = 0 if plan.cursor is None else bisect_right(plan.selection, id_order(plan.cursor),
                                                       key=id_order)
    page = plan.selection[start:start + PLAN_BATCH]
    if not page:
        return [], plan.cursor, True
    users = context.directory.scope_batch(plan.scope, page, None, PLAN_BATCH)
    return users, page[-1], start + PLAN_BATCH >= len(plan.selection)


def _item_rows(
    task_id: int, first: int, users: list[User], chunk_size: int, now: datetime,
    skip_locked: bool = False,
) -> list[dict[str, Any]]:
    """One pending item per user; `first` is how many items the task had before these. An
    account locked on purpose, when the task leaves them out, is ended `locked` at once."""
    return [
        {
            "task_id": task_id,
            "user_id": user.id,
            "chunk": (first + index) // chunk_size,
            "username": user.username,
            "full_name": user.full_name,
            "email": user.email,
            "is_staff": user.is_staff,
            "state": (ItemState.LOCKED if skip_locked and user.locked_on_purpose
                      else ItemState.PENDING).value,
            "attempts": 0,
            "updated_at": now,
        }
        for index, user in enumerate(users)
    ]


def _chunks_with_pending(context: WorkerContext, task_id: int) -> list[int]:
    with context.sessions() as session:
        return list(
            session.scalars(
                select(ResetItem.chunk)
                .where(ResetItem.task_id == task_id, ResetItem.state == ItemState.PENDING)
                .distinct()
                .order_by(ResetItem.chunk)
            )
        )
