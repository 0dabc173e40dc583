"""App Home: requests awaiting approval (with the thread's Approve, Reject and Send me the list),
then recent tasks with status, progress, requester and a link to each thread."""

from __future__ import annotations

import logging
from typing import Any

from slack_bolt import App, BoltContext
from slack_sdk import WebClient
from slack_sdk.errors import SlackClientError

from blocks.views import HOME_TASKS, home_view
from bot.deps import AppDeps, deps_of
from bot.payloads import user_id_of
from core.progress import TaskSnapshot, snapshot
from core.tasks import scheduled_first

log = logging.getLogger("resetbot.slack")


def register(app: App) -> None:
    app.event("app_home_opened")(home_opened)


def home_opened(event: dict[str, Any], client: WebClient, context: BoltContext) -> None:
    # Bolt has acked the event already; the tab is built and published after that.
    if event.get("tab", "home") != "home":
        return
    user = user_id_of(event)
    if user is not None:
        deps = deps_of(context)
        deps.later(publish_home, deps, client, user)


def from_home(body: dict[str, Any]) -> bool:
    """A button clicked on App Home (not in a message or a modal)."""
    container = body.get("container")
    view = body.get("view")
    return (isinstance(container, dict) and container.get("type") == "view"
            and isinstance(view, dict) and view.get("type") == "home")


def publish_home(deps: AppDeps, client: WebClient, user: str) -> None:
    # Not admin_only: everyone may open the tab; a non-admin sees why it holds no tasks.
    allowed = deps.admins.allows(user)
    tasks = recent_snapshots(deps) if allowed else []
    try:
        client.views_publish(user_id=user, view=home_view(tasks, allowed=allowed))
    except (SlackClientError, OSError) as error:
        log.warning("views.publish for %s failed: %s", user, type(error).__name__)


def recent_snapshots(deps: AppDeps) -> list[TaskSnapshot]:
    with deps.sessions() as session:
        found = (snapshot(session, task.id) for task in scheduled_first(session, HOME_TASKS))
        return [task for task in found if task is not None]
