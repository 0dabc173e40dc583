"""Claims on every database: concurrent claimers never share an item, and on MariaDB (no
UPDATE ... RETURNING) a condition that changes between the locking read and the UPDATE is
honoured, the rows changed are exactly the rows returned."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import pytest
from redis import Redis
from sqlalchemy import Engine, event, func, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from core.directory import Directory
from core.models import ItemState, ResetItem, ResetTask, Scope, StartLock
from core.settings import Settings
from jobs.claims import chunk_items, claim_items
from jobs.context import WorkerContext, use_context
from jobs.engine import plan_task
from jobs.rows import insert_unless_present, update_returning
from tests.support.engine import build_context, submit

pytestmark = pytest.mark.every_database

mariadb_only = pytest.mark.parametrize(
    "database_url", [pytest.param("mariadb", marks=pytest.mark.mariadb)], indirect=True
)
USERS = 60
CLAIMERS = 6


def add_users(engine: Engine, directory: Directory, count: int) -> None:
    with engine.begin() as connection:
        connection.execute(
            insert(directory.table),
            [
                {"id": n, "username": f"user{n}", "full_name": f"User {n}",
                 "email": f"user{n}@example.org", "role": None, "password_hash": "old-hash",
                 "must_change_password": False}
                for n in range(1, count + 1)
            ],
        )


def planned_task(context: WorkerContext, engine: Engine, directory: Directory) -> int:
    """A running, planned task whose USERS items are all pending, in chunk 0."""
    add_users(engine, directory, USERS)
    task_id = submit(context, Scope.ALL, default_password="Quiet-Harbour-73!", enqueue=False)
    with use_context(context):
        plan_task(task_id)
    return task_id


def pending(sessions: sessionmaker[Session], task_id: int) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.count()).where(
            ResetItem.task_id == task_id, ResetItem.state == ItemState.PENDING)) or 0)


def test_concurrent_claimers_take_every_item_once(
    settings: Settings, redis_conn: Redis, engine: Engine, sessions: sessionmaker[Session],
    directory: Directory,
) -> None:
    settings = replace(settings, chunk_size=USERS, claim_batch=4)
    contexts = [build_context(settings, redis_conn, engine) for _ in range(CLAIMERS)]
    task_id = planned_task(contexts[0], engine, directory)
    start = threading.Barrier(CLAIMERS)
    sizes: list[int] = []

    def claimer(context: WorkerContext) -> list[tuple[int, str]]:
        taken: list[tuple[int, str]] = []
        start.wait()
        while batch := claim_items(context, task_id, chunk_items(task_id, 0)):
            sizes.append(len(batch))
            taken += [(item.id, context.owner) for item in batch]
        return taken

    with ThreadPoolExecutor(max_workers=CLAIMERS) as pool:
        results = [pool.submit(claimer, context) for context in contexts]
        claims = [claim for done in results for claim in done.result(timeout=60)]

    counted = Counter(item_id for item_id, _ in claims)
    assert len(counted) == USERS and set(counted.values()) == {1}  # every item, once
    with sessions() as session:
        held = {item_id: owner for item_id, owner in session.execute(
            select(ResetItem.id, ResetItem.leased_by).where(ResetItem.task_id == task_id)
        )}
    assert held == dict(claims)  # each item leased to the claimer that was told it had it
    assert pending(sessions, task_id) == 0
    # No claim takes more than a batch (PostgreSQL once took the whole chunk in one claim).
    assert sizes and max(sizes) <= settings.claim_batch


def test_the_start_lock_row_is_made_once(engine: Engine, sessions: sessionmaker[Session]) -> None:
    for _ in range(2):
        with sessions() as session:
            insert_unless_present(session, StartLock.__table__, id=7, starts=0)
            session.commit()
    with sessions() as session:
        assert session.execute(select(StartLock.id, StartLock.starts)).all() == [(7, 0)]


@contextmanager
def before_item_update(engine: Engine, change: Any) -> Iterator[None]:
    """Run `change` (on its own connection, committed) just before the first UPDATE of
    reset_items: between a claim's locking read and its UPDATE on MariaDB."""
    done = threading.Event()

    def hook(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE RESET_ITEMS") and not done.is_set():
            done.set()
            with engine.begin() as other:
                change(other)

    event.listen(engine, "before_cursor_execute", hook)
    try:
        yield
    finally:
        event.remove(engine, "before_cursor_execute", hook)
    assert done.is_set(), "the UPDATE never ran"


@mariadb_only
def test_a_cancel_between_the_locking_read_and_the_update_claims_nothing(
    settings: Settings, redis_conn: Redis, engine: Engine, sessions: sessionmaker[Session],
    directory: Directory,
) -> None:
    context = build_context(replace(settings, chunk_size=USERS), redis_conn, engine)
    task_id = planned_task(context, engine, directory)

    def cancel(connection: Any) -> None:
        connection.execute(
            update(ResetTask).where(ResetTask.id == task_id).values(cancel_requested=True)
        )

    with before_item_update(engine, cancel):
        assert claim_items(context, task_id, chunk_items(task_id, 0)) == []
    assert pending(sessions, task_id) == USERS  # nobody was claimed behind the cancel


@mariadb_only
def test_rows_whose_condition_changed_in_between_are_neither_changed_nor_returned(
    settings: Settings, redis_conn: Redis, engine: Engine, sessions: sessionmaker[Session],
    directory: Directory,
) -> None:
    context = build_context(replace(settings, chunk_size=USERS), redis_conn, engine)
    task_id = planned_task(context, engine, directory)
    with sessions() as session:
        ids = list(session.scalars(select(ResetItem.id).order_by(ResetItem.id)))
    odd = [item_id for item_id in ids if item_id % 2]

    def take_the_even_ones(connection: Any) -> None:
        # Not locked by the claim's read: a row of another table stands for the condition.
        connection.execute(
            update(ResetTask).where(ResetTask.id == task_id).values(pause_reason="odd only")
        )

    odd_only_once_paused = (ResetItem.id % 2 == 1) | select(ResetTask.id).where(
        ResetTask.id == task_id, ResetTask.pause_reason.is_(None)
    ).exists()
    with before_item_update(engine, take_the_even_ones), sessions() as session:
        rows = update_returning(
            session,
            [ResetItem.task_id == task_id, ResetItem.state == ItemState.PENDING,
             odd_only_once_paused],
            {"state": ItemState.CLAIMED, "leased_by": context.owner},
            [ResetItem.id],
        )
        session.commit()
    assert [row[0] for row in rows] == odd
    with sessions() as session:
        claimed = list(session.scalars(
            select(ResetItem.id).where(ResetItem.state == ItemState.CLAIMED).order_by(ResetItem.id)
        ))
    assert claimed == odd


@mariadb_only
def test_mariadb_usernames_compare_without_case(
    engine: Engine, directory: Directory
) -> None:
    """The collation caveat docs/deployment.md names: MariaDB's default collation takes `Alice` for
    `alice`, so the users table's unique index refuses the second."""
    from sqlalchemy.exc import IntegrityError

    row = {"full_name": "A", "must_change_password": False}
    with engine.begin() as connection:
        connection.execute(insert(directory.table), [{**row, "username": "alice"}])
    with pytest.raises(IntegrityError), engine.begin() as connection:
        connection.execute(insert(directory.table), [{**row, "username": "Alice"}])
