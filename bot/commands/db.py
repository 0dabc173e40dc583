"""`resetbot db upgrade`: create or update the database schema (core/migrate.py)."""

from __future__ import annotations

import argparse

from bot.commands.context import Cli, open_engine, shown_url
from bot.commands.parsing import Subparsers, add_command
from bot.terminal import EXIT_OK


def add_parser(commands: Subparsers) -> None:
    db = add_command(commands, "db", "the database schema: `resetbot db upgrade`")
    actions = db.add_subparsers(dest="db_command", required=True, metavar="ACTION",
                                title="actions")
    upgrade = add_command(actions, "upgrade",
                          "create or update the schema (safe to run again; once per release)")
    upgrade.set_defaults(handler=cmd_db_upgrade)


def cmd_db_upgrade(cli: Cli, args: argparse.Namespace) -> int:
    from core.migrate import upgrade

    settings = cli.settings()
    open_engine(settings).dispose()  # a bad URL is a configuration error, said as such
    revision = upgrade(settings)
    cli.say(f"Database {shown_url(settings.database_url)} is at revision {revision}.")
    return EXIT_OK
