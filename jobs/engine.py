"""The reset engine's RQ jobs: plan a task, run its chunks, retry mails, finish.

Every state change is a conditional UPDATE on the database, which is the source of truth; Redis
only carries ids of work to do, so running a job twice (or losing Redis) is safe. Work is batched
per claim (one claim statement, one executemany of hashes, one of states), so the cost of a task
is the hashing itself. A generated password exists only in this process's memory between its
hash being committed and its mail being accepted; a retry makes a new one.
"""

from __future__ import annotations

import contextvars
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Table,
    bindparam,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core import audit
from core.errors import ConfigError, InputError
from core.models import (
    FINAL_ITEM_STATES,
    ItemState,
    Mode,
    ResetItem,
    ResetTask,
    Scope,
    TaskStatus,
    utcnow,
)
from core.passwords import generate_password
from core.sealing import unseal
from core.tasks import state_counts
from jobs.context import WorkerContext, current_context
from jobs.mailer import Delivery, Mailer, MailSetupError, Outcome, PasswordMail
from jobs.queueing import enqueue_chunk, enqueue_plan_later, enqueue_retry, enqueue_task
from jobs.reporting import report_safely

logger = logging.getLogger(__name__)

ACTOR = "resetbot"
#: Users read from the directory and inserted as items per planning round trip.
PLAN_BATCH = 1000
#: How often a task waiting for the running one checks again (finishing a task also wakes it).
WAITING_RECHECK_SECONDS = 10
#: A retry may run this much before its due time (clocks of hosts differ a little).
DUE_TOLERANCE = timedelta(seconds=2)
ACTIVE_ITEM_STATES = (ItemState.PENDING, ItemState.CLAIMED, ItemState.RETRY_WAIT)

_items = cast(Table, ResetItem.__table__)


# -- job entry points (module-level, JSON arguments) --------------------------------------------


def plan_task(task_id: int) -> None:
    """Start the task if the slot is free, then write its items and enqueue its chunks."""
    context = current_context()
    started = _start_task(context, task_id)
    if started is not None:
        _plan_items(context, task_id, resuming=not started)


def run_chunk(task_id: int, chunk: int) -> None:
    """Reset the pending users of one chunk, a claim batch at a time."""
    context = current_context()

    def chunk_items(now: datetime) -> list[ColumnElement[bool]]:
        return [
            ResetItem.task_id == task_id,
            ResetItem.chunk == chunk,
            ResetItem.state == ItemState.PENDING,
        ]

    _work_items(context, task_id, chunk_items)


def retry_mails(task_id: int, item_ids: list[int]) -> None:
    """Mail these users again, each with a fresh password (whose hash replaces the last one)."""
    context = current_context()
    wanted = sorted(set(item_ids))

    def due_retries(now: datetime) -> list[ColumnElement[bool]]:
        return [
            ResetItem.task_id == task_id,
            ResetItem.id.in_(wanted),
            ResetItem.state == ItemState.RETRY_WAIT,
            ResetItem.next_attempt_at <= now + DUE_TOLERANCE,
        ]

    _work_items(context, task_id, due_retries)


# -- starting and planning ------------------------------------------------------------------------


def _start_task(context: WorkerContext, task_id: int) -> bool | None:
    """True: started now; False: was running, still unplanned; None: nothing to plan now.

    Reports the start, or the wait for another task, once per task.
    """
    settings = context.settings
    now = utcnow()
    with context.sessions() as session:
        task = session.get(ResetTask, task_id)
        if task is None:
            logger.warning("task %s does not exist; nothing to plan", task_id)
            return None
        status = TaskStatus(task.status)
        if status is TaskStatus.RUNNING:
            return None if task.planned else False
        if status.is_final:
            return None
        if task.cancel_requested:
            _cancel_unstarted(context, session, task_id)
            return None
        try:
            started = _rowcount(
                session.execute(
                    update(ResetTask)
                    .where(ResetTask.id == task_id, ResetTask.status == TaskStatus.QUEUED)
                    .values(
                        status=TaskStatus.RUNNING,
                        active_slot=1,
                        started_at=now,
                        # The starter plans: it holds the planning lease from the start.
                        plan_lease_until=now + timedelta(seconds=settings.lease_seconds),
                    )
                    .execution_options(synchronize_session=False)
                )
            )
            if started:
                audit.record(
                    session, ACTOR, "start", task_id, scope=task.scope, mode=task.mode,
                    requester=task.requester,
                )
            session.commit()
        except IntegrityError:
            # The unique active_slot says another task is running: wait for it.
            session.rollback()
            _wait_for_slot(context, session, task_id)
            return None
    if not started:
        return None  # another job started it a moment ago and plans it
    logger.info("task %s started", task_id)
    report_safely(context.reporter, "task_started", task_id)
    return True


