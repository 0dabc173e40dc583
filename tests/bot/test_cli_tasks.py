"""The terminal task centre: `resetbot tasks [list]`, `tasks cancel ID`, `tasks retry ID`.

Run in-process (`bot.cli.main`) against the real database, Redis, SMTP server and, for the
"once per task" guard across edges, the Slack app over signed HTTP.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from redis import Redis
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session, sessionmaker

from bot.cli import main
from bot.terminal import login_name
from core.directory import Directory
from core.errors import ConflictError
from core.models import AuditEntry, ItemState, ResetItem, ResetTask, TaskStatus
from core.passwords import PasswordHasher
from core.settings import Settings
from core.tasks import create_retry_task
from tests.support.cli import cli_settings as cli_settings
from tests.support.cli import run as run
from tests.support.engine import user_rows
from tests.support.faults import wait_until
from tests.support.signing import app_settings, start_app
from tests.support.slack_standin import SlackStandIn
from tests.support.slack_standin import slack_standin as slack_standin
from tests.support.smtp import SmtpServer
from tests.support.smtp import smtp_server as smtp_server

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
postgres_only = pytest.mark.parametrize(
    "database_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)





def work(run: Any) -> None:
    """`resetbot worker --burst` in this process, until the queue is empty."""
    interval = sys.getswitchinterval()
    try:
        worked = run("worker", "--burst")
    finally:
        sys.setswitchinterval(interval)
    assert worked.code == 0, worked.err


def tasks(sessions: sessionmaker[Session]) -> list[ResetTask]:
    with sessions() as session:
        return list(session.scalars(select(ResetTask).order_by(ResetTask.id)))


def audit_entries(sessions: sessionmaker[Session], action: str) -> list[AuditEntry]:
    with sessions() as session:
        return list(session.scalars(select(AuditEntry).where(AuditEntry.action == action)))


@pytest.fixture
def failed_mail_task(
    run: Any, smtp_server: SmtpServer, redis_conn: Redis, sample_users: Any
) -> Iterator[int]:
    """Task #1: alice and bob e-mailed; bob's mail refused for good (550)."""
    smtp_server.refuse("bob@example.org", code=550, times=1)
    started = run("reset", "--scope", "selected_only", "--user", "alice,bob", "--yes",
                  "--detach")
    assert started.code == 0, started.err
    work(run)
    yield 1


def test_retry_from_the_terminal_mails_the_failed_users_once_and_is_audited(
    run: Any, failed_mail_task: int, sessions: sessionmaker[Session], directory: Directory,
    smtp_server: SmtpServer, cli_settings: Settings,
) -> None:
    assert "Task #1: completed with errors" in run("tasks", "show", "1").out

    retried = run("tasks", "retry", "1", "--detach")
    assert retried.code == 0, retried.err
    assert ("Task #2 queued: new passwords by e-mail for the 1 user whose mail failed in "
            "task #1.") in retried.out
    original, retry = tasks(sessions)
    operator = f"cli:{login_name()}"
    assert (retry.retry_of, retry.selection, retry.requester) == (1, ["2"], operator)
    assert original.retried_by == retry.id == 2
    [entry] = audit_entries(sessions, "retry")
    assert (entry.actor, entry.task_id, entry.detail) == (operator, 2, {"retry_of": 1, "users": 1})

    again = run("tasks", "retry", "1")
    assert again.code == 1
    assert "Reset #1 was already retried as reset #2." in again.err
    assert len(tasks(sessions)) == 2 and len(audit_entries(sessions, "retry")) == 1

    work(run)
    assert "Task #2: completed" in run("tasks", "show", "2").out
    [mail] = smtp_server.to("bob@example.org")
    stored = {row.username: row for row in user_rows(sessions, directory).values()}
    hasher = PasswordHasher.from_settings(cli_settings)
    assert hasher.verify(mail.password, stored["bob"].password_hash or "")


@sqlite_only
def test_retry_is_refused_clearly_while_running_without_failures_or_unknown(
    run: Any, sessions: sessionmaker[Session], redis_conn: Redis, sample_users: Any
) -> None:
    assert run("reset", "--scope", "selected_only", "--user", "alice", "--yes",
               "--detach").code == 0
    running = run("tasks", "retry", "1")
    assert (running.code, running.err.strip()) == (
        1, "resetbot: Task #1 is still running; retry when it has ended.")
    work(run)
    nothing = run("tasks", "retry", "1")
    assert nothing.code == 1 and "has no failed notifications to retry" in nothing.err
    unknown = run("tasks", "retry", "9")
    assert unknown.code == 1 and "There is no task #9." in unknown.err
    assert len(tasks(sessions)) == 1


