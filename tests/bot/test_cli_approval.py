"""`resetbot reset` / `tasks approve` / `tasks reject` with RESET_APPROVAL_MIN_USERS: the
terminal asks for approval and never follows; approving needs `--as` an admin other than the
requester. Real database, Redis, a burst worker and mail on aiosmtpd.
"""

from __future__ import annotations

import io
from datetime import timedelta
from typing import Any

import pytest
from redis import Redis
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from bot.cli import EXIT_OK, EXIT_REFUSED, EXIT_USAGE
from core.directory import Directory
from core.models import AuditEntry, ResetTask, Scope, TaskStatus, utcnow
from core.settings import Settings
from core.tasks import ResetRequest, create_task, gate_new_task
from jobs.queueing import make_queue
from tests.support.cli import RunCli
from tests.support.cli import cli_settings as cli_settings
from tests.support.cli import run as run
from tests.support.engine import build_context, run_task, user_rows
from tests.support.smtp import SmtpServer
from tests.support.smtp import smtp_server as smtp_server

ADMIN, SECOND = "UADMIN", "USECOND"
#: RESET_ADMINS and a minimum the sample's five patrons reach.
APPROVAL = {"RESET_ADMINS": f"{ADMIN},{SECOND}", "RESET_APPROVAL_MIN_USERS": "5"}
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def tasks(sessions: sessionmaker[Session]) -> list[ResetTask]:
    with sessions() as session:
        return list(session.scalars(select(ResetTask).order_by(ResetTask.id)))


def refusals(sessions: sessionmaker[Session]) -> list[AuditEntry]:
    with sessions() as session:
        return list(session.scalars(select(AuditEntry).where(AuditEntry.action == "refused")))


def plan_jobs(settings: Settings, redis: Redis) -> list[str]:
    return [job for job in make_queue(settings, redis).job_ids if "__plan__" in job]


def slack_task(sessions: sessionmaker[Session], settings: Settings, directory: Directory,
               requester: str) -> int:
    """A task asked for in Slack by `requester`, through the gate (it waits for approval)."""
    from dataclasses import replace

    configured = replace(settings, reset_approval_min_users=5)
    with sessions() as session:
        request = ResetRequest(requester=requester, scope=Scope.ALL_WITHOUT_ROLE)
        preview = directory.preview(request.scope, ())
        task = create_task(session, configured, request, preview)
        assert gate_new_task(session, configured, task) is TaskStatus.AWAITING_APPROVAL
        session.commit()
        return task.id


@sqlite_only
def test_reset_says_it_awaits_approval_and_does_not_follow(
    run: RunCli, sessions: sessionmaker[Session], redis_conn: Redis, cli_settings: Settings,
    sample_users: Any,
) -> None:
    result = run("reset", "--scope", "all_without_role", "--yes", **APPROVAL)

    assert result.code == EXIT_OK, result.err
    assert "Task #1 awaits approval by another admin: nothing changes before that." in \
        result.out
    assert "resetbot tasks approve 1 --as THEIR_SLACK_USER_ID" in result.out
    assert "queued" not in result.out and "users/s" not in result.out
    [task] = tasks(sessions)
    assert task.status == TaskStatus.AWAITING_APPROVAL
    assert task.preview == {"users": 5, "emailable": 3, "without_email": 2, "staff": 0,
                            "locked": 0}
    assert plan_jobs(cli_settings, redis_conn) == []

    listed = run("tasks", **APPROVAL)
    assert "awaiting approval" in listed.out
    shown = run("tasks", "show", "1", **APPROVAL)
    assert "Awaits approval by another admin until" in shown.out
    assert "Counted for approval: 5 users (3 with e-mail, 2 without, 0 staff)" in shown.out


@sqlite_only
def test_a_reset_below_the_minimum_is_queued_as_before(
    run: RunCli, sessions: sessionmaker[Session], redis_conn: Redis, cli_settings: Settings,
    sample_users: Any,
) -> None:
    result = run("reset", "--scope", "selected_only", "--user", "alice", "--yes", "--detach",
                 **APPROVAL)
    assert result.code == EXIT_OK, result.err
    assert "Task #1 queued." in result.out
    assert tasks(sessions)[0].status == TaskStatus.QUEUED
    assert len(plan_jobs(cli_settings, redis_conn)) == 1


