"""Undo through the real engine (RQ burst workers, real Redis and databases): a worker that dies
after putting users back harms nobody, two Undos of one task make one, and the reaper erases
the kept values when the window closes and not before."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from redis import Redis
from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import Session

from core.directory import Directory
from core.errors import ConflictError
from core.models import (
    ItemState,
    ResetItem,
    ResetTask,
    Scope,
    TaskStatus,
    UndoSnapshot,
    utcnow,
)
from core.passwords import PasswordHasher
from core.settings import Settings
from core.undo import create_undo_task, kept_batch, opened, refusal, table_of
from jobs.claims import chunk_items, claim_items
from jobs.context import WorkerContext
from jobs.queueing import enqueue_task
from jobs.reaper import reap
from tests.support.engine import build_context, run_until_final, submit, work
from tests.support.smtp import SmtpServer
from tests.support.smtp import smtp_server as smtp_server

pytestmark = pytest.mark.every_database


def before(username: str) -> str:
    return f"Engine-before-{username}-5"


@pytest.fixture
def context(settings: Settings, redis_conn: Redis, engine: Engine, directory: Directory,
            sample_users: Any, smtp_server: SmtpServer) -> Iterator[WorkerContext]:
    mailing = smtp_server.settings(settings)
    hasher = PasswordHasher.from_settings(mailing)
    table = directory.table
    with engine.begin() as connection:
        for user_id, username, *_ in sample_users:
            connection.execute(update(table).where(table.c.id == user_id)
                               .values(password_hash=hasher.hash(before(username))))
    built = build_context(mailing, redis_conn, engine)
    yield built
    built.close()


def kept(context: WorkerContext) -> int:
    with context.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(UndoSnapshot)) or 0)


def passwords(context: WorkerContext) -> dict[str, str]:
    c = context.directory.table.c
    with context.engine.connect() as connection:
        return dict(connection.execute(select(c.username, c.password_hash)).all())  # type: ignore[arg-type]


def test_a_worker_dying_after_putting_users_back_harms_nobody(context: WorkerContext) -> None:
    reset_id = submit(context, Scope.ALL)
    assert run_until_final(context, reset_id).status is TaskStatus.COMPLETED
    with context.sessions() as session:
        undo, _ = create_undo_task(session, context.settings, context.directory, reset_id,
                                   "UADMIN")
        session.commit()
        undo_id = undo.id
    enqueue_task(context.queue, undo_id)
    # Planned by a worker; then another worker claims a batch, puts it back in the directory
    # and dies before it records anything (its lease runs out).
    work(context, max_jobs=1)
    dying = replace(context, owner="dead-worker")
    claimed = claim_items(dying, undo_id, chunk_items(undo_id, 0))
    assert claimed, "the dying worker held a batch"
    with context.sessions() as session:
        rows = kept_batch(session, reset_id, "", 100, only=[item.user_id for item in claimed])
    batch = opened(context.settings, rows)
    table = table_of(context.directory)
    assert table is not None
    restored, _ = table.put_back({int(k.user_id): k.written for k in batch},
                                 {int(k.user_id): k.previous for k in batch})
    assert {str(number) for number in restored} == {item.user_id for item in claimed}
    report = reap(context, now=utcnow() + timedelta(seconds=context.settings.lease_seconds + 1))
    assert report.leases_returned == len(claimed)

    assert run_until_final(context, undo_id).status is TaskStatus.COMPLETED
    with context.sessions() as session:
        states = set(session.scalars(select(ResetItem.state).where(ResetItem.task_id == undo_id)))
    assert states == {ItemState.RESTORED}, "those put back by the dead worker count as restored"
    hasher = PasswordHasher.from_settings(context.settings)
    assert all(hasher.verify(before(name), hashed) for name, hashed in passwords(context).items())


def test_two_undos_of_one_task_at_once_make_one(context: WorkerContext) -> None:
    reset_id = submit(context, Scope.SELECTED_ONLY, (1, 2))
    assert run_until_final(context, reset_id).status is TaskStatus.COMPLETED
    with Session(context.engine) as first, Session(context.engine) as second:
        undo, _ = create_undo_task(first, context.settings, context.directory, reset_id, "UA")
        first.commit()
        with pytest.raises(ConflictError, match=f"already undone by task #{undo.id}"):
            create_undo_task(second, context.settings, context.directory, reset_id, "UB")
    with context.sessions() as session:
        undos = session.scalar(select(func.count()).select_from(ResetTask)
                               .where(ResetTask.undo_of == reset_id))
    assert undos == 1


def test_the_reaper_erases_the_kept_values_when_the_window_closes(
    context: WorkerContext,
) -> None:
    reset_id = submit(context, Scope.ALL)
    assert run_until_final(context, reset_id).status is TaskStatus.COMPLETED
    assert kept(context) == 7
    with context.sessions() as session:
        task = session.get(ResetTask, reset_id)
        assert task is not None and task.finished_at is not None
        closes = task.finished_at + timedelta(seconds=context.settings.reset_undo_window)
    reap(context, now=closes - timedelta(seconds=1))
    assert kept(context) == 7, "still within the window"
    report = reap(context, now=closes + timedelta(seconds=1))
    assert (report.undo_values_erased, kept(context)) == (7, 0)
    with context.sessions() as session:
        late = refusal(session, context.settings, context.directory, reset_id,
                       now=closes + timedelta(seconds=1))
    assert late is not None and "can no longer be undone" in late
