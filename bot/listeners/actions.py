"""Buttons: Cancel and Retry failed on a task's parent message, New reset on App Home.

Each checks who pressed it (a button payload can be replayed by anyone), does the database work,
acks, then tells the user what happened in an ephemeral line.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

from slack_bolt import Ack, App
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError

from blocks.text import NOT_ALLOWED, cancel_requested, queue_unavailable, retry_started
from blocks.views import ACTION_OPEN_MODAL, ACTION_OPEN_THREAD, notice_modal
from bot.deps import AppDeps
from bot.listeners.command import open_modal, tell
from bot.payloads import channel_id, task_id, user_id_of, user_name_of
from core.errors import ConflictError, InputError, QueueUnavailable
from core.tasks import create_retry_task, request_cancel

log = logging.getLogger("resetbot.slack")

ACTION_CANCEL = "cancel_task"
ACTION_RETRY = "retry_failed"


def register(app: App, deps: AppDeps) -> None:
    @app.action(ACTION_CANCEL)
    def cancel(ack: Ack, body: dict[str, Any], client: WebClient) -> None:
        _answer_button(deps, ack, body, client, ACTION_CANCEL, _cancel)

    @app.action(ACTION_RETRY)
    def retry(ack: Ack, body: dict[str, Any], client: WebClient) -> None:
        _answer_button(deps, ack, body, client, ACTION_RETRY, _retry)

    @app.action(ACTION_OPEN_MODAL)
    def open_from_home(ack: Ack, body: dict[str, Any], client: WebClient) -> None:
        user = user_id_of(body)
        if user is None or not deps.admins.allows(user):
            deps.refuse(user, ACTION_OPEN_MODAL)
            ack()
            deps.later(_notice, client, body.get("trigger_id"), NOT_ALLOWED)
            return
        ack()
        # From App Home there is no channel: the task centre falls back to a DM.
        deps.later(open_modal, client, body.get("trigger_id"), None, user)

    @app.action(re.compile(f"^{ACTION_OPEN_THREAD}"))
    def open_thread(ack: Ack) -> None:
        # A link button: Slack opens the URL itself, but still wants its click acknowledged.
        ack()


ButtonWork = Callable[[AppDeps, str, dict[str, Any]], str]


def _answer_button(
    deps: AppDeps,
    ack: Ack,
    body: dict[str, Any],
    client: WebClient,
    action: str,
    work: ButtonWork,
) -> None:
    """Check who pressed, do the work, ack, then tell them the outcome in an ephemeral line."""
    user = user_id_of(body)
    if user is None or not deps.admins.allows(user):
        deps.refuse(user, action)
        answer = NOT_ALLOWED
    else:
        try:
            answer = work(deps, user, body)
        except (InputError, ConflictError) as refused:
            answer = str(refused)
    ack()
    deps.later(_tell, client, channel_of(body), user, answer)


def _cancel(deps: AppDeps, user: str, body: dict[str, Any]) -> str:
    wanted = task_id(first_action(body).get("value"))
    with deps.sessions() as session:
        request_cancel(session, wanted, user)
        session.commit()
    return cancel_requested(wanted)


def _retry(deps: AppDeps, user: str, body: dict[str, Any]) -> str:
    original = task_id(first_action(body).get("value"))
    with deps.sessions() as session:
        task = create_retry_task(session, original, user, user_name_of(body))
        session.commit()
        new_id, users = task.id, len(task.selection)
    try:
        deps.enqueue(new_id)
    except QueueUnavailable as error:
        log.error("could not enqueue task %s: %s", new_id, type(error).__name__)
        return queue_unavailable(new_id)
    return retry_started(new_id, original, users)


def register_fallback(app: App) -> None:
    @app.action(re.compile(".*"))
    def unknown_action(ack: Ack, body: dict[str, Any]) -> None:
        log.warning("button with unknown action_id %r",
                    str(first_action(body).get("action_id"))[:60])
        ack()


def first_action(body: dict[str, Any]) -> dict[str, Any]:
    actions = body.get("actions")
    first = actions[0] if isinstance(actions, list) and actions else None
    return first if isinstance(first, dict) else {}


def channel_of(body: dict[str, Any]) -> str | None:
    channel = body.get("channel")
    if isinstance(channel, dict):
        return channel_id(channel.get("id"))
    container = body.get("container")
    if isinstance(container, dict):
        return channel_id(container.get("channel_id"))
    return None


def _tell(client: WebClient, channel: str | None, user: str | None, text: str) -> None:
    if channel and user:
        tell(client, channel, user, text)
    else:
        log.info("no channel to answer %s in", user)


def _notice(client: WebClient, trigger_id: object, text: str) -> None:
    if not isinstance(trigger_id, str) or not trigger_id:
        return
    try:
        client.views_open(trigger_id=trigger_id, view=notice_modal("Not allowed", text))
    except (SlackApiError, SlackClientError, OSError) as error:
        log.warning("views.open for a notice failed: %s", type(error).__name__)
