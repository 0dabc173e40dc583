"""Claiming items and holding them: every UPDATE on the items a worker has leased.

A worker claims a batch of items in one transaction (safe with many workers) and holds them under
a lease it renews while it hashes and mails; each later write (renew, end, record an outcome,
give back) applies only to the items it still holds, so an item whose lease was lost to
another worker is never written twice.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, select, update
from sqlalchemy.orm import Session

from core.models import ItemState, ResetItem, ResetTask, TaskStatus, utcnow
from jobs.batches import Claimed, Conditions, ItemOutcome
from jobs.context import WorkerContext
from jobs.outage import not_paused
from jobs.rows import items_table, update_returning


def chunk_items(task_id: int, chunk: int, sweep: int = 0) -> Conditions:
    """The pending items of one chunk and of the `sweep` chunks after it (RESET_CHUNK_SWEEP),
    unless a mail outage pauses the task.

    A job that goes on into the next chunks takes their items while they wait; their own jobs,
    run later, find nothing left and end at once. A worker's hashing thus pauses once per run
    of chunks, not at every chunk's end, where a job waits for its last batch to be written
    (~40 ms: 3 % of a 100-user chunk of pbkdf2). At a task's end every worker takes batches of
    the last chunks, so none is left hashing a chunk alone. Bounded, so that a job lasts some
    chunks' time, not a whole task's.
    """

    def conditions(now: datetime) -> list[ColumnElement[bool]]:
        return [
            ResetItem.task_id == task_id,
            ResetItem.chunk.between(chunk, chunk + sweep),
            ResetItem.state == ItemState.PENDING,
            select(ResetTask.id).where(ResetTask.id == task_id, not_paused(now)).exists(),
        ]

    return conditions


def chunk_has_pending(context: WorkerContext, task_id: int, chunk: int) -> bool:
    """Whether a chunk's own items still wait: not when a job before it has taken them all."""
    with context.sessions() as session:
        return session.scalar(
            select(ResetItem.id).where(
                ResetItem.task_id == task_id,
                ResetItem.chunk == chunk,
                ResetItem.state == ItemState.PENDING,
            ).limit(1)
        ) is not None


def claim_items(
    context: WorkerContext, task_id: int, conditions: Conditions, *, batches: int = 1,
    size: int | None = None,
) -> list[Claimed]:
    """Lease up to `batches` times `size` (claim_batch) matching items in a transaction of their
    own (see `claim_in`)."""
    with context.sessions() as session:
        claimed = claim_in(context, session, task_id, conditions, batches=batches, size=size)
        session.commit()
    return claimed


def claim_in(
    context: WorkerContext, session: Session, task_id: int, conditions: Conditions, *,
    batches: int = 1, size: int | None = None,
) -> list[Claimed]:
    """Lease up to `batches` times `size` (claim_batch) matching items in `session`'s
    transaction (the caller commits), safe with many workers.

    Only while the task runs uncancelled and without error: the same statement is the check
    between batches. PostgreSQL and MariaDB/MySQL skip rows another worker is claiming right
    now; SQLite serialises writers (see `jobs.rows.update_returning`).
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
    rows = update_returning(
        session,
        where,
        {
            "state": ItemState.CLAIMED,
            "leased_by": context.owner,
            "lease_until": now + timedelta(seconds=context.settings.lease_seconds),
            "updated_at": now,
        },
        [
            ResetItem.id, ResetItem.user_id, ResetItem.chunk, ResetItem.username,
            ResetItem.full_name, ResetItem.email, ResetItem.attempts,
        ],
        limit=(size or context.settings.claim_batch) * batches,
    )
    return [Claimed(r[0], str(r[1]), r[2], r[3], r[4] or "", r[5] or None, r[6]) for r in rows]


class Lease:
    """Keeps this worker's claim on a batch alive while slow hashing or mailing goes on."""

    def __init__(self, context: WorkerContext, item_ids: Iterable[int], taken: float) -> None:
        self.context = context
        self.item_ids = list(item_ids)
        self.renewed = taken

    def renew_if_due(self) -> None:
        if time.monotonic() - self.renewed > self.context.settings.lease_seconds / 3:
            with self.context.sessions() as session:
                renew(self.context, session, self.item_ids)
                session.commit()
            self.renewed = time.monotonic()


