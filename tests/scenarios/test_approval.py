"""Four-eyes approval end to end: signed HTTP requests to the running Slack app, the Web API
stand-in recording every call, real Redis and database, burst workers, mail on aiosmtpd.

A reset of RESET_APPROVAL_MIN_USERS or more waits `awaiting_approval` after the confirm; its
thread's parent carries Approve and Reject; only another admin (an approver) approves it, and
then a worker runs it. Reject and expiry change nothing and erase the sealed passwords.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import pytest
from redis import Redis
from sqlalchemy import insert, select
from sqlalchemy.orm import Session, sessionmaker

from core.directory import Directory
from core.models import AuditEntry, ResetTask, TaskStatus, utcnow
from core.settings import Settings
from jobs.context import WorkerContext
from jobs.reaper import reap
from tests.support.engine import run_until_final, user_rows, work
from tests.support.signing import (
    ADMIN,
    CHANNEL,
    OUTSIDER,
    SIGNING_SECRET,
    RunningApp,
    app_settings,
    form_state,
    sign,
    start_app,
    submitted_view,
)
from tests.support.slack_standin import Message, SlackStandIn
from tests.support.slack_standin import slack_standin as slack_standin
from tests.support.smtp import SmtpServer
from tests.support.smtp import smtp_server as smtp_server

# Approval and scheduling are conditional UPDATEs on the task row: every database.
pytestmark = pytest.mark.every_database

SECOND = "USECOND"
THIRD = "UTHIRD"
GOOD_PASSWORD = "Tulip-Lantern-47-Quay"
#: Four of the seven sample users or more need approval.
MIN_USERS = 4
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def approval_settings(settings: Settings, standin: SlackStandIn, smtp: SmtpServer,
                      **changes: Any) -> Settings:
    wanted: dict[str, Any] = {"reset_admins": frozenset({ADMIN, SECOND, THIRD}),
                              "reset_approval_min_users": MIN_USERS, **changes}
    return replace(app_settings(smtp.settings(settings), standin), **wanted)


AppFactory = Callable[..., RunningApp]


@pytest.fixture
def make_app(
    settings: Settings,
    sessions: sessionmaker[Session],
    directory: Directory,
    redis_conn: Redis,
    slack_standin: SlackStandIn,
    smtp_server: SmtpServer,
    sample_users: list[Any],
) -> Iterator[AppFactory]:
    """Start the app with approval from MIN_USERS users (admins ADMIN, SECOND and THIRD) and
    `changes` to its settings; stopped at the end of the test."""
    started: list[tuple[RunningApp, threading.Thread]] = []

    def make(**changes: Any) -> RunningApp:
        configured = approval_settings(settings, slack_standin, smtp_server, **changes)
        started.append(start_app(configured, sessions, directory, redis_conn, slack_standin))
        return started[-1][0]

    yield make
    for running, thread in started:
        running.stop(thread)


@pytest.fixture
def approval_app(make_app: AppFactory) -> RunningApp:
    return make_app()


# ---- helpers ----------------------------------------------------------------------------------


def confirm_reset(app: RunningApp, values: dict[str, Any], user: str = ADMIN) -> dict[str, Any]:
    opened = app.open_modal(user=user)
    answer = app.slack.submit(submitted_view(opened, values), user=user)
    preview: dict[str, Any] = answer.json()["view"]
    confirmed = app.slack.submit(preview, user=user)
    assert confirmed.status == 200, confirmed.body
    body: dict[str, Any] = confirmed.json()
    return body


def the_task(app: RunningApp) -> ResetTask:
    with app.sessions() as session:
        task = session.scalars(select(ResetTask).order_by(ResetTask.id.desc())).first()
    assert task is not None
    return task


def plan_jobs(app: RunningApp) -> list[str]:
    return [job for job in app.queue.job_ids if "__plan__" in job]


def audit_of(app: RunningApp, action: str) -> list[AuditEntry]:
    with app.sessions() as session:
        return list(session.scalars(
            select(AuditEntry).where(AuditEntry.action == action).order_by(AuditEntry.id)))


def worker_context(app: RunningApp) -> WorkerContext:
    return WorkerContext.build(app.settings, app.redis)


def deliver(app: RunningApp) -> None:
    """A burst worker: runs the queued Slack deliveries (and any reset work)."""
    context = worker_context(app)
    try:
        work(context)
    finally:
        context.close()


def parent(standin: SlackStandIn) -> Message:
    [message] = standin.top_level(CHANNEL)
    return message


def action_ids(message: Message) -> list[str]:
    return [element["action_id"] for block in message.blocks if block["type"] == "actions"
            for element in block["elements"]]


def message_text(message: Message) -> str:
    return str(message.blocks) + message.text


def ephemeral_for(standin: SlackStandIn, user: str, count: int = 1) -> str:
    standin.wait_for(lambda: len([e for e in standin.ephemerals() if e["user"] == user]) >= count)
    said = [e for e in standin.ephemerals() if e["user"] == user]
    assert len(said) >= count, standin.count_by_method()
    return str(said[count - 1]["text"])


# ---- the main flow ----------------------------------------------------------------------------


def test_another_admin_approves_and_the_task_runs_to_completion(
    approval_app: RunningApp, slack_standin: SlackStandIn, smtp_server: SmtpServer
) -> None:
    before = user_rows(approval_app.sessions, approval_app.directory)
    confirmed = confirm_reset(approval_app, form_state("all"))

    # The confirm says it waits; nothing is queued to run; the database says why.
    assert confirmed["response_action"] == "update"
    assert "waits for another admin's approval" in str(confirmed["view"])
    task = the_task(approval_app)
    assert task.status == TaskStatus.AWAITING_APPROVAL
    assert task.preview == {"users": 7, "emailable": 5, "without_email": 2, "staff": 2,
                            "locked": 0}
    assert task.approval_expires_at is not None and task.approval_expires_at > utcnow()
    assert plan_jobs(approval_app) == []
    assert [e.task_id for e in audit_of(approval_app, "approval_request")] == [task.id]

    # A worker posts the parent: requester, scope, counts, Approve and Reject; no "Started".
    deliver(approval_app)
    request = parent(slack_standin)
    assert action_ids(request) == ["approve_task", "reject_task", "send_list"]
    assert f"<@{ADMIN}>" in message_text(request)
    assert "*Users to reset* 7 · with e-mail 5 · without e-mail 2 · staff 2" in \
        message_text(request)
    assert all(str(task.id) == element["value"] for block in request.blocks
               if block["type"] == "actions" for element in block["elements"])
    assert slack_standin.thread(CHANNEL, request.ts) == []
    assert user_rows(approval_app.sessions, approval_app.directory) == before

    # Another admin approves: it is queued and enqueued, and the thread says who approved.
    answer = approval_app.slack.click("approve_task", str(task.id), user=SECOND,
                                      message_ts=request.ts)
    assert answer.status == 200
    assert f"You approved reset #{task.id}" in ephemeral_for(slack_standin, SECOND)
    approved = the_task(approval_app)
    assert (approved.status, approved.approved_by) == (TaskStatus.QUEUED, SECOND)
    assert len(plan_jobs(approval_app)) == 1
    [entry] = audit_of(approval_app, "approve")
    assert (entry.actor, entry.task_id) == (SECOND, task.id)

    context = worker_context(approval_app)
    try:
        final = run_until_final(context, task.id)
    finally:
        context.close()
    assert final.status is TaskStatus.COMPLETED_WITH_ERRORS or final.status is \
        TaskStatus.COMPLETED
    after = user_rows(approval_app.sessions, approval_app.directory)
    assert {i for i in after if after[i].password_hash != before[i].password_hash} == set(
        range(1, 8))
    assert len(smtp_server.messages) == 5
    done = parent(slack_standin)
    assert f"*Approved by* <@{SECOND}>" in message_text(done)
    assert "approve_task" not in action_ids(done)
    replies = [m.text for m in slack_standin.thread(CHANNEL, done.ts)]
    assert any(text.startswith(":arrow_forward: Started") for text in replies), replies


@sqlite_only
def test_a_small_reset_starts_at_once_as_before(approval_app: RunningApp) -> None:
    confirmed = confirm_reset(approval_app, form_state("selected_only", (1, 2)))
    assert confirmed == {"response_action": "clear"}
    assert the_task(approval_app).status == TaskStatus.QUEUED
    assert len(plan_jobs(approval_app)) == 1


# ---- who may approve --------------------------------------------------------------------------


@sqlite_only
def test_the_requester_cannot_approve_their_own_reset(
    approval_app: RunningApp, slack_standin: SlackStandIn
) -> None:
    confirm_reset(approval_app, form_state("all"))
    task = the_task(approval_app)

    approval_app.slack.click("approve_task", str(task.id), user=ADMIN)

    said = ephemeral_for(slack_standin, ADMIN)
    assert f"You asked for reset #{task.id}: another admin must approve it." == said
    assert the_task(approval_app).status == TaskStatus.AWAITING_APPROVAL
    assert plan_jobs(approval_app) == []
    [refused] = audit_of(approval_app, "refused")
    assert (refused.actor, refused.task_id) == (ADMIN, task.id)
    assert refused.detail == {"step": "approve_task", "reason": "own task"}


@sqlite_only
def test_only_admins_on_the_approver_list_may_approve(
    make_app: AppFactory, slack_standin: SlackStandIn
) -> None:
    approval_app = make_app(reset_approvers=frozenset({THIRD}))
    confirm_reset(approval_app, form_state("all"))
    task = the_task(approval_app)

    approval_app.slack.click("approve_task", str(task.id), user=OUTSIDER)
    approval_app.slack.click("approve_task", str(task.id), user=SECOND)
    approval_app.slack.click("reject_task", str(task.id), user=SECOND)

    assert "not allowed to reset passwords" in ephemeral_for(slack_standin, OUTSIDER)
    assert "You may not approve resets" in ephemeral_for(slack_standin, SECOND)
    assert "You may not approve resets" in ephemeral_for(slack_standin, SECOND, 2)
    assert the_task(approval_app).status == TaskStatus.AWAITING_APPROVAL
    reasons = [(r.actor, r.detail["step"], r.detail["reason"])
               for r in audit_of(approval_app, "refused")]
    assert reasons == [(OUTSIDER, "approve_task", "not an admin"),
                       (SECOND, "approve_task", "not an approver"),
                       (SECOND, "reject_task", "not an approver")]

    approval_app.slack.click("approve_task", str(task.id), user=THIRD)
    assert f"You approved reset #{task.id}" in ephemeral_for(slack_standin, THIRD)
    assert the_task(approval_app).approved_by == THIRD


@sqlite_only
def test_two_approvers_at_once_approve_it_once(
    approval_app: RunningApp, slack_standin: SlackStandIn
) -> None:
    confirm_reset(approval_app, form_state("all"))
    task = the_task(approval_app)
    start = threading.Barrier(2)

    def click(user: str) -> None:
        start.wait()
        approval_app.slack.click("approve_task", str(task.id), user=user)

    threads = [threading.Thread(target=click, args=(user,)) for user in (SECOND, THIRD)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)

    said = sorted([ephemeral_for(slack_standin, SECOND), ephemeral_for(slack_standin, THIRD)])
    assert sum("already approved" in text for text in said) == 1, said
    assert sum(text.startswith(f"You approved reset #{task.id}") for text in said) == 1, said
    assert len(plan_jobs(approval_app)) == 1
    [approved] = audit_of(approval_app, "approve")
    # The loser's refusal is in the audit trail too, with its reason.
    [refused] = audit_of(approval_app, "refused")
    assert {approved.actor, refused.actor} == {SECOND, THIRD}
    assert (refused.task_id, refused.detail) == (
        task.id, {"step": "approve_task", "reason": "already approved"})


@sqlite_only
def test_replayed_or_unsigned_approvals_are_refused(
    approval_app: RunningApp, slack_standin: SlackStandIn
) -> None:
    import json
    import time
    from urllib.parse import urlencode

    confirm_reset(approval_app, form_state("all"))
    task = the_task(approval_app)
    body = urlencode({"payload": json.dumps({
        "type": "block_actions", "user": {"id": SECOND, "team_id": "T0LIBRARY"},
        "team": {"id": "T0LIBRARY", "domain": "library"}, "api_app_id": "ARESETBOT",
        "channel": {"id": CHANNEL}, "container": {"type": "message", "channel_id": CHANNEL},
        "actions": [{"type": "button", "action_id": "reject_task", "block_id": "b",
                     "value": str(task.id), "action_ts": str(time.time())}],
    })}).encode()
    now = str(int(time.time()))

    unsigned = approval_app.slack.post(body, signed=False)
    forged = approval_app.slack.post(body, signature=sign("not-the-secret", now, body))
    assert (unsigned.status, forged.status) == (401, 401)
    assert the_task(approval_app).status == TaskStatus.AWAITING_APPROVAL

    signature = sign(SIGNING_SECRET, now, body)
    assert approval_app.slack.post(body, timestamp=now, signature=signature).status == 200
    assert the_task(approval_app).status == TaskStatus.REJECTED
    replayed = approval_app.slack.post(body, timestamp=now, signature=signature)
    assert replayed.status == 401
    assert len(audit_of(approval_app, "reject")) == 1


# ---- reject, expiry ---------------------------------------------------------------------------


@sqlite_only
def test_reject_changes_nothing_and_erases_the_sealed_passwords(
    approval_app: RunningApp, slack_standin: SlackStandIn, smtp_server: SmtpServer
) -> None:
    before = user_rows(approval_app.sessions, approval_app.directory)
    confirm_reset(approval_app, form_state("all_without_role", password=GOOD_PASSWORD))
    task = the_task(approval_app)
    assert task.default_password_sealed is not None
    deliver(approval_app)

    approval_app.slack.click("reject_task", str(task.id), user=SECOND)

    assert f"You rejected reset #{task.id}: nothing was changed." == \
        ephemeral_for(slack_standin, SECOND)
    rejected = the_task(approval_app)
    assert (rejected.status, rejected.rejected_by) == (TaskStatus.REJECTED, SECOND)
    assert rejected.default_password_sealed is None
    assert rejected.no_email_password_sealed is None
    [entry] = audit_of(approval_app, "reject")
    assert (entry.actor, entry.task_id) == (SECOND, task.id)
    # An approval after the rejection is refused; a worker changes nothing.
    approval_app.slack.click("approve_task", str(task.id), user=THIRD)
    assert "already rejected" in ephemeral_for(slack_standin, THIRD)
    deliver(approval_app)
    assert user_rows(approval_app.sessions, approval_app.directory) == before
    assert smtp_server.messages == []
    # The thread's parent says who rejected it, without buttons, and the thread ends.
    ended = parent(slack_standin)
    assert f"Rejected by <@{SECOND}>: nothing was changed." in message_text(ended)
    assert action_ids(ended) == []
    [reply] = slack_standin.thread(CHANNEL, ended.ts)
    assert "nothing was changed" in reply.text
    assert slack_standin.requests_containing(GOOD_PASSWORD) == []


@sqlite_only
def test_an_unanswered_request_expires_through_the_reaper(
    make_app: AppFactory, slack_standin: SlackStandIn
) -> None:
    approval_app = make_app(reset_approval_ttl=60.0)
    before = user_rows(approval_app.sessions, approval_app.directory)
    confirm_reset(approval_app, form_state("all", no_email="set",
                                            no_email_password="Front-Desk-Lantern-42"))
    task = the_task(approval_app)
    assert task.no_email_password_sealed is not None
    deliver(approval_app)
    context = worker_context(approval_app)
    try:
        assert reap(context).approvals_expired == 0  # within its minute: still waiting
        later = reap(context, now=utcnow() + timedelta(seconds=61))
        assert reap(context, now=utcnow() + timedelta(seconds=62)).approvals_expired == 0
        work(context)  # the thread is told
    finally:
        context.close()

    assert later.approvals_expired == 1
    expired = the_task(approval_app)
    assert expired.status == TaskStatus.EXPIRED
    assert (expired.default_password_sealed, expired.no_email_password_sealed) == (None, None)
    assert [e.task_id for e in audit_of(approval_app, "expire")] == [task.id]
    assert user_rows(approval_app.sessions, approval_app.directory) == before
    assert plan_jobs(approval_app) == []
    ended = parent(slack_standin)
    assert "the request expired and nothing was changed" in message_text(ended)
    assert action_ids(ended) == []
    approval_app.slack.click("approve_task", str(task.id), user=SECOND)
    assert "has expired" in ephemeral_for(slack_standin, SECOND)


# ---- counts checked again ----------------------------------------------------------------------


@sqlite_only
def test_a_grown_scope_is_shown_to_the_approver_who_approves_again(
    approval_app: RunningApp, slack_standin: SlackStandIn
) -> None:
    confirm_reset(approval_app, form_state("all"))
    task = the_task(approval_app)
    with approval_app.sessions.begin() as session:  # 7 → 9 users: more than 10 % more
        session.execute(insert(approval_app.directory.table), [
            {"id": 8, "username": "heidi", "full_name": "Heidi", "email": "h@example.org",
             "password_hash": "old-hash", "must_change_password": False},
            {"id": 9, "username": "ivan", "full_name": "Ivan", "email": None,
             "password_hash": "old-hash", "must_change_password": False},
        ])

    approval_app.slack.click("approve_task", str(task.id), user=SECOND)

    said = ephemeral_for(slack_standin, SECOND)
    assert f"reset #{task.id} would now reset 9 users (7 when it was asked for)" in said
    assert "Click *Approve* again" in said
    recounted = the_task(approval_app)
    assert recounted.status == TaskStatus.AWAITING_APPROVAL
    assert recounted.preview is not None and recounted.preview["users"] == 9
    assert plan_jobs(approval_app) == []
    [entry] = audit_of(approval_app, "approval_recount")
    assert entry.detail == {"before": 7, "now": 9}
    deliver(approval_app)
    assert "*Users to reset* 9" in message_text(parent(slack_standin))

    approval_app.slack.click("approve_task", str(task.id), user=SECOND)
    assert f"You approved reset #{task.id}" in ephemeral_for(slack_standin, SECOND, 2)
    assert the_task(approval_app).status == TaskStatus.QUEUED
    assert len(plan_jobs(approval_app)) == 1


@sqlite_only
def test_every_whole_directory_scope_may_need_approval_whatever_its_size(
    make_app: AppFactory,
) -> None:
    approval_app = make_app(reset_approval_min_users=None, reset_approval_scope_all=True)
    # `all`, everyone but a few picked (6 of 7) and every patron: each is the whole directory.
    for values in (form_state("all"), form_state("all_except_selected", (1,)),
                   form_state("all_without_role")):
        confirm_reset(approval_app, values)
        waiting = the_task(approval_app)
        assert waiting.status == TaskStatus.AWAITING_APPROVAL, waiting.scope
    confirm_reset(approval_app, form_state("selected_only", (1, 2, 3, 4, 5)))
    assert the_task(approval_app).status == TaskStatus.QUEUED
    assert [e.detail["scope"] for e in audit_of(approval_app, "approval_request")] == [
        "all", "all_except_selected", "all_without_role"]


@sqlite_only
def test_app_home_lists_the_awaiting_reset(
    approval_app: RunningApp, slack_standin: SlackStandIn
) -> None:
    confirm_reset(approval_app, form_state("all"))
    approval_app.slack.event({"type": "app_home_opened", "user": SECOND, "tab": "home"})
    slack_standin.wait_for(lambda: slack_standin.home_view(SECOND) is not None)
    home = str(slack_standin.home_view(SECOND))
    assert "Awaiting approval" in home
    assert "awaiting another admin's approval (7 users)" in home


@sqlite_only
def test_a_request_whose_slack_post_redis_lost_is_posted_by_the_reaper(
    approval_app: RunningApp, slack_standin: SlackStandIn
) -> None:
    confirm_reset(approval_app, form_state("all"))
    task = the_task(approval_app)
    approval_app.queue.empty()  # Redis lost the delivery before any worker ran it
    assert approval_app.queue.job_ids == []

    context = worker_context(approval_app)
    try:
        reap(context)
        reap(context)  # a second pass (another worker's) does not post it twice
        work(context)
    finally:
        context.close()

    request = parent(slack_standin)
    assert action_ids(request) == ["approve_task", "reject_task", "send_list"]
    assert the_task(approval_app).slack_thread_ts == request.ts
    assert the_task(approval_app).status == TaskStatus.AWAITING_APPROVAL
    assert task.id == the_task(approval_app).id


# ---- approval and a start time together ---------------------------------------------------------


def with_start(values: dict[str, Any], moment: datetime) -> dict[str, Any]:
    """The form's values with Start at (a datetimepicker) set to `moment`."""
    return {**values, "start_at": {"start_at": {"type": "datetimepicker",
                                                "selected_date_time": int(moment.timestamp())}}}


