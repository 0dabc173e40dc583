"""The `resetbot` command: database, directory CSV, workers, resets, tasks, audit, serve, demo.

This module builds the top-level parser from the command groups in `bot/commands/` (each
group's parser sits beside the function it dispatches to) and runs the chosen one. Settings are
read once per command, from the environment and `.env`, and passed down. Errors meant for
people end as one line on stderr: exit 2 for configuration, 1 for refused input or an
unreachable service; never a traceback for those.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from bot.commands import audit, db, demo, directory, mail, reset, serve, tasks, users, worker
from bot.commands.context import Cli, first_line
from bot.commands.parsing import Handler, new_parser
from bot.terminal import (
    EXIT_CONFIG,
    EXIT_INTERRUPTED,
    EXIT_NOT_COMPLETED,
    EXIT_OK,
    EXIT_PIPE_CLOSED,
    EXIT_REFUSED,
    EXIT_USAGE,
    EXIT_WITH_ERRORS,
    UsageError,
)
from core.errors import ConfigError, ResetbotError

if TYPE_CHECKING:
    from redis.exceptions import RedisError
    from sqlalchemy.exc import OperationalError

__all__ = [  # the exit codes are part of the command's interface; tests and scripts import them
    "EXIT_CONFIG", "EXIT_INTERRUPTED", "EXIT_NOT_COMPLETED", "EXIT_OK", "EXIT_PIPE_CLOSED",
    "EXIT_REFUSED", "EXIT_USAGE", "EXIT_WITH_ERRORS", "main",
]


# -- entry point --------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run one command; `environ` replaces os.environ and `.env` (tests, the demo's children)."""
    cli = Cli(environ=environ, out=sys.stdout, err=sys.stderr)
    try:
        try:
            return run_command(cli, argv)
        finally:
            # A reader that went away (`| head`) shows here at the latest, not at exit.
            sys.stdout.flush()
    except BrokenPipeError:
        _discard_stdout()
        return EXIT_PIPE_CLOSED


def run_command(cli: Cli, argv: Sequence[str] | None) -> int:
    """Parse and run; every error meant for people becomes one line and an exit code."""
    try:
        try:
            args = build_parser().parse_args(argv)
        except ShowVersion:
            return show_version(cli)
        handler: Handler = args.handler
        return handler(cli, args)
    except UsageError as error:
        cli.fail(str(error))
        return EXIT_USAGE
    except ConfigError as error:
        cli.fail(str(error))
        return EXIT_CONFIG
    except ResetbotError as error:
        cli.fail(str(error))
        return EXIT_REFUSED
    except _database_errors() as error:
        cli.fail(f"the database cannot be reached or used: {first_line(error.orig)}")
        return EXIT_REFUSED
    except _redis_errors() as error:
        cli.fail(f"Redis cannot be reached: {first_line(error)}")
        return EXIT_REFUSED
    except BrokenPipeError:
        raise  # not a file problem: the reader of the output went away (see main)
    except OSError as error:  # a file that cannot be read or written
        cli.fail(f"{error.strerror or error}: {error.filename}" if error.filename else str(error))
        return EXIT_REFUSED
    except KeyboardInterrupt:
        cli.fail("interrupted")
        return EXIT_INTERRUPTED


# SQLAlchemy and Redis are imported by the commands that use them, not at start (`--help`
# would wait for them): an `except` clause is evaluated only when an error passes it, and by
# then whatever could raise one of theirs has loaded its library.


def _database_errors() -> tuple[type[OperationalError], ...]:
    if "sqlalchemy" not in sys.modules:
        return ()
    from sqlalchemy.exc import OperationalError

    return (OperationalError,)


def _redis_errors() -> tuple[type[RedisError], ...]:
    if "redis" not in sys.modules:
        return ()
    from redis.exceptions import RedisError

    return (RedisError,)


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so the flush at exit does not complain about the pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no file descriptor behind stdout (tests' StringIO)
        pass


# -- the parser ---------------------------------------------------------------------------------

# Help texts: a line that starts with a space is kept as written (examples, tables, each
# within 78 columns); any other line is prose, wrapped to the screen.
MAIN_DESCRIPTION = (
    "Reset the passwords of many library users at once, from this terminal or from Slack "
    "(`resetbot serve`). Every reset shows a preview first and is recorded in the audit trail."
)

MAIN_EPILOG = """\
examples:
  resetbot demo                         try it on sample users first
  resetbot db upgrade                   prepare the database (once per release)
  resetbot users import users.csv       load or update your users
  resetbot reset --scope selected_only --user alice,bob
  resetbot tasks show 12 --csv > to-contact.csv

Settings come from the environment or a .env file in this folder (see docs/configuration.md). \
`resetbot COMMAND --help` explains each command.

exit codes: 0 done; 1 refused or a service unreachable (nothing changed); 2 bad settings or \
arguments; 3 the reset ended with mails that never got through; 4 it failed or was cancelled; \
130 interrupted; 141 whoever read the output stopped early (as `| head` does)."""


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser(
        argparse.ArgumentParser, prog="resetbot", description=MAIN_DESCRIPTION,
        epilog=MAIN_EPILOG,
    )
    parser.add_argument("--version", action=VersionAction,
                        help="resetbot's version, and which Redis it uses (REDIS_URL, or the "
                             "embedded one's redis-server and its version)")
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", title="commands"
    )
    # In the order `resetbot --help` lists them.
    db.add_parser(commands)
    users.add_parser(commands)
    directory.add_parser(commands)
    reset.add_parser(commands)
    tasks.add_parser(commands)
    mail.add_parser(commands)
    audit.add_parser(commands)
    worker.add_parser(commands)
    serve.add_parser(commands)
    demo.add_parser(commands)
    return parser


class ShowVersion(Exception):
    """`--version` was given: shown instead of running a command."""


class VersionAction(argparse.Action):
    """`--version` alone, no command needed (argparse's own version action cannot read the
    settings, which say which Redis is used)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        raise ShowVersion


def show_version(cli: Cli) -> int:
    from importlib.metadata import version

    from jobs.connection import redis_in_use

    cli.say(f"resetbot {version('resetbot')}")
    cli.say(f"Redis: {redis_in_use(cli.settings())}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
