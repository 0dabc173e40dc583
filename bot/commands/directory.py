"""`resetbot directory check`: what resetbot sees of the users (bot/directory_cli.py)."""

from __future__ import annotations

import argparse

from bot.commands.context import Cli
from bot.commands.parsing import Subparsers, add_command
from bot.terminal import EXIT_OK

DIRECTORY_EPILOG = """\
examples:
  resetbot directory check
  resetbot directory check --json
  DIRECTORY_URL=mysql+pymysql://resetbot:PASS@db/koha DIRECTORY_PROFILE=koha \\
    resetbot directory check"""


def add_parser(commands: Subparsers) -> None:
    directory = add_command(commands, "directory",
                            "what resetbot sees of the users: `resetbot directory check`",
                            epilog=DIRECTORY_EPILOG)
    actions = directory.add_subparsers(dest="directory_command", required=True,
                                       metavar="ACTION", title="actions")
    check = add_command(
        actions, "check", "what resetbot sees in the directory; changes nothing",
        prog="resetbot directory check", epilog=DIRECTORY_EPILOG,
        description="Read-only: the profile, the database (password hidden), the table, how "
                    "many users, staff and users without e-mail, and the password hash "
                    "formats the table holds, with a warning when a reset would write another "
                    "one. Run it before the first reset on a library system's database.",
    )
    check.add_argument("--json", action="store_true", help="the same, machine-readable")
    check.set_defaults(handler=cmd_directory_check)


def cmd_directory_check(cli: Cli, args: argparse.Namespace) -> int:
    from bot.directory_cli import check_directory

    check_directory(cli, cli.settings(), as_json=args.json)
    return EXIT_OK
