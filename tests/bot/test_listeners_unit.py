"""Listeners called directly, as Bolt's samples test theirs: a real `Ack`, a real WebClient
talking to the Slack stand-in, real deps (a SQLite database, the job queue on Redis).

Work after the ack runs inline here (`InlineExecutor` as the background), so what a listener
says to Slack is recorded by the stand-in when the call returns. The signed-HTTP scenarios in
test_slack_app*.py cover the same listeners through Bolt and the WSGI guard.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest
from redis import Redis
from rq import Queue
from slack_bolt import Ack, BoltContext, BoltResponse
from slack_sdk import WebClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from blocks.ids import (
    ACTION_CANCEL,
    ACTION_OPEN_MODAL,
    CALLBACK_CONFIRM,
    CALLBACK_RESET,
    USERS,
)
from blocks.text import NOT_ALLOWED, NOT_ALLOWED_TITLE, cancel_requested
from blocks.views import reset_modal
from bot.app import InlineExecutor
from bot.auth import Admins
from bot.deps import AppDeps, provide
from bot.listeners.actions import cancel
from bot.listeners.command import reset_passwords
from bot.listeners.guard import admin_only
from bot.listeners.submissions import confirm, submit_form
from core.directory import Directory
from core.directory.sql import SqlDirectory
from core.models import AuditEntry, PendingRequest, ResetTask
from core.settings import Settings
from jobs.queueing import enqueue_task, make_queue, task_of_job
from tests.support.signing import (
    ADMIN,
    CHANNEL,
    OUTSIDER,
    app_settings,
    form_state,
    submitted_view,
)
from tests.support.slack_standin import SlackStandIn

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

Json = dict[str, Any]
TRIGGER = "1700000000.42.abcdef"


# ---- deps, as create_app builds them -----------------------------------------------------------


@pytest.fixture
def client(slack_standin: SlackStandIn) -> WebClient:
    return WebClient(token=slack_standin.token, base_url=slack_standin.api_url)


@pytest.fixture
def queue(settings: Settings, redis_conn: Redis) -> Queue:
    return make_queue(settings, redis_conn)


@pytest.fixture
def deps(
    settings: Settings,
    sessions: sessionmaker[Session],
    directory: Directory,
    slack_standin: SlackStandIn,
    client: WebClient,
    queue: Queue,
) -> AppDeps:
    with_slack = app_settings(settings, slack_standin)  # admins = {ADMIN}
    return AppDeps(
        settings=with_slack,
        sessions=sessions,
        directory=SqlDirectory(directory),
        admins=Admins(with_slack, client),
        enqueue=partial(enqueue_task, queue),
        background=InlineExecutor(),
    )


def context_for(deps: AppDeps) -> BoltContext:
    """A request's context after the app's global middleware has run."""
    context = BoltContext()
    provide(deps)(context, lambda: None)
    return context


def answer(ack: Ack) -> Json:
    assert ack.response is not None, "the listener did not ack"
    assert ack.response.status == 200
    body: Json = json.loads(ack.response.body) if ack.response.body else {}
    return body


# ---- what Slack sends -------------------------------------------------------------------------


def command(text: str = "", *, user: str = ADMIN) -> Json:
    return {"command": "/reset-passwords", "text": text, "user_id": user,
            "user_name": user.lower(), "channel_id": CHANNEL, "trigger_id": TRIGGER,
            "team_id": "T0LIBRARY"}


def submission(view: Json, *, user: str = ADMIN) -> Json:
    return {"type": "view_submission", "user": {"id": user, "username": user.lower()},
            "trigger_id": TRIGGER, "view": view}


def click(action_id: str, value: str = "", *, user: str = ADMIN) -> Json:
    return {"type": "block_actions", "user": {"id": user, "username": user.lower()},
            "trigger_id": TRIGGER,
            "container": {"type": "message", "channel_id": CHANNEL},
            "channel": {"id": CHANNEL},
            "actions": [{"type": "button", "action_id": action_id, "value": value}]}


def click_in_home(action_id: str, *, user: str = ADMIN) -> Json:
    return {"type": "block_actions", "user": {"id": user}, "trigger_id": TRIGGER,
            "container": {"type": "view", "view_id": "V0HOME"},
            "view": {"id": "V0HOME", "type": "home", "callback_id": ""},
            "actions": [{"type": "button", "action_id": action_id}]}


def options(term: str, *, user: str = ADMIN) -> Json:
    return {"type": "block_suggestion", "user": {"id": user}, "action_id": USERS,
            "block_id": USERS, "value": term,
            "view": {"id": "V0MODAL", "type": "modal", "callback_id": CALLBACK_RESET}}


def preview_for(deps: AppDeps, users: tuple[int, ...] = (1, 2)) -> Json:
    """Submit the reset form as the admin; the preview view the ack carries."""
    ack = Ack()
    view = submitted_view(reset_modal(CHANNEL), form_state("selected_only", users))
    submit_form(ack=ack, body=submission(view), view=view, context=context_for(deps))
    preview: Json = answer(ack)["view"]
    return preview


def confirmed_task(deps: AppDeps) -> int:
    preview = preview_for(deps)
    ack = Ack()
    confirm(ack=ack, body=submission(preview), view=preview, context=context_for(deps))
    assert answer(ack) == {"response_action": "clear"}
    with deps.sessions() as session:
        return session.scalars(select(ResetTask.id)).one()


def refusals(sessions: sessionmaker[Session]) -> list[AuditEntry]:
    with sessions() as session:
        query = select(AuditEntry).where(AuditEntry.action == "refused").order_by(AuditEntry.id)
        return list(session.scalars(query))


# ---- the command -------------------------------------------------------------------------------


def test_the_command_acks_then_opens_the_form_for_the_channel_it_was_typed_in(
    deps: AppDeps, client: WebClient, slack_standin: SlackStandIn
) -> None:
    ack = Ack()

    reset_passwords(ack=ack, body=command(), client=client, context=context_for(deps))

    assert answer(ack) == {}
    [opened] = slack_standin.calls("views.open")
    assert opened.params["trigger_id"] == TRIGGER
    assert opened.params["view"]["callback_id"] == CALLBACK_RESET
    assert json.loads(opened.params["view"]["private_metadata"]) == {"channel": CHANNEL}


def test_the_status_subcommand_answers_in_the_ack_and_opens_nothing(
    deps: AppDeps, client: WebClient, slack_standin: SlackStandIn
) -> None:
    ack = Ack()

    reset_passwords(ack=ack, body=command("status"), client=client, context=context_for(deps))

    said = answer(ack)
    assert said["response_type"] == "ephemeral"
    assert said["text"].startswith("No resets yet.")
    assert slack_standin.count("views.open") == 0


# ---- the view submissions --------------------------------------------------------------------


def test_submitting_the_form_parks_a_request_and_answers_with_its_preview(
    deps: AppDeps, sample_users: list[Any]
) -> None:
    preview = preview_for(deps, (1, 2))

    assert preview["callback_id"] == CALLBACK_CONFIRM
    assert "2 passwords" in json.dumps(preview)
    with deps.sessions() as session:
        waiting = session.get(PendingRequest, preview["private_metadata"])
        assert waiting is not None and waiting.requester == ADMIN
        assert waiting.task_id is None
        assert session.scalars(select(ResetTask)).all() == []


def test_confirming_the_preview_commits_the_task_and_queues_it(
    deps: AppDeps, queue: Queue, sample_users: list[Any]
) -> None:
    task_id = confirmed_task(deps)

    with deps.sessions() as session:
        task = session.get(ResetTask, task_id)
        assert task is not None
        assert (task.requester, task.slack_channel) == (ADMIN, CHANNEL)
    assert [task_of_job(job) for job in queue.job_ids] == [(task_id, "plan")]


# ---- the cancel button ----------------------------------------------------------------------


def test_the_cancel_button_asks_the_task_to_stop_and_says_so_ephemerally(
    deps: AppDeps, client: WebClient, slack_standin: SlackStandIn, sample_users: list[Any]
) -> None:
    task_id = confirmed_task(deps)
    ack = Ack()

    cancel(ack=ack, body=click(ACTION_CANCEL, str(task_id)), client=client,
           context=context_for(deps))

    assert answer(ack) == {}
    with deps.sessions() as session:
        task = session.get(ResetTask, task_id)
        assert task is not None and task.cancel_requested
    assert slack_standin.ephemerals() == [{
        "channel": CHANNEL, "user": ADMIN, "text": cancel_requested(task_id), "blocks": [],
        "message_ts": slack_standin.ephemerals()[0]["message_ts"],
    }]


def test_the_cancel_button_on_an_unknown_task_says_why_and_changes_nothing(
    deps: AppDeps, client: WebClient, slack_standin: SlackStandIn
) -> None:
    cancel(ack=Ack(), body=click(ACTION_CANCEL, "drop table"), client=client,
           context=context_for(deps))

    assert [e["text"] for e in slack_standin.ephemerals()] == [
        "That button does not name a reset."]
    assert refusals(deps.sessions) == []


# ---- admin_only --------------------------------------------------------------------------------


class Next:
    """Bolt's `next` for a listener middleware: counts that the chain went on."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