@sqlite_only
def test_an_approved_reset_with_a_start_time_waits_scheduled_and_starts_at_its_time(
    approval_app: RunningApp, slack_standin: SlackStandIn, smtp_server: SmtpServer
) -> None:
    before = user_rows(approval_app.sessions, approval_app.directory)
    start_at = (utcnow() + timedelta(hours=2)).replace(microsecond=0)
    confirmed = confirm_reset(approval_app, with_start(form_state("all"), start_at))

    # The gate asks for approval first; the request must be decided before the start time.
    assert "waits for another admin's approval" in str(confirmed["view"])
    task = the_task(approval_app)
    assert task.status == TaskStatus.AWAITING_APPROVAL
    assert task.approval_expires_at == start_at  # earlier than RESET_APPROVAL_TTL's 24 h
    deliver(approval_app)
    request = parent(slack_standin)
    assert action_ids(request) == ["approve_task", "reject_task", "send_list"]
    assert "if approved before then" in message_text(request)

    # Approved: released as any task with a future start is, scheduled; nothing enqueued.
    approval_app.slack.click("approve_task", str(task.id), user=SECOND, message_ts=request.ts)
    assert "it is now scheduled" in ephemeral_for(slack_standin, SECOND)
    approved = the_task(approval_app)
    assert (approved.status, approved.approved_by) == (TaskStatus.SCHEDULED, SECOND)
    assert plan_jobs(approval_app) == []
    assert [e.actor for e in audit_of(approval_app, "schedule")] == [SECOND]
    deliver(approval_app)  # the announcement: the parent now says when it starts
    waiting = parent(slack_standin)
    assert "Scheduled for" in message_text(waiting)
    assert f"*Approved by* <@{SECOND}>" in message_text(waiting)
    assert action_ids(waiting) == ["cancel_task"]
    assert user_rows(approval_app.sessions, approval_app.directory) == before

    context = worker_context(approval_app)
    try:
        assert reap(context, now=start_at - timedelta(seconds=1)).schedules_started == 0
        assert reap(context, now=start_at).schedules_started == 1
        final = run_until_final(context, task.id)
    finally:
        context.close()
    assert final.status in (TaskStatus.COMPLETED, TaskStatus.COMPLETED_WITH_ERRORS)
    after = user_rows(approval_app.sessions, approval_app.directory)
    assert {i for i in after if after[i].password_hash != before[i].password_hash} == set(
        range(1, 8))
    assert len(smtp_server.messages) == 5
    assert audit_of(approval_app, "expire") == []
    replies = [m.text for m in slack_standin.thread(CHANNEL, parent(slack_standin).ts)]
    assert sum(text.startswith(":arrow_forward: Started") for text in replies) == 1, replies


