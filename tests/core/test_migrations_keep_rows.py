"""Every revision, upgraded to head and downgraded back, keeps every row of every table.

On SQLite a revision that rebuilds `reset_tasks` (batch mode: copy, drop, rename) would, with
foreign keys on, delete every task's items (ON DELETE CASCADE) when the old table is dropped.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import (
    JSON,
    Boolean,
    Connection,
    DateTime,
    Engine,
    Integer,
    MetaData,
    Table,
    func,
    inspect,
    select,
)

import core.migrations
from core.db import make_engine
from core.migrate import downgrade_engine, upgrade
from core.settings import Settings

pytestmark = pytest.mark.every_database

VERSIONS = Path(core.migrations.__path__[0]) / "versions"

#: Every revision, from the files (a new one is covered without editing this test).
REVISIONS = sorted(path.name[:4] for path in VERSIONS.glob("[0-9][0-9][0-9][0-9]_*.py"))
HEAD = REVISIONS[-1]
AT = datetime(2026, 12, 7, 9, 30, tzinfo=UTC)


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    made = make_engine(settings.database_url)
    yield made
    made.dispose()


def _required_values(table: Table, given: dict[str, Any]) -> dict[str, Any]:
    """`given`, plus a value for every NOT NULL column the revision has and the row lacks."""
    values = {  # MariaDB's JSON columns reflect as LONGTEXT: they take the JSON text
        name: value if isinstance(table.c[name].type, JSON) or not isinstance(value, list | dict)
        else json.dumps(value)
        for name, value in given.items()
    }
    for column in table.columns:
        if column.name in values or column.nullable or column.server_default is not None:
            continue
        if column.primary_key and isinstance(column.type, Integer):
            continue
        if isinstance(column.type, Boolean):
            values[column.name] = False
        elif isinstance(column.type, Integer):
            values[column.name] = 0
        elif isinstance(column.type, DateTime):
            values[column.name] = AT
        elif isinstance(column.type, JSON):
            values[column.name] = {}
        else:  # text; "{}" is also valid JSON, for MariaDB's JSON (LONGTEXT + json_valid)
            values[column.name] = "{}"
    return values


def _reflect(connection: Connection, *names: str) -> MetaData:
    """The named tables as the database has them, read at once (SQLAlchemy reads several tables
    in one query per kind of thing: table by table took seconds on PostgreSQL)."""
    metadata = MetaData()
    metadata.reflect(connection, only=names)
    return metadata


def _insert(connection: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    for row in rows:  # one by one: the rows name different columns
        connection.execute(table.insert().values(_required_values(table, row)))


def _fill(engine: Engine) -> None:
    """A finished task with items, a retry of it, a request that became it, audit rows, a user."""
    with engine.begin() as connection:
        tables = _reflect(connection, "users", "reset_tasks", "reset_items", "pending_requests",
                          "audit_log").tables
        _insert(connection, tables["users"], [{"id": 1, "username": "ann.walker",
                                               "full_name": "Ann Walker"}])
        _insert(connection, tables["reset_tasks"], [
            {"id": 1, "status": "done", "selection": []},
            {"id": 2, "status": "done", "selection": [], "retry_of": 1},
        ])
        _insert(connection, tables["reset_items"], [
            {"id": 10 + n, "task_id": 1 + n % 2, "user_id": n, "username": f"user{n}",
             "state": "done"}
            for n in range(5)
        ])
        _insert(connection, tables["pending_requests"], [
            {"id": "req-1", "selection": [], "task_id": 1},
            {"id": "req-2", "selection": []},
        ])
        _insert(connection, tables["audit_log"], [{"id": 1, "task_id": 1, "action": "request",
                                           "detail": {}}])


def _rows(engine: Engine) -> dict[str, list[Any]]:
    """The primary keys of every row of resetbot's tables (and the users), per table present."""
    found: dict[str, list[Any]] = {}
    with engine.connect() as connection:
        names = set(inspect(connection).get_table_names())
        present = [name for name in ("users", "reset_tasks", "reset_items", "pending_requests",
                                     "audit_log", "task_start_lock") if name in names]
        tables = _reflect(connection, *present).tables
        for name in present:
            found[name] = sorted(connection.execute(select(tables[name].c.id)).scalars())
        if "reset_items" in names:
            items = tables["reset_items"]
            found["items of task 1"] = sorted(connection.execute(
                select(items.c.id).where(items.c.task_id == 1)).scalars())
            assert connection.scalar(select(func.count()).select_from(items)) == 5
    return found


