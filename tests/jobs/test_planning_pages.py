"""Planning reads a large selection a page at a time (a retry's selection may hold a good part
of a directory): no statement carries more than a batch of ids, and every selected user that
is still in the directory gets exactly one item."""

from __future__ import annotations

import random
import re
from dataclasses import replace
from typing import Any

import pytest
from redis import Redis
from sqlalchemy import Engine, event, text, update
from sqlalchemy.orm import Session, sessionmaker

from bench.synth import populate
from core.directory import Directory
from core.models import ResetTask, Scope, TaskStatus
from core.settings import Settings
from jobs.planning import PLAN_BATCH
from jobs.queueing import enqueue_task
from tests.support.engine import build_context, items_by_user, run_until_final, submit

USERS = 2_600


def whole_task_settings(settings: Settings) -> Settings:
    """The shipped chunk and claim sizes: what is checked here is the plan, and the test
    settings' tiny chunks (10 users) would make running its thousands of users minutes long."""
    return replace(settings, chunk_size=100, claim_batch=25)


@pytest.mark.slow
def test_a_selection_of_thousands_is_planned_a_page_at_a_time(
    settings: Settings, redis_conn: Redis, engine: Engine, sessions: sessionmaker[Session],
    directory: Directory,
) -> None:
    settings = whole_task_settings(settings)
    populate(engine, directory, USERS)
    present = [user_id for user_id in range(1, USERS + 1) if user_id % 13]
    gone = list(range(USERS + 500, USERS + 1_000))  # no longer in the directory
    selection = present + gone
    random.Random(5).shuffle(selection)  # stored in any order
    context = build_context(settings, redis_conn, engine)
    task_id = submit(context, Scope.SELECTED_ONLY, (1,), default_password="Quiet-Harbour-73!",
                     enqueue=False)
    with sessions() as session:  # as a retry task is made: no limit on its selection
        session.execute(update(ResetTask).where(ResetTask.id == task_id)
                        .values(selection=selection))
        session.commit()
    largest: list[int] = [0]

    def count_parameters(_conn: Any, _cursor: Any, statement: str, parameters: Any,
                         _context: Any, _executemany: bool) -> None:
        if directory.names.table in statement and " IN " in statement.upper():
            # Ids bound as parameters, or written into the SQL (Directory._id_in does).
            written = max((len(listed.split(",")) for listed in
                           re.findall(r"IN \(([0-9, ]+)\)", statement, re.IGNORECASE)),
                          default=0)
            largest[0] = max(largest[0], len(parameters), written)

    event.listen(engine, "before_cursor_execute", count_parameters)
    try:
        enqueue_task(context.queue, task_id)
        final = run_until_final(context, task_id, timeout=120)
    finally:
        event.remove(engine, "before_cursor_execute", count_parameters)

    assert final.status is TaskStatus.COMPLETED
    assert final.total == len(present)
    assert sorted(items_by_user(sessions, task_id)) == sorted(present)
    assert 0 < largest[0] <= PLAN_BATCH + 10  # at most a page of ids, never the selection


@pytest.mark.slow
def test_planning_has_postgresql_look_at_the_items_it_wrote(
    settings: Settings, redis_conn: Redis, engine: Engine, sessions: sessionmaker[Session],
    directory: Directory,
) -> None:
    """Without statistics on the items (autovacuum off, or last run on a far smaller table)
    PostgreSQL claimed a chunk by walking the task's pending items (0.4 s a claim at 1,000,000
    users): the planner has the table analysed once the first batch and the last are in."""
    settings = whole_task_settings(settings)
    populate(engine, directory, 1_500)
    context = build_context(settings, redis_conn, engine)
    task_id = submit(context, Scope.ALL, default_password="Quiet-Harbour-73!")
    final = run_until_final(context, task_id, timeout=120)
    assert final.status is TaskStatus.COMPLETED and final.total == 1_500
    if engine.dialect.name != "postgresql":
        return  # nothing is asked of the others: their statistics keep themselves
    with engine.connect() as connection:
        columns = set(connection.execute(text(
            "SELECT attname FROM pg_stats WHERE tablename = 'reset_items'")).scalars())
    assert {"task_id", "chunk", "state"} <= columns