def run_guard(deps: AppDeps, client: WebClient, step: str,
              body: Json) -> tuple[BoltResponse | None, Ack, Next]:
    ack, next_ = Ack(), Next()
    response = admin_only(step)(ack=ack, body=body, client=client, context=context_for(deps),
                                next=next_)
    return response, ack, next_


def test_admin_only_lets_an_admin_through_without_answering_or_auditing(
    deps: AppDeps, client: WebClient, slack_standin: SlackStandIn
) -> None:
    response, ack, next_ = run_guard(deps, client, "confirm", submission({
        "type": "modal", "callback_id": CALLBACK_CONFIRM, "private_metadata": "x" * 20}))

    assert (response, ack.response, next_.calls) == (None, None, 1)
    assert refusals(deps.sessions) == []
    assert slack_standin.calls() == []


RefusedCase = tuple[str, Callable[[], Json], Json, dict[str, str]]
REFUSED: dict[str, RefusedCase] = {
    "command": ("command", lambda: command("status", user=OUTSIDER),
                {"text": NOT_ALLOWED, "response_type": "ephemeral"}, {"subcommand": "status"}),
    "bare command": ("command", lambda: command(user=OUTSIDER),
                     {"text": NOT_ALLOWED, "response_type": "ephemeral"}, {"subcommand": "open"}),
    "options": ("options", lambda: options("alice", user=OUTSIDER), {"options": []}, {}),
    "form": ("submit", lambda: submission(
        submitted_view(reset_modal(CHANNEL), form_state("all")), user=OUTSIDER),
        {"response_action": "errors", "errors": {"scope": NOT_ALLOWED}}, {}),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_admin_only_refuses_an_outsider_in_the_ack_and_audits_the_step(
    deps: AppDeps, client: WebClient, slack_standin: SlackStandIn, case: str
) -> None:
    step, body, expected, detail = REFUSED[case]

    response, ack, next_ = run_guard(deps, client, step, body())

    assert next_.calls == 0
    assert response is ack.response, "returned, so Bolt tries no other listener"
    assert answer(ack) == expected
    [refused] = refusals(deps.sessions)
    assert refused.actor == OUTSIDER
    assert refused.detail == {"step": step, "reason": "not an admin", **detail}
    assert slack_standin.calls() == []


def test_admin_only_turns_a_refused_preview_into_a_notice(
    deps: AppDeps, client: WebClient
) -> None:
    preview = {"type": "modal", "callback_id": CALLBACK_CONFIRM, "private_metadata": "x" * 20}

    response, ack, next_ = run_guard(deps, client, "confirm", submission(preview, user=OUTSIDER))

    said = answer(ack)
    assert next_.calls == 0 and response is ack.response
    assert said["response_action"] == "update"
    assert said["view"]["title"]["text"] == NOT_ALLOWED_TITLE
    assert NOT_ALLOWED in json.dumps(said["view"])
    assert [r.detail["step"] for r in refusals(deps.sessions)] == ["confirm"]


def test_admin_only_acks_a_refused_button_then_says_why_ephemerally(
    deps: AppDeps, client: WebClient, slack_standin: SlackStandIn
) -> None:
    response, ack, next_ = run_guard(deps, client, ACTION_CANCEL,
                                     click(ACTION_CANCEL, "1", user=OUTSIDER))

    assert next_.calls == 0 and response is ack.response
    assert answer(ack) == {}
    assert [(e["user"], e["text"]) for e in slack_standin.ephemerals()] == [
        (OUTSIDER, NOT_ALLOWED)]
    assert [r.detail["step"] for r in refusals(deps.sessions)] == [ACTION_CANCEL]


def test_admin_only_refuses_the_home_button_with_a_notice_not_the_form(
    deps: AppDeps, client: WebClient, slack_standin: SlackStandIn
) -> None:
    response, ack, next_ = run_guard(deps, client, ACTION_OPEN_MODAL,
                                     click_in_home(ACTION_OPEN_MODAL, user=OUTSIDER))

    assert next_.calls == 0 and response is ack.response
    assert answer(ack) == {}
    [opened] = slack_standin.calls("views.open")
    assert opened.params["trigger_id"] == TRIGGER
    assert opened.params["view"]["title"]["text"] == NOT_ALLOWED_TITLE
    assert slack_standin.ephemerals() == []
    assert [r.detail["step"] for r in refusals(deps.sessions)] == [ACTION_OPEN_MODAL]


def test_admin_only_refuses_a_request_without_a_readable_user(
    deps: AppDeps, client: WebClient
) -> None:
    body = command()
    body["user_id"] = "not-a-slack-id"

    response, ack, next_ = run_guard(deps, client, "command", body)

    assert next_.calls == 0 and response is ack.response
    assert answer(ack)["text"] == NOT_ALLOWED
    assert [r.actor for r in refusals(deps.sessions)] == ["unknown"]