@sqlite_only
def test_a_scheduled_reset_not_approved_before_its_start_expires_with_its_passwords_erased(
    approval_app: RunningApp, slack_standin: SlackStandIn, smtp_server: SmtpServer
) -> None:
    before = user_rows(approval_app.sessions, approval_app.directory)
    start_at = (utcnow() + timedelta(minutes=30)).replace(microsecond=0)
    values = form_state("all", no_email="set", no_email_password="Front-Desk-Lantern-42")
    confirm_reset(approval_app, with_start(values, start_at))
    task = the_task(approval_app)
    assert task.status == TaskStatus.AWAITING_APPROVAL
    assert task.no_email_password_sealed is not None  # sealed while it waits
    deliver(approval_app)

    context = worker_context(approval_app)
    try:
        early = reap(context, now=start_at - timedelta(seconds=1))
        assert (early.approvals_expired, early.schedules_started) == (0, 0)
        # Its start time came with nobody's approval: it expires, and never starts.
        late = reap(context, now=start_at + timedelta(seconds=1))
        work(context)  # the thread is told
    finally:
        context.close()
    assert (late.approvals_expired, late.schedules_started) == (1, 0)
    expired = the_task(approval_app)
    assert expired.status == TaskStatus.EXPIRED and expired.started_at is None
    assert (expired.default_password_sealed, expired.no_email_password_sealed) == (None, None)
    [entry] = audit_of(approval_app, "expire")
    assert entry.task_id == task.id and entry.detail["start_passed"] is True
    assert audit_of(approval_app, "schedule") == []
    assert plan_jobs(approval_app) == []
    assert user_rows(approval_app.sessions, approval_app.directory) == before
    assert smtp_server.messages == []
    ended = parent(slack_standin)
    assert "Nobody approved it before its start time" in message_text(ended)
    assert action_ids(ended) == []

    # A late click changes nothing.
    approval_app.slack.click("approve_task", str(task.id), user=SECOND)
    assert "has expired" in ephemeral_for(slack_standin, SECOND)
    assert the_task(approval_app).status == TaskStatus.EXPIRED


