"""Send me the list: the CSV of everyone a reset would reset, to the clicker by direct message.

On the preview (the request is the view's own, its requester's only) and on a request awaiting
approval (its requester, or anyone who may approve it). Never into a channel: the file is shared
only in the DM between the bot and the clicker. Each list sent is audited, each refusal too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from slack_bolt import Ack, App, BoltContext
from slack_sdk import WebClient
from slack_sdk.errors import SlackClientError
from sqlalchemy import select

from blocks.ids import ACTION_SEND_LIST, SEND_LIST_OF_PREVIEW
from blocks.text import (
    LIST_NOT_YOURS,
    LIST_PREVIEW_GONE,
    UNUSED_LINES_TITLE,
    list_comment,
    list_sent,
    list_title,
    unused_lines_comment,
)
from bot.deps import AppDeps, deps_of
from bot.listeners.guard import admin_only, admitted_user
from bot.listeners.replies import tell_where_possible
from bot.payloads import channel_of, first_action, pending_id, task_id
from core import audit
from core.directory.ids import user_ids
from core.errors import ConflictError, InputError
from core.models import Mode, NoEmailChoice, PendingRequest, ResetTask, Scope, TaskStatus, utcnow
from core.reset_list import (
    reset_list,
    reset_list_csv,
    reset_list_filename,
    unused_lines_csv,
    unused_lines_filename,
)

log = logging.getLogger("resetbot.slack")

#: A request's list is offered while it has not started.
LISTABLE = frozenset({TaskStatus.AWAITING_APPROVAL, TaskStatus.SCHEDULED})


def register(app: App) -> None:
    app.action(ACTION_SEND_LIST, middleware=[admin_only(ACTION_SEND_LIST)])(send_list)


@dataclass(frozen=True)
class WantedList:
    """Which reset's list, as the task would be planned: scope, picks, mode, the no-e-mail
    choice; `label` names the file ("7" for task #7, "preview"). `unused_lines`: a preview
    (or a request) made from a file of users: its lines that named nobody or several users."""

    label: str
    task_id: int | None
    scope: Scope
    selection: tuple[str, ...]
    mode: Mode
    no_email: NoEmailChoice
    skip_locked: bool = False
    unused_lines: tuple[dict[str, Any], ...] = ()


def send_list(ack: Ack, body: dict[str, Any], client: WebClient, context: BoltContext) -> None:
    deps = deps_of(context)
    user = admitted_user(body)
    try:
        wanted = wanted_list(deps, user, body)
    except (InputError, ConflictError) as refused:
        ack()
        deps.later(tell_where_possible, client, channel_of(body), user, str(refused))
        return
    ack()
    deps.later(deliver_list, deps, client, user, wanted, channel_of(body))


def wanted_list(deps: AppDeps, user: str, body: dict[str, Any]) -> WantedList:
    """The list the button asks for, once `user` may have it (refusals audited)."""
    value = first_action(body).get("value")
    if value == SEND_LIST_OF_PREVIEW:
        view = body.get("view") or {}
        return _preview_list(deps, user, pending_id(view.get("private_metadata")))
    return _task_list(deps, user, task_id(value))


def _preview_list(deps: AppDeps, user: str, waiting: str | None) -> WantedList:
    with deps.sessions() as session:
        pending = session.get(PendingRequest, waiting) if waiting else None
        usable = (pending is not None and pending.task_id is None
                  and pending.expires_at > utcnow())
        if pending is None or not usable:
            deps.refuse(user, ACTION_SEND_LIST, "no waiting preview")
            raise ConflictError(LIST_PREVIEW_GONE)
        if pending.requester != user:
            deps.refuse(user, ACTION_SEND_LIST, "not their preview")
            raise ConflictError(LIST_NOT_YOURS)
        return WantedList(
            label="preview", task_id=None, scope=Scope(pending.scope),
            selection=user_ids(pending.selection),
            mode=Mode.DEFAULT if pending.default_password_sealed else Mode.GENERATED,
            no_email=NoEmailChoice(pending.no_email),
            skip_locked=bool(pending.skip_locked),
            unused_lines=tuple((pending.file_report or {}).get("unmatched") or ()),
        )


def _task_list(deps: AppDeps, user: str, wanted: int) -> WantedList:
    with deps.sessions() as session:
        task = session.get(ResetTask, wanted)
        if task is None or TaskStatus(task.status) not in LISTABLE:
            deps.refuse(user, ACTION_SEND_LIST, "not a waiting request", task_id=wanted)
            raise ConflictError(LIST_PREVIEW_GONE)
        requester = task.requester
        # A request made from a file: its preview kept the lines not used.
        report = session.scalar(select(PendingRequest.file_report)
                                .where(PendingRequest.task_id == task.id))
        found = WantedList(
            label=str(task.id), task_id=task.id, scope=Scope(task.scope),
            selection=user_ids(task.selection), mode=Mode(task.mode),
            no_email=NoEmailChoice(task.no_email), skip_locked=bool(task.skip_locked),
            unused_lines=tuple((report or {}).get("unmatched") or ()),
        )
    refusal = deps.approval_refusal(user) if user != requester else None
    if refusal is not None:
        deps.refuse(user, ACTION_SEND_LIST, refusal.reason, task_id=wanted)
        raise ConflictError(refusal.message)
    return found


def deliver_list(deps: AppDeps, client: WebClient, user: str, wanted: WantedList,
                 channel: str | None) -> None:
    """Make the CSV from the scope's stream and share it in the DM with `user` only."""
    rows = 0

    def counted() -> Any:
        nonlocal rows
        for row in reset_list(deps.directory, wanted.scope, wanted.selection, wanted.mode,
                              wanted.no_email, skip_locked=wanted.skip_locked):
            rows += 1
            yield row

    content = reset_list_csv(counted())
    try:
        dm = str(client.conversations_open(users=user)["channel"]["id"])
        client.files_upload_v2(
            channel=dm, filename=reset_list_filename(wanted.label),
            title=list_title(wanted.task_id), initial_comment=list_comment(rows),
            content=content,
        )
        if wanted.unused_lines:
            client.files_upload_v2(
                channel=dm, filename=unused_lines_filename(wanted.label),
                title=UNUSED_LINES_TITLE,
                initial_comment=unused_lines_comment(len(wanted.unused_lines)),
                content=unused_lines_csv(wanted.unused_lines),
            )
    except (SlackClientError, OSError) as error:
        log.warning("the list for %s could not be sent: %s", user, type(error).__name__)
        return
    with deps.sessions() as session:
        audit.record(session, user, "send_list", wanted.task_id, scope=wanted.scope.value,
                     users=rows, unused_lines=len(wanted.unused_lines))
        session.commit()
    if channel:
        tell_where_possible(client, channel, user, list_sent(rows))
