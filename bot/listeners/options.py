"""Options load for the user picker: a directory search, answered fast, at most 100 options."""

from __future__ import annotations

import re
from typing import Any

from slack_bolt import Ack, App

from blocks.views import MAX_OPTIONS, USERS, user_options
from bot.deps import AppDeps
from bot.payloads import user_id_of

SEARCH_TERM_LIMIT = 100


def register(app: App, deps: AppDeps) -> None:
    @app.options(USERS)
    def search_users(ack: Ack, body: dict[str, Any]) -> None:
        user = user_id_of(body)
        if not deps.admins.allows(user):
            # The directory is not for everyone to browse.
            deps.refuse(user, "options")
            ack(options=[])
            return
        term = body.get("value")
        term = term[:SEARCH_TERM_LIMIT] if isinstance(term, str) else ""
        with deps.sessions() as session:
            found = deps.directory.search(session, term, limit=MAX_OPTIONS)
        ack(options=user_options(found))


def register_fallback(app: App) -> None:
    @app.options(re.compile(".*"))
    def no_options(ack: Ack) -> None:
        ack(options=[])