def update_held(
    context: WorkerContext, session: Session, item_ids: Sequence[int], **values: Any
) -> set[int]:
    """Update those of `item_ids` this worker still holds (claimed, under its lease); their ids.

    An item whose lease was lost is someone else's now: it is left alone and not returned.
    """
    if not item_ids:
        return set()
    rows = update_returning(
        session,
        [
            ResetItem.id.in_(list(item_ids)),
            ResetItem.state == ItemState.CLAIMED,
            ResetItem.leased_by == context.owner,
        ],
        values,
        [ResetItem.id],
    )
    return {int(row[0]) for row in rows}


def hold(context: WorkerContext, session: Session, item_ids: Sequence[int]) -> set[int]:
    """Those of `item_ids` this worker still holds, locked until `session`'s transaction ends:
    the check `renew` makes, without writing, for a transaction that ends the items itself
    (their final states, or a renewed lease for those still to be mailed).

    A locked row cannot be taken by the reaper or another worker before the commit, so what
    is held now is still held when the states are written. SQLite locks no rows: there the
    lease is renewed, which takes the database's one write lock at once.
    """
    if not item_ids:
        return set()
    if session.get_bind().dialect.name == "sqlite":
        return renew(context, session, item_ids)
    items = items_table.c
    return {int(item_id) for item_id in session.connection().scalars(
        select(items.id)
        .where(items.id.in_(list(item_ids)), items.state == ItemState.CLAIMED.value,
               items.leased_by == context.owner)
        .with_for_update()
    )}


def renew(context: WorkerContext, session: Session, item_ids: Sequence[int]) -> set[int]:
    """Extend the lease on the items this worker still holds; returns their ids."""
    until = utcnow() + timedelta(seconds=context.settings.lease_seconds)
    return update_held(context, session, item_ids, lease_until=until)


def record_outcomes(
    context: WorkerContext, session: Session, outcomes: Sequence[ItemOutcome], now: datetime
) -> None:
    """Every outcome of a batch, each only if this worker still holds it: one UPDATE per
    distinct outcome (state, attempts, retry time, error), on all its items at once.

    A batch's outcomes are mostly alike (a default password: every user `reset`), so a batch
    costs the database one or a few statements rather than one a user.
    """
    if not outcomes:
        return
    alike: dict[tuple[str, int, datetime | None, str | None], list[int]] = defaultdict(list)
    for outcome in outcomes:
        key = (outcome.state.value, outcome.attempts, outcome.next_attempt_at, outcome.error)
        alike[key].append(outcome.item_id)
    connection = session.connection()
    for (state, attempts, next_attempt_at, error), item_ids in alike.items():
        connection.execute(
            update(items_table)
            .where(
                items_table.c.id.in_(item_ids),
                items_table.c.state == ItemState.CLAIMED.value,
                items_table.c.leased_by == context.owner,
            )
            .values(
                state=state,
                attempts=attempts,
                next_attempt_at=next_attempt_at,
                last_error=error,
                leased_by=None,
                lease_until=None,
                updated_at=now,
            )
        )


def release(context: WorkerContext, claimed: Sequence[Claimed]) -> None:
    """Give back a claimed batch untouched, for whoever comes next (or the cancel sweep)."""
    if not claimed:
        return
    with context.sessions() as session:
        give_back(context, session, [item.id for item in claimed])
        session.commit()


def give_back(context: WorkerContext, session: Session, item_ids: Sequence[int]) -> None:
    """Give back the items this worker still holds, untouched, in `session`'s transaction."""
    update_held(context, session, item_ids,
                state=ItemState.PENDING, leased_by=None, lease_until=None)
