"""Slack listeners: thin (parse, ack, act), module-level functions as in Bolt's samples.

Each module registers its own on an App; they read their dependencies from Bolt's context
(`bot.deps.deps_of`), and the ones for admins only sit behind `guard.admin_only`.
"""

from __future__ import annotations

from slack_bolt import App

from bot.listeners import actions, command, home, lists, options, submissions


def register_all(app: App) -> None:
    command.register(app)
    options.register(app)
    submissions.register(app)
    actions.register(app)
    home.register(app)
    lists.register(app)
    # Last, so they only see what nothing above claimed.
    submissions.register_fallback(app)
    actions.register_fallback(app)
    options.register_fallback(app)
