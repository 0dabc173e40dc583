"""The task centre end to end: real tasks through the engine on real Redis, mails on aiosmtpd,
and slack_sdk's WebClient talking HTTP to the Slack stand-in."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from redis import Redis
from sqlalchemy import Engine, insert, update
from sqlalchemy.orm import Session, sessionmaker

from core import tasks
from core.directory import Directory
from core.models import ResetTask, Scope, TaskStatus
from core.settings import Settings
from core.tasks import ResetRequest
from jobs import slack_reporter
from jobs.context import WorkerContext, use_context
from jobs.queueing import enqueue_task
from jobs.reporting import NullReporter
from jobs.slack_reporter import Event, SlackReporter, enqueue_delivery
from jobs.worker import ResetWorker
from tests.support.slack_standin import UPLOAD, Message, SlackStandIn
from tests.support.smtp import SmtpServer
from tests.support.smtp import smtp_server as smtp_server

CHANNEL = "C0DESK"
REQUESTER = "U0STAFF"
#: Delivery retries in tests: immediate, as many as production has.
NO_WAIT = (0,) * len(slack_reporter.RETRY_INTERVALS)
DEFAULT_PASSWORD = "Correct-Horse-Battery-9"


@pytest.fixture
def slack_settings(
    settings: Settings, slack_standin: SlackStandIn, smtp_server: SmtpServer
) -> Settings:
    return smtp_server.settings(slack_standin.apply_to(settings))


def build_context(
    settings: Settings, redis: Redis, engine: Engine, intervals: tuple[int, ...] = NO_WAIT
) -> WorkerContext:
    context = WorkerContext.build(settings, redis, engine=engine, reporter=NullReporter())
    context.reporter = SlackReporter(context, retry_intervals=intervals)
    return context


@pytest.fixture
def context(
    slack_settings: Settings, redis_conn: Redis, engine: Engine
) -> Iterator[WorkerContext]:
    context = build_context(slack_settings, redis_conn, engine)
    yield context
    context.close()


def start_task(
    context: WorkerContext,
    scope: Scope = Scope.ALL,
    *,
    channel: str | None = CHANNEL,
    default_password: str | None = None,
    selection: tuple[int, ...] = (),
) -> int:
    request = ResetRequest(
        requester=REQUESTER, requester_name="Stella Staff", scope=scope, selection=selection,
        default_password=default_password, slack_channel=channel,
    )
    with context.sessions.begin() as session:
        task_id = tasks.create_task(session, context.settings, request).id
    enqueue_task(context.queue, task_id)
    return task_id


def work(context: WorkerContext, *, scheduler: bool = False) -> None:
    ResetWorker(context, reaper=False).work(burst=True, with_scheduler=scheduler)


def task_row(sessions: sessionmaker[Session], task_id: int) -> ResetTask:
    with sessions() as session:
        task = session.get(ResetTask, task_id)
        assert task is not None
        return task


def parents(standin: SlackStandIn, channel: str) -> list[Message]:
    return standin.top_level(channel)


def summary_replies(thread: list[Message], task_id: int) -> list[Message]:
    return [m for m in thread if m.text.startswith(f"Reset #{task_id} ")]


def csv_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def no_secret_reached_slack(standin: SlackStandIn, secrets: list[str]) -> None:
    assert secrets, "a test that scans for passwords must have some"
    for secret in secrets:
        assert standin.requests_containing(secret) == [], "a password reached Slack"
    for upload in standin.files():
        for secret in secrets:
            assert secret not in upload.text


# ---- a whole task -------------------------------------------------------------------------------


def test_emailed_reset_makes_one_thread_with_summary_and_csv(
    context: WorkerContext, slack_standin: SlackStandIn, smtp_server: SmtpServer,
    sample_users: list[Any],
) -> None:
    task_id = start_task(context)
    work(context)

    task = task_row(context.sessions, task_id)
    assert task.status == TaskStatus.COMPLETED
    [parent] = parents(slack_standin, CHANNEL)
    assert (task.slack_channel, task.slack_thread_ts) == (CHANNEL, parent.ts)
    assert parent.updates >= 1
    assert "Completed" in parent.text
    final_actions = [e["action_id"] for b in parent.blocks if b["type"] == "actions"
                     for e in b["elements"]]
    # No Cancel once ended; no Retry without failed mails; Undo during RESET_UNDO_WINDOW.
    assert final_actions == ["undo_task"]

    thread = slack_standin.thread(CHANNEL, parent.ts)
    assert thread[0].text.startswith(":arrow_forward: Started")
    [summary] = summary_replies(thread, task_id)
    assert summary.text == f"Reset #{task_id} completed: e-mailed 5, no e-mail 2"

    assert "The users to contact by hand are in the CSV sent to <@U0STAFF> in a direct message" \
        in str(summary.blocks)
    # Personal data: to the requester in a DM, never into the channel everyone reads.
    assert slack_standin.files(CHANNEL) == []
    assert slack_standin.files_in_public_channels() == []
    [upload] = slack_standin.files(slack_standin.dm_channel(REQUESTER))
    assert upload.thread_ts is None
    rows = csv_rows(upload.text)
    assert [(r["username"], r["outcome"]) for r in rows] == [
        ("dave", "no e-mail"), ("frank", "no e-mail")]
    assert set(rows[0]) == {"username", "full_name", "email", "outcome", "attempts", "reason"}

    passwords = [mail.password for mail in smtp_server.messages]
    assert len(passwords) == 5
    no_secret_reached_slack(slack_standin, passwords)
    assert slack_standin.count() <= 30


def test_default_password_mode_posts_no_csv_and_never_the_password(
    context: WorkerContext, slack_standin: SlackStandIn, smtp_server: SmtpServer,
    sample_users: list[Any],
) -> None:
    task_id = start_task(context, Scope.ALL_WITHOUT_ROLE, default_password=DEFAULT_PASSWORD)
    work(context)

    [parent] = parents(slack_standin, CHANNEL)
    [summary] = summary_replies(slack_standin.thread(CHANNEL, parent.ts), task_id)
    assert summary.text == f"Reset #{task_id} completed: reset 5"
    assert slack_standin.files() == []
    assert slack_standin.count(UPLOAD) == 0
    assert smtp_server.messages == []
    no_secret_reached_slack(slack_standin, [DEFAULT_PASSWORD])


def test_failed_mails_are_summarised_retried_and_offered_for_retry(
    context: WorkerContext, slack_standin: SlackStandIn, smtp_server: SmtpServer,
    sample_users: list[Any],
) -> None:
    for address in ("alice@example.org", "bob@example.org"):
        smtp_server.refuse(address, code=450, times=10)  # every attempt fails
    task_id = start_task(context)
    work(context)

    task = task_row(context.sessions, task_id)
    assert task.status == TaskStatus.COMPLETED_WITH_ERRORS
    [parent] = parents(slack_standin, CHANNEL)
    buttons = [e for b in parent.blocks if b["type"] == "actions" for e in b["elements"]]
    assert [(b["action_id"], b["value"]) for b in buttons] == [("retry_failed", str(task_id)),
                                                                ("undo_task", str(task_id))]

    thread = [m.text for m in slack_standin.thread(CHANNEL, parent.ts)]
    retry_lines = [t for t in thread if "failed, retrying" in t]
    # One line per retry round for both users, not one per user.
    assert len(retry_lines) == 3, thread
    assert all(t.startswith(":e-mail: 2 notifications failed, retrying") for t in retry_lines)
    assert sorted(t.split("(attempt ")[1][:6] for t in retry_lines) == ["2 of 4", "3 of 4",
                                                                         "4 of 4"]
    assert thread.index(retry_lines[-1]) < len(thread) - 1  # all before the summary
    [summary] = [t for t in thread if t.startswith(f"Reset #{task_id} ")]
    assert "mail failed 2" in summary

    [upload] = slack_standin.files(slack_standin.dm_channel(REQUESTER))
    by_user = {r["username"]: r for r in csv_rows(upload.text)}
    assert set(by_user) == {"alice", "bob", "dave", "frank"}
    assert by_user["bob"]["outcome"] == "mail failed"
    assert by_user["bob"]["attempts"] == "4"
    assert by_user["bob"]["reason"].startswith("Mail failed")
    no_secret_reached_slack(slack_standin, [m.password for m in smtp_server.messages])



@pytest.mark.parametrize("private", [True, False])
def test_the_follow_up_list_goes_to_a_private_report_channel_never_a_public_one(
    slack_settings: Settings, redis_conn: Redis, engine: Engine, slack_standin: SlackStandIn,
    sample_users: list[Any], private: bool,
) -> None:
    slack_standin.add_channel("G0REPORTS", private=private)
    context = build_context(replace(slack_settings, reset_report_channel="G0REPORTS"),
                            redis_conn, engine)
    task_id = start_task(context)
    work(context)
    context.close()

    [parent] = parents(slack_standin, CHANNEL)
    [summary] = summary_replies(slack_standin.thread(CHANNEL, parent.ts), task_id)
    assert slack_standin.files_in_public_channels() == []
    dm = slack_standin.dm_channel(REQUESTER)
    if private:
        [upload] = slack_standin.files("G0REPORTS")
        assert slack_standin.files(dm) == []
        assert "in the CSV sent to <#G0REPORTS>" in str(summary.blocks)
    else:  # misconfigured: a public channel is refused, the requester gets the list instead
        assert slack_standin.files("G0REPORTS") == []
        [upload] = slack_standin.files(dm)
        assert "sent to <@U0STAFF> in a direct message" in str(summary.blocks)
    assert [row["username"] for row in csv_rows(upload.text)] == ["dave", "frank"]

def test_task_without_a_channel_is_not_reported(
    context: WorkerContext, slack_standin: SlackStandIn, sample_users: list[Any]
) -> None:
    task_id = start_task(context, channel=None)
    work(context)
    assert task_row(context.sessions, task_id).status == TaskStatus.COMPLETED
    assert slack_standin.calls() == []


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_wrong_smtp_login_is_said_once_in_the_thread(
    slack_settings: Settings, redis_conn: Redis, engine: Engine, slack_standin: SlackStandIn,
    sample_users: list[Any],
) -> None:
    from dataclasses import replace

    server = SmtpServer(username="resetbot", password="right-Secret-1").start()
    try:
        settings = replace(server.settings(slack_settings), smtp_password="wrong-Secret-2")
        context = build_context(settings, redis_conn, engine)
        task_id = start_task(context)
        work(context)
        context.close()
    finally:
        server.stop()

    assert task_row(context.sessions, task_id).status == TaskStatus.FAILED
    [parent] = parents(slack_standin, CHANNEL)
    thread = [m.text for m in slack_standin.thread(CHANNEL, parent.ts)]
    problems = [t for t in thread if t.startswith(":warning: Problem with reset")]
    assert len(problems) == 1, thread  # once, not once per user
    assert thread[-1].startswith(f"Reset #{task_id} failed")
    assert "Failed" in parent.text
    no_secret_reached_slack(slack_standin, ["wrong-Secret-2", "right-Secret-1"])


def test_a_task_waiting_for_another_says_so_then_runs(
    context: WorkerContext, slack_standin: SlackStandIn, sample_users: list[Any]
) -> None:
    first = start_task(context)
    second = start_task(context, Scope.SELECTED_ONLY, selection=(1, 2))
    work(context)

    assert task_row(context.sessions, second).status == TaskStatus.COMPLETED
    first_parent, second_parent = parents(slack_standin, CHANNEL)
    assert first_parent.text.startswith(f"Password reset #{first}:")
    waiting = [m.text for m in slack_standin.thread(CHANNEL, second_parent.ts)
               if m.text.startswith(":hourglass_flowing_sand: Waiting")]
    assert len(waiting) == 1
    assert f"reset #{first} is still running" in waiting[0]
    assert len(summary_replies(slack_standin.thread(CHANNEL, second_parent.ts), second)) == 1


def test_a_cancelled_task_ends_its_thread_with_a_summary(
    context: WorkerContext, slack_standin: SlackStandIn, sample_users: list[Any]
) -> None:
    task_id = start_task(context)
    with context.sessions.begin() as session:
        tasks.request_cancel(session, task_id, REQUESTER)
    work(context)

    assert task_row(context.sessions, task_id).status == TaskStatus.CANCELLED
    [parent] = parents(slack_standin, CHANNEL)
    assert "Cancelled" in parent.text
    assert not [b for b in parent.blocks if b["type"] == "actions"]
    [summary] = summary_replies(slack_standin.thread(CHANNEL, parent.ts), task_id)
    assert summary.text.startswith(f"Reset #{task_id} cancelled")
    assert slack_standin.files() == []


# ---- where the thread goes ---------------------------------------------------------------------


@pytest.mark.parametrize("refusal", ["not_in_channel", "is_archived", "dm"])
def test_falls_back_to_a_dm_when_the_bot_cannot_post_there(
    context: WorkerContext, slack_standin: SlackStandIn, sample_users: list[Any], refusal: str
) -> None:
    channel = CHANNEL
    if refusal == "not_in_channel":
        slack_standin.add_channel(CHANNEL, member=False)
    elif refusal == "is_archived":
        slack_standin.add_channel(CHANNEL, archived=True)
    else:
        channel = "D0HUMANS"  # a DM between two people: the bot is not in it
    task_id = start_task(context, channel=channel)
    work(context)

    dm = slack_standin.dm_channel(REQUESTER)
    task = task_row(context.sessions, task_id)
    assert (task.slack_channel, task.slack_fallback_from) == (dm, channel)
    assert slack_standin.messages(channel) == []
    [parent] = parents(slack_standin, dm)
    assert task.slack_thread_ts == parent.ts
    note = [b for b in parent.blocks if b["type"] == "context" and "couldn't post" in str(b)]
    assert note, "the DM says why it is there"
    thread = slack_standin.thread(dm, parent.ts)
    assert len(summary_replies(thread, task_id)) == 1
    assert [f.thread_ts for f in slack_standin.files(dm)] == [parent.ts]
    assert slack_standin.count("conversations.open") == 1


def test_bot_removed_mid_task_moves_the_rest_to_a_dm(
    context: WorkerContext, slack_standin: SlackStandIn, sample_users: list[Any]
) -> None:
    task_id = start_task(context)
    # Post the parent and its first reply in the channel, then leave the channel.
    with use_context(context):
        slack_reporter.Delivery(context, slack_reporter.web_client(context.settings),
                                task_id).run(Event.STARTED, ())
    [first_parent] = parents(slack_standin, CHANNEL)
    slack_standin.set_member(CHANNEL, False)
    work(context)

    dm = slack_standin.dm_channel(REQUESTER)
    [dm_parent] = parents(slack_standin, dm)
    assert len(summary_replies(slack_standin.thread(dm, dm_parent.ts), task_id)) == 1
    assert summary_replies(slack_standin.thread(CHANNEL, first_parent.ts), task_id) == []
    assert task_row(context.sessions, task_id).slack_fallback_reason == "not_in_channel"


# ---- Slack having a bad day -----------------------------------------------------------------


def test_rate_limited_for_a_while_resets_go_on_and_the_summary_arrives_later(
    slack_settings: Settings, redis_conn: Redis, engine: Engine, slack_standin: SlackStandIn,
    smtp_server: SmtpServer, sample_users: list[Any],
) -> None:
    context = build_context(slack_settings, redis_conn, engine, intervals=(1,) * 15)
    # Far longer than a worker waits in-process: every delivery goes back to the queue.
    slack_standin.rate_limit_next("*", retry_after=30, times=10_000)
    task_id = start_task(context)
    work(context, scheduler=True)

    # The resets are all done and mailed while Slack refuses everything.
    task = task_row(context.sessions, task_id)
    assert task.status == TaskStatus.COMPLETED
    assert len(smtp_server.messages) == 5
    assert slack_standin.messages(CHANNEL) == []
    assert slack_standin.count() > 0

    slack_standin.clear_faults()
    deliver_until(context, slack_standin,
                  lambda: task_row(context.sessions, task_id).slack_csv_posted)
    [parent] = parents(slack_standin, CHANNEL)
    assert len(summary_replies(slack_standin.thread(CHANNEL, parent.ts), task_id)) == 1
    assert "Completed" in parent.text
    context.close()


def test_server_errors_delay_messages_but_lose_none(
    context: WorkerContext, slack_standin: SlackStandIn, smtp_server: SmtpServer,
    sample_users: list[Any], monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The in-process retry still happens; its half-second pause (three of them here) is not
    # what this test is about.
    monkeypatch.setattr(slack_reporter, "INLINE_RETRY_PAUSE", 0.01)
    slack_standin.server_error_next("*", times=3, status=500)
    slack_standin.server_error_next("*", times=3, status=503)
    task_id = start_task(context)
    work(context)

    assert task_row(context.sessions, task_id).status == TaskStatus.COMPLETED
    assert len(smtp_server.messages) == 5
    assert slack_standin.pending_faults() == 0
    failures = [c.status for c in slack_standin.calls() if c.status >= 500]
    assert sorted(failures) == [500] * 3 + [503] * 3
    [parent] = parents(slack_standin, CHANNEL)
    thread = slack_standin.thread(CHANNEL, parent.ts)
    assert len(summary_replies(thread, task_id)) == 1
    assert len(slack_standin.files(slack_standin.dm_channel(REQUESTER))) == 1
    assert "Completed" in parent.text


def deliver_until(
    context: WorkerContext, standin: SlackStandIn, done: Any, timeout: float = 30.0
) -> None:
    """Run burst workers (with the scheduler, for retries that fall due) until `done()`."""
    import time

    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"not delivered; calls: {standin.count_by_method()}"
        work(context, scheduler=True)
        # Retries are scheduled a second ahead: wake on the next Slack call or soon after.
        standin.wait_for(lambda: False, timeout=0.2)


def test_an_end_delivery_that_gave_up_is_re_sent_by_the_reaper(
    slack_settings: Settings, redis_conn: Redis, engine: Engine, slack_standin: SlackStandIn,
    sample_users: list[Any],
) -> None:
    from jobs.reaper import reap

    context = build_context(slack_settings, redis_conn, engine, intervals=(0, 0))
    slack_standin.rate_limit_next("*", retry_after=30, times=10_000)  # Slack is down
    task_id = start_task(context)
    work(context)
    assert task_row(context.sessions, task_id).status == TaskStatus.COMPLETED
    # Its deliveries used up their (immediate, in this test) retries and gave up: the same as
    # lost, for nothing will run them again.
    assert context.queue.count == 0
    assert context.queue.scheduled_job_registry.get_job_ids() == []
    given_up = context.queue.failed_job_registry.get_job_ids()
    assert any("-finished__" in job_id for job_id in given_up)
    assert slack_reporter.resend_lost_ends(context) == 1
    assert slack_reporter.resend_lost_ends(context) == 0  # its new delivery is queued

    slack_standin.clear_faults()
    work(context)
    [parent] = parents(slack_standin, CHANNEL)
    assert len(summary_replies(slack_standin.thread(CHANNEL, parent.ts), task_id)) == 1
    assert len(slack_standin.files(slack_standin.dm_channel(REQUESTER))) == 1
    reap(context)  # told in full: nothing more to re-send
    assert slack_reporter.resend_lost_ends(context) == 0
    assert context.queue.count == 0
    context.close()


# ---- idempotence -------------------------------------------------------------------------------


def test_a_repeated_end_report_posts_one_summary_and_one_csv(
    context: WorkerContext, slack_standin: SlackStandIn, sample_users: list[Any]
) -> None:
    task_id = start_task(context)
    work(context)
    before = slack_standin.count_by_method()
    for _ in range(2):
        enqueue_delivery(context.queue, task_id, Event.FINISHED, retry_intervals=NO_WAIT)
    enqueue_delivery(context.queue, task_id, Event.PROGRESS, 5, 10, retry_intervals=NO_WAIT)
    work(context)
    after = slack_standin.count_by_method()
    # Only the parent is refreshed; nothing is said twice, nothing uploaded twice.
    assert {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)} == {
        "chat.update": 2}


def test_a_second_delivery_waits_for_the_parent_instead_of_posting_another(
    context: WorkerContext, slack_standin: SlackStandIn, sample_users: list[Any]
) -> None:
    from core.models import utcnow

    task_id = start_task(context)
    with context.sessions.begin() as session:  # another worker is posting the parent right now
        session.execute(update(ResetTask).where(ResetTask.id == task_id)
                        .values(slack_parent_claimed_at=utcnow()))
    delivery = slack_reporter.Delivery(context, slack_reporter.web_client(context.settings),
                                       task_id)
    with pytest.raises(slack_reporter.NotReady):
        delivery.run(Event.PROGRESS, (1, 10))
    assert slack_standin.calls() == []
    # That worker died: after the claim goes stale, a delivery takes over.
    with context.sessions.begin() as session:
        stale = utcnow() - 2 * slack_reporter.PARENT_CLAIM_TTL
        session.execute(update(ResetTask).where(ResetTask.id == task_id)
                        .values(slack_parent_claimed_at=stale))
    delivery.run(Event.PROGRESS, (1, 10))
    assert len(parents(slack_standin, CHANNEL)) == 1


def test_a_refused_token_drops_the_delivery_without_retrying(
    context: WorkerContext, slack_standin: SlackStandIn, sample_users: list[Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    from dataclasses import replace

    task_id = start_task(context, Scope.SELECTED_ONLY, selection=(1,))
    wrong = replace(context.settings, slack_bot_token="xoxb-revoked")
    delivery = slack_reporter.Delivery(context, slack_reporter.web_client(wrong), task_id)
    delivery.run(Event.STARTED, ())  # returns: retrying cannot fix a bad token
    assert [c.error for c in slack_standin.calls()] == ["invalid_auth"]
    assert "invalid_auth" in caplog.text
    assert task_row(context.sessions, task_id).slack_parent_claimed_at is None


# ---- traffic does not grow with the number of users -----------------------------------------


def add_users(engine: Engine, directory: Directory, count: int, first_id: int) -> None:
    rows = [
        {"id": first_id + i, "username": f"user{first_id + i:07d}", "full_name": f"User {i}",
         "email": f"user{first_id + i:07d}@example.org" if i % 10 == 0 else None, "role": None,
         "password_hash": "old", "must_change_password": False}
        for i in range(count)
    ]
    with engine.begin() as connection:
        connection.execute(insert(directory.table), rows)


# The count does not depend on the database; one is enough for this slower test.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.slow
def test_slack_calls_per_task_are_few_and_the_same_at_100_and_1000_users(
    slack_settings: Settings, redis_conn: Redis, engine: Engine, slack_standin: SlackStandIn,
    smtp_server: SmtpServer,
) -> None:
    from dataclasses import replace

    # Small chunks: 10 chunk jobs for 100 users, 100 for 1,000, none going on into the next
    # (a job that does, RESET_CHUNK_SWEEP, only makes fewer); e-mailed mode, so the CSV of
    # users without an address (nine in ten, to keep the test quick) is part of the count.
    settings = replace(slack_settings, chunk_size=10, claim_batch=10, chunk_sweep=0)
    directory = Directory.own_table(engine, settings.directory)
    context = build_context(settings, redis_conn, engine)
    counted: dict[int, dict[str, int]] = {}
    try:
        for added in (100, 900):  # the second task covers all 1,000
            add_users(engine, directory, added, first_id=10 * added)
            slack_standin.clear_calls()
            task_id = start_task(context, Scope.ALL)
            work(context)
            task = task_row(context.sessions, task_id)
            assert task.status == TaskStatus.COMPLETED
            counted[task.total] = slack_standin.count_by_method()
    finally:
        context.close()
    small, large = counted[100], counted[1000]
    print(f"Slack calls per task: 100 users {sum(small.values())} {small}; "
          f"1,000 users {sum(large.values())} {large}")
    assert sum(large.values()) <= 30
    assert abs(sum(large.values()) - sum(small.values())) <= 2
    assert large["chat.update"] <= settings.progress_steps + 1
    assert large.get("files.completeUploadExternal") == 1
