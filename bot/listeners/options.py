"""Options load for the user picker: a directory search, answered fast, at most 100 options."""

from __future__ import annotations

import re
from typing import Any

from slack_bolt import Ack, App, BoltContext

from blocks.ids import USERS
from blocks.views import MAX_OPTIONS, user_options
from bot.deps import deps_of
from bot.listeners.guard import admin_only

SEARCH_TERM_LIMIT = 100


def register(app: App) -> None:
    app.options(USERS, middleware=[admin_only("options")])(search_users)


def register_fallback(app: App) -> None:
    app.options(re.compile(".*"))(no_options)


def search_users(ack: Ack, body: dict[str, Any], context: BoltContext) -> None:
    deps = deps_of(context)
    term = body.get("value")
    term = term[:SEARCH_TERM_LIMIT] if isinstance(term, str) else ""
    found = deps.directory.search(term, limit=MAX_OPTIONS)
    ack(options=user_options(found))


def no_options(ack: Ack) -> None:
    ack(options=[])
