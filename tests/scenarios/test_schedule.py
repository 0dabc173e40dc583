"""Scheduled resets on real services: the database row is the truth, the reaper starts it.

A scheduled task survives an emptied Redis and every worker replaced, and exactly one worker
starts it when its time comes; one whose time passed while nothing ran starts at the first
reaper pass and its thread says how late; a cancel before the start erases its sealed password
and changes nothing; a count that changed by more than 10 % holds it until someone confirms
again; the form refuses a start in the past or too far ahead on its field.

Time is injected (`reap(context, now=...)`) wherever it can be; the one test with a real
`resetbot worker` process waits for a start 2 s ahead.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from redis import Redis
from sqlalchemy import Engine, insert, select
from sqlalchemy.orm import Session, sessionmaker

from core.directory import Directory
from core.directory.sql import SqlDirectory
from core.models import AuditEntry, ResetTask, Scope, TaskStatus, utcnow
from core.passwords import PasswordHasher
from core.settings import Settings
from core.tasks import ResetRequest, create_task, gate_new_task
from jobs.context import WorkerContext
from jobs.queueing import job_ids_in_redis, task_of_job
from jobs.reaper import reap
from tests.conftest import remove_from_redis
from tests.support.engine import (
    RecordingReporter,
    build_context,
    run_until_final,
    user_rows,
    work,
)
from tests.support.faults import WorkerProcess, wait_until
from tests.support.signing import (
    ADMIN,
    CHANNEL,
    OUTSIDER,
    RunningApp,
    app_settings,
    form_state,
    start_app,
    submitted_view,
)
from tests.support.slack_standin import SlackStandIn
from tests.support.slack_standin import slack_standin as slack_standin
from tests.support.smtp import SmtpServer
from tests.support.smtp import smtp_server as smtp_server

# Approval and scheduling are conditional UPDATEs on the task row: every database.
pytestmark = pytest.mark.every_database

DEFAULT_PASSWORD = "Quiet-Harbour-92-Lamp"
HANDOUT_PASSWORD = "Amber-Ferry-31-Kite"
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


# ---- helpers -----------------------------------------------------------------------------------


def schedule(
    context: WorkerContext, start_at: datetime, *, scope: Scope = Scope.ALL_WITHOUT_ROLE,
    selection: tuple[int, ...] = (), default_password: str | None = DEFAULT_PASSWORD,
    preview_users: int | None = None, channel: str | None = None,
) -> int:
    """A confirmed task with a start time, as the CLI makes it (core.tasks.create_task, then
    the gate)."""
    request = ResetRequest(requester="cli:tester", scope=scope, selection=selection,
                           default_password=default_password, slack_channel=channel,
                           start_at=start_at)
    with context.sessions() as session:
        preview = context.directory.preview(scope, selection)
        if preview_users is not None:
            preview = replace(preview, users=preview_users)
        task = create_task(session, context.settings, request, preview)
        gate_new_task(session, context.settings, task)
        session.commit()
        return task.id


def task_row(sessions: sessionmaker[Session], task_id: int) -> ResetTask:
    with sessions() as session:
        task = session.get(ResetTask, task_id)
        assert task is not None
        session.expunge(task)
        return task


def audit_actions(sessions: sessionmaker[Session], task_id: int) -> list[AuditEntry]:
    with sessions() as session:
        found = session.scalars(select(AuditEntry).where(AuditEntry.task_id == task_id)
                                .order_by(AuditEntry.id))
        return list(found)


def jobs_of(context: WorkerContext, task_id: int) -> list[str]:
    return [entry for entry in job_ids_in_redis(context.redis, context.queue)
            if (task_of_job(entry) or (0, ""))[0] == task_id]


def patrons_reset(sessions: sessionmaker[Session], directory: Directory,
                  hasher: PasswordHasher, password: str) -> list[int]:
    return sorted(user_id for user_id, row in user_rows(sessions, directory).items()
                  if row.password_hash and row.password_hash != "old-hash"
                  and hasher.verify(password, row.password_hash))


def add_patrons(engine: Engine, directory: Directory, ids: range) -> None:
    with engine.begin() as connection:
        connection.execute(insert(directory.table), [
            {"id": i, "username": f"new{i}", "full_name": f"New {i}",
             "email": f"new{i}@example.org", "role": None, "password_hash": "old-hash",
             "must_change_password": False} for i in ids])


# ---- the engine: Redis lost, workers replaced, exactly one start -------------------------------


def test_a_scheduled_task_survives_an_emptied_redis_and_new_workers_and_starts_once(
    settings: Settings, redis_conn: Redis, engine: Engine, sessions: sessionmaker[Session],
    directory: Directory, sample_users: list[Any], queue_name: str,
) -> None:
    first = build_context(settings, redis_conn, engine)
    start_at = utcnow() + timedelta(seconds=2)
    task_id = schedule(first, start_at)
    scheduled = task_row(sessions, task_id)
    assert scheduled.status == TaskStatus.SCHEDULED
    assert abs((scheduled.start_at or utcnow()) - start_at) < timedelta(seconds=1)
    assert scheduled.preview_users == 5 and scheduled.default_password_sealed
    assert jobs_of(first, task_id) == []  # nothing waits in Redis: the row is the truth

    # Before its time a reaper pass and a worker leave it alone.
    assert reap(first, now=start_at - timedelta(seconds=1)).schedules_started == 0
    work(first)
    assert task_row(sessions, task_id).status == TaskStatus.SCHEDULED

    # Redis emptied of everything the queue had, every worker gone; new ones come up.
    remove_from_redis(redis_conn, queue_name)
    first.close()
    reporter = RecordingReporter()
    second = build_context(settings, redis_conn, engine, reporter)
    third = build_context(settings, redis_conn, engine)
    at_its_time = start_at + timedelta(seconds=1)
    reports = [reap(second, now=at_its_time), reap(third, now=at_its_time)]
    assert sorted(report.schedules_started for report in reports) == [0, 1]
    assert task_row(sessions, task_id).status == TaskStatus.QUEUED
    assert reporter.named("schedule_reached") == [(task_id, 1)]

    final = run_until_final(second, task_id)
    assert final.status is TaskStatus.COMPLETED and final.total == 5
    assert patrons_reset(sessions, directory, second.hasher, DEFAULT_PASSWORD) == [1, 2, 4, 6, 7]
    ended = task_row(sessions, task_id)
    assert ended.default_password_sealed is None and ended.recheck_users == 5
    started = [e for e in audit_actions(sessions, task_id) if e.action == "schedule_start"]
    assert len(started) == 1 and started[0].detail["late"] is False
    assert [e.action for e in audit_actions(sessions, task_id)][:2] == ["confirm", "schedule"]
    second.close()
    third.close()


@sqlite_only
@pytest.mark.services
def test_a_real_worker_started_after_redis_was_emptied_starts_it_within_a_minute(
    settings: Settings, redis_conn: Redis, engine: Engine, sessions: sessionmaker[Session],
    directory: Directory, sample_users: list[Any], queue_name: str, tmp_path: Path,
) -> None:
    fast = replace(settings, reaper_interval=0.25)
    worker = WorkerProcess(fast, tmp_path / "one", name="one").start()
    try:
        context = build_context(fast, redis_conn, engine)
        start_at = utcnow() + timedelta(seconds=2)
        task_id = schedule(context, start_at)
        worker.kill()  # every worker gone ...
        remove_from_redis(redis_conn, queue_name)  # ... and Redis empty
        worker = WorkerProcess(fast, tmp_path / "two", name="two").start()
        wait_until(lambda: task_row(sessions, task_id).status == TaskStatus.COMPLETED, 30,
                   "the scheduled task to be started by the new worker and completed")
    finally:
        worker.kill()
    ended = task_row(sessions, task_id)
    assert ended.started_at is not None
    assert start_at <= ended.started_at < start_at + timedelta(minutes=1)
    assert patrons_reset(sessions, directory, context.hasher, DEFAULT_PASSWORD) == [1, 2, 4, 6, 7]
    context.close()


def test_an_overdue_task_starts_at_the_first_pass_and_is_audited_late(
    settings: Settings, redis_conn: Redis, engine: Engine, sessions: sessionmaker[Session],
    sample_users: list[Any],
) -> None:
    reporter = RecordingReporter()
    context = build_context(settings, redis_conn, engine, reporter)
    start_at = utcnow() + timedelta(minutes=5)
    task_id = schedule(context, start_at)
    # Nothing ran for two hours after its time: the first pass starts it.
    report = reap(context, now=start_at + timedelta(hours=2, minutes=5))
    assert report.schedules_started == 1
    assert reporter.named("schedule_reached") == [(task_id, 7500)]
    entry = next(e for e in audit_actions(sessions, task_id) if e.action == "schedule_start")
    assert entry.detail["late"] is True and entry.detail["late_seconds"] == 7500
    assert run_until_final(context, task_id).status is TaskStatus.COMPLETED
    context.close()


def test_the_reminder_is_sent_once_before_the_start(
    settings: Settings, redis_conn: Redis, engine: Engine, sessions: sessionmaker[Session],
    sample_users: list[Any],
) -> None:
    reporter = RecordingReporter()
    context = build_context(settings, redis_conn, engine, reporter)
    start_at = utcnow() + timedelta(hours=3)
    task_id = schedule(context, start_at, channel=CHANNEL)
    reap(context, now=start_at - timedelta(hours=2))  # too early
    assert reporter.named("schedule_reminder") == []
    for minutes in (59, 30):
        reap(context, now=start_at - timedelta(minutes=minutes))
    assert reporter.named("schedule_reminder") == [(task_id,)]
    assert task_row(sessions, task_id).reminded_at is not None
    context.close()


def test_a_count_changed_by_more_than_ten_percent_holds_the_task_until_confirmed(
    settings: Settings, redis_conn: Redis, engine: Engine, sessions: sessionmaker[Session],
    directory: Directory, sample_users: list[Any],
) -> None:
    from core.tasks import confirm_held_start

    reporter = RecordingReporter()
    context = build_context(settings, redis_conn, engine, reporter)
    start_at = utcnow() + timedelta(minutes=1)
    task_id = schedule(context, start_at)  # 5 patrons
    add_patrons(engine, directory, range(100, 102))  # 7 now: 40 % more
    at_its_time = start_at + timedelta(seconds=5)
    assert reap(context, now=at_its_time).schedules_held == 1
    held = task_row(sessions, task_id)
    assert held.status == TaskStatus.SCHEDULED and held.start_held_at is not None
    assert (held.preview_users, held.recheck_users) == (5, 7)
    # Held means held: later passes and workers leave it, nobody's password changes.
    assert reap(context, now=at_its_time + timedelta(hours=1)).schedules_started == 0
    work(context)
    assert patrons_reset(sessions, directory, context.hasher, DEFAULT_PASSWORD) == []
    assert [e.action for e in audit_actions(sessions, task_id)][-1] == "schedule_held"

    with sessions() as session:
        confirm_held_start(session, context.settings, SqlDirectory(directory), task_id,
                           "cli:approver")
        session.commit()
    reap(context)  # the queued task is woken (as if its enqueue had been lost)
    final = run_until_final(context, task_id)
    assert final.status is TaskStatus.COMPLETED and final.total == 7
    reconfirmed = [e for e in audit_actions(sessions, task_id) if e.action == "reconfirm"]
    assert [(e.actor, e.detail["users"]) for e in reconfirmed] == [("cli:approver", 7)]
    context.close()


def test_fewer_users_hold_too_and_an_unchanged_count_starts(
    settings: Settings, redis_conn: Redis, engine: Engine, sessions: sessionmaker[Session],
    sample_users: list[Any],
) -> None:
    context = build_context(settings, redis_conn, engine)
    start_at = utcnow() + timedelta(minutes=1)
    fewer = schedule(context, start_at, preview_users=10)  # 5 now: half as many
    same = schedule(context, start_at, scope=Scope.SELECTED_ONLY, selection=(1,),
                    default_password=None)
    report = reap(context, now=start_at)
    assert (report.schedules_started, report.schedules_held) == (1, 1)
    assert task_row(sessions, fewer).start_held_at is not None
    assert task_row(sessions, same).status == TaskStatus.QUEUED
    context.close()


def test_a_count_that_crosses_the_approval_minimum_at_its_start_waits_for_approval(
    settings: Settings, redis_conn: Redis, engine: Engine, sessions: sessionmaker[Session],
    directory: Directory, sample_users: list[Any],
) -> None:
    from core import approval

    add_patrons(engine, directory, range(100, 120))  # 25 patrons
    reporter = RecordingReporter()
    strict = replace(settings, reset_approval_min_users=26)
    context = build_context(strict, redis_conn, engine, reporter)
    start_at = utcnow() + timedelta(minutes=1)
    task_id = schedule(context, start_at)
    assert task_row(sessions, task_id).status == TaskStatus.SCHEDULED  # 25: no approval
    add_patrons(engine, directory, range(120, 122))  # 27: 8 % more, not held, but over 26

    report = reap(context, now=start_at + timedelta(seconds=5))
    work(context)

    assert (report.schedules_started, report.schedules_held) == (0, 1)
    waiting = task_row(sessions, task_id)
    assert waiting.status == TaskStatus.AWAITING_APPROVAL
    assert waiting.preview is not None and waiting.preview["users"] == 27
    assert waiting.recheck_users == 27 and waiting.approved_by is None
    assert waiting.approval_expires_at is not None
    assert waiting.approval_expires_at > start_at + timedelta(hours=1)  # RESET_APPROVAL_TTL
    assert waiting.default_password_sealed  # kept for the approved start
    assert patrons_reset(sessions, directory, context.hasher, DEFAULT_PASSWORD) == []
    assert reporter.named("schedule_reached") == [(task_id, 5)]
    held = [e for e in audit_actions(sessions, task_id) if e.action == "schedule_held"]
    assert [e.detail["needs_approval"] for e in held] == [True]
    asked = [e for e in audit_actions(sessions, task_id) if e.action == "approval_request"]
    assert [(e.actor, e.detail["users"]) for e in asked] == [("resetbot", 27)]
    # Later passes leave it; the requester cannot approve it; another admin can.
    assert reap(context, now=start_at + timedelta(minutes=5)).schedules_started == 0
    with sessions() as session, pytest.raises(approval.SelfApproval):
        approval.approve(session, SqlDirectory(directory), task_id, "cli:tester")
    with sessions() as session:
        outcome = approval.approve(session, SqlDirectory(directory), task_id, "UAPPROVER")
        session.commit()
    assert isinstance(outcome, approval.Approved)
    # Approved, it starts at its time (come already; this test's clock is injected).
    assert reap(context, now=start_at + timedelta(minutes=6)).schedules_started == 1
    final = run_until_final(context, task_id)
    assert final.status is TaskStatus.COMPLETED and final.total == 27
    context.close()


def test_start_now_of_a_held_task_that_the_approval_rule_covers_asks_for_approval(
    settings: Settings, redis_conn: Redis, engine: Engine, sessions: sessionmaker[Session],
    directory: Directory, sample_users: list[Any],
) -> None:
    """Held while no approval was needed (the minimum was set since): Start now judges the
    rule again and asks another admin, with the counts taken at the click."""
    from core.tasks import confirm_held_start

    context = build_context(settings, redis_conn, engine)
    start_at = utcnow() + timedelta(minutes=1)
    task_id = schedule(context, start_at)  # 5 patrons
    add_patrons(engine, directory, range(100, 102))  # 7: held
    assert reap(context, now=start_at).schedules_held == 1
    strict = replace(settings, reset_approval_min_users=6)

    with sessions() as session:
        task = confirm_held_start(session, strict, SqlDirectory(directory), task_id, "cli:tester")
        session.commit()
        assert task.status == TaskStatus.AWAITING_APPROVAL

    waiting = task_row(sessions, task_id)
    assert waiting.status == TaskStatus.AWAITING_APPROVAL and waiting.start_held_at is None
    assert waiting.preview == {"users": 7, "emailable": 5, "without_email": 2, "staff": 0,
                               "locked": 0, "recounted": True}
    assert jobs_of(context, task_id) == []
    actions = [e.action for e in audit_actions(sessions, task_id)]
    assert actions[-1] == "approval_request" and "reconfirm" not in actions
    context.close()


@pytest.mark.parametrize(("scheduled", "now", "drifted"), [
    (100, 110, False), (100, 111, True), (100, 90, False), (100, 89, True),
    (0, 0, False), (0, 1, True), (None, 5, False),
])
def test_only_a_change_of_more_than_ten_percent_holds(
    scheduled: int | None, now: int, drifted: bool
) -> None:
    from core.schedule import counts_drifted

    assert counts_drifted(scheduled, now) is drifted


# ---- Slack: the thread, Cancel, Start now, the form's field errors ------------------------------


@pytest.fixture
def app(
    settings: Settings, sessions: sessionmaker[Session], directory: Directory,
    redis_conn: Redis, slack_standin: SlackStandIn, smtp_server: SmtpServer,
    sample_users: list[Any],
) -> Iterator[RunningApp]:
    configured = app_settings(smtp_server.settings(settings), slack_standin)
    running, thread = start_app(configured, sessions, directory, redis_conn, slack_standin)
    try:
        yield running
    finally:
        running.stop(thread)


def with_start(values: dict[str, Any], moment: datetime | float) -> dict[str, Any]:
    stamp = int(moment.timestamp() if isinstance(moment, datetime) else moment)
    return {**values, "start_at": {"start_at": {"type": "datetimepicker",
                                                "selected_date_time": stamp}}}


def submit_form(app: RunningApp, values: dict[str, Any]) -> dict[str, Any]:
    answer = app.slack.submit(submitted_view(app.open_modal(), values))
    assert answer.status == 200, answer.body
    body: dict[str, Any] = answer.json()
    return body


def schedule_in_slack(app: RunningApp, start_at: datetime,
                      values: dict[str, Any] | None = None) -> int:
    preview = submit_form(app, with_start(values or form_state("all_without_role",
                                                               password=DEFAULT_PASSWORD),
                                          start_at))
    assert preview["response_action"] == "update", preview
    assert "Scheduled for" in str(preview["view"]["blocks"])
    assert app.slack.submit(preview["view"]).json() == {"response_action": "clear"}
    with app.sessions() as session:
        return int(session.scalars(select(ResetTask.id).order_by(ResetTask.id.desc())).first()
                   or 0)


def worker_for(app: RunningApp) -> WorkerContext:
    """A worker as `resetbot worker` builds it: the Slack reporter posts the thread."""
    return WorkerContext.build(app.settings, app.redis)


def parent_and_thread(standin: SlackStandIn) -> tuple[Any, list[Any]]:
    parents = standin.top_level(CHANNEL)
    assert len(parents) == 1, [m.text for m in parents]
    return parents[0], standin.thread(CHANNEL, parents[0].ts)


@sqlite_only
def test_slack_scheduled_parent_then_a_late_start_with_the_final_count(
    app: RunningApp, slack_standin: SlackStandIn,
) -> None:
    start_at = (utcnow() + timedelta(days=3)).replace(microsecond=0)
    task_id = schedule_in_slack(app, start_at)
    assert task_row(app.sessions, task_id).status == TaskStatus.SCHEDULED
    context = worker_for(app)
    work(context)  # the announcement the confirm enqueued
    parent, thread = parent_and_thread(slack_standin)
    shown = str(parent.blocks)
    assert "Scheduled for" in shown and "(in " not in shown  # a date, never a stale "in 3 days"
    assert "cancel_task" in shown and thread == []  # no "Started" before it starts

    late = start_at + timedelta(hours=2, minutes=5)
    assert reap(context, now=late).schedules_started == 1
    final = run_until_final(context, task_id)
    assert final.status is TaskStatus.COMPLETED
    replies = [m.text for m in parent_and_thread(slack_standin)[1]]
    reached = [text for text in replies if "started 2 h 5 min late" in text]
    assert len(reached) == 1 and "The count taken now is 5 users (5 when it was scheduled)" \
        in reached[0]
    assert sum("Started:" in text for text in replies) == 1
    assert DEFAULT_PASSWORD not in str(slack_standin.calls())
    context.close()


@sqlite_only
def test_slack_cancel_before_the_start_erases_the_password_and_changes_nothing(
    app: RunningApp, slack_standin: SlackStandIn, smtp_server: SmtpServer,
) -> None:
    before = user_rows(app.sessions, app.directory)
    start_at = utcnow() + timedelta(hours=5)
    values = form_state("all", no_email="set", no_email_password=HANDOUT_PASSWORD)
    task_id = schedule_in_slack(app, start_at, values)
    waiting = task_row(app.sessions, task_id)
    assert waiting.no_email_password_sealed  # sealed until the start
    refused = app.slack.click("cancel_task", str(task_id), user=OUTSIDER)
    assert refused.status == 200
    assert task_row(app.sessions, task_id).status == TaskStatus.SCHEDULED
    assert app.slack.click("cancel_task", str(task_id)).status == 200
    said = slack_standin.wait_for_call("chat.postEphemeral", count=2)
    assert "cancelled before its start" in said.params["text"]
    ended = task_row(app.sessions, task_id)
    assert ended.status == TaskStatus.CANCELLED and ended.cancelled_by == ADMIN
    assert ended.no_email_password_sealed is None and ended.default_password_sealed is None
    context = worker_for(app)
    reap(context, now=start_at + timedelta(minutes=1))  # its time comes: nothing starts
    work(context)
    assert task_row(app.sessions, task_id).status == TaskStatus.CANCELLED
    assert user_rows(app.sessions, app.directory) == before and smtp_server.messages == []
    actions = [e.action for e in audit_actions(app.sessions, task_id)]
    assert actions == ["confirm", "schedule", "cancel"]
    parent, thread = parent_and_thread(slack_standin)
    assert "Cancelled" in parent.text and any("cancelled" in m.text for m in thread)
    # The truth: nobody reset, seven in scope; no "100 %", no "0 of 0", no "already reset".
    shown = str(parent.blocks) + str([m.blocks for m in thread])
    assert "Cancelled before its start: nobody's password changed (7 users in scope)." in shown
    assert "100%" not in shown and "0 of 0" not in shown and "already reset" not in shown
    context.close()


@sqlite_only
def test_slack_held_task_is_started_by_an_admin_with_start_now(
    app: RunningApp, slack_standin: SlackStandIn, engine: Engine,
) -> None:
    start_at = utcnow() + timedelta(minutes=30)
    task_id = schedule_in_slack(app, start_at)
    add_patrons(engine, app.directory, range(100, 103))  # 8 instead of 5
    context = worker_for(app)
    assert reap(context, now=start_at).schedules_held == 1
    work(context)
    parent, thread = parent_and_thread(slack_standin)
    assert any("did not start" in m.text and "8 users (5 when it was scheduled)" in m.text
               for m in thread)
    shown = str(slack_standin.message(CHANNEL, parent.ts).blocks)
    assert "confirm_scheduled" in shown and "Waiting for a new confirmation" in shown

    app.slack.click("confirm_scheduled", str(task_id), user=OUTSIDER)
    assert task_row(app.sessions, task_id).status == TaskStatus.SCHEDULED
    app.slack.click("confirm_scheduled", str(task_id))
    said = slack_standin.wait_for_call("chat.postEphemeral", count=2)
    assert f"Reset #{task_id} starts now" in said.params["text"]
    final = run_until_final(context, task_id)
    assert final.status is TaskStatus.COMPLETED and final.total == 8
    actions = [e.action for e in audit_actions(app.sessions, task_id)]
    assert "reconfirm" in actions and actions.index("schedule_held") < actions.index("reconfirm")
    with app.sessions() as session:
        refused = session.scalars(select(AuditEntry).where(AuditEntry.action == "refused")).all()
        assert [r.detail["step"] for r in refused] == ["confirm_scheduled"]
    context.close()


@sqlite_only
def test_start_now_is_for_the_requester_or_an_approver_not_any_admin(
    settings: Settings, sessions: sessionmaker[Session], directory: Directory,
    redis_conn: Redis, slack_standin: SlackStandIn, smtp_server: SmtpServer,
    sample_users: list[Any], engine: Engine,
) -> None:
    other_admin = "UOTHERADMIN"
    configured = app_settings(smtp_server.settings(settings), slack_standin,
                              reset_approvers=frozenset({"UAPPROVER"}))
    configured = replace(configured, reset_admins=frozenset({ADMIN, other_admin}))
    app, thread = start_app(configured, sessions, directory, redis_conn, slack_standin)
    try:
        start_at = utcnow() + timedelta(minutes=30)
        task_id = schedule_in_slack(app, start_at)
        add_patrons(engine, app.directory, range(100, 103))
        context = worker_for(app)
        assert reap(context, now=start_at).schedules_held == 1

        app.slack.click("confirm_scheduled", str(task_id), user=other_admin)
        refused = slack_standin.wait_for_call("chat.postEphemeral")
        assert "Reset #" not in refused.params["text"]
        assert task_row(app.sessions, task_id).status == TaskStatus.SCHEDULED
        with app.sessions() as session:
            entry = session.scalars(select(AuditEntry).where(AuditEntry.action == "refused")).one()
            assert (entry.actor, entry.detail["step"]) == (other_admin, "confirm_scheduled")

        app.slack.click("confirm_scheduled", str(task_id))  # ADMIN asked for it
        said = slack_standin.wait_for_call("chat.postEphemeral", count=2)
        assert f"Reset #{task_id} starts now" in said.params["text"]
        assert task_row(app.sessions, task_id).status == TaskStatus.QUEUED
        context.close()
    finally:
        app.stop(thread)


@sqlite_only
def test_the_form_refuses_a_start_in_the_past_or_too_far_ahead_on_its_field(
    app: RunningApp, slack_standin: SlackStandIn,
) -> None:
    values = form_state("all_without_role")
    for moment, reason in (
        (utcnow() - timedelta(minutes=5), "has passed"),
        (utcnow() + timedelta(days=91), "at most 90 days ahead"),
        (-1, "could not be read"),
    ):
        answer = submit_form(app, with_start(values, moment))
        assert answer["response_action"] == "errors", answer
        assert list(answer["errors"]) == ["start_at"] and reason in answer["errors"]["start_at"]
    with app.sessions() as session:
        assert session.scalars(select(ResetTask)).all() == []
    # A minute's grace: "now" sent a few seconds late is now, and starts at once.
    answer = submit_form(app, with_start(values, time.time() - 20))
    assert answer["response_action"] == "update"
    assert app.slack.submit(answer["view"]).json() == {"response_action": "clear"}
    with app.sessions() as session:
        assert [t.status for t in session.scalars(select(ResetTask))] == [TaskStatus.QUEUED]


@sqlite_only
def test_app_home_lists_the_scheduled_task_first(
    app: RunningApp, slack_standin: SlackStandIn,
) -> None:
    context = worker_for(app)
    earlier = schedule_in_slack(app, utcnow() + timedelta(days=2))
    now_task = schedule(context, utcnow() - timedelta(minutes=5), scope=Scope.SELECTED_ONLY,
                        selection=(1,), default_password=None)  # its time passed: queued
    assert task_row(app.sessions, now_task).status == TaskStatus.QUEUED
    answer = app.slack.event({"type": "app_home_opened", "user": ADMIN, "tab": "home",
                              "channel": "D0HOME", "event_ts": "1700000000.1"})
    assert answer.status == 200
    home = slack_standin.wait_for_call("views.publish").params["view"]
    tasks_shown = [str(b) for b in home["blocks"] if f"#{earlier} " in str(b)
                   or f"#{now_task} " in str(b)]
    assert f"#{earlier} Scheduled" in tasks_shown[0] and "Scheduled for" in tasks_shown[0]
    assert f"#{now_task} Queued" in tasks_shown[1]
    context.close()
