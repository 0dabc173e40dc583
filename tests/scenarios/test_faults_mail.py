"""Mail server faults, seen from the database, the mails received and the Slack thread.

- nothing listening on the SMTP port for the whole task: the task pauses with nobody reset, says
  so once, and fails after MAIL_OUTAGE_GIVE_UP with every user listed as not reset;
- the mail server unreachable at the start (a real TCP proxy cut, then restored): the task
  pauses, then resumes by itself and every mailed password opens its account;
- a server that takes connections but fails mail after mail (421): the rest of the task pauses;
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
from sqlalchemy import Engine, insert, select
from sqlalchemy.orm import Session, sessionmaker

from bot.cli import main
from core.directory import Directory
from core.models import ItemState, ResetItem, ResetTask, Scope, TaskStatus
from core.passwords import PasswordHasher
from core.settings import Settings
from core.tasks import ResetRequest, create_task
from jobs.context import WorkerContext
from jobs.queueing import enqueue_task
from jobs.reaper import reap
from jobs.reporting import NullReporter
from jobs.slack_reporter import SlackReporter
from jobs.worker import ResetWorker
from tests.support.faults import free_port, tcp_proxy, wait_until
from tests.support.slack_standin import Message, SlackStandIn
from tests.support.slack_standin import slack_standin as slack_standin
from tests.support.smtp import SmtpServer
from tests.support.smtp import smtp_server as smtp_server

# Claims, locks and DDL differ between databases: these run on MariaDB too.
pytestmark = pytest.mark.every_database

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


def run_to_the_end(
    context: WorkerContext, task_id: int, timeout: float = 30, *, with_reaper: bool = False
) -> ResetTask:
    """Burst workers (with RQ's scheduler for due retries, and the reaper that resumes a paused
    task if asked) until the task ended and Slack has heard the whole story (its summary, and
    the CSV when there are follow-ups)."""

    def told() -> bool:
        if with_reaper:
            reap(context)
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
        return {int(item.user_id): item for item in found}  # the test table's integer ids


def add_mailable_users(engine: Engine, directory: Directory, count: int) -> None:
    """Users user1..userN, each with an address (and no sample users)."""
    with engine.begin() as connection:
        connection.execute(insert(directory.table), [
            {"id": i, "username": f"user{i}", "full_name": f"User {i}",
             "email": f"user{i}@example.org", "password_hash": "old-hash",
             "must_change_password": False}
            for i in range(1, count + 1)
        ])


def thread(standin: SlackStandIn) -> list[Message]:
    [parent] = standin.top_level(CHANNEL)
    return standin.thread(CHANNEL, parent.ts)


# ---- SMTP down: the task pauses, nobody is reset until the server answers -------------------



def test_smtp_down_for_the_whole_task_pauses_it_then_fails_it_with_nobody_reset(
    context_for: Any, sessions: sessionmaker[Session], directory: Directory,
    sample_users: list[Any], slack_standin: SlackStandIn, settings: Settings,
) -> None:
    closed_port = free_port()  # nothing listens there: every connection is refused
    # A short reaper interval: the reaper rescues a task at most once per two intervals (at
    # least a second), and the task fails on the try after MAIL_OUTAGE_GIVE_UP.
    configured = replace(settings, smtp_host="127.0.0.1", smtp_port=closed_port,
                         smtp_timeout=2.0, mail_outage_retry=0.01, mail_outage_give_up=0.3,
                         reaper_interval=0.25)
    context = context_for(configured)
    task_id = start(context)

    final = run_to_the_end(context, task_id, with_reaper=True)

    assert final.status == TaskStatus.FAILED
    assert final.error is not None and final.error.startswith(
        "The mail server could not be used for 0 min: Could not reach the mail server "
        f"127.0.0.1:{closed_port}")
    assert set(_hashes(sessions, directory).values()) == {"old-hash"}  # nobody locked out
    outcome = items(sessions, task_id)
    assert {item.state for item in outcome.values()} == {ItemState.NOTIFY_FAILED}
    assert all((item.last_error or "").startswith("Not reset: ") for item in outcome.values())
    said = [m.text for m in thread(slack_standin)]
    assert len([t for t in said if t.startswith(":double_vertical_bar: Paused:")]) == 1
    [summary] = [t for t in said if t.startswith(f"Reset #{task_id} ")]
    assert summary.startswith(f"Reset #{task_id} failed")
    [upload] = slack_standin.files(slack_standin.dm_channel("U0STAFF"))
    listed = {row["username"] for row in csv.DictReader(io.StringIO(upload.text))}
    assert listed == {"alice", "bob", "carol", "dave", "erin", "frank", "grace"}


def test_smtp_down_at_the_start_pauses_the_task_and_it_resumes_when_the_server_answers(
    context_for: Any, sessions: sessionmaker[Session], directory: Directory,
    sample_users: list[Any], smtp_server: SmtpServer, settings: Settings,
    slack_standin: SlackStandIn, capsys: pytest.CaptureFixture[str],
) -> None:
    with tcp_proxy(smtp_server.host, smtp_server.port) as proxy:
        configured = replace(smtp_server.settings(settings), smtp_port=proxy.port,
                             mail_outage_retry=0.01)
        context = context_for(configured)
        proxy.cut()
        task_id = start(context)
        ResetWorker(context, reaper=False).work(burst=True)

        paused = task(context, task_id)
        assert paused.status == TaskStatus.RUNNING and paused.paused_since is not None
        assert {item.state for item in items(sessions, task_id).values()} == {
            ItemState.PENDING}
        assert set(_hashes(sessions, directory).values()) == {"old-hash"}
        assert main(["tasks", "show", str(task_id)], environ=configured.to_env()) == 0
        shown = capsys.readouterr().out
        assert "Paused since " in shown and f"127.0.0.1:{proxy.port}" in shown
        said = [m.text for m in thread(slack_standin)]
        assert not [t for t in said if t.startswith(f"Reset #{task_id} ")]  # no summary yet

        proxy.restore()
        final = run_to_the_end(context, task_id, with_reaper=True)

    assert final.status == TaskStatus.COMPLETED
    outcome = items(sessions, task_id)
    assert all((outcome[u].state, outcome[u].attempts) == (ItemState.NOTIFIED, 1)
               for u in EMAILED)
    hasher = PasswordHasher.from_settings(configured)
    now = _hashes(sessions, directory)
    for user_id, address in EMAILED.items():
        [mail] = smtp_server.to(address)
        assert hasher.verify(mail.password, now[user_id])
    said = [m.text for m in thread(slack_standin)]
    assert said.index(":arrow_forward: Resumed: the mail server answers again.") < len(said) - 1


@sqlite_only
def test_a_server_failing_mail_after_mail_pauses_the_rest_of_the_task(
    context_for: Any, sessions: sessionmaker[Session], directory: Directory, engine: Engine,
    smtp_server: SmtpServer, settings: Settings,
) -> None:
    add_mailable_users(engine, directory, 20)
    for i in range(1, 6):  # the first five recipients: 421, as a server going down answers
        smtp_server.refuse(f"user{i}@example.org", code=421, times=1)
    configured = replace(smtp_server.settings(settings), chunk_size=20, claim_batch=5,
                         mail_outage_retry=0.01, mail_retry_delays=(1, 1, 1))
    context = context_for(configured)
    task_id = start(context)
    ResetWorker(context, reaper=False).work(burst=True)  # no scheduler: retries wait

    outcome = items(sessions, task_id)
    assert {outcome[i].state for i in range(1, 6)} == {ItemState.RETRY_WAIT}
    assert task(context, task_id).paused_since is not None
    # Claimed before the pause at most one batch ahead: the rest were never touched.
    untouched = [i for i in range(6, 21) if outcome[i].state == ItemState.PENDING]
    assert len(untouched) >= 10
    hashes = _hashes(sessions, directory)
    assert {hashes[i] for i in untouched} == {"old-hash"}

    final = run_to_the_end(context, task_id, with_reaper=True)

    assert final.status == TaskStatus.COMPLETED
    outcome = items(sessions, task_id)
    # A 421 also closes the connection, so some refusals meet their user only on a retry.
    assert all(outcome[i].attempts >= 2 for i in range(1, 6))
    assert {outcome[i].state for i in outcome} == {ItemState.NOTIFIED}
    hasher = PasswordHasher.from_settings(configured)
    hashes = _hashes(sessions, directory)
    for i in range(1, 21):
        mails = smtp_server.to(f"user{i}@example.org")
        assert hasher.verify(mails[-1].password, hashes[i])


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
    add_mailable_users(engine, directory, 60)
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


def test_cancel_ends_a_paused_task_at_once(
    context_for: Any, sessions: sessionmaker[Session], directory: Directory,
    sample_users: list[Any], settings: Settings,
) -> None:
    from core.tasks import request_cancel

    configured = replace(settings, smtp_host="127.0.0.1", smtp_port=free_port(),
                         smtp_timeout=2.0, mail_outage_retry=3600.0)
    context = context_for(configured)
    task_id = start(context)
    ResetWorker(context, reaper=False).work(burst=True)
    assert task(context, task_id).paused_until is not None
    with sessions.begin() as session:
        request_cancel(session, task_id, "U0STAFF")

    reap(context)  # an hour before the pause is over

    assert task(context, task_id).status == TaskStatus.CANCELLED
    assert {item.state for item in items(sessions, task_id).values()} == {ItemState.CANCELLED}
    assert set(_hashes(sessions, directory).values()) == {"old-hash"}


def test_each_try_of_a_server_that_is_down_waits_twice_as_long_up_to_15_minutes() -> None:
    from jobs.outage import MAX_PAUSE_SECONDS, pause_delay

    assert [pause_delay(60, pauses) for pauses in range(6)] == [60, 120, 240, 480, 900, 900]
    assert pause_delay(60, 10_000) == MAX_PAUSE_SECONDS == 900
