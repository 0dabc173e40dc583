"""Progress within a chunk: reported after settled batches, not only when a chunk ends."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
from redis import Redis
from sqlalchemy import Engine, func, insert, select
from sqlalchemy.orm import Session, sessionmaker

from core.directory import Directory
from core.models import ItemState, ResetItem, Scope, TaskStatus
from core.settings import Settings
from jobs.context import WorkerContext
from jobs.progress import ProgressWatch
from tests.support.engine import RecordingReporter, build_context, run_until_final, submit

DEFAULT_PASSWORD = "Quiet-Harbour-73!"


def add_users(engine: Engine, directory: Directory, count: int) -> None:
    with engine.begin() as connection:
        connection.execute(insert(directory.table), [
            {"id": i, "username": f"user{i}", "full_name": f"User {i}", "email": None,
             "role": None, "password_hash": "old-hash", "must_change_password": False}
            for i in range(1, count + 1)
        ])


class ChunkWatchingReporter(RecordingReporter):
    """Records, with each progress report, how many users of chunk 0 were still unfinished."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        super().__init__()
        self.sessions = sessions
        self.first_chunk_left: list[tuple[int, int]] = []

    def task_progress(self, task_id: int, step: int, steps: int) -> None:
        super().task_progress(task_id, step, steps)
        with self.sessions() as session:
            left = session.scalar(select(func.count()).where(
                ResetItem.task_id == task_id, ResetItem.chunk == 0,
                ResetItem.state.in_([ItemState.PENDING, ItemState.CLAIMED])))
        self.first_chunk_left.append((step, int(left or 0)))


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_progress_moves_within_a_chunk(
    settings: Settings, redis_conn: Redis, engine: Engine, sessions: sessionmaker[Session],
    directory: Directory,
) -> None:
    add_users(engine, directory, 150)
    configured = replace(settings, chunk_size=100, claim_batch=5, progress_steps=10)
    reporter = ChunkWatchingReporter(sessions)
    context = build_context(configured, redis_conn, engine, reporter)
    task_id = submit(context, Scope.ALL, default_password=DEFAULT_PASSWORD)

    assert run_until_final(context, task_id).status is TaskStatus.COMPLETED

    # Before: 0 -> 6 (when the 100-user chunk ended) -> 10. Now each step of 15 users is told
    # while the first chunk still has users to reset.
    during_first_chunk = [step for step, left in reporter.first_chunk_left if left > 0]
    assert during_first_chunk[:5] == [1, 2, 3, 4, 5]
    steps = [step for _task, step, _steps in reporter.named("task_progress")]
    assert steps == sorted(set(steps)) and steps[-1] == 10  # each step once, in order
    assert len(steps) <= 10


class CountingWatch(ProgressWatch):
    def __init__(self, context: WorkerContext, total: int, clock: list[float]) -> None:
        self.checks = 0
        super().__init__(context, 1, total, clock=lambda: clock[0])

    def settled(self, users: int) -> None:
        super().settled(users)
        if self.unchecked == 0:  # it checked: what it had settled is counted again from 0
            self.checks += 1


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_job_checks_once_per_steps_worth_of_users_or_per_second(
    settings: Settings, redis_conn: Redis, engine: Engine,
) -> None:
    context = build_context(replace(settings, progress_steps=10), redis_conn, engine)
    clock = [0.0]
    watch = CountingWatch(context, 1000, clock)
    for _ in range(40):  # 40 batches of 5 users: 200 users, two steps' worth
        watch.settled(5)
    assert watch.checks == 2
    clock[0] += 1.5  # other workers may have moved the count meanwhile
    watch.settled(5)
    assert watch.checks == 3
    unknown = CountingWatch(context, 0, clock)  # still planning: only the clock prompts
    for _ in range(100):
        unknown.settled(25)
    assert unknown.checks == 0


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_slow_count_spaces_the_clock_driven_checks_out(
    settings: Settings, redis_conn: Redis, engine: Engine,
) -> None:
    """At a million users the count a check makes takes ~0.1 s: checked every second by every
    job it would take a tenth of the database's time. A check taking 0.1 s (the clock moves
    0.1 s at each look) is followed by the next clock-driven one 5 s later, not 1 s."""
    context = build_context(replace(settings, progress_steps=10), redis_conn, engine)
    clock = [0.0]

    def slow_clock() -> float:
        clock[0] += 0.1
        return clock[0]

    watch = ProgressWatch(context, 1, 1_000_000, clock=slow_clock)
    checked: list[float] = []
    for _ in range(200):  # 0.1 s apart, 5 users each: far from a step's worth
        before = watch.checked_at
        watch.settled(5)
        if watch.checked_at != before:
            checked.append(watch.checked_at)
    gaps = [later - earlier for earlier, later in itertools.pairwise(checked)]
    assert checked and gaps and all(gap >= 5 for gap in gaps)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_workers_jobs_share_one_pace_and_a_job_end_checks_only_when_due(
    settings: Settings, redis_conn: Redis, engine: Engine,
) -> None:
    """A million-user task is 10,000 jobs of 100 users: each job's end counted the task's
    settled items (up to a million). Now a job's end checks only once the last check is
    CHECK_COST_SHARE times its own length ago (here each check takes 0.05 s: the clock moves
    0.05 s at each look), and the pace is the worker's, across its jobs."""
    context = build_context(replace(settings, progress_steps=10), redis_conn, engine)
    clock = [0.0]

    def slow_clock() -> float:
        clock[0] += 0.05
        return clock[0]

    checks = 0
    for _job in range(30):  # 30 short jobs of 100 users each
        watch = ProgressWatch(context, 1, 1_000_000, clock=slow_clock)
        before = watch.checked_at
        watch.settled(100)
        watch.job_ended()
        checks += watch.checked_at != before
    assert 1 <= checks <= 3  # ~3 s of the worker's time, a check at most every 2.5 s
    assert watch.unchecked > 100  # what it settled since its last check, across jobs
    other = ProgressWatch(context, 2, 1_000_000, clock=slow_clock)
    assert other.unchecked == 0  # another task: its own pace
