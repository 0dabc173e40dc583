"""Mail server faults, seen from the database, the mails received and the Slack thread.

- nothing listening on the SMTP port for the whole task: every mail retried as configured, then
  `notify_failed` with the reason, one line per retry round in the thread and a summary that
  says so;
- the mail server unreachable for a moment (a real TCP proxy cut, then restored): the retry
  delivers a fresh password, and that is the one that opens the account;
- wrong SMTP credentials over many chunks: one login attempt, one problem message, nobody reset.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from redis import Redis
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from core.directory import Directory
from core.models import ItemState, ResetItem, ResetTask, Scope, TaskStatus
from core.passwords import PasswordHasher
from core.settings import Settings
from core.tasks import ResetRequest, create_task
from jobs.context import WorkerContext
from jobs.queueing import enqueue_task
from jobs.reporting import NullReporter
from jobs.slack_reporter import SlackReporter
from jobs.worker import ResetWorker
from tests.support.faults import free_port, tcp_proxy, wait_until
from tests.support.slack_standin import Message, SlackStandIn
from tests.support.slack_standin import slack_standin as slack_standin
from tests.support.smtp import SmtpServer
from tests.support.smtp import smtp_server as smtp_server

CHANNEL = "C0MAILFAULT"
EMAILED = {1: "alice@example.org", 2: "bob@example.org", 3: "carol@example.org",
           5: "erin@example.org", 7: "grace@example.org"}
NO_EMAIL = {4, 6}
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
def context_for(
    redis_conn: Redis, engine: Engine, slack_standin: SlackStandIn
) -> Iterator[Any]:
    built: list[WorkerContext] = []

    def build(settings: Settings) -> WorkerContext:
        configured = slack_standin.apply_to(settings)
        context = WorkerContext.build(configured, redis_conn, engine=engine,
                                      reporter=NullReporter())
        # Slack deliveries retry at once in tests, as many times as in production.
        context.reporter = SlackReporter(context, retry_intervals=(0,) * 10)
        built.append(context)
        return context

    yield build
    for context in built:
        context.close()


def start(context: WorkerContext) -> int:
    with context.sessions.begin() as session:
        task_id = create_task(session, context.settings, ResetRequest(
            requester="U0STAFF", requester_name="Stella Staff", scope=Scope.ALL,
            slack_channel=CHANNEL,
        )).id
    enqueue_task(context.queue, task_id)
    return task_id


def task(context: WorkerContext, task_id: int) -> ResetTask:
    with context.sessions() as session:
        found = session.get(ResetTask, task_id)
        assert found is not None
        return found


def run_to_the_end(context: WorkerContext, task_id: int, timeout: float = 30) -> ResetTask:
    """Burst workers (with RQ's scheduler for due retries) until the task ended and Slack has
    heard the whole story (its summary, and the CSV when there are follow-ups)."""

    def told() -> bool:
        ResetWorker(context, reaper=False).work(burst=True, with_scheduler=True)
        row = task(context, task_id)
        return TaskStatus(row.status).is_final and row.summary_posted and (
            row.slack_csv_posted or not _has_follow_ups(context, task_id))

    wait_until(told, timeout, f"task {task_id} to end and be reported")
    return task(context, task_id)


def _has_follow_ups(context: WorkerContext, task_id: int) -> bool:
    with context.sessions() as session:
        return session.scalar(select(ResetItem.id).where(
            ResetItem.task_id == task_id,
            ResetItem.state.in_([ItemState.NO_EMAIL, ItemState.NOTIFY_FAILED]),
        ).limit(1)) is not None


def items(sessions: sessionmaker[Session], task_id: int) -> dict[int, ResetItem]:
    with sessions() as session:
        found = session.scalars(select(ResetItem).where(ResetItem.task_id == task_id))
        return {item.user_id: item for item in found}


def thread(standin: SlackStandIn) -> list[Message]:
    [parent] = standin.top_level(CHANNEL)
    return standin.thread(CHANNEL, parent.ts)


# ---- SMTP down for the whole task ----------------------------------------------------------------


def test_smtp_down_for_the_whole_task_retries_then_fails_each_user_with_the_reason(
    context_for: Any, sessions: sessionmaker[Session], sample_users: list[Any],
    slack_standin: SlackStandIn, settings: Settings,
) -> None:
    closed_port = free_port()  # nothing listens there: every connection is refused
    configured = replace(settings, smtp_host="127.0.0.1", smtp_port=closed_port,
                         smtp_timeout=2.0, mail_retry_delays=(0, 0, 0))
    context = context_for(configured)
    task_id = start(context)

    final = run_to_the_end(context, task_id)

    assert final.status == TaskStatus.COMPLETED_WITH_ERRORS
    outcome = items(sessions, task_id)
    for user_id in EMAILED:
        item = outcome[user_id]
        assert (item.state, item.attempts) == (ItemState.NOTIFY_FAILED, 4)  # 1 + 3 retries
        assert f"Could not reach the mail server 127.0.0.1:{closed_port}" in (item.last_error or "")
        assert "gave up after 4 attempts" in (item.last_error or "")
    assert {u for u, i in outcome.items() if i.state == ItemState.NO_EMAIL} == NO_EMAIL
    said = [m.text for m in thread(slack_standin)]
    rounds = [t for t in said if "failed, retrying" in t]
    assert len(rounds) == 3, said  # one line per retry round, not one per user
    assert all(t.startswith(":e-mail: 5 notifications failed") for t in rounds)
    [summary] = [t for t in said if t.startswith(f"Reset #{task_id} ")]
    assert "completed with errors" in summary and "mail failed 5" in summary
    [upload] = slack_standin.files(slack_standin.dm_channel("U0STAFF"))
    listed = {row["username"]: row for row in csv.DictReader(io.StringIO(upload.text))}
    assert set(listed) == {"alice", "bob", "carol", "erin", "grace", "dave", "frank"}
    assert "Could not reach the mail server" in listed["alice"]["reason"]


def test_smtp_unreachable_for_a_moment_the_retry_mails_the_current_password(
    context_for: Any, sessions: sessionmaker[Session], directory: Directory,
    sample_users: list[Any], smtp_server: SmtpServer, settings: Settings,
) -> None:
    with tcp_proxy(smtp_server.host, smtp_server.port) as proxy:
        configured = replace(smtp_server.settings(settings), smtp_port=proxy.port,
                             mail_retry_delays=(1, 1, 1))
        context = context_for(configured)
        proxy.cut()
        task_id = start(context)
        ResetWorker(context, reaper=False).work(burst=True)  # first attempts: all refused
        waiting = items(sessions, task_id)
        assert {waiting[u].state for u in EMAILED} == {ItemState.RETRY_WAIT}
        hashes_after_first_try = _hashes(sessions, directory)
        proxy.restore()

        final = run_to_the_end(context, task_id)

    assert final.status == TaskStatus.COMPLETED
    outcome = items(sessions, task_id)
    assert all((outcome[u].state, outcome[u].attempts) == (ItemState.NOTIFIED, 2)
               for u in EMAILED)
    hasher = PasswordHasher.from_settings(configured)
    now = _hashes(sessions, directory)
    for user_id, address in EMAILED.items():
        [mail] = smtp_server.to(address)
        assert hasher.verify(mail.password, now[user_id])
        # The retry made a fresh password: the one set before the failed mail is gone.
        assert now[user_id] != hashes_after_first_try[user_id]


def _hashes(sessions: sessionmaker[Session], directory: Directory) -> dict[int, str]:
    c = directory.table.c
    with sessions() as session:
        return {row[0]: row[1] for row in session.execute(select(c.id, c.password_hash))}


# ---- wrong SMTP credentials ----------------------------------------------------------------------


@sqlite_only
def test_wrong_smtp_credentials_over_many_chunks_say_one_thing_once(
    context_for: Any, sessions: sessionmaker[Session], directory: Directory, engine: Engine,
    slack_standin: SlackStandIn, settings: Settings,
) -> None:
    from sqlalchemy import insert

    with engine.begin() as connection:
        connection.execute(insert(directory.table), [
            {"id": i, "username": f"user{i}", "full_name": f"User {i}",
             "email": f"user{i}@example.org", "password_hash": "old-hash",
             "must_change_password": False}
            for i in range(1, 61)
        ])
    server = SmtpServer(username="resetbot", password="Right-Relay-Secret-1").start()
    try:
        configured = replace(server.settings(settings), smtp_password="Wrong-Relay-Secret-2",
                             chunk_size=3, claim_batch=3)  # 20 chunks
        context = context_for(configured)
        task_id = start(context)
        final = run_to_the_end(context, task_id)
        logins = list(server.logins)
    finally:
        server.stop()

    assert final.status == TaskStatus.FAILED
    assert logins == [("resetbot", False)]  # one refused login, not one per chunk or user
    said = [m.text for m in thread(slack_standin)]
    problems = [t for t in said if t.startswith(":warning: Problem with reset")]
    assert len(problems) == 1 and "535" in problems[0]
    assert {item.state for item in items(sessions, task_id).values()} == {
        ItemState.NOTIFY_FAILED}
    assert set(_hashes(sessions, directory).values()) == {"old-hash"}  # nobody locked out
    for secret in ("Right-Relay-Secret-1", "Wrong-Relay-Secret-2"):
        assert slack_standin.requests_containing(secret) == []