def test_approve_needs_as_an_admin_other_than_the_requester_then_the_task_runs(
    run: RunCli, sessions: sessionmaker[Session], redis_conn: Redis, cli_settings: Settings,
    directory: Directory, engine: Engine, smtp_server: SmtpServer, sample_users: Any,
) -> None:
    task_id = slack_task(sessions, cli_settings, directory, ADMIN)
    before = user_rows(sessions, directory)

    without_as = run("tasks", "approve", str(task_id), **APPROVAL)
    not_admin = run("tasks", "approve", str(task_id), "--as", "UNOBODY", **APPROVAL)
    own = run("tasks", "approve", str(task_id), "--as", ADMIN, **APPROVAL)
    not_an_id = run("tasks", "approve", str(task_id), "--as", "alice", **APPROVAL)

    assert without_as.code == not_admin.code == own.code == EXIT_REFUSED
    assert not_an_id.code == EXIT_USAGE and "not a Slack user id" in not_an_id.err
    assert "approving needs --as SLACK_USER_ID" in without_as.err
    assert "UNOBODY may not approve resets (not an admin)" in not_admin.err
    assert f"{ADMIN} asked for task #{task_id}: another admin must approve it" in own.err
    assert [(r.task_id, r.detail["reason"]) for r in refusals(sessions)] == [
        (task_id, "no --as"), (task_id, "not an admin"), (task_id, "own task")]
    assert tasks(sessions)[0].status == TaskStatus.AWAITING_APPROVAL
    assert plan_jobs(cli_settings, redis_conn) == []

    approved = run("tasks", "approve", str(task_id), "--as", SECOND, **APPROVAL)
    assert approved.code == EXIT_OK, approved.err
    assert f"Task #{task_id} approved by {SECOND}: queued." in approved.out
    task = tasks(sessions)[0]
    assert (task.status, task.approved_by) == (TaskStatus.QUEUED, SECOND)
    assert len(plan_jobs(cli_settings, redis_conn)) == 1
    again = run("tasks", "approve", str(task_id), "--as", SECOND, **APPROVAL)
    assert again.code == EXIT_REFUSED and "already approved" in again.err

    final = run_task(build_context(cli_settings, redis_conn, engine), task_id)
    assert final.status is TaskStatus.COMPLETED_WITH_ERRORS or final.status is \
        TaskStatus.COMPLETED
    after = user_rows(sessions, directory)
    assert {i for i in after if after[i].password_hash != before[i].password_hash} == {
        1, 2, 4, 6, 7}
    assert len(smtp_server.messages) == 3
    assert f"Approved by {SECOND}" in run("tasks", "show", str(task_id), **APPROVAL).out


@sqlite_only
def test_reject_from_the_terminal(
    run: RunCli, sessions: sessionmaker[Session], cli_settings: Settings,
    directory: Directory, sample_users: Any,
) -> None:
    theirs = slack_task(sessions, cli_settings, directory, ADMIN)
    before = user_rows(sessions, directory)

    refused = run("tasks", "reject", str(theirs), **APPROVAL)
    assert refused.code == EXIT_REFUSED and "needs --as" in refused.err
    rejected = run("tasks", "reject", str(theirs), "--as", SECOND, **APPROVAL)
    assert rejected.code == EXIT_OK, rejected.err
    assert f"Task #{theirs} rejected by {SECOND}: nothing was changed." in rejected.out

    # The operator withdraws a reset they asked for themselves, without --as.
    own = run("reset", "--scope", "all_without_role", "--yes", "--default-password-stdin",
              stdin=io.StringIO("Tulip-Lantern-47-Quay\n"), **APPROVAL)
    assert "awaits approval" in own.out, own.err
    mine = tasks(sessions)[-1]
    assert mine.default_password_sealed is not None
    assert run("tasks", "cancel", str(mine.id), **APPROVAL).code == EXIT_REFUSED
    withdrawn = run("tasks", "reject", str(mine.id), **APPROVAL)
    assert withdrawn.code == EXIT_OK, withdrawn.err

    ended = {task.id: task for task in tasks(sessions)}
    assert ended[theirs].status == ended[mine.id].status == TaskStatus.REJECTED
    assert ended[mine.id].default_password_sealed is None
    assert ended[mine.id].rejected_by == mine.requester
    assert user_rows(sessions, directory) == before
    shown = run("tasks", "show", str(mine.id), **APPROVAL)
    assert "nothing was changed" in shown.out


