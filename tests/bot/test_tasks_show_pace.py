"""`resetbot tasks show`: the progress line carries the same rate and time left as Slack."""

from __future__ import annotations

import io
from datetime import timedelta

import pytest
from sqlalchemy import insert
from sqlalchemy.orm import Session, sessionmaker

from bot.tasks_cli import show_task
from core.models import ItemState, ResetItem, ResetTask, TaskStatus, utcnow


class Lines:
    def __init__(self) -> None:
        self.out = io.StringIO()

    def say(self, text: str = "") -> None:
        self.out.write(text + "\n")


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_tasks_show_gives_rate_and_time_left(sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        task = ResetTask(requester="cli:tester", scope="all", mode="default",
                         status=TaskStatus.RUNNING, total=10, planned=True,
                         started_at=utcnow() - timedelta(seconds=85))
        session.add(task)
        session.flush()
        session.execute(insert(ResetItem), [
            {"task_id": task.id, "user_id": i, "chunk": 0, "username": f"user{i}",
             "state": ItemState.RESET if i <= 4 else ItemState.PENDING, "updated_at": utcnow()}
            for i in range(1, 11)
        ])
        session.commit()
        cli = Lines()
        show_task(cli, session, task.id, as_csv=False, as_json=False)

    assert "  4 of 10 users done · 0.05 users/s · about 2 min left\n" in cli.out.getvalue()
