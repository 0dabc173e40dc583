"""`/reset-passwords [help | status [ID]]`: ack at once; open the modal or answer ephemerally.

`help` is for anyone; everything else is for admins only.
"""

from __future__ import annotations

from typing import Any

from slack_bolt import Ack, App, BoltContext
from slack_sdk import WebClient

from blocks.text import (
    COMMAND,
    help_text,
    no_such_task,
    recent_status_text,
    task_status_text,
    unknown_subcommand,
)
from bot.deps import AppDeps, deps_of
from bot.listeners.guard import admin_only, admitted_user
from bot.listeners.replies import open_modal
from bot.payloads import channel_id, command_words, numeric_id, subcommand_of
from core.progress import TaskSnapshot, snapshot
from core.tasks import scheduled_first

STATUS_RECENT = 5


def register(app: App) -> None:
    # `help` first: the listener behind admin_only never sees it.
    app.command(COMMAND, matchers=[asks_for_help])(answer_help)
    app.command(COMMAND, middleware=[admin_only("command")])(reset_passwords)


def asks_for_help(body: dict[str, Any]) -> bool:
    return subcommand_of(body) == "help"


def answer_help(ack: Ack) -> None:
    ack(response_type="ephemeral", text=help_text())


def reset_passwords(ack: Ack, body: dict[str, Any], client: WebClient,
                    context: BoltContext) -> None:
    deps = deps_of(context)
    subcommand = subcommand_of(body)
    if subcommand == "status":
        ack(response_type="ephemeral", text=status_answer(deps, command_words(body)[1:2]))
        return
    if subcommand:
        ack(response_type="ephemeral", text=unknown_subcommand())
        return
    user = admitted_user(body)
    ack()
    deps.freshen_search()
    deps.later(open_modal, client, body.get("trigger_id"), channel_id(body.get("channel_id")),
               user)


def status_answer(deps: AppDeps, arguments: list[str]) -> str:
    with deps.sessions() as session:
        if arguments:
            wanted = arguments[0].lstrip("#")
            number = numeric_id(wanted)
            task = snapshot(session, number) if number is not None else None
            return task_status_text(task) if task else no_such_task(arguments[0])
        tasks = [snapshot(session, t.id) for t in scheduled_first(session, STATUS_RECENT)]
        return recent_status_text([t for t in tasks if isinstance(t, TaskSnapshot)])
