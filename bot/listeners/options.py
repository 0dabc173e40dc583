"""Options load for the user picker: a directory search, answered fast, at most 100 options."""

from __future__ import annotations

import re
from typing import Any

from slack_bolt import Ack, App, BoltContext

from blocks.ids import USERS
from blocks.text import SEARCH_UNAVAILABLE_OPTION
from blocks.views import MAX_OPTIONS, user_options
from bot.deps import deps_of
from bot.listeners.guard import admin_only
from core.search_copy import SearchUnavailable

SEARCH_TERM_LIMIT = 100
#: The value of the one option shown when search is not available: not a directory id.
SEARCH_UNAVAILABLE_VALUE = "search-unavailable"


def register(app: App) -> None:
    app.options(USERS, middleware=[admin_only("options")])(search_users)


def register_fallback(app: App) -> None:
    app.options(re.compile(".*"))(no_options)


def search_users(ack: Ack, body: dict[str, Any], context: BoltContext) -> None:
    deps = deps_of(context)
    term = body.get("value")
    term = term[:SEARCH_TERM_LIMIT] if isinstance(term, str) else ""
    try:
        found = deps.directory.search(term, limit=MAX_OPTIONS)
    except SearchUnavailable:
        # The directory's copy could not be read yet: say so in the list itself (the only
        # place an options answer can speak); its value is no user, so picking it is refused.
        ack(options=[unavailable_option()])
        return
    ack(options=user_options(found))


def unavailable_option() -> dict[str, Any]:
    return {"text": {"type": "plain_text", "text": SEARCH_UNAVAILABLE_OPTION},
            "value": SEARCH_UNAVAILABLE_VALUE}


def no_options(ack: Ack) -> None:
    ack(options=[])