def _wait_for_slot(context: WorkerContext, session: Session, task_id: int) -> None:
    blocking = session.scalar(select(ResetTask.id).where(ResetTask.active_slot == 1))
    first_time = _rowcount(
        session.execute(
            update(ResetTask)
            .where(ResetTask.id == task_id, ResetTask.reported_waiting.is_(False))
            .values(reported_waiting=True)
            .execution_options(synchronize_session=False)
        )
    )
    session.commit()
    enqueue_plan_later(context.queue, task_id, WAITING_RECHECK_SECONDS)
    logger.info("task %s waits for task %s", task_id, blocking)
    if first_time and blocking is not None:
        report_safely(context.reporter, "task_waiting", task_id, blocking)


def _cancel_unstarted(context: WorkerContext, session: Session, task_id: int) -> None:
    ended = _rowcount(
        session.execute(
            update(ResetTask)
            .where(ResetTask.id == task_id, ResetTask.status == TaskStatus.QUEUED)
            .values(
                status=TaskStatus.CANCELLED, finished_at=utcnow(), default_password_sealed=None,
                planned=True,
            )
            .execution_options(synchronize_session=False)
        )
    )
    if ended:
        audit.record(session, ACTOR, "finish", task_id, status=TaskStatus.CANCELLED.value)
    session.commit()
    if ended:
        report_safely(context.reporter, "task_finished", task_id)