# ---- the rule judged again: at a scheduled start, Start now, Retry ------------------------------


def add_patrons(app: RunningApp, ids: range) -> None:
    with app.sessions.begin() as session:
        session.execute(insert(app.directory.table), [
            {"id": i, "username": f"new{i}", "full_name": f"New {i}",
             "email": f"new{i}@example.org", "role": None, "password_hash": "old-hash",
             "must_change_password": False} for i in ids])


@sqlite_only
def test_a_scheduled_reset_that_grew_past_its_approval_is_approved_again_not_started_alone(
    approval_app: RunningApp, slack_standin: SlackStandIn, smtp_server: SmtpServer
) -> None:
    """The review's reproduction: ADMIN schedules every patron (5), SECOND approves, 100 patrons
    are added; at the start ADMIN alone must not be able to reset 105 users."""
    start_at = (utcnow() + timedelta(minutes=30)).replace(microsecond=0)
    confirm_reset(approval_app, with_start(form_state("all_without_role"), start_at))
    task = the_task(approval_app)
    approval_app.slack.click("approve_task", str(task.id), user=SECOND)
    assert "it is now scheduled" in ephemeral_for(slack_standin, SECOND)
    add_patrons(approval_app, range(100, 200))
    before = user_rows(approval_app.sessions, approval_app.directory)

    context = worker_context(approval_app)
    try:
        reap(context, now=start_at + timedelta(seconds=1))
        work(context)  # the thread is told
        # The requester alone: Start now (a stale button) and Approve change nothing.
        approval_app.slack.click("confirm_scheduled", str(task.id), user=ADMIN)
        approval_app.slack.click("approve_task", str(task.id), user=ADMIN)
        work(context)
        again = the_task(approval_app)
        assert again.status == TaskStatus.AWAITING_APPROVAL, again.status
        assert plan_jobs(approval_app) == []
        assert user_rows(approval_app.sessions, approval_app.directory) == before
        assert "awaiting approval" in ephemeral_for(slack_standin, ADMIN)
        assert "another admin must approve it" in ephemeral_for(slack_standin, ADMIN, 2)
        assert again.approved_by is None
        assert again.preview is not None and again.preview["users"] == 105
        assert again.approval_expires_at is not None and again.approval_expires_at > utcnow()
        # The thread: Approve and Reject again, with the new counts, and why.
        waiting = parent(slack_standin)
        assert action_ids(waiting) == ["approve_task", "reject_task", "send_list"]
        assert "*Users to reset* 105" in message_text(waiting)
        assert "if approved before then" not in message_text(waiting)
        assert "approved, it starts at once" in message_text(waiting)
        replies = [m.text for m in slack_standin.thread(CHANNEL, waiting.ts)]
        assert any("105 users" in text and "approv" in text for text in replies), replies
        assert not any("Scheduled reset" in text and "started" in text for text in replies)

        # Another admin approves the new count: it starts now and resets all 105.
        approval_app.slack.click("approve_task", str(task.id), user=THIRD)
        assert f"You approved reset #{task.id}" in ephemeral_for(slack_standin, THIRD)
        # Its time has come (the reaper's clock is injected here: the real one is behind).
        assert reap(context, now=start_at + timedelta(seconds=2)).schedules_started == 1
        final = run_until_final(context, task.id)
    finally:
        context.close()
    assert final.status in (TaskStatus.COMPLETED, TaskStatus.COMPLETED_WITH_ERRORS)
    assert final.total == 105
    assert [(e.actor, e.detail["users"]) for e in audit_of(approval_app, "approve")] == [
        (SECOND, 5), (THIRD, 105)]
    assert [e.actor for e in audit_of(approval_app, "approval_request")] == [ADMIN, "resetbot"]
    assert audit_of(approval_app, "reconfirm") == []


