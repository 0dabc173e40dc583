"""Revision 0002: tasks retried before it are marked as retried, so they are not retried again."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine, MetaData, Table, insert, select

from core.db import make_engine
from core.migrate import upgrade
from core.settings import Settings

# Claims, locks and DDL differ between databases: these run on MariaDB too.
pytestmark = pytest.mark.every_database


@pytest.fixture
def fresh_engine(settings: Settings) -> Iterator[Engine]:
    engine = make_engine(settings.database_url)
    yield engine
    engine.dispose()


def _task(task_id: int, retry_of: int | None) -> dict[str, Any]:
    """A row as revision 0001 stores it (every column without a default given)."""
    flags = ("require_change", "planned", "reported_waiting", "summary_posted",
             "slack_started_posted", "slack_error_posted", "slack_csv_posted", "cancel_requested")
    numbers = ("total", "plan_cursor", "reported_step", "reported_retry_round", "slack_milestone")
    return {
        "id": task_id, "requester": "UADMIN", "requester_name": "", "scope": "selected_only",
        "selection": [2], "mode": "generated", "status": "completed_with_errors",
        "retry_of": retry_of, "created_at": datetime.now(UTC),
        **dict.fromkeys(flags, False), **dict.fromkeys(numbers, 0),
    }


def test_upgrade_marks_tasks_retried_before_with_their_first_retry(
    settings: Settings, fresh_engine: Engine
) -> None:
    assert upgrade(settings, "0001") == "0001"
    with fresh_engine.begin() as connection:
        tasks = Table("reset_tasks", MetaData(), autoload_with=connection)
        connection.execute(insert(tasks), [_task(1, None), _task(2, 1), _task(3, 1),
                                           _task(4, None)])
    assert upgrade(settings, "0002") == "0002"
    with fresh_engine.connect() as connection:
        tasks = Table("reset_tasks", MetaData(), autoload_with=connection)
        retried = dict(connection.execute(select(tasks.c.id, tasks.c.retried_by)).all())
    assert retried == {1: 2, 2: None, 3: None, 4: None}
