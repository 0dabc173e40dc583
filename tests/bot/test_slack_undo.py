"""Undo in Slack, over signed HTTP to the running app with the Web API stand-in: the ended
task's parent offers Undo during RESET_UNDO_WINDOW; a click opens the counts to confirm; the
confirm starts an Undo task that puts back exactly the users who kept the task's password.
Admins only, checked on the click and on the confirm, each refusal audited; once per task.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from redis import Redis
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from core.directory import Directory
from core.models import AuditEntry, ItemState, ResetItem, ResetTask, TaskStatus, UndoSnapshot
from core.passwords import PasswordHasher
from core.settings import Settings
from tests.bot.test_slack_app import confirm_task, preview_through, run_worker, tasks, view_text
from tests.support.signing import ADMIN, OUTSIDER, RunningApp, app_settings, form_state, start_app
from tests.support.slack_standin import SlackStandIn
from tests.support.slack_standin import slack_standin as slack_standin
from tests.support.smtp import SmtpServer
from tests.support.smtp import smtp_server as smtp_server

pytestmark = pytest.mark.every_database


def before(username: str) -> str:
    return f"Slack-before-{username}-9"


def sign_in_with_before(configured: Settings, sessions: sessionmaker[Session],
                        directory: Directory, sample_users: list[Any]) -> PasswordHasher:
    """Every sample user's password is `before(username)`, hashed as the app would (by the
    hasher returned)."""
    hasher = PasswordHasher.from_settings(configured)
    table = directory.table
    with sessions() as session:
        for user_id, username, *_ in sample_users:
            session.execute(update(table).where(table.c.id == user_id)
                            .values(password_hash=hasher.hash(before(username))))
        session.commit()
    return hasher


def start(settings: Settings, sessions: sessionmaker[Session], directory: Directory,
          redis_conn: Redis, slack_standin: SlackStandIn, smtp_server: SmtpServer,
          sample_users: list[Any]) -> Iterator[RunningApp]:
    configured = app_settings(smtp_server.settings(settings), slack_standin)
    sign_in_with_before(configured, sessions, directory, sample_users)
    running, thread = start_app(configured, sessions, directory, redis_conn, slack_standin)
    try:
        yield running
    finally:
        running.stop(thread)


@pytest.fixture
def undo_app(settings: Settings, sessions: sessionmaker[Session], directory: Directory,
             redis_conn: Redis, slack_standin: SlackStandIn, smtp_server: SmtpServer,
             sample_users: list[Any]) -> Iterator[RunningApp]:
    yield from start(settings, sessions, directory, redis_conn, slack_standin, smtp_server,
                     sample_users)


def parent_offers_undo(standin: SlackStandIn, task_id: int) -> bool:
    """Whether the latest parent post or update of the task shows the Undo button."""
    posts = [call for call in standin.calls()
             if call.method in ("chat.postMessage", "chat.update")
             and str(call.params.get("text", "")).startswith(f"Password reset #{task_id}:")]
    return bool(posts) and '"action_id": "undo_task"' in json.dumps(posts[-1].params["blocks"])


def audit(sessions: sessionmaker[Session], action: str) -> list[AuditEntry]:
    with sessions() as session:
        return list(session.scalars(select(AuditEntry).where(AuditEntry.action == action)))


def test_undo_from_the_thread_restores_those_who_kept_the_new_password(
    undo_app: RunningApp, slack_standin: SlackStandIn, smtp_server: SmtpServer,
) -> None:
    app = undo_app
    hasher = PasswordHasher.from_settings(app.settings)
    task_id = confirm_task(app, form_state("all"))
    assert run_worker(app, task_id).status is TaskStatus.COMPLETED
    assert slack_standin.wait_for(lambda: parent_offers_undo(slack_standin, task_id))
    table = app.directory.table
    with app.sessions() as session:
        session.execute(update(table).where(table.c.username == "bob")
                        .values(password_hash=hasher.hash("Bob-own-choice-3")))
        session.commit()

    # Someone who is not an admin: refused and audited, nothing opened or changed.
    opened_before = slack_standin.count("views.open")
    assert app.slack.click("undo_task", str(task_id), user=OUTSIDER).status == 200
    assert [e.detail["step"] for e in audit(app.sessions, "refused")] == ["undo_task"]
    assert slack_standin.count("views.open") == opened_before

    assert app.slack.click("undo_task", str(task_id)).status == 200
    opened = slack_standin.wait_for_call("views.open", count=opened_before + 1)
    modal = opened.params["view"]
    said = view_text(modal)
    assert "6 users still have the password it set" in said
    assert "Of them, 4 were e-mailed" in said
    assert "1 user changed their password since: left alone" in said

    # The confirm is checked again: an outsider's submit of the same view is refused.
    refused = app.slack.submit(modal, user=OUTSIDER)
    assert refused.status == 200 and len(tasks(app.sessions)) == 1
    assert [e.detail["step"] for e in audit(app.sessions, "refused")] == [
        "undo_task", "undo_task_confirm"]

    ephemeral_before = slack_standin.count("chat.postEphemeral")
    assert app.slack.submit(modal).status == 200
    original, undo = tasks(app.sessions)
    assert (undo.undo_of, original.undone_by, undo.requester) == (task_id, undo.id, ADMIN)
    told = slack_standin.wait_for_call("chat.postEphemeral", count=ephemeral_before + 1)
    assert f"Started task #{undo.id}: it undoes reset #{task_id}" in told.params["text"]

    # A second click on the same confirmation: refused in the modal, no second Undo.
    again = app.slack.submit(modal).json()
    assert again["response_action"] == "update"
    assert f"already undone by task #{undo.id}" in view_text(again["view"])
    assert len(tasks(app.sessions)) == 2

    mails_before = len(smtp_server.messages)
    assert run_worker(app, undo.id).status is TaskStatus.COMPLETED
    c = table.c
    with app.sessions() as session:
        stored = dict(session.execute(select(c.username, c.password_hash)).all())
        states = dict(session.execute(select(ResetItem.username, ResetItem.state)
                                      .where(ResetItem.task_id == undo.id)).all())
    assert hasher.verify("Bob-own-choice-3", stored.pop("bob"))
    assert all(hasher.verify(before(name), hashed) for name, hashed in stored.items())
    assert states.pop("bob") == ItemState.CHANGED_SINCE
    assert set(states.values()) == {ItemState.RESTORED}
    assert sorted(m.to for m in smtp_server.messages[mails_before:]) == [
        "alice@example.org", "carol@example.org", "erin@example.org", "grace@example.org"]
    assert not parent_offers_undo(slack_standin, task_id), "Undo taken: no longer offered"
    assert any(str(call.params.get("text", "")).startswith(
        f"Undo #{undo.id} of password reset #{task_id}: Completed")
        for call in slack_standin.calls("chat.update"))
    summaries = [str(call.params.get("text", "")) for call in slack_standin.calls(
        "chat.postMessage") if str(call.params.get("text", "")).startswith(f"Reset #{undo.id} ")]
    assert summaries and "previous password back 6" in summaries[-1]
    assert "changed since: left alone 1" in summaries[-1]
    [entry] = audit(app.sessions, "undo")
    assert (entry.actor, entry.task_id) == (ADMIN, undo.id)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_undo_is_not_offered_when_the_window_is_off_and_a_click_is_refused(
    settings: Settings, sessions: sessionmaker[Session], directory: Directory,
    redis_conn: Redis, slack_standin: SlackStandIn, smtp_server: SmtpServer,
    sample_users: list[Any],
) -> None:
    for app in start(replace(settings, reset_undo_window=0), sessions, directory, redis_conn,
                     slack_standin, smtp_server, sample_users):
        task_id = confirm_task(app, form_state("all"))
        assert run_worker(app, task_id).status is TaskStatus.COMPLETED
        with app.sessions() as session:
            assert session.scalar(select(func.count()).select_from(UndoSnapshot)) == 0
            assert session.get(ResetTask, task_id) is not None
        assert not parent_offers_undo(slack_standin, task_id)
        assert app.slack.click("undo_task", str(task_id)).status == 200
        said = slack_standin.wait_for_call("chat.postEphemeral")
        assert "Undo is off (RESET_UNDO_WINDOW is 0)." in said.params["text"]
        assert len(tasks(app.sessions)) == 1


def test_the_preview_says_before_the_confirm_when_a_reset_could_not_be_undone() -> None:
    from blocks.views import preview_modal
    from core.directory import Preview
    from core.models import Mode, Scope

    counts = Preview(users=3, emailable=2, without_email=1, staff=0)
    note = "This reset cannot be undone. Undo is not possible with this directory: …."
    said = view_text(preview_modal("p1", counts, scope=Scope.ALL, selected=0,
                                   mode=Mode.GENERATED, require_change=True, no_undo=note))
    assert note in said
    plain = view_text(preview_modal("p1", counts, scope=Scope.ALL, selected=0,
                                    mode=Mode.GENERATED, require_change=True))
    assert "cannot be undone" not in plain


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_when_the_window_closes_the_thread_drops_undo_and_a_late_click_is_refused(
    undo_app: RunningApp, slack_standin: SlackStandIn,
) -> None:
    from datetime import timedelta

    from jobs.context import WorkerContext
    from jobs.reaper import reap
    from tests.support.engine import work

    app = undo_app
    task_id = confirm_task(app, form_state("selected_only", (1, 2)))
    assert run_worker(app, task_id).status is TaskStatus.COMPLETED
    assert slack_standin.wait_for(lambda: parent_offers_undo(slack_standin, task_id))
    with app.sessions() as session:
        task = session.get(ResetTask, task_id)
        assert task is not None and task.finished_at is not None
        closes = task.finished_at + timedelta(seconds=app.settings.reset_undo_window)
    context = WorkerContext.build(app.settings, app.redis)
    try:
        assert reap(context, now=closes + timedelta(seconds=1)).undo_values_erased == 2
        work(context)  # the thread's delivery
    finally:
        context.close()
    assert not parent_offers_undo(slack_standin, task_id)
    ephemeral_before = slack_standin.count("chat.postEphemeral")
    assert app.slack.click("undo_task", str(task_id)).status == 200
    said = slack_standin.wait_for_call("chat.postEphemeral", count=ephemeral_before + 1)
    assert f"Task #{task_id} changed no password that could be put back." in said.params["text"]
    assert len(tasks(app.sessions)) == 1



@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_an_undo_in_slack_waits_for_another_admins_approval_like_its_reset(
    settings: Settings, sessions: sessionmaker[Session], directory: Directory,
    redis_conn: Redis, slack_standin: SlackStandIn, smtp_server: SmtpServer,
    sample_users: list[Any],
) -> None:
    """With RESET_APPROVAL_MIN_USERS reached, the Undo's confirm asks for approval (the rule
    its reset met, `core.tasks.approval_needed`): nothing changes until another admin
    approves it in its own thread; then it runs."""
    second = "USECOND"
    configured = replace(app_settings(smtp_server.settings(settings), slack_standin),
                         reset_admins=frozenset({ADMIN, second}), reset_approval_min_users=5)
    hasher = sign_in_with_before(configured, sessions, directory, sample_users)
    app, thread = start_app(configured, sessions, directory, redis_conn, slack_standin)
    try:
        asked = app.slack.submit(preview_through(app, form_state("all"))).json()
        assert "waits for another admin's approval" in view_text(asked["view"])
        [reset] = tasks(app.sessions)
        task_id = reset.id
        assert app.slack.click("approve_task", str(task_id), user=second).status == 200
        assert run_worker(app, task_id).status is TaskStatus.COMPLETED
        after_reset = {row.username: row.password_hash for row in app_rows(app)}

        opened_before = slack_standin.count("views.open")
        assert app.slack.click("undo_task", str(task_id)).status == 200
        modal = slack_standin.wait_for_call("views.open", count=opened_before + 1).params["view"]
        ephemeral_before = slack_standin.count("chat.postEphemeral")
        assert app.slack.submit(modal).status == 200
        told = slack_standin.wait_for_call("chat.postEphemeral", count=ephemeral_before + 1)
        _, undo = tasks(app.sessions)
        assert (undo.undo_of, undo.mode, undo.status) == (
            task_id, "undo", TaskStatus.AWAITING_APPROVAL)
        assert "waits for another admin's approval" in told.params["text"]
        assert {row.username: row.password_hash for row in app_rows(app)} == after_reset

        assert app.slack.click("approve_task", str(undo.id), user=second).status == 200
        assert run_worker(app, undo.id).status is TaskStatus.COMPLETED
        for row in app_rows(app):
            assert hasher.verify(before(row.username), row.password_hash), row.username
    finally:
        app.stop(thread)


def app_rows(app: RunningApp) -> list[Any]:
    table = app.directory.table  # type: ignore[union-attr]
    with app.sessions() as session:
        return list(session.execute(select(table.c.username, table.c.password_hash)))