def finished_task_with_failed_mails(app: RunningApp, user_ids: tuple[int, ...]) -> int:
    """A Slack task that ended with the mails to `user_ids` failed for good."""
    from core.models import ItemState, ResetItem

    with app.sessions.begin() as session:
        task = ResetTask(requester=ADMIN, scope="all", selection=[], mode="generated",
                         status=TaskStatus.COMPLETED_WITH_ERRORS, slack_channel=CHANNEL)
        session.add(task)
        session.flush()
        for user_id in user_ids:
            session.add(ResetItem(task_id=task.id, user_id=user_id, chunk=0,
                                  username=f"user{user_id}", email=f"u{user_id}@example.org",
                                  state=ItemState.NOTIFY_FAILED, attempts=4))
        return task.id


@sqlite_only
def test_a_retry_over_the_minimum_waits_for_another_admins_approval(
    approval_app: RunningApp, slack_standin: SlackStandIn
) -> None:
    original = finished_task_with_failed_mails(approval_app, (1, 2, 3, 7))  # MIN_USERS: 4

    approval_app.slack.click("retry_failed", str(original), user=ADMIN)

    said = ephemeral_for(slack_standin, ADMIN)
    retry = the_task(approval_app)
    assert retry.retry_of == original and retry.selection == ["1", "2", "3", "7"]
    assert retry.status == TaskStatus.AWAITING_APPROVAL, said
    assert "another admin" in said and f"#{retry.id}" in said
    assert retry.preview == {"users": 4, "emailable": 4, "without_email": 0, "staff": 0}
    assert plan_jobs(approval_app) == []
    deliver(approval_app)
    request = [m for m in slack_standin.top_level(CHANNEL) if "approve_task" in str(m.blocks)]
    assert len(request) == 1
    approval_app.slack.click("approve_task", str(retry.id), user=ADMIN)
    assert "another admin must approve it" in ephemeral_for(slack_standin, ADMIN, 2)
    approval_app.slack.click("approve_task", str(retry.id), user=SECOND)
    assert f"You approved reset #{retry.id}" in ephemeral_for(slack_standin, SECOND)
    assert the_task(approval_app).status == TaskStatus.QUEUED
    assert len(plan_jobs(approval_app)) == 1