def _take_plan_lease(context: WorkerContext, session: Session, task_id: int) -> bool:
    """For a planner resuming another's work: only when no live planner holds the lease."""
    now = utcnow()
    lease = now + timedelta(seconds=context.settings.lease_seconds)
    taken = _rowcount(
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
    selection: list[int]
    cursor: int
    count: int


def _plan_items(context: WorkerContext, task_id: int, *, resuming: bool) -> None:
    """Stream the scope's users in id order into items, a batch per transaction.

    Chunks are enqueued as soon as they are complete, so workers start while planning goes on;
    an interrupted plan resumes from `plan_cursor` (set with each batch, in the same commit).
    """
    settings = context.settings
    with context.sessions() as session:
        task = session.get(ResetTask, task_id)
        if task is None or task.status != TaskStatus.RUNNING or task.planned:
            return
        # The starter holds the planning lease; anyone else (a reaper's re-plan) must take it.
        if resuming and not _take_plan_lease(context, session, task_id):
            return
        plan = _Plan(Scope(task.scope), list(task.selection), task.plan_cursor, task.total)
    if resuming:
        # Chunks written before an interruption may never have reached the queue.
        for chunk in _chunks_with_pending(context, task_id):
            enqueue_chunk(context.queue, task_id, chunk)
    enqueued = plan.count // settings.chunk_size
    while True:
        try:
            step = _plan_batch(context, task_id, plan)
        except InputError as error:
            _fail_task(context, task_id, f"The task could not be planned: {error}")
            return
        if step is None:
            return  # another planner took over
        done = step
        size = settings.chunk_size
        chunks = math.ceil(plan.count / size) if done else plan.count // size
        for chunk in range(enqueued, chunks):
            enqueue_chunk(context.queue, task_id, chunk)
        enqueued = max(enqueued, chunks)
        if done:
            break
    logger.info("task %s planned: %s users in %s chunks", task_id, plan.count, enqueued)
    finish_if_done(context, task_id)


def _plan_batch(context: WorkerContext, task_id: int, plan: _Plan) -> bool | None:
    """Write the next batch of items; True when planning is complete, None if not ours any more."""
    settings = context.settings
    now = utcnow()
    with context.sessions() as session:
        cancelled = session.scalar(
            select(ResetTask.cancel_requested).where(ResetTask.id == task_id)
        )
        users = [] if cancelled else context.directory.scope_batch(
            session, plan.scope, plan.selection, plan.cursor, PLAN_BATCH
        )
        done = len(users) < PLAN_BATCH
        cursor = users[-1].id if users else plan.cursor
        count = plan.count + len(users)
        # The cursor guard makes two planners never interleave: the second one changes no row.
        moved = _rowcount(
            session.execute(
                update(ResetTask)
                .where(ResetTask.id == task_id, ResetTask.plan_cursor == plan.cursor,
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
                insert(_items),
                [
                    {
                        "task_id": task_id,
                        "user_id": user.id,
                        "chunk": (plan.count + index) // settings.chunk_size,
                        "username": user.username,
                        "full_name": user.full_name,
                        "email": user.email,
                        "is_staff": user.is_staff,
                        "state": ItemState.PENDING.value,
                        "attempts": 0,
                        "updated_at": now,
                    }
                    for index, user in enumerate(users)
                ],
            )
        session.commit()
    plan.cursor, plan.count = cursor, count
    return done


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


# -- working items ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _TaskView:
    id: int
    mode: Mode
    require_change: bool
    sealed: str | None


@dataclass(frozen=True)
class _Claimed:
    id: int
    user_id: int
    chunk: int
    username: str
    full_name: str
    email: str | None
    attempts: int


@dataclass(frozen=True)
class _Outcome:
    item_id: int
    state: ItemState
    attempts: int
    next_attempt_at: datetime | None = None
    error: str | None = None


Conditions = Callable[[datetime], list[ColumnElement[bool]]]


class _Lease:
    """Keeps this worker's claim on a batch alive while slow hashing or mailing goes on."""

    def __init__(self, context: WorkerContext, item_ids: Iterable[int], taken: float) -> None:
        self.context = context
        self.item_ids = list(item_ids)
        self.renewed = taken

    def renew_if_due(self) -> None:
        if time.monotonic() - self.renewed > self.context.settings.lease_seconds / 3:
            with self.context.sessions() as session:
                _renew(self.context, session, self.item_ids)
                session.commit()
            self.renewed = time.monotonic()


def _update_held(
    context: WorkerContext, session: Session, item_ids: Sequence[int], **values: Any
) -> set[int]:
    """Update those of `item_ids` this worker still holds (claimed, under its lease); their ids.

    An item whose lease was lost is someone else's now: it is left alone and not returned.
    """
    if not item_ids:
        return set()
    rows = session.execute(
        update(ResetItem)
        .where(
            ResetItem.id.in_(list(item_ids)),
            ResetItem.state == ItemState.CLAIMED,
            ResetItem.leased_by == context.owner,
        )
        .values(**values)
        .returning(ResetItem.id)
        .execution_options(synchronize_session=False)
    )
    return {int(row[0]) for row in rows}


def _renew(context: WorkerContext, session: Session, item_ids: Sequence[int]) -> set[int]:
    """Extend the lease on the items this worker still holds; returns their ids."""
    until = utcnow() + timedelta(seconds=context.settings.lease_seconds)
    return _update_held(context, session, item_ids, lease_until=until)


def _end_unmailed(
    context: WorkerContext,
    session: Session,
    item_ids: Sequence[int],
    state: ItemState,
    now: datetime,
) -> set[int]:
    """Give the items this worker still holds and will not mail their final state; their ids."""
    return _update_held(
        context, session, item_ids, state=state, next_attempt_at=None, last_error=None,
        leased_by=None, lease_until=None, updated_at=now,
    )


def _load_task(context: WorkerContext, task_id: int) -> _TaskView | None:
    with context.sessions() as session:
        task = session.get(ResetTask, task_id)
        if task is None or task.status != TaskStatus.RUNNING:
            return None
        return _TaskView(task.id, Mode(task.mode), task.require_change,
                         task.default_password_sealed)


@dataclass
class _Batch:
    """A claimed batch after hashing: what the settling stage writes and mails."""

    claimed: list[_Claimed]
    hashes: list[tuple[_Claimed, str]]
    #: Generated passwords of the users to mail, by item id: in memory only, dropped once sent.
    passwords: dict[int, str] = field(repr=False)
    lease: _Lease


@dataclass
class _Settled:
    retries: dict[int, list[int]]
    stop: bool = False


@dataclass(frozen=True)
class _Claim:
    items: list[_Claimed]
    #: time.monotonic() when the lease was taken: it runs from then, not from when hashing starts
    taken: float


def _work_items(context: WorkerContext, task_id: int, conditions: Conditions) -> None:
    """Claim, hash, write and mail batch after batch, then schedule retries and maybe finish.

    The stages overlap: while this thread hashes one batch, a helper thread writes the previous
    batch's hashes and states, sends its mails (waiting on the database and the mail server),
    then claims the next batch. Hashing releases the GIL, so the database and mail latency
    hides behind the hashing that dominates a reset, and this thread does little else.
    """
    task = _load_task(context, task_id)
    if task is None:
        return
    default_password: str | None = None
    if task.mode is Mode.DEFAULT:
        if task.sealed is None:
            _fail_task(context, task_id, "The task's default password is missing.")
            return
        try:
            default_password = unseal(context.settings.reset_secret_key, task.sealed)
        except ConfigError as error:
            _fail_task(context, task_id, str(error))
            return
    retries: dict[int, list[int]] = defaultdict(list)
    mailer_checked = False
    in_flight: Future[_Settled] | None = None

    def collect() -> bool:
        """Wait for the batch being settled; False when the job must stop."""
        nonlocal in_flight
        if in_flight is None:
            return True
        settled = in_flight.result()  # re-raises the settling stage's error here
        in_flight = None
        for attempt, item_ids in settled.retries.items():
            retries[attempt].extend(item_ids)
        return not settled.stop

    def claim() -> _Claim:
        taken = time.monotonic()
        return _Claim(_claim(context, task_id, conditions), taken)

    with Mailer(context.settings, context.smtp_factory) as mailer, ThreadPoolExecutor(
        max_workers=1, thread_name_prefix=f"resetbot-settle-{task_id}"
    ) as helper:
        # One thread, first in first out: a claim runs after the settling submitted before it,
        # so it sees a task that settling has just failed (the claim checks the task still runs).
        next_claim = helper.submit(claim)
        while True:
            current = next_claim.result()
            claimed = current.items
            if not claimed:
                break
            if not mailer_checked and task.mode is Mode.GENERATED and any(
                item.email for item in claimed
            ):
                # Before any hash of a user to mail is written: with a mail server that cannot
                # be used (wrong credentials), nobody is locked out.
                if not collect():
                    _release(context, claimed)
                    break
                try:
                    mailer.open()
                except MailSetupError as error:
                    _fail_for_mail_setup(context, task.id, claimed, str(error))
                    break
                mailer_checked = True
            next_claim = helper.submit(claim)
            batch = _hash_batch(context, current, default_password)
            if not collect():
                _release(context, [*claimed, *next_claim.result().items])
                break
            # The settling thread sees this job's context too (reporters may ask for it).
            in_flight = helper.submit(
                contextvars.copy_context().run, _settle_batch, context, task, batch, mailer
            )
        collect()
    default_password = None
    _schedule_retries(context, task_id, retries)
    _report_progress(context, task_id)
    finish_if_done(context, task_id)


def _claim(context: WorkerContext, task_id: int, conditions: Conditions) -> list[_Claimed]:
    """Lease up to claim_batch matching items in one statement, safe with many workers.

    Only while the task runs uncancelled and without error: the same statement is the check
    between batches. PostgreSQL skips rows another worker is claiming right now; SQLite
    serialises writers.
    """
    now = utcnow()
    where = [
        *conditions(now),
        select(ResetTask.id)
        .where(
            ResetTask.id == task_id,
            ResetTask.status == TaskStatus.RUNNING,
            ResetTask.cancel_requested.is_(False),
            ResetTask.error.is_(None),
        )
        .exists(),
    ]
    candidates = select(ResetItem.id).where(*where).order_by(ResetItem.id).limit(
        context.settings.claim_batch
    )
    if context.engine.dialect.name == "postgresql":
        candidates = candidates.with_for_update(of=ResetItem, skip_locked=True)
    with context.sessions() as session:
        rows = session.execute(
            update(ResetItem)
            .where(ResetItem.id.in_(candidates.scalar_subquery()), *where)
            .values(
                state=ItemState.CLAIMED,
                leased_by=context.owner,
                lease_until=now + timedelta(seconds=context.settings.lease_seconds),
                updated_at=now,
            )
            .returning(
                ResetItem.id, ResetItem.user_id, ResetItem.chunk, ResetItem.username,
                ResetItem.full_name, ResetItem.email, ResetItem.attempts,
            )
            .execution_options(synchronize_session=False)
        ).all()
        session.commit()
    return sorted(
        (_Claimed(r[0], r[1], r[2], r[3], r[4] or "", r[5] or None, r[6]) for r in rows),
        key=lambda item: item.id,
    )


def _release(context: WorkerContext, claimed: Sequence[_Claimed]) -> None:
    """Give back a claimed batch untouched, for whoever comes next (or the cancel sweep)."""
    if not claimed:
        return
    with context.sessions() as session:
        _update_held(context, session, [item.id for item in claimed],
                     state=ItemState.PENDING, leased_by=None, lease_until=None)
        session.commit()


def _hash_batch(
    context: WorkerContext, claim: _Claim, default_password: str | None
) -> _Batch:
    """The cost of a reset: one salted hash per user (a new password each in generated mode)."""
    policy = context.settings.policy
    lease = _Lease(context, (item.id for item in claim.items), claim.taken)
    lease.renew_if_due()
    passwords: dict[int, str] = {}
    hashes: list[tuple[_Claimed, str]] = []
    for item in claim.items:
        password = default_password or generate_password(policy, item.username)
        if default_password is None and item.email:
            passwords[item.id] = password
        hashes.append((item, context.hasher.hash(password)))
        lease.renew_if_due()
    return _Batch(claim.items, hashes, passwords, lease)


def _settle_batch(
    context: WorkerContext, task: _TaskView, batch: _Batch, mailer: Mailer
) -> _Settled:
    """Write a hashed batch (hashes and states in one transaction), then mail it."""
    settled = _Settled(retries=defaultdict(list))
    now = utcnow()
    unmailed = [item.id for item in batch.claimed if item.id not in batch.passwords]
    with context.sessions() as session:
        # Ending or renewing an item is also the check that this worker still holds it: an item
        # whose lease was lost is someone else's now, and its hash is not written here.
        held = _end_unmailed(
            context, session, unmailed,
            ItemState.NO_EMAIL if task.mode is Mode.GENERATED else ItemState.RESET, now,
        ) | _renew(context, session, list(batch.passwords))
        context.directory.write_hashes(
            session,
            [(item.user_id, new_hash) for item, new_hash in batch.hashes if item.id in held],
            require_change=task.require_change,
            changed_at=now,
        )
        session.commit()
    batch.lease.renewed = time.monotonic()
    to_mail = [item for item in batch.claimed if item.id in batch.passwords and item.id in held]
    if not to_mail:
        batch.passwords.clear()
        return settled
    mailer.reachable_again()
    outcomes: list[_Outcome] = []
    setup_error: str | None = None
    for item in to_mail:
        new_password = batch.passwords.pop(item.id)
        if setup_error is None:
            batch.lease.renew_if_due()
            try:
                delivery = mailer.send(
                    PasswordMail(
                        full_name=item.full_name,
                        address=item.email or "",
                        username=item.username,
                        password=new_password,
                        require_change=task.require_change,
                    )
                )
            except MailSetupError as error:  # a reconnect found the server unusable
                setup_error = str(error)
        if setup_error is not None:
            delivery = Delivery(Outcome.PERMANENT, f"The mail could not be sent: {setup_error}")
        outcomes.append(_mail_outcome(context.settings.mail_retry_delays, item, delivery, utcnow()))
    batch.passwords.clear()
    with context.sessions() as session:
        _record(context, session, outcomes, utcnow())
        session.commit()
    for outcome in outcomes:
        if outcome.state is ItemState.RETRY_WAIT:
            settled.retries[outcome.attempts + 1].append(outcome.item_id)
    if setup_error is not None:
        _fail_task(context, task.id, setup_error)
        settled.stop = True
    return settled


def _mail_outcome(
    delays: Sequence[int], item: _Claimed, delivery: Delivery, now: datetime
) -> _Outcome:
    attempts = item.attempts + 1
    if delivery.outcome is Outcome.SENT:
        return _Outcome(item.id, ItemState.NOTIFIED, attempts)
    if delivery.outcome is Outcome.TRANSIENT and attempts < 1 + len(delays):
        due = now + timedelta(seconds=delays[attempts - 1])
        return _Outcome(item.id, ItemState.RETRY_WAIT, attempts, due, delivery.reason)
    reason = delivery.reason or "The mail could not be sent."
    if delivery.outcome is Outcome.TRANSIENT:
        reason = f"{reason} (gave up after {attempts} attempts)"
    return _Outcome(item.id, ItemState.NOTIFY_FAILED, attempts, None, reason)


def _record(
    context: WorkerContext, session: Session, outcomes: Sequence[_Outcome], now: datetime
) -> None:
    """Every outcome of a batch in one executemany, each only if this worker still holds it."""
    if not outcomes:
        return
    statement = (
        update(_items)
        .where(
            _items.c.id == bindparam("b_id"),
            _items.c.state == ItemState.CLAIMED.value,
            _items.c.leased_by == context.owner,
        )
        .values(
            state=bindparam("b_state"),
            attempts=bindparam("b_attempts"),
            next_attempt_at=bindparam("b_next"),
            last_error=bindparam("b_error"),
            leased_by=None,
            lease_until=None,
            updated_at=now,
        )
    )
    session.connection().execute(
        statement,
        [
            {
                "b_id": outcome.item_id,
                "b_state": outcome.state.value,
                "b_attempts": outcome.attempts,
                "b_next": outcome.next_attempt_at,
                "b_error": outcome.error,
            }
            for outcome in outcomes
        ],
    )


def _schedule_retries(
    context: WorkerContext, task_id: int, retries: dict[int, list[int]]
) -> None:
    """One scheduled job per round of this job's failed mails; the thread hears once per round."""
    delays = context.settings.mail_retry_delays
    for attempt, item_ids in sorted(retries.items()):
        delay = delays[attempt - 2]
        enqueue_retry(context.queue, task_id, item_ids, delay)
        with context.sessions() as session:
            first = _rowcount(
                session.execute(
                    update(ResetTask)
                    .where(ResetTask.id == task_id, ResetTask.reported_retry_round < attempt)
                    .values(reported_retry_round=attempt)
                )
            )
            users = session.scalar(
                select(func.count()).where(
                    ResetItem.task_id == task_id,
                    ResetItem.state == ItemState.RETRY_WAIT,
                    ResetItem.attempts == attempt - 1,
                )
            ) if first else 0
            session.commit()
        if first:
            report_safely(
                context.reporter, "retries_scheduled", task_id, int(users or len(item_ids)),
                attempt, delay,
            )


def _report_progress(context: WorkerContext, task_id: int) -> None:
    """At most one report per progress step per task, whichever worker gets there first."""
    steps = context.settings.progress_steps
    with context.sessions() as session:
        row = session.execute(
            select(ResetTask.total, ResetTask.planned, ResetTask.reported_step).where(
                ResetTask.id == task_id
            )
        ).one_or_none()
        if row is None or not row.planned or not row.total:
            return
        done = session.scalar(
            select(func.count()).where(
                ResetItem.task_id == task_id,
                ResetItem.state.in_([state.value for state in FINAL_ITEM_STATES]),
            )
        ) or 0
        step = min(steps, done * steps // row.total)
        if step <= row.reported_step:
            return
        won = _rowcount(
            session.execute(
                update(ResetTask)
                .where(ResetTask.id == task_id, ResetTask.reported_step < step)
                .values(reported_step=step)
            )
        )
        session.commit()
    if won:
        report_safely(context.reporter, "task_progress", task_id, step, steps)


# -- failing and finishing -------------------------------------------------------------------------


def _fail_for_mail_setup(
    context: WorkerContext, task_id: int, claimed: Sequence[_Claimed], error: str
) -> None:
    """Wrong SMTP credentials fail the task once, not each user thousands of times."""
    reason = f"Not reset: {error}"
    with context.sessions() as session:
        _record(
            context, session,
            [_Outcome(item.id, ItemState.NOTIFY_FAILED, item.attempts, None, reason)
             for item in claimed],
            utcnow(),
        )
        session.commit()
    _fail_task(context, task_id, error)


def _fail_task(context: WorkerContext, task_id: int, error: str) -> None:
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


def final_status(
    cancel_requested: bool, error: str | None, counts: dict[ItemState, int]
) -> TaskStatus:
    if error:
        return TaskStatus.FAILED
    if cancel_requested:
        return TaskStatus.CANCELLED
    if counts.get(ItemState.NOTIFY_FAILED):
        return TaskStatus.COMPLETED_WITH_ERRORS
    return TaskStatus.COMPLETED


def finish_if_done(context: WorkerContext, task_id: int) -> bool:
    """End a planned task with no user left to work on; True for the one caller that ended it.

    A cancelled or failed task first settles what had not started (see `_settle_untouched`).
    """
    now = utcnow()
    with context.sessions() as session:
        task = session.get(ResetTask, task_id)
        if task is None or task.status != TaskStatus.RUNNING or not task.planned:
            return False
        _settle_untouched(session, task, now)
        unfinished = session.scalar(
            select(ResetItem.id)
            .where(
                ResetItem.task_id == task_id,
                ResetItem.state.in_([state.value for state in ACTIVE_ITEM_STATES]),
            )
            .limit(1)
        )
        if unfinished is not None:
            session.commit()
            return False
        counts = state_counts(session, task_id)
        status = final_status(task.cancel_requested, task.error, counts)
        ended = _rowcount(
            session.execute(
                update(ResetTask)
                .where(ResetTask.id == task_id, ResetTask.status == TaskStatus.RUNNING)
                .values(
                    status=status,
                    finished_at=now,
                    default_password_sealed=None,
                    active_slot=None,
                    plan_lease_until=None,
                )
                .execution_options(synchronize_session=False)
            )
        )
        if not ended:
            session.rollback()
            return False
        audit.record(
            session, ACTOR, "finish", task_id, status=status.value, total=task.total,
            counts={state.value: count for state, count in counts.items() if count},
        )
        session.commit()
    logger.info("task %s ended: %s", task_id, status.value)
    report_safely(context.reporter, "task_finished", task_id)
    start_next_queued(context)
    return True


def start_next_queued(context: WorkerContext) -> int | None:
    """Wake the oldest task waiting for the slot, if any; returns its id."""
    with context.sessions() as session:
        waiting = session.scalar(
            select(func.min(ResetTask.id)).where(ResetTask.status == TaskStatus.QUEUED)
        )
    if waiting is not None:
        enqueue_task(context.queue, int(waiting))
    return None if waiting is None else int(waiting)


def _rowcount(result: Any) -> int:
    return int(result.rowcount)
