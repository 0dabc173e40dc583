"""`/reset-passwords [help | status [ID]]`: ack at once; open the modal or answer ephemerally."""

from __future__ import annotations

import logging
from typing import Any

from slack_bolt import Ack, App
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError

from blocks.text import (
    COMMAND,
    NOT_ALLOWED,
    could_not_open_form,
    help_text,
    no_such_task,
    recent_status_text,
    task_status_text,
    unknown_subcommand,
)
from blocks.views import reset_modal
from bot.deps import AppDeps
from bot.payloads import channel_id, numeric_id, user_id_of
from core.progress import TaskSnapshot, snapshot
from core.tasks import recent_tasks

log = logging.getLogger("resetbot.slack")

STATUS_RECENT = 5


def register(app: App, deps: AppDeps) -> None:
    @app.command(COMMAND)
    def reset_passwords(ack: Ack, body: dict[str, Any], client: WebClient) -> None:
        words = str(body.get("text") or "").split()
        subcommand = words[0].lower() if words else ""
        user = user_id_of(body)
        if subcommand == "help":
            ack(response_type="ephemeral", text=help_text())
            return
        if not deps.admins.allows(user):
            deps.refuse(user, "command", subcommand=subcommand[:20] or "open")
            ack(response_type="ephemeral", text=NOT_ALLOWED)
            return
        if subcommand == "status":
            ack(response_type="ephemeral", text=status_answer(deps, words[1:2]))
            return
        if subcommand:
            ack(response_type="ephemeral", text=unknown_subcommand())
            return
        ack()
        deps.later(open_modal, client, body.get("trigger_id"), channel_id(body.get("channel_id")),
                   user)


def open_modal(client: WebClient, trigger_id: object, channel: str | None,
               user: str | None) -> None:
    """Open the reset form; if Slack refuses, tell the user where they typed the command."""
    if not isinstance(trigger_id, str) or not trigger_id:
        log.warning("no trigger_id to open the reset form with")
        return
    try:
        client.views_open(trigger_id=trigger_id, view=reset_modal(channel))
    except (SlackApiError, SlackClientError, OSError) as error:
        log.warning("views.open failed: %s", _slack_error(error))
        if channel and user:
            tell(client, channel, user, could_not_open_form())


def tell(client: WebClient, channel: str, user: str, text: str) -> None:
    """An ephemeral line for one user; failing to say it is logged, never raised."""
    try:
        client.chat_postEphemeral(channel=channel, user=user, text=text)
    except (SlackApiError, SlackClientError, OSError) as error:
        log.warning("chat.postEphemeral to %s failed: %s", channel, _slack_error(error))


def _slack_error(error: Exception) -> str:
    if isinstance(error, SlackApiError):
        return str(error.response.get("error"))
    return type(error).__name__


def status_answer(deps: AppDeps, arguments: list[str]) -> str:
    with deps.sessions() as session:
        if arguments:
            wanted = arguments[0].lstrip("#")
            number = numeric_id(wanted)
            task = snapshot(session, number) if number is not None else None
            return task_status_text(task) if task else no_such_task(arguments[0])
        tasks = [snapshot(session, t.id) for t in recent_tasks(session, STATUS_RECENT)]
        return recent_status_text([t for t in tasks if isinstance(t, TaskSnapshot)])
