"""`resetbot reset --at TIME`, and the terminal's view of scheduled tasks.

In-process (`bot.cli.main`) on the real database (and Redis where a start is enqueued): a time
in this host's zone or with an offset becomes the right UTC moment; a time in the past or more
than 90 days ahead is refused with one line and the usage exit code, nothing stored; a
scheduled reset is listed first, shown with its time, cancelled with its sealed password
erased, and started with `tasks start` when its count changed.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from redis import Redis
from sqlalchemy import Engine, insert, select
from sqlalchemy.orm import Session, sessionmaker

from bot.terminal import EXIT_OK, EXIT_REFUSED, EXIT_USAGE
from core.directory import Directory
from core.models import AuditEntry, ResetTask, TaskStatus, utcnow
from core.settings import Settings
from jobs.queueing import job_ids_in_redis, make_queue
from jobs.reaper import reap
from tests.support.cli import cli_settings as cli_settings
from tests.support.cli import run as run
from tests.support.engine import build_context
from tests.support.smtp import smtp_server as smtp_server

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
DEFAULT_PASSWORD = "Quiet-Harbour-92-Lamp"


@pytest.fixture
def auckland() -> Iterator[None]:
    """This process in a zone far from UTC (+13:00 in January), as a host elsewhere is."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TZ", "Pacific/Auckland")
        time.tzset()
        yield
    time.tzset()


def tasks(sessions: sessionmaker[Session]) -> list[ResetTask]:
    with sessions() as session:
        return list(session.scalars(select(ResetTask).order_by(ResetTask.id)))


def ahead(**delta: float) -> datetime:
    """A whole minute just over `delta` from now (a minute typed is never a little short)."""
    return (utcnow() + timedelta(minutes=1, **delta)).replace(second=0, microsecond=0)


def schedule(run: Any, at: str, *extra: str, stdin: str = "") -> Any:
    return run("reset", "--scope", "all_without_role", "--yes", "--at", at, *extra,
               stdin=io.StringIO(stdin))


@sqlite_only
def test_a_local_time_is_this_host_s_time_and_the_reset_only_waits(
    run: Any, sessions: sessionmaker[Session], sample_users: Any, auckland: None,
    redis_conn: Redis, cli_settings: Settings,
) -> None:
    moment = ahead(days=3)
    local = moment.astimezone().replace(tzinfo=None)  # what someone in Auckland types
    assert local != moment.replace(tzinfo=None)
    done = schedule(run, local.isoformat(timespec="minutes"))
    assert done.code == EXIT_OK, done.err
    [task] = tasks(sessions)
    assert task.status == TaskStatus.SCHEDULED and task.start_at == moment
    assert task.preview_users == 5
    assert f"Task #{task.id} scheduled for" in done.out and "(in 3 days)" in done.out
    assert "NZ" in done.out  # said in this host's zone
    assert job_ids_in_redis(redis_conn, make_queue(cli_settings, redis_conn)) == []


@sqlite_only
def test_an_offset_is_taken_as_given(
    run: Any, sessions: sessionmaker[Session], sample_users: Any, auckland: None,
) -> None:
    moment = ahead(days=10)
    typed = moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="minutes") + "-05:00"
    done = schedule(run, typed)
    assert done.code == EXIT_OK, done.err
    [task] = tasks(sessions)
    assert task.start_at == moment + timedelta(hours=5)


@sqlite_only
@pytest.mark.parametrize(("at", "said"), [
    ("2020-01-09T06:00", "This time has passed"),
    ("PAST", "This time has passed"),
    ("FAR", "at most 90 days ahead"),
    ("next tuesday", "is not a time"),
    # UTC of the last moment of year 9999 at -14:00 is past datetime's range (was a traceback).
    ("9999-12-31T23:59:59-14:00", "at most 90 days ahead"),
    ("0001-01-01T00:00:00+14:00", "This time has passed"),
])
def test_times_in_the_past_too_far_ahead_or_unreadable_are_refused(
    run: Any, sessions: sessionmaker[Session], sample_users: Any, at: str, said: str,
) -> None:
    typed = {"PAST": (utcnow() - timedelta(minutes=5)).isoformat(timespec="minutes"),
             "FAR": ahead(days=91).isoformat(timespec="minutes")}.get(at, at)
    refused = schedule(run, typed)
    assert refused.code == EXIT_USAGE
    last = refused.err.strip().splitlines()[-1]  # argparse's usage line may come first
    assert said in last and "--at" in last
    assert tasks(sessions) == []


