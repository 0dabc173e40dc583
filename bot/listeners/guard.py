"""`admin_only(step)`: the one check of who may act, as a Bolt listener middleware.

It runs on every request, because a payload can be replayed by anyone who reaches the endpoint.
A refused request is audited (`refused`, with the step) and answered the way its kind can show
it, all here; a listener behind it only ever sees an admin.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from slack_bolt import Ack, BoltContext, BoltResponse
from slack_bolt.request.payload_utils import is_options, is_slash_command, is_view_submission
from slack_sdk import WebClient

from blocks.ids import ACTION_OPEN_MODAL, CALLBACK_RESET, SCOPE
from blocks.text import NOT_ALLOWED_TITLE
from blocks.views import notice_modal
from bot.auth import NOT_AN_ADMIN, Refusal
from bot.deps import AppDeps, deps_of
from bot.listeners.replies import show_notice, tell_where_possible
from bot.payloads import audited_subcommand, channel_of, first_action, user_id_of

ListenerMiddleware = Callable[..., BoltResponse | None]


def admin_only(step: str) -> ListenerMiddleware:
    """Let admins through to the listener; refuse, audit as `step` and answer anyone else."""

    def check_admin(ack: Ack, body: dict[str, Any], client: WebClient, context: BoltContext,
                    next: Callable[[], None]) -> BoltResponse | None:
        deps = deps_of(context)
        user = user_id_of(body)
        refusal = deps.admins.refusal(user) if user is not None else NOT_AN_ADMIN
        if refusal is None:
            next()
            return None
        deps.refuse(user, step, refusal.reason, **_refusal_detail(body))
        # Returned, not just acked: without a response Bolt would try the next listener.
        return _answer_refusal(deps, ack, body, client, user, refusal)

    return check_admin


def admitted_user(body: dict[str, Any]) -> str:
    """The actor of a request `admin_only` let through (it refuses requests without one)."""
    user = user_id_of(body)
    if user is None:
        raise PermissionError("a listener that needs an admin ran without admin_only")
    return user


def _refusal_detail(body: dict[str, Any]) -> dict[str, str]:
    """What the audit keeps besides the step: for the command, which subcommand was asked (a
    known one, or "unknown": a password typed there by mistake is never stored)."""
    if is_slash_command(body):
        return {"subcommand": audited_subcommand(body)}
    return {}


def _answer_refusal(deps: AppDeps, ack: Ack, body: dict[str, Any], client: WebClient,
                    user: str | None, refusal: Refusal) -> BoltResponse:
    said = refusal.message
    if is_slash_command(body):
        return ack(response_type="ephemeral", text=said)
    if is_options(body):
        # The directory is not for everyone to browse.
        return ack(options=[])
    if is_view_submission(body):
        if body["view"].get("callback_id") == CALLBACK_RESET:
            return ack(response_action="errors", errors={SCOPE: said})
        # The preview has no input to show an error on: it turns into a notice.
        return ack(response_action="update", view=notice_modal(NOT_ALLOWED_TITLE, said))
    # A button: the ack answers nothing, so the refusal is said after it.
    answer = ack()
    if first_action(body).get("action_id") == ACTION_OPEN_MODAL:
        # App Home's button has no channel to answer in.
        deps.later(show_notice, client, body.get("trigger_id"),
                   notice_modal(NOT_ALLOWED_TITLE, said))
    else:
        deps.later(tell_where_possible, client, channel_of(body), user, said)
    return answer