@sqlite_only
def test_a_retry_with_redis_unreachable_leaves_no_task(
    run: Any, failed_mail_task: int, sessions: sessionmaker[Session], cli_settings: Settings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    environ = {**cli_settings.to_env(), "REDIS_URL": "redis://127.0.0.1:1/0"}
    assert main(["tasks", "retry", "1"], environ=environ) == 1
    assert "Redis cannot be reached" in capsys.readouterr().err
    assert len(tasks(sessions)) == 1


def test_cancel_from_the_terminal_stops_a_queued_task_and_is_audited(
    run: Any, sessions: sessionmaker[Session], directory: Directory, redis_conn: Redis,
    smtp_server: SmtpServer, sample_users: Any,
) -> None:
    before = user_rows(sessions, directory)
    assert run("reset", "--scope", "all", "--yes", "--detach").code == 0
    cancelled = run("tasks", "cancel", "1")
    assert cancelled.code == 0, cancelled.err
    assert "Cancelling task #1" in cancelled.out
    [entry] = audit_entries(sessions, "cancel")
    assert (entry.actor, entry.task_id) == (f"cli:{login_name()}", 1)
    work(run)
    [task] = tasks(sessions)
    assert (task.status, task.cancelled_by) == (TaskStatus.CANCELLED, f"cli:{login_name()}")
    assert user_rows(sessions, directory) == before, "a cancelled queued task resets nobody"
    assert smtp_server.messages == []

    again = run("tasks", "cancel", "1")
    assert again.code == 1
    assert again.err.strip() == "resetbot: Task #1 has already ended (cancelled)."
    unknown = run("tasks", "cancel", "7")
    assert unknown.code == 1 and "There is no task #7." in unknown.err
    assert len(audit_entries(sessions, "cancel")) == 1


@sqlite_only
def test_tasks_and_tasks_list_are_the_same_listing_with_statuses_in_words(
    run: Any, failed_mail_task: int
) -> None:
    listing = run("tasks")
    assert listing.code == 0
    assert "completed with errors" in listing.out and "completed_with_errors" not in listing.out
    assert run("tasks", "list").out == listing.out


@sqlite_only
def test_a_task_retried_from_the_terminal_cannot_be_retried_from_slack(
    run: Any, failed_mail_task: int, cli_settings: Settings, sessions: sessionmaker[Session],
    directory: Directory, redis_conn: Redis, slack_standin: SlackStandIn,
) -> None:
    assert run("tasks", "retry", "1", "--detach").code == 0
    running, thread = start_app(app_settings(cli_settings, slack_standin), sessions, directory,
                                redis_conn, slack_standin)
    try:
        assert running.slack.click("retry_failed", "1").status == 200
        said = slack_standin.wait_for_call("chat.postEphemeral")
    finally:
        running.stop(thread)
    assert "Reset #1 was already retried as reset #2." in said.params["text"]
    assert len(tasks(sessions)) == 2


# -- the guard itself: two retries at the same moment make one task ------------------------------


def _task_with_a_failed_mail(sessions: sessionmaker[Session]) -> int:
    with sessions.begin() as session:
        task = ResetTask(requester="UADMIN", scope="selected_only", selection=[2],
                         mode="generated", status=TaskStatus.COMPLETED_WITH_ERRORS)
        session.add(task)
        session.flush()
        session.add(ResetItem(task_id=task.id, user_id=2, chunk=0, username="bob",
                              state=ItemState.NOTIFY_FAILED, attempts=1))
        return task.id


def _sessions_waiting_for_a_lock(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(text(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )).scalar_one())


@postgres_only
def test_two_retries_at_the_same_moment_make_one_task(
    engine: Engine, sessions: sessionmaker[Session], sample_users: Any
) -> None:
    original = _task_with_a_failed_mail(sessions)
    first = sessions()
    first_retry = create_retry_task(first, original, "cli:librarian").id  # not committed yet
    outcome: dict[str, str] = {}

    def second_edge() -> None:
        with sessions() as session:
            try:
                create_retry_task(session, original, "UADMIN")
                session.commit()
                outcome["made"] = "a second retry task"
            except ConflictError as refused:
                outcome["refused"] = str(refused)

    second = threading.Thread(target=second_edge)
    second.start()
    # The second one has read the task (not yet retried, as far as it can see) and now waits
    # on the row the first one changed: the moment a check-then-insert would let both through.
    wait_until(lambda: _sessions_waiting_for_a_lock(engine) == 1, 10, "the second retry to wait")
    first.commit()
    first.close()
    second.join(10)
    assert not second.is_alive()
    assert outcome == {
        "refused": f"Reset #{original} was already retried as reset #{first_retry}."
    }
    retries = [task.id for task in tasks(sessions) if task.retry_of == original]
    assert retries == [first_retry]
