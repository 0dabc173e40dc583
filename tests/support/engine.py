"""Helpers for driving the reset engine in tests: submit a task, run burst workers until it ends."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from redis import Redis
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from core.directory import Directory
from core.models import ResetItem, Scope
from core.progress import TaskSnapshot, snapshot
from core.settings import Settings
from core.tasks import ResetRequest, create_task
from jobs.context import WorkerContext
from jobs.queueing import enqueue_task
from jobs.reporting import Reporter
from jobs.worker import ResetWorker


class RecordingReporter:
    """Keeps every call in order; tests use it to check what (and how often) was reported."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[int, ...]]] = []

    def task_started(self, task_id: int) -> None:
        self.calls.append(("task_started", (task_id,)))

    def task_progress(self, task_id: int, step: int, steps: int) -> None:
        self.calls.append(("task_progress", (task_id, step, steps)))

    def task_waiting(self, task_id: int, blocking_task_id: int) -> None:
        self.calls.append(("task_waiting", (task_id, blocking_task_id)))

    def retries_scheduled(
        self, task_id: int, users: int, attempt: int, delay_seconds: int
    ) -> None:
        self.calls.append(("retries_scheduled", (task_id, users, attempt, delay_seconds)))

    def task_paused(self, task_id: int) -> None:
        self.calls.append(("task_paused", (task_id,)))

    def task_resumed(self, task_id: int) -> None:
        self.calls.append(("task_resumed", (task_id,)))

    def task_finished(self, task_id: int) -> None:
        self.calls.append(("task_finished", (task_id,)))

    def schedule_reminder(self, task_id: int) -> None:
        self.calls.append(("schedule_reminder", (task_id,)))

    def schedule_reached(self, task_id: int, late_seconds: int) -> None:
        self.calls.append(("schedule_reached", (task_id, late_seconds)))

    def named(self, name: str) -> list[tuple[int, ...]]:
        return [args for called, args in self.calls if called == name]


def build_context(
    settings: Settings, redis: Redis, engine: Engine, reporter: Reporter | None = None
) -> WorkerContext:
    return WorkerContext.build(
        settings, redis, engine=engine,
        reporter=reporter if reporter is not None else RecordingReporter(),
    )


def submit(
    context: WorkerContext,
    scope: Scope,
    selection: tuple[int, ...] = (),
    *,
    default_password: str | None = None,
    require_change: bool = True,
    enqueue: bool = True,
) -> int:
    with context.sessions() as session:
        task = create_task(
            session,
            context.settings,
            ResetRequest(
                requester="cli:tester",
                scope=scope,
                # User ids are text, as Slack gives them: the tests name them by number.
                selection=tuple(str(user_id) for user_id in selection),
                default_password=default_password,
                require_change=require_change,
            ),
        )
        session.commit()
        task_id = task.id
    if enqueue:
        enqueue_task(context.queue, task_id)
    return task_id


def work(context: WorkerContext, *, max_jobs: int | None = None) -> bool:
    """One burst worker (with RQ's scheduler, which moves due scheduled jobs onto the queue)."""
    worker = ResetWorker(context, reaper=False)
    return worker.work(burst=True, with_scheduler=True, max_jobs=max_jobs)


def run_task(context: WorkerContext, task_id: int) -> TaskSnapshot:
    """`run_until_final` with a context of its own, closed once the task has ended."""
    try:
        return run_until_final(context, task_id)
    finally:
        context.close()


def run_until_final(context: WorkerContext, task_id: int, timeout: float = 30) -> TaskSnapshot:
    """Burst workers until the task ends; polls (scheduled retries become due) with a deadline."""
    deadline = time.monotonic() + timeout
    while True:
        worked = work(context)
        current = task_snapshot(context, task_id)
        if current.status.is_final:
            return current
        if time.monotonic() > deadline:
            raise AssertionError(f"task {task_id} still {current.status} after {timeout} s")
        if not worked:
            time.sleep(0.05)  # scheduled work is not due yet: poll again shortly


def task_snapshot(context: WorkerContext, task_id: int) -> TaskSnapshot:
    with context.sessions() as session:
        found = snapshot(session, task_id)
    assert found is not None
    return found


@dataclass(frozen=True)
class UserRow:
    id: int
    username: str
    password_hash: str | None
    must_change_password: bool


def user_rows(sessions: sessionmaker[Session], directory: Directory) -> dict[int, UserRow]:
    c = directory.table.c
    with sessions() as session:
        rows = session.execute(
            select(c.id, c.username, c.password_hash, c.must_change_password)
        ).all()
    return {row[0]: UserRow(row[0], row[1], row[2], bool(row[3])) for row in rows}


def items_by_user(sessions: sessionmaker[Session], task_id: int) -> dict[Any, ResetItem]:
    """A task's items by user id: the SQL test tables' integer ids as integers (resetbot keeps
    every id as text), any other id (an entryUUID) as its text."""
    with sessions() as session:
        found = session.scalars(select(ResetItem).where(ResetItem.task_id == task_id))
        return {as_test_id(item.user_id): item for item in found}


def as_test_id(user_id: str) -> int | str:
    return int(user_id) if user_id.isdigit() else user_id