FILLED = {
    "users": [1], "reset_tasks": [1, 2], "reset_items": [10, 11, 12, 13, 14],
    "pending_requests": ["req-1", "req-2"], "audit_log": [1], "items of task 1": [10, 12, 14],
}


@pytest.mark.parametrize("revision", REVISIONS)
def test_upgrading_to_head_keeps_every_row(
    settings: Settings, engine: Engine, revision: str
) -> None:
    assert upgrade(settings, revision) == revision
    _fill(engine)
    before = _rows(engine)
    assert {name: ids for name, ids in before.items() if name in FILLED} == FILLED
    assert upgrade(settings) == HEAD
    after = _rows(engine)
    assert {name: after[name] for name in before} == before
    assert after["task_start_lock"] == [1]
    _assert_items_still_follow_their_task(engine)


def _assert_items_still_follow_their_task(engine: Engine) -> None:
    """The rebuilt tables still reference each other: deleting a task deletes its items."""
    with engine.begin() as connection:
        tables = _reflect(connection, "reset_tasks", "reset_items", "pending_requests").tables
        tasks, items = tables["reset_tasks"], tables["reset_items"]
        requests = tables["pending_requests"]
        connection.execute(requests.delete())
        connection.execute(tasks.update().values(retry_of=None))
        connection.execute(tasks.delete().where(tasks.c.id == 1))
        assert sorted(connection.execute(select(items.c.id)).scalars()) == [11, 13]


@pytest.mark.parametrize("revision", ["0001", "0004"])
def test_upgrading_keeps_the_items_of_a_task_no_row_names(
    settings: Settings, engine: Engine, revision: str
) -> None:
    """Nothing refers to the task but its items: a rebuild of `reset_tasks` with foreign keys on
    would delete them without an error (0005 did, on SQLite)."""
    assert upgrade(settings, revision) == revision
    with engine.begin() as connection:
        tables = _reflect(connection, "reset_tasks", "reset_items").tables
        _insert(connection, tables["reset_tasks"], [{"id": 1, "status": "done", "selection": []}])
        _insert(connection, tables["reset_items"], [
            {"id": 10 + n, "task_id": 1, "user_id": n, "username": f"user{n}", "state": "done"}
            for n in range(3)
        ])
    assert upgrade(settings) == HEAD
    with engine.connect() as connection:
        items = Table("reset_items", MetaData(), autoload_with=connection)
        assert sorted(connection.execute(select(items.c.id)).scalars()) == [10, 11, 12]


@pytest.mark.slow
def test_downgrading_step_by_step_keeps_every_row_until_its_table_goes(
    settings: Settings, engine: Engine
) -> None:
    assert upgrade(settings, "0001") == "0001"
    _fill(engine)
    assert upgrade(settings) == HEAD
    for revision in reversed(REVISIONS[:-1]):
        assert downgrade_engine(engine, settings.directory, revision) == revision
        rows = _rows(engine)
        assert {name: rows[name] for name in FILLED} == FILLED, revision
        if revision >= "0005":
            assert rows["task_start_lock"] == [1], revision
    assert downgrade_engine(engine, settings.directory, "base") is None
    assert set(_rows(engine)) == {"users"}
    if engine.dialect.name == "sqlite":  # turned off for the migrations only
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
