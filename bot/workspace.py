"""The one workspace resetbot serves: requests from any other team, enterprise or app are
refused before a listener runs, so a second install of the app can never read this directory.

The workspace is what `auth.test` says the bot token belongs to, read once at start. Slack signs
every request of an app with that app's signing secret (or sends it over that app's Socket Mode
connection), so a request reaching here is this app's; but one app can be installed in several
workspaces, and each would then send requests here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from slack_bolt import BoltContext, BoltResponse
from slack_sdk import WebClient

from core.controls import visible

log = logging.getLogger("resetbot.slack")

#: The answer to a request from elsewhere: says nothing about this workspace.
FOREIGN_ANSWER = '{"error": "this app does not serve your workspace"}'


@dataclass(frozen=True)
class Workspace:
    team_id: str
    enterprise_id: str | None = None
    #: The app's id when auth.test names it; otherwise the signature already ties a request to
    #: this app (each app has its own signing secret and app-level token).
    app_id: str | None = None

    @classmethod
    def of(cls, client: WebClient) -> Workspace:
        """The bot token's workspace (auth.test); Slack's and the network's errors go up."""
        answer = client.auth_test()
        team_id = answer.get("team_id")
        if not isinstance(team_id, str) or not team_id:
            raise ValueError("auth.test named no team")
        return cls(team_id, _text(answer.get("enterprise_id")), _text(answer.get("app_id")))

    def foreign(self, team_id: str | None, enterprise_id: str | None,
                app_id: str | None) -> str | None:
        """What in a request names another workspace or app (None: it is from this one)."""
        if team_id != self.team_id:
            return f"team {team_id or 'none'}"
        if enterprise_id is not None and enterprise_id != self.enterprise_id:
            return f"enterprise {enterprise_id}"
        if self.app_id is not None and app_id is not None and app_id != self.app_id:
            return f"app {app_id}"
        return None


def only_this_workspace(
    workspace: Workspace,
) -> Callable[[BoltContext, dict[str, Any], Callable[[], None]], BoltResponse | None]:
    """A global Bolt middleware, first of resetbot's: a request from elsewhere gets 403 and
    no listener runs (nothing is read, nothing audited: a stranger could fill the trail)."""

    def from_this_workspace(
        context: BoltContext, body: dict[str, Any], next: Callable[[], None]
    ) -> BoltResponse | None:
        app_id = body.get("api_app_id") if isinstance(body, dict) else None
        elsewhere = workspace.foreign(context.team_id, context.enterprise_id,
                                      app_id if isinstance(app_id, str) else None)
        if elsewhere is None:
            next()
            return None
        log.warning("refused a request from another workspace or app (%s; this is team %s)",
                    visible(elsewhere[:80]), workspace.team_id)
        return BoltResponse(status=403, body=FOREIGN_ANSWER,
                            headers={"content-type": "application/json; charset=utf-8"})

    return from_this_workspace


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
