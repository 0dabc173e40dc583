"""The Slack app end to end: signed HTTP requests to the running app, the Web API stand-in,
real Redis and database, a worker, mail on aiosmtpd.

A flow per scope: slash command → views.open; options search; a submit with errors; a valid
submit → preview; confirm → task queued and modal closed; a worker runs it to the end.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from redis import Redis
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from core.directory import Directory
from core.models import AuditEntry, ItemState, PendingRequest, ResetTask, TaskStatus
from core.passwords import PasswordHasher
from core.progress import TaskSnapshot
from core.settings import Settings
from jobs.context import WorkerContext
from tests.support.engine import run_until_final, user_rows
from tests.support.signing import (
    ADMIN,
    CHANNEL,
    OUTSIDER,
    RunningApp,
    app_settings,
    form_state,
    start_app,
    submitted_view,
    view_text,
)
from tests.support.signing import slack_app as slack_app
from tests.support.slack_standin import SlackStandIn
from tests.support.slack_standin import slack_standin as slack_standin
from tests.support.smtp import SmtpServer
from tests.support.smtp import smtp_server as smtp_server

GOOD_PASSWORD = "Tulip-Lantern-47-Quay"
#: For behaviour that does not depend on the database: one run (SQLite) keeps the suite fast.
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
def mail_app(
    settings: Settings,
    sessions: sessionmaker[Session],
    directory: Directory,
    redis_conn: Redis,
    slack_standin: SlackStandIn,
    smtp_server: SmtpServer,
    sample_users: list[Any],
) -> Iterator[RunningApp]:
    """The app with mail going to the loopback SMTP server, and the seven sample users."""
    configured = app_settings(smtp_server.settings(settings), slack_standin)
    running, thread = start_app(configured, sessions, directory, redis_conn, slack_standin)
    try:
        yield running
    finally:
        running.stop(thread)


def run_worker(app: RunningApp, task_id: int) -> TaskSnapshot:
    """Burst workers (A's engine, D's Slack reporter) until the task is final."""
    context = WorkerContext.build(app.settings, app.redis)
    try:
        return run_until_final(context, task_id)
    finally:
        context.close()


def tasks(sessions: sessionmaker[Session]) -> list[ResetTask]:
    with sessions() as session:
        return list(session.scalars(select(ResetTask).order_by(ResetTask.id)))


def refusals(sessions: sessionmaker[Session]) -> list[AuditEntry]:
    with sessions() as session:
        return list(session.scalars(select(AuditEntry).where(AuditEntry.action == "refused")))


def queued_task_ids(app: RunningApp) -> list[int]:
    found = []
    for job_id in app.queue.job_ids:
        match = re.search(r"__t(\d+)__plan__", job_id)
        if match:
            found.append(int(match.group(1)))
    return found


def preview_through(app: RunningApp, values: dict[str, Any]) -> dict[str, Any]:
    """Open the modal, submit `values`, return the preview view (asserting it came)."""
    opened = app.open_modal()
    answer = app.slack.submit(submitted_view(opened, values))
    assert answer.status == 200, answer.body
    body = answer.json()
    assert body["response_action"] == "update", body
    view: dict[str, Any] = body["view"]
    return view



# ---- a full flow per scope -------------------------------------------------------------------

SCOPE_CASES = {
    # scope: (selection, default password, expected users, e-mailed, without e-mail, staff)
    "all": ((), None, {1, 2, 3, 4, 5, 6, 7}, 5, 2, 2),
    "all_except_selected": ((3, 5), GOOD_PASSWORD, {1, 2, 4, 6, 7}, 0, 2, 0),
    "all_without_role": ((), None, {1, 2, 4, 6, 7}, 3, 2, 0),
    "selected_only": ((1, 4), GOOD_PASSWORD, {1, 4}, 0, 1, 0),
}


@pytest.mark.parametrize("scope", list(SCOPE_CASES))
def test_a_full_flow_per_scope(
    mail_app: RunningApp, smtp_server: SmtpServer, slack_standin: SlackStandIn, scope: str
) -> None:
    selection, password, expected, emailed, without_email, staff = SCOPE_CASES[scope]
    before = user_rows(mail_app.sessions, mail_app.directory)

    # The command opens the modal with the interface ids.
    opened = mail_app.open_modal()
    assert opened["callback_id"] == "bulk_reset"
    blocks = {block["block_id"]: block for block in opened["blocks"]}
    assert list(blocks) == ["scope", "users", "users_file", "password", "require_change",
                           "no_email", "no_email_password", "skip_locked", "start_at"]
    assert {o["value"] for o in blocks["scope"]["element"]["options"]} == set(SCOPE_CASES)
    assert blocks["users"]["element"]["type"] == "multi_external_select"
    assert blocks["password"]["element"]["type"] == "plain_text_input"
    assert blocks["require_change"]["element"]["initial_options"][0]["value"] == "yes"
    assert all(b["element"]["action_id"] == b["block_id"] for b in blocks.values())

    # Typing in the picker searches the directory.
    found = mail_app.slack.options("erin").json()["options"]
    assert found == [{"text": {"type": "plain_text", "text": "Erin Editor (erin) · staff",
                               "emoji": True}, "value": "5"}]

    # A submit with errors answers on the right block.
    if scope in ("all_except_selected", "selected_only"):
        wrong = form_state(scope, users=(), password=password)
        assert mail_app.slack.submit(submitted_view(opened, wrong)).json() == {
            "response_action": "errors",
            "errors": {"users": "Pick at least one user for this scope."},
        }
    else:
        wrong = form_state(scope, password="short")
        errors = mail_app.slack.submit(submitted_view(opened, wrong)).json()["errors"]
        assert list(errors) == ["password"]
        assert "at least 12 characters" in errors["password"]
        assert "mix at least 3" in errors["password"]

    # A valid submit answers with the preview: counts, mode, and nothing secret.
    answer = mail_app.slack.submit(submitted_view(opened, form_state(scope, selection, password)))
    assert answer.status == 200
    preview = answer.json()["view"]
    assert preview["callback_id"] == "bulk_reset_confirm"
    text = view_text(preview)
    assert f"*Users to reset*\n{len(expected)}" in text
    assert f"*E-mailed a new password*\n{emailed}" in text
    assert f"*Staff included*\n{staff}" in text
    if password is None:
        assert f"*Without e-mail*\n{without_email}:" in text or without_email == 0
        assert preview["submit"]["text"] == f"Reset {len(expected)} & e-mail"
    else:
        assert "nobody is e-mailed" in text
        assert preview["submit"]["text"] == f"Set for {len(expected)} users"
        assert password not in answer.body.decode()
    with mail_app.sessions() as session:
        pending = session.get(PendingRequest, preview["private_metadata"])
        assert pending is not None and pending.slack_channel == CHANNEL
        assert pending.task_id is None

    # Confirm: the task is created, enqueued and the modal closed, fast.
    confirmed = mail_app.slack.submit(preview)
    assert confirmed.status == 200
    assert confirmed.json() == {"response_action": "clear"}
    assert confirmed.elapsed < 1.0
    [task] = tasks(mail_app.sessions)
    assert (task.status, task.scope, task.requester) == (TaskStatus.QUEUED, scope, ADMIN)
    assert task.slack_channel == CHANNEL
    assert task.mode == ("default" if password else "generated")
    assert queued_task_ids(mail_app) == [task.id]

    # A worker runs it to the end; exactly the scope's users got a new password.
    final = run_worker(mail_app, task.id)
    assert final.status in (TaskStatus.COMPLETED, TaskStatus.COMPLETED_WITH_ERRORS)
    assert final.total == len(expected)
    after = user_rows(mail_app.sessions, mail_app.directory)
    changed = {i for i in after if after[i].password_hash != before[i].password_hash}
    assert changed == expected
    assert len(smtp_server.messages) == emailed
    # The task centre is in the channel the command came from.
    assert slack_standin.top_level(CHANNEL), slack_standin.count_by_method()
    if password is not None:
        assert slack_standin.requests_containing(password) == []



@sqlite_only
def test_users_without_e_mail_can_be_handed_a_typed_password_from_the_form(
    mail_app: RunningApp, smtp_server: SmtpServer, slack_standin: SlackStandIn
) -> None:
    handout = "Front-Desk-Lantern-42"
    opened = mail_app.open_modal()

    missing = mail_app.slack.submit(submitted_view(opened, form_state("all", no_email="set")))
    weak = mail_app.slack.submit(submitted_view(opened, form_state(
        "all", no_email="set", no_email_password="short")))
    answer = mail_app.slack.submit(submitted_view(opened, form_state(
        "all", no_email="set", no_email_password=handout)))

    assert list(missing.json()["errors"]) == ["no_email_password"]
    assert "at least 12 characters" in weak.json()["errors"]["no_email_password"]
    assert handout not in answer.body.decode()
    preview = answer.json()["view"]
    assert "*Without e-mail*\n2: get the password you typed; you tell each of them" in \
        view_text(preview)
    assert mail_app.slack.submit(preview).json() == {"response_action": "clear"}
    [task] = tasks(mail_app.sessions)
    final = run_worker(mail_app, task.id)
    assert final.counts[ItemState.HANDED_OUT] == 2 and final.counts[ItemState.NOTIFIED] == 5
    hasher = PasswordHasher.from_settings(mail_app.settings)
    after = user_rows(mail_app.sessions, mail_app.directory)
    assert all(hasher.verify(handout, after[user].password_hash or "") for user in (4, 6))
    assert slack_standin.requests_containing(handout) == []

@sqlite_only
def test_confirm_acks_without_resolving_the_scope(
    mail_app: RunningApp, slack_standin: SlackStandIn
) -> None:
    preview = preview_through(mail_app, form_state("all"))
    confirmed = mail_app.slack.submit(preview)
    assert confirmed.json() == {"response_action": "clear"}
    [task] = tasks(mail_app.sessions)
    # Nothing planned yet: the worker resolves the scope, not the request.
    assert (task.total, task.planned) == (0, False)


# ---- options ----------------------------------------------------------------------------------


def test_options_search_by_name_username_and_email(slack_app: RunningApp,
                                                   sample_users: list[Any]) -> None:
    def values(term: str) -> list[str]:
        answer = slack_app.slack.options(term)
        assert answer.status == 200
        return [o["value"] for o in answer.json()["options"]]

    assert values("Gutenberg") == ["7"]
    assert values("bob@exa") == ["2"]
    assert values("fra") == ["6"]
    assert values("nobody-like-this") == []
    assert sorted(values("example.org"), key=int) == ["1", "2", "3", "5", "7"]


@sqlite_only
def test_options_are_capped_and_labelled_within_slack_limits(
    slack_app: RunningApp, engine: Any, directory: Directory
) -> None:
    from sqlalchemy import insert

    long_name = "Bartholomew " * 10 + "<!channel>"
    with engine.begin() as connection:
        connection.execute(insert(directory.table), [
            {"id": i, "username": f"reader{i:03d}", "full_name": long_name if i == 1 else
             f"Reader {i}", "email": f"r{i}@example.org", "role": "staff" if i % 2 else None,
             "must_change_password": False}
            for i in range(1, 151)
        ])
    options = slack_app.slack.options("reader").json()["options"]
    assert len(options) == 100
    labels = {o["value"]: o["text"]["text"] for o in options}
    assert all(len(label) <= 75 for label in labels.values())
    assert labels["1"].endswith("… (reader001) · staff")
    assert labels["2"] == "Reader 2 (reader002)"


# ---- submit problems --------------------------------------------------------------------------


@sqlite_only
def test_every_password_reason_is_shown_at_once(slack_app: RunningApp,
                                                sample_users: list[Any]) -> None:
    opened = slack_app.open_modal()
    answer = slack_app.slack.submit(submitted_view(opened, form_state("all", password="aaaa")))
    errors = answer.json()["errors"]
    assert "at least 12 characters" in errors["password"]
    assert "mix at least 3" in errors["password"]


def test_nonexistent_users_and_empty_scopes_are_refused_on_their_block(
    slack_app: RunningApp, sample_users: list[Any]
) -> None:
    opened = slack_app.open_modal()
    ghost = slack_app.slack.submit(submitted_view(opened, form_state("selected_only", (1, 999))))
    assert ghost.json() == {"response_action": "errors", "errors": {
        "users": "1 of the picked users no longer exist in the directory."}}
    everyone = tuple(range(1, 8))
    empty = slack_app.slack.submit(
        submitted_view(opened, form_state("all_except_selected", everyone))
    )
    assert empty.json()["errors"] == {
        "scope": "Nobody matches this scope: there is no one to reset."}
    with slack_app.sessions() as session:
        assert session.scalar(select(func.count()).select_from(PendingRequest)) == 0


@sqlite_only
def test_the_modal_carries_the_channel_and_no_password_travels_back(
    slack_app: RunningApp, sample_users: list[Any], slack_standin: SlackStandIn
) -> None:
    opened = slack_app.open_modal(channel="C0OTHER")
    preview = slack_app.slack.submit(
        submitted_view(opened, form_state("selected_only", (2,), GOOD_PASSWORD))
    ).json()["view"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{32}", preview["private_metadata"])
    assert slack_app.slack.submit(preview).json() == {"response_action": "clear"}
    [task] = tasks(slack_app.sessions)
    assert task.slack_channel == "C0OTHER"
    assert task.default_password_sealed and GOOD_PASSWORD not in task.default_password_sealed
    assert slack_standin.requests_containing(GOOD_PASSWORD) == []


# ---- confirm once -----------------------------------------------------------------------------


def test_a_replayed_confirm_creates_one_task(slack_app: RunningApp,
                                             sample_users: list[Any]) -> None:
    preview = preview_through(slack_app, form_state("selected_only", (1,)))
    assert slack_app.slack.submit(preview).json() == {"response_action": "clear"}
    replay = slack_app.slack.submit(preview)
    assert replay.status == 200
    body = replay.json()
    assert body["response_action"] == "update"
    [task] = tasks(slack_app.sessions)
    assert f"already confirmed as task #{task.id}" in view_text(body["view"])
    assert queued_task_ids(slack_app) == [task.id]
    assert [r.detail["step"] for r in refusals(slack_app.sessions)] == ["confirm"]


def test_concurrent_confirms_create_one_task(slack_app: RunningApp,
                                             sample_users: list[Any]) -> None:
    preview = preview_through(slack_app, form_state("selected_only", (1, 2)))
    answers: list[dict[str, Any]] = []
    start = threading.Barrier(4)

    def confirm() -> None:
        start.wait()
        answers.append(slack_app.slack.submit(preview).json())

    threads = [threading.Thread(target=confirm) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert sorted(a["response_action"] for a in answers) == ["clear", "update", "update",
                                                             "update"]
    assert len(tasks(slack_app.sessions)) == 1
    assert len(queued_task_ids(slack_app)) == 1


# ---- buttons ----------------------------------------------------------------------------------


def confirm_task(app: RunningApp, values: dict[str, Any]) -> int:
    preview = preview_through(app, values)
    assert app.slack.submit(preview).json() == {"response_action": "clear"}
    return tasks(app.sessions)[-1].id


@sqlite_only
def test_cancel_stops_a_queued_task(mail_app: RunningApp, slack_standin: SlackStandIn,
                                    smtp_server: SmtpServer) -> None:
    before = user_rows(mail_app.sessions, mail_app.directory)
    task_id = confirm_task(mail_app, form_state("all"))
    answer = mail_app.slack.click("cancel_task", str(task_id))
    assert answer.status == 200
    with mail_app.sessions() as session:
        task = session.get(ResetTask, task_id)
        assert task is not None and task.cancel_requested and task.cancelled_by == ADMIN
    said = slack_standin.wait_for_call("chat.postEphemeral")
    assert said.params["user"] == ADMIN and said.params["channel"] == CHANNEL
    assert f"Cancelling reset #{task_id}" in said.params["text"]
    final = run_worker(mail_app, task_id)
    assert final.status is TaskStatus.CANCELLED
    assert user_rows(mail_app.sessions, mail_app.directory) == before
    assert smtp_server.messages == []


@sqlite_only
def test_cancel_of_a_finished_task_says_so(mail_app: RunningApp,
                                           slack_standin: SlackStandIn) -> None:
    task_id = confirm_task(mail_app, form_state("selected_only", (1,)))
    run_worker(mail_app, task_id)
    mail_app.slack.click("cancel_task", str(task_id))
    said = slack_standin.wait_for_call("chat.postEphemeral")
    assert f"Task #{task_id} has already ended" in said.params["text"]


@sqlite_only
def test_retry_failed_starts_a_task_for_just_those_users(
    mail_app: RunningApp, slack_standin: SlackStandIn, smtp_server: SmtpServer
) -> None:
    smtp_server.refuse("bob@example.org", code=550, times=1)
    task_id = confirm_task(mail_app, form_state("selected_only", (1, 2)))
    first = run_worker(mail_app, task_id)
    assert first.status is TaskStatus.COMPLETED_WITH_ERRORS
    answer = mail_app.slack.click("retry_failed", str(task_id))
    assert answer.status == 200
    retry = tasks(mail_app.sessions)[-1]
    assert (retry.retry_of, retry.selection, retry.requester) == (task_id, ["2"], ADMIN)
    assert retry.slack_channel == CHANNEL
    said = slack_standin.wait_for_call("chat.postEphemeral")
    assert f"Started reset #{retry.id}" in said.params["text"]
    assert run_worker(mail_app, retry.id).status is TaskStatus.COMPLETED
    assert len(smtp_server.to("bob@example.org")) == 1


@sqlite_only
def test_retry_of_a_task_without_failures_is_refused_clearly(
    mail_app: RunningApp, slack_standin: SlackStandIn
) -> None:
    task_id = confirm_task(mail_app, form_state("selected_only", (1,)))
    run_worker(mail_app, task_id)
    mail_app.slack.click("retry_failed", str(task_id))
    said = slack_standin.wait_for_call("chat.postEphemeral")
    assert "has no failed notifications" in said.params["text"]
    assert len(tasks(mail_app.sessions)) == 1


# ---- App Home, help, status -------------------------------------------------------------------


@sqlite_only
def test_app_home_lists_recent_tasks_with_thread_links(
    mail_app: RunningApp, slack_standin: SlackStandIn
) -> None:
    task_id = confirm_task(mail_app, form_state("selected_only", (1,)))
    run_worker(mail_app, task_id)
    answer = mail_app.slack.event({"type": "app_home_opened", "user": ADMIN, "tab": "home",
                                   "channel": "D0HOME", "event_ts": "1700000000.1"})
    assert answer.status == 200
    call = slack_standin.wait_for_call("views.publish")
    assert call.params["user_id"] == ADMIN
    home = call.params["view"]
    assert home["type"] == "home"
    text = view_text(home)
    assert f"#{task_id} Completed" in text
    assert "1 of 1 user" in text and f"<@{ADMIN}>" in text
    buttons = [b.get("accessory") for b in home["blocks"] if b.get("accessory")]
    assert buttons[0]["action_id"] == "open_reset_modal"
    with mail_app.sessions() as session:
        task = session.get(ResetTask, task_id)
        assert task is not None and task.slack_thread_ts
        link = f"https://slack.com/archives/{task.slack_channel}/p" + \
            task.slack_thread_ts.replace(".", "")
    assert any(b.get("url") == link for b in buttons)


@sqlite_only
def test_the_home_button_opens_the_same_modal_without_a_channel(
    slack_app: RunningApp, slack_standin: SlackStandIn
) -> None:
    answer = slack_app.slack.click_in_home("open_reset_modal")
    assert answer.status == 200
    call = slack_standin.wait_for_call("views.open")
    assert call.params["trigger_id"] == slack_app.slack.trigger_ids[-1]
    assert call.params["view"]["callback_id"] == "bulk_reset"
    assert call.params["view"]["private_metadata"] == ""


@sqlite_only
def test_help_and_status_answer_ephemerally(slack_app: RunningApp,
                                            sample_users: list[Any]) -> None:
    helped = slack_app.slack.command("help").json()
    assert helped["response_type"] == "ephemeral"
    assert "/reset-passwords status" in helped["text"]
    assert "No resets yet" in slack_app.slack.command("status").json()["text"]
    task_id = confirm_task(slack_app, form_state("selected_only", (1,)))
    listed = slack_app.slack.command("status").json()
    assert f"Reset #{task_id}: Queued" in listed["text"]
    one = slack_app.slack.command(f"status {task_id}").json()
    assert one["response_type"] == "ephemeral" and f"Reset #{task_id}" in one["text"]
    assert "There is no reset #999" in slack_app.slack.command("status 999").json()["text"]
    typed = "Sesame-Street-42!"
    unknown = slack_app.slack.command(typed).json()
    assert "I don't know that subcommand" in unknown["text"] and typed not in unknown["text"]


# ---- who may use it ---------------------------------------------------------------------------


@sqlite_only
def test_an_admin_group_member_may_reset_and_the_group_is_cached(
    settings: Settings, sessions: sessionmaker[Session], directory: Directory,
    redis_conn: Redis, slack_standin: SlackStandIn, sample_users: list[Any],
) -> None:
    slack_standin.set_usergroup("S0ADMINS", ["UGROUPIE"])
    configured = app_settings(settings, slack_standin, reset_admin_group="S0ADMINS")
    running, thread = start_app(configured, sessions, directory, redis_conn, slack_standin)
    try:
        assert running.open_modal(user="UGROUPIE")["callback_id"] == "bulk_reset"
        refused = running.slack.command(user=OUTSIDER).json()
        assert "not allowed" in refused["text"]
        assert running.slack.options("alice", user="UGROUPIE").json()["options"]
        assert slack_standin.count("usergroups.users.list") == 1
    finally:
        running.stop(thread)


@sqlite_only
def test_nobody_configured_means_nobody_may_reset(
    settings: Settings, sessions: sessionmaker[Session], directory: Directory,
    redis_conn: Redis, slack_standin: SlackStandIn, caplog: pytest.LogCaptureFixture,
) -> None:
    configured = app_settings(settings, slack_standin)
    from dataclasses import replace

    configured = replace(configured, reset_admins=frozenset())
    with caplog.at_level("WARNING"):
        running, thread = start_app(configured, sessions, directory, redis_conn, slack_standin)
    try:
        assert "nobody may reset passwords" in caplog.text
        refused = running.slack.command(user=ADMIN).json()
        assert "not allowed" in refused["text"] and refused["response_type"] == "ephemeral"
        assert slack_standin.count("views.open") == 0
    finally:
        running.stop(thread)
