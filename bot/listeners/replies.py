"""What listeners say after the ack: the reset form, ephemeral lines, notice modals.

These run in the background (`AppDeps.later`), so a Slack or network failure is logged, never
raised: nobody is left waiting on it.
"""

from __future__ import annotations

import logging

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError

from blocks.text import could_not_open_form
from blocks.views import View, reset_modal

log = logging.getLogger("resetbot.slack")


def open_modal(client: WebClient, trigger_id: object, channel: str | None,
               user: str | None) -> None:
    """Open the reset form; if Slack refuses, tell the user where they typed the command."""
    if not isinstance(trigger_id, str) or not trigger_id:
        log.warning("no trigger_id to open the reset form with")
        return
    try:
        client.views_open(trigger_id=trigger_id, view=reset_modal(channel))
    except (SlackClientError, OSError) as error:
        log.warning("views.open failed: %s", _slack_error(error))
        if channel and user:
            tell(client, channel, user, could_not_open_form())


def tell(client: WebClient, channel: str, user: str, text: str) -> None:
    """An ephemeral line for one user; failing to say it is logged, never raised."""
    try:
        client.chat_postEphemeral(channel=channel, user=user, text=text)
    except (SlackClientError, OSError) as error:
        log.warning("chat.postEphemeral to %s failed: %s", channel, _slack_error(error))


def tell_where_possible(client: WebClient, channel: str | None, user: str | None,
                        text: str) -> None:
    """`tell`, when the request named both a channel and a user to tell."""
    if channel and user:
        tell(client, channel, user, text)
    else:
        log.info("no channel to answer %s in", user)


def show_notice(client: WebClient, trigger_id: object, notice: View) -> None:
    """Open a notice modal (where there is no channel to answer in, as on App Home)."""
    if not isinstance(trigger_id, str) or not trigger_id:
        return
    try:
        client.views_open(trigger_id=trigger_id, view=notice)
    except (SlackClientError, OSError) as error:
        log.warning("views.open for a notice failed: %s", type(error).__name__)


def _slack_error(error: Exception) -> str:
    """Slack's error code when Slack answered, else what kind of failure it was."""
    if isinstance(error, SlackApiError):
        return str(error.response.get("error"))
    return type(error).__name__