@sqlite_only
def test_reset_at_with_approval_waits_for_both_and_approved_it_is_scheduled(
    run: RunCli, sessions: sessionmaker[Session], redis_conn: Redis, cli_settings: Settings,
    sample_users: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    start_at = (utcnow() + timedelta(hours=3)).replace(second=0, microsecond=0)
    with monkeypatch.context() as another_operator:  # who asks never approves
        another_operator.setenv("LOGNAME", "asker")
        result = run("reset", "--scope", "all_without_role", "--yes",
                     "--at", start_at.isoformat(timespec="minutes"), **APPROVAL)

    assert result.code == EXIT_OK, result.err
    assert "Task #1 awaits approval by another admin" in result.out
    assert "Once approved it starts at" in result.out
    [task] = tasks(sessions)
    assert task.status == TaskStatus.AWAITING_APPROVAL and task.start_at == start_at
    assert task.approval_expires_at == start_at  # before RESET_APPROVAL_TTL's 24 h
    assert "if approved by then" in run("tasks", **APPROVAL).out

    approved = run("tasks", "approve", "1", "--as", SECOND, **APPROVAL)
    assert approved.code == EXIT_OK, approved.err
    assert f"Task #1 approved by {SECOND}: scheduled, starts " in approved.out
    assert tasks(sessions)[0].status == TaskStatus.SCHEDULED
    assert plan_jobs(cli_settings, redis_conn) == []  # the reaper starts it at its time


# ---- the terminal says who acted, and applies Slack's rules ---------------------------------


def audit_of(sessions: sessionmaker[Session], action: str) -> list[AuditEntry]:
    with sessions() as session:
        return list(session.scalars(
            select(AuditEntry).where(AuditEntry.action == action).order_by(AuditEntry.id)))


@sqlite_only
def test_approve_and_reject_as_are_audited_as_the_operator_acting_as_that_admin(
    run: RunCli, sessions: sessionmaker[Session], cli_settings: Settings, directory: Directory,
    sample_users: Any,
) -> None:
    from bot.terminal import requester

    approved_id = slack_task(sessions, cli_settings, directory, ADMIN)
    rejected_id = slack_task(sessions, cli_settings, directory, ADMIN)

    assert run("tasks", "approve", str(approved_id), "--as", SECOND, **APPROVAL).code == EXIT_OK
    assert run("tasks", "reject", str(rejected_id), "--as", SECOND, **APPROVAL).code == EXIT_OK
    again = run("tasks", "approve", str(approved_id), "--as", SECOND, **APPROVAL)

    operator = f"{requester()} as {SECOND}"
    assert [(e.actor, e.task_id) for e in audit_of(sessions, "approve")] == [
        (operator, approved_id)]
    assert [(e.actor, e.task_id) for e in audit_of(sessions, "reject")] == [
        (operator, rejected_id)]
    # Who the parent message names stays the Slack user the operator acted for.
    ended = {task.id: task for task in tasks(sessions)}
    assert ended[approved_id].approved_by == ended[rejected_id].rejected_by == SECOND
    # A refused second approval is audited too, as who typed it.
    assert again.code == EXIT_REFUSED and "already approved" in again.err
    assert [(r.actor, r.detail["reason"]) for r in refusals(sessions)] == [
        (operator, "already approved")]


@sqlite_only
def test_the_operator_who_asked_cannot_approve_it_as_another_admin(
    run: RunCli, sessions: sessionmaker[Session], redis_conn: Redis, cli_settings: Settings,
    sample_users: Any,
) -> None:
    from bot.terminal import requester

    asked = run("reset", "--scope", "all_without_role", "--yes", **APPROVAL)
    assert "awaits approval" in asked.out, asked.err

    approved = run("tasks", "approve", "1", "--as", SECOND, **APPROVAL)

    assert approved.code == EXIT_REFUSED
    assert "another admin must approve it" in approved.err
    assert tasks(sessions)[0].status == TaskStatus.AWAITING_APPROVAL
    assert plan_jobs(cli_settings, redis_conn) == []
    assert [(r.actor, r.detail["reason"]) for r in refusals(sessions)] == [
        (f"{requester()} as {SECOND}", "own task")]


def held_task(sessions: sessionmaker[Session], settings: Settings, directory: Directory,
              redis: Redis, engine: Engine, requester: str) -> int:
    """A scheduled task asked for by `requester`, held at its start: its count changed."""
    from dataclasses import replace

    from jobs.reaper import reap

    start_at = utcnow() + timedelta(minutes=5)
    with sessions() as session:
        request = ResetRequest(requester=requester, scope=Scope.ALL_WITHOUT_ROLE,
                               start_at=start_at)
        preview = replace(directory.preview(request.scope, ()), users=10)  # 5 now
        task = create_task(session, settings, request, preview)
        assert gate_new_task(session, settings, task) is TaskStatus.SCHEDULED
        session.commit()
        task_id = task.id
    context = build_context(settings, redis, engine)
    try:
        assert reap(context, now=start_at).schedules_held >= 1
    finally:
        context.close()
    return task_id


#: Admins, SECOND the only approver; no minimum, so a held task starts with its new count.
STARTERS = {"RESET_ADMINS": f"{ADMIN},{SECOND},UOTHER", "RESET_APPROVERS": SECOND}


@sqlite_only
def test_tasks_start_is_for_the_requester_or_an_approver_as_the_start_now_button(
    run: RunCli, sessions: sessionmaker[Session], redis_conn: Redis, cli_settings: Settings,
    directory: Directory, engine: Engine, sample_users: Any,
) -> None:
    from bot.terminal import requester

    theirs = held_task(sessions, cli_settings, directory, redis_conn, engine, ADMIN)
    mine = held_task(sessions, cli_settings, directory, redis_conn, engine, requester())

    without_as = run("tasks", "start", str(theirs), **STARTERS)
    not_approver = run("tasks", "start", str(theirs), "--as", "UOTHER", **STARTERS)
    assert without_as.code == not_approver.code == EXIT_REFUSED
    assert "--as" in without_as.err
    assert "UOTHER may not start resets (not an approver)" in not_approver.err
    assert [(r.actor, r.task_id, r.detail["step"], r.detail["reason"])
            for r in refusals(sessions)] == [
        (requester(), theirs, "start", "no --as"),
        (f"{requester()} as UOTHER", theirs, "start", "not an approver")]
    assert {t.id: t.status for t in tasks(sessions)}[theirs] == TaskStatus.SCHEDULED

    by_approver = run("tasks", "start", str(theirs), "--as", SECOND, **STARTERS)
    by_requester = run("tasks", "start", str(mine), **STARTERS)
    assert by_approver.code == by_requester.code == EXIT_OK, by_approver.err + by_requester.err
    assert f"Task #{theirs} starts now" in by_approver.out
    assert [(e.actor, e.task_id) for e in audit_of(sessions, "reconfirm")] == [
        (f"{requester()} as {SECOND}", theirs), (requester(), mine)]
    assert {t.status for t in tasks(sessions)} == {TaskStatus.QUEUED}
    again = run("tasks", "start", str(mine), **STARTERS)
    assert again.code == EXIT_REFUSED and "not waiting for a new confirmation" in again.err
    assert [(r.actor, r.detail["reason"]) for r in refusals(sessions)][-1] == (
        requester(), "not held")


@sqlite_only
def test_a_retry_from_the_terminal_over_the_minimum_awaits_approval(
    run: RunCli, sessions: sessionmaker[Session], redis_conn: Redis, cli_settings: Settings,
    sample_users: Any,
) -> None:
    from core.models import ItemState, ResetItem

    with sessions.begin() as session:
        original = ResetTask(requester=ADMIN, scope="all", selection=[], mode="generated",
                             status=TaskStatus.COMPLETED_WITH_ERRORS)
        session.add(original)
        session.flush()
        for user_id in (1, 2, 3, 5, 7):
            session.add(ResetItem(task_id=original.id, user_id=user_id, chunk=0,
                                  username=f"user{user_id}", email=f"u{user_id}@example.org",
                                  state=ItemState.NOTIFY_FAILED, attempts=4))

    result = run("tasks", "retry", "1", "--detach", **APPROVAL)

    assert result.code == EXIT_OK, result.err
    assert "Task #2 awaits approval by another admin" in result.out
    retry = tasks(sessions)[-1]
    assert (retry.retry_of, retry.status) == (1, TaskStatus.AWAITING_APPROVAL)
    assert plan_jobs(cli_settings, redis_conn) == []