@sqlite_only
def test_a_dry_run_says_when_and_changes_nothing(
    run: Any, sessions: sessionmaker[Session], sample_users: Any,
) -> None:
    done = schedule(run, ahead(hours=5).isoformat(timespec="minutes"), "--dry-run")
    assert done.code == EXIT_OK and "Starts: " in done.out and "(in 5 h)" in done.out
    assert tasks(sessions) == []


def test_scheduled_tasks_are_listed_first_and_cancelled_with_their_password_erased(
    run: Any, sessions: sessionmaker[Session], sample_users: Any, redis_conn: Redis,
    directory: Directory,
) -> None:
    from tests.support.engine import user_rows

    before = user_rows(sessions, directory)
    now_task = run("reset", "--scope", "selected_only", "--user", "alice", "--yes", "--detach")
    assert now_task.code == EXIT_OK, now_task.err
    later = schedule(run, ahead(days=2).isoformat(timespec="minutes"),
                     "--default-password-stdin", stdin=DEFAULT_PASSWORD + "\n")
    sooner = schedule(run, ahead(hours=2).isoformat(timespec="minutes"))
    assert later.code == sooner.code == EXIT_OK
    listed = run("tasks").out.splitlines()
    rows = [line.split()[0] for line in listed[1:]]
    assert rows == ["3", "2", "1"]  # the sooner schedule first, then the most recent others
    assert "scheduled" in listed[1] and "starts " in listed[1]
    shown = run("tasks", "show", "2").out
    assert "Scheduled for" in shown and "its preview counted 5 users" in shown
    assert tasks(sessions)[1].default_password_sealed is not None

    cancelled = run("tasks", "cancel", "2")
    assert cancelled.code == EXIT_OK, cancelled.err
    task = tasks(sessions)[1]
    assert task.status == TaskStatus.CANCELLED and task.default_password_sealed is None
    assert run("tasks", "cancel", "2").code == EXIT_REFUSED  # already ended
    with sessions() as session:
        entries = session.scalars(select(AuditEntry.action).where(AuditEntry.task_id == 2))
        assert list(entries) == ["confirm", "schedule", "cancel"]
    assert user_rows(sessions, directory) == before


def test_tasks_start_starts_a_held_task_with_the_new_count(
    run: Any, sessions: sessionmaker[Session], sample_users: Any, redis_conn: Redis,
    engine: Engine, directory: Directory, cli_settings: Settings,
) -> None:
    assert schedule(run, ahead(hours=1).isoformat(timespec="minutes")).code == EXIT_OK
    refused = run("tasks", "start", "1")
    assert refused.code == EXIT_REFUSED and "not waiting for a new confirmation" in refused.err
    with engine.begin() as connection:  # two more patrons by its time: 7 instead of 5
        connection.execute(insert(directory.table), [
            {"id": i, "username": f"new{i}", "full_name": "", "email": None, "role": None,
             "must_change_password": False} for i in (100, 101)])
    context = build_context(cli_settings, redis_conn, engine)
    [task] = tasks(sessions)
    assert task.start_at is not None
    assert reap(context, now=task.start_at).schedules_held == 1
    assert "Held at its start" in run("tasks", "show", "1").out
    started = run("tasks", "start", "1")
    assert started.code == EXIT_OK, started.err
    assert "7 users" in started.out
    assert tasks(sessions)[0].status == TaskStatus.QUEUED
    assert any("__t1__plan__" in job for job in job_ids_in_redis(redis_conn, context.queue))
    context.close()