@sqlite_only
def test_a_small_retry_starts_at_once_as_before(
    approval_app: RunningApp, slack_standin: SlackStandIn
) -> None:
    original = finished_task_with_failed_mails(approval_app, (1, 2))
    approval_app.slack.click("retry_failed", str(original), user=ADMIN)
    assert "Started reset #" in ephemeral_for(slack_standin, ADMIN)
    assert the_task(approval_app).status == TaskStatus.QUEUED
    assert len(plan_jobs(approval_app)) == 1


def test_a_worker_never_starts_a_queued_task_the_approval_rule_holds_back(
    settings: Settings, sessions: sessionmaker[Session], directory: Directory,
    redis_conn: Redis, engine: Any, sample_users: list[Any],
) -> None:
    """The last line: an edge that queued a task without judging the rule (or a task queued
    before the rule was set) does not get it started by a worker."""
    from core.models import Scope
    from core.tasks import ResetRequest, create_task
    from jobs.queueing import enqueue_task
    from tests.support.engine import build_context

    strict = replace(settings, reset_approval_min_users=MIN_USERS)
    before = user_rows(sessions, directory)
    context = build_context(strict, redis_conn, engine)
    try:
        with sessions() as session:  # no gate_new_task: queued as it was made
            task = create_task(session, strict, ResetRequest(requester=ADMIN, scope=Scope.ALL),
                               directory.preview(Scope.ALL, ()))
            session.commit()
            task_id = task.id
        enqueue_task(context.queue, task_id)
        work(context)
    finally:
        context.close()

    with sessions() as session:
        held = session.get(ResetTask, task_id)
        assert held is not None
        assert held.status == TaskStatus.AWAITING_APPROVAL and held.started_at is None
        assert held.preview is not None and held.preview["users"] == 7
    assert user_rows(sessions, directory) == before
    with sessions() as session:
        asked = session.scalars(select(AuditEntry).where(
            AuditEntry.action == "approval_request")).all()
        started = session.scalars(select(AuditEntry).where(AuditEntry.action == "start")).all()
    assert [(e.actor, e.task_id) for e in asked] == [("resetbot", task_id)]
    assert started == []
