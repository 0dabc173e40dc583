"""Slack listeners: thin (parse, ack, act). Each module registers its own on an App."""

from __future__ import annotations

from slack_bolt import App

from bot.deps import AppDeps
from bot.listeners import actions, command, home, options, submissions


def register_all(app: App, deps: AppDeps) -> None:
    command.register(app, deps)
    options.register(app, deps)
    submissions.register(app, deps)
    actions.register(app, deps)
    home.register(app, deps)
    # Last, so they only see what nothing above claimed.
    submissions.register_fallback(app)
    actions.register_fallback(app)
    options.register_fallback(app)
