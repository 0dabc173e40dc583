"""Tasks whose users do not overlap run side by side; one that shares users waits, and says so.

A running task is kept running without sleeps: its plan runs, then its users are held under
another worker's lease (as while a slow bcrypt task works on them) and its chunk job is taken
off the queue, until the test lets it go.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from redis import Redis
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session, sessionmaker

from core.db import make_engine
from core.models import ItemState, ResetItem, ResetTask, Scope, TaskStatus, utcnow
from core.settings import Settings
from jobs.context import WorkerContext
from jobs.overlap import Reach, overlaps
from jobs.planning import start_task
from jobs.queueing import enqueue_chunk, enqueue_task
from tests.support.engine import (
    RecordingReporter,
    build_context,
    run_until_final,
    submit,
    task_snapshot,
    work,
)

# Claims, locks and DDL differ between databases: these run on MariaDB too.
pytestmark = pytest.mark.every_database

DEFAULT_PASSWORD = "Quiet-Harbour-73!"
STAFF = frozenset({3, 5})  # carol and erin have a role in the sample users


def hold_running(context: WorkerContext, scope: Scope, selection: tuple[int, ...] = ()) -> int:
    """A task that has started and stays running: another worker holds all its users."""
    task_id = submit(context, scope, selection, default_password=DEFAULT_PASSWORD)
    work(context, max_jobs=1)  # its plan: started, items written, its chunk job queued
    context.queue.empty()
    with context.sessions() as session:
        session.execute(
            update(ResetItem).where(ResetItem.task_id == task_id).values(
                state=ItemState.CLAIMED, leased_by="slow-bcrypt-worker",
                lease_until=utcnow() + timedelta(hours=1))
        )
        session.commit()
    assert task_snapshot(context, task_id).status is TaskStatus.RUNNING
    return task_id


def let_go(context: WorkerContext, task_id: int) -> None:
    with context.sessions() as session:
        session.execute(
            update(ResetItem).where(ResetItem.task_id == task_id).values(
                state=ItemState.PENDING, leased_by=None, lease_until=None)
        )
        session.commit()
    enqueue_chunk(context.queue, task_id, 0)


def task_row(context: WorkerContext, task_id: int) -> ResetTask:
    with context.sessions() as session:
        row = session.get(ResetTask, task_id)
        assert row is not None
        return row


def test_a_small_task_runs_while_a_large_one_over_other_users_is_running(
    settings: Settings, redis_conn: Redis, engine: Engine, sample_users: list[object],
) -> None:
    reporter = RecordingReporter()
    context = build_context(settings, redis_conn, engine, reporter)
    large = hold_running(context, Scope.SELECTED_ONLY, (1, 2, 3))
    small = submit(context, Scope.SELECTED_ONLY, (4, 5), default_password=DEFAULT_PASSWORD)

    work(context)

    assert task_snapshot(context, small).status is TaskStatus.COMPLETED
    assert task_snapshot(context, large).status is TaskStatus.RUNNING
    assert reporter.named("task_waiting") == []
    assert [args[0] for args in reporter.named("task_started")] == [large, small]
    let_go(context, large)
    assert run_until_final(context, large).status is TaskStatus.COMPLETED


def test_a_task_sharing_users_waits_says_for_which_then_starts_when_it_ends(
    settings: Settings, redis_conn: Redis, engine: Engine, sample_users: list[object],
) -> None:
    reporter = RecordingReporter()
    context = build_context(settings, redis_conn, engine, reporter)
    running = hold_running(context, Scope.SELECTED_ONLY, (1, 2, 3))
    waiting = submit(context, Scope.SELECTED_ONLY, (3, 4), default_password=DEFAULT_PASSWORD)

    work(context)
    enqueue_task(context.queue, waiting)  # checked again (as the reaper would): still waits
    work(context)

    assert task_snapshot(context, waiting).status is TaskStatus.QUEUED
    assert reporter.named("task_waiting") == [(waiting, running)]  # said once
    let_go(context, running)
    run_until_final(context, running)  # its end wakes the waiting task
    final = run_until_final(context, waiting)
    assert final.status is TaskStatus.COMPLETED and final.total == 2
    first, second = task_row(context, running), task_row(context, waiting)
    assert first.finished_at is not None and second.started_at is not None
    assert second.started_at >= first.finished_at


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_staff_picked_by_name_do_not_wait_for_a_patrons_only_task(
    settings: Settings, redis_conn: Redis, engine: Engine, sample_users: list[object],
) -> None:
    reporter = RecordingReporter()
    context = build_context(settings, redis_conn, engine, reporter)
    patrons = hold_running(context, Scope.ALL_WITHOUT_ROLE)
    staff = submit(context, Scope.SELECTED_ONLY, tuple(STAFF), default_password=DEFAULT_PASSWORD)
    patron = submit(context, Scope.SELECTED_ONLY, (1,), default_password=DEFAULT_PASSWORD)

    work(context)

    assert task_snapshot(context, staff).status is TaskStatus.COMPLETED
    assert task_snapshot(context, patron).status is TaskStatus.QUEUED
    assert reporter.named("task_waiting") == [(patron, patrons)]


def never_staff(_ids: frozenset[int]) -> bool:
    return False


def always_staff(_ids: frozenset[int]) -> bool:
    return True


@pytest.mark.parametrize(
    ("one", "other", "apart"),
    [
        (Reach(Scope.SELECTED_ONLY, frozenset({1, 2})), Reach(Scope.SELECTED_ONLY, frozenset({3})),
         True),
        (Reach(Scope.SELECTED_ONLY, frozenset({1, 2})),
         Reach(Scope.SELECTED_ONLY, frozenset({2, 3})), False),
        (Reach(Scope.SELECTED_ONLY, frozenset({1, 2})),
         Reach(Scope.ALL_EXCEPT_SELECTED, frozenset({1, 2, 9})), True),
        (Reach(Scope.ALL_EXCEPT_SELECTED, frozenset({1})),
         Reach(Scope.SELECTED_ONLY, frozenset({1, 2})), False),
        (Reach(Scope.SELECTED_ONLY, frozenset({1})), Reach(Scope.ALL, frozenset()), False),
        (Reach(Scope.ALL, frozenset()), Reach(Scope.ALL_WITHOUT_ROLE, frozenset()), False),
        (Reach(Scope.ALL_EXCEPT_SELECTED, frozenset({1})),
         Reach(Scope.ALL_EXCEPT_SELECTED, frozenset({2})), False),
        (Reach(Scope.ALL_WITHOUT_ROLE, frozenset()),
         Reach(Scope.ALL_EXCEPT_SELECTED, frozenset({1})), False),
    ],
)
def test_overlap_is_decided_from_the_scopes_and_every_doubt_overlaps(
    one: Reach, other: Reach, apart: bool
) -> None:
    assert overlaps(one, other, never_staff) is not apart
    assert overlaps(other, one, never_staff) is not apart  # symmetric


def test_picked_users_against_patrons_only_depend_on_their_roles() -> None:
    picked = Reach(Scope.SELECTED_ONLY, STAFF)
    patrons = Reach(Scope.ALL_WITHOUT_ROLE, frozenset())
    assert overlaps(picked, patrons, always_staff) is False
    assert overlaps(patrons, picked, never_staff) is True


def test_two_workers_starting_overlapping_tasks_at_once_start_only_one(
    settings: Settings, redis_conn: Redis, engine: Engine, sessions: sessionmaker[Session],
    sample_users: list[object],
) -> None:
    """Each round, two workers (own engines, own connections) check at the same instant."""
    engines = [make_engine(settings.database_url) for _ in range(2)]
    workers = [build_context(settings, redis_conn, each) for each in engines]
    setup = build_context(settings, redis_conn, engine)
    try:
        for _round in range(12):
            tasks = [
                submit(setup, Scope.ALL, default_password=DEFAULT_PASSWORD, enqueue=False),
                submit(setup, Scope.SELECTED_ONLY, (1,), default_password=DEFAULT_PASSWORD,
                       enqueue=False),
            ]
            barrier = threading.Barrier(2)

            def start(index: int, task_ids: list[int] = tasks,
                      gate: threading.Barrier = barrier) -> bool | None:
                gate.wait(10)
                return start_task(workers[index], task_ids[index])

            with ThreadPoolExecutor(max_workers=2) as pool:
                # .result() re-raises a worker's error here, in the test's thread.
                results = [future.result(30) for future in [pool.submit(start, i)
                                                            for i in range(2)]]
            with sessions() as session:
                running = session.scalars(select(ResetTask.id).where(
                    ResetTask.status == TaskStatus.RUNNING)).all()
                assert len(running) == 1, f"both started: {running}"
                assert sorted(r is True for r in results) == [False, True]
                # Clear the way for the next round: end both.
                session.execute(update(ResetTask).where(ResetTask.id.in_(tasks)).values(
                    status=TaskStatus.CANCELLED, finished_at=utcnow()))
                session.commit()
    finally:
        for each in engines:
            each.dispose()
        setup.queue.empty()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_reaper_wakes_a_waiting_task_whose_wake_up_was_lost(
    settings: Settings, redis_conn: Redis, engine: Engine, sample_users: list[object],
) -> None:
    from jobs.reaper import reap

    context = build_context(settings, redis_conn, engine)
    running = hold_running(context, Scope.SELECTED_ONLY, (1, 2))
    waiting = submit(context, Scope.SELECTED_ONLY, (2, 3), default_password=DEFAULT_PASSWORD)
    work(context)
    assert task_snapshot(context, waiting).status is TaskStatus.QUEUED
    # The running task ended, but its worker died before waking anyone.
    with context.sessions() as session:
        session.execute(update(ResetTask).where(ResetTask.id == running).values(
            status=TaskStatus.CANCELLED, finished_at=utcnow()))
        session.commit()

    report = reap(context)

    assert report.plans_enqueued == 1
    assert run_until_final(context, waiting).status is TaskStatus.COMPLETED
