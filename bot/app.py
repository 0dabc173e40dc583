"""The Bolt app factory: nothing is built at import time, everything comes from Settings."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from rq import Queue
from slack_bolt import App
from slack_bolt.error import BoltError
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from sqlalchemy.orm import Session, sessionmaker

from bot.auth import Admins, Approvers
from bot.deps import AppDeps, provide
from bot.listeners import register_all
from bot.workspace import Workspace, only_this_workspace
from core.directory.picker import CopyCounts, attach_search_copy
from core.directory.protocol import Directory
from core.directory.sql import SqlDirectory
from core.errors import ConfigError
from core.settings import Settings
from jobs.queueing import enqueue_task
from jobs.slack_reporter import announce

#: Threads for work after an ack (opening a modal, ephemeral feedback, publishing App Home).
BACKGROUND_THREADS = 8
P = ParamSpec("P")
T = TypeVar("T")

# Texts naming where to find credentials (none of them holds one).
MISSING_BOT_CREDENTIAL = (
    "SLACK_BOT_TOKEN is not set: copy the Bot User OAuth Token (xoxb-...) from "
    "api.slack.com/apps → your app → OAuth & Permissions"
)
MISSING_SIGNING_KEY = (
    "SLACK_SIGNING_SECRET is not set: copy the Signing Secret from api.slack.com/apps → "
    "your app → Basic Information → App Credentials (or set SLACK_APP_TOKEN for Socket Mode)"
)
BAD_APP_LEVEL_KEY = (
    "SLACK_APP_TOKEN must be an app-level token (xapp-...): create one with the "
    "connections:write scope at api.slack.com/apps → your app → Basic Information → "
    "App-Level Tokens"
)


class InlineExecutor(Executor):
    """Runs a listener in the request's own thread.

    Bolt otherwise hands each listener to a pool and polls for its ack every 10 ms, which is
    most of an options answer's time. resetbot's listeners do their work, ack, and pass what
    follows the ack to `AppDeps.later`, so running them inline costs the ack nothing.
    """

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        future: Future[T] = Future()
        future.set_result(fn(*args, **kwargs))
        return future


def check_slack_settings(settings: Settings) -> None:
    """Raise ConfigError naming the first missing or wrong Slack credential."""
    if not settings.slack_bot_token:
        raise ConfigError(MISSING_BOT_CREDENTIAL)
    if settings.slack_app_token:
        if not settings.slack_app_token.startswith("xapp-"):
            raise ConfigError(BAD_APP_LEVEL_KEY)
    elif not settings.slack_signing_secret:
        raise ConfigError(MISSING_SIGNING_KEY)


def make_client(settings: Settings) -> WebClient:
    check_slack_settings(settings)
    return WebClient(token=settings.slack_bot_token, base_url=settings.slack_api_url)


def create_app(
    settings: Settings,
    *,
    sessions: sessionmaker[Session],
    directory: Directory,
    queue: Queue,
    client: WebClient | None = None,
    enqueue: Callable[[int], None] | None = None,
    token_verification: bool = True,
) -> App:
    """A Bolt App with every resetbot listener, talking to the Web API at SLACK_API_URL.

    auth.test is called now, so a wrong token fails at start, not at the first click; it names
    the only workspace (team, enterprise, app) whose requests are served. `token_verification`:
    Bolt checks the token at start too. A directory resetbot does not own gets the picker's
    search copy, read now.
    """
    check_slack_settings(settings)
    client = client if client is not None else make_client(settings)
    admins = Admins(settings, client)
    admins.warn_if_nobody()
    search_copy = attach_search_copy(settings, directory)
    if search_copy is not None:
        # Read once at start, so the first search does not wait; a failure is logged and
        # retried by the searches (until then the picker says search is not available).
        search_copy.reload()
    deps = AppDeps(
        settings=settings,
        sessions=sessions,
        directory=directory,
        admins=admins,
        enqueue=enqueue if enqueue is not None else (lambda task_id: enqueue_task(queue, task_id)),
        background=ThreadPoolExecutor(max_workers=BACKGROUND_THREADS,
                                      thread_name_prefix="resetbot-after-ack"),
        approvers=Approvers(settings, client, admins),
        # A worker posts or updates the thread, as for every other report of a task.
        announce=lambda task_id: announce(queue, task_id),
        search_copy=search_copy,
        counts=None if search_copy is None else CopyCounts(
            search_copy, directory.sql if isinstance(directory, SqlDirectory) else None),
    )
    try:
        # The workspace the token belongs to: every request must come from it.
        workspace = Workspace.of(client)
        app = App(
            client=client,
            # Socket Mode needs no signing secret; HTTP mode was checked to have one above.
            signing_secret=settings.slack_signing_secret or "",
            request_verification_enabled=True,
            token_verification_enabled=token_verification,
            logger=logging.getLogger("resetbot.bolt"),
            name="resetbot",
            listener_executor=InlineExecutor(),
        )
    except (BoltError, SlackApiError, ValueError) as error:
        said = error.response.get("error") if isinstance(error, SlackApiError) else error
        raise ConfigError(
            f"SLACK_BOT_TOKEN was not accepted by the Slack API at {settings.slack_api_url} "
            f"({said}): check it at api.slack.com/apps → your app → OAuth & Permissions"
        ) from None
    except OSError as error:
        raise ConfigError(
            f"Cannot reach the Slack API at {settings.slack_api_url} to check SLACK_BOT_TOKEN "
            f"({type(error).__name__}): check SLACK_API_URL and the network"
        ) from None
    app.use(only_this_workspace(workspace))  # first: nothing of resetbot runs for others
    app.use(provide(deps))
    register_all(app)
    return app
