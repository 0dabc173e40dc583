"""The `resetbot` command: database, directory CSV, workers, resets, tasks, audit, serve, demo.

Settings are read once here (environment and `.env`) and passed down. Errors meant for people
end as one line on stderr: exit 2 for configuration, 1 for refused input or an unreachable
service; never a traceback for those. This module parses and dispatches; the terminal flows live
in `bot/reset_flow.py` (a reset and its progress) and `bot/tasks_cli.py` (tasks, audit).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import textwrap
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, TextIO

from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy import Engine, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError, ProgrammingError
from sqlalchemy.orm import Session, sessionmaker

from bot.terminal import (
    EXIT_CONFIG,
    EXIT_INTERRUPTED,
    EXIT_NOT_COMPLETED,
    EXIT_OK,
    EXIT_PIPE_CLOSED,
    EXIT_REFUSED,
    EXIT_USAGE,
    EXIT_WITH_ERRORS,
    SECRET_KEY_FILE,
    Refused,
    UsageError,
    plural,
    requester,
    shown_csv,
)
from core.db import make_engine, make_sessionmaker
from core.directory import Directory as TableDirectory
from core.directory.factory import open_directory
from core.directory.protocol import Directory, User
from core.errors import ConfigError, ResetbotError
from core.models import NoEmailChoice, Scope
from core.settings import Settings, ensure_secret_key

__all__ = [  # the exit codes are part of the command's interface; tests and scripts import them
    "EXIT_CONFIG", "EXIT_INTERRUPTED", "EXIT_NOT_COMPLETED", "EXIT_OK", "EXIT_PIPE_CLOSED",
    "EXIT_REFUSED", "EXIT_USAGE", "EXIT_WITH_ERRORS", "main",
]

Handler = Callable[["Cli", argparse.Namespace], int]


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
    except OperationalError as error:
        cli.fail(f"the database cannot be reached or used: {_first_line(error.orig)}")
        return EXIT_REFUSED
    except RedisError as error:
        cli.fail(f"Redis cannot be reached: {_first_line(error)}")
        return EXIT_REFUSED
    except BrokenPipeError:
        raise  # not a file problem: the reader of the output went away (see main)
    except OSError as error:  # a file that cannot be read or written
        cli.fail(f"{error.strerror or error}: {error.filename}" if error.filename else str(error))
        return EXIT_REFUSED
    except KeyboardInterrupt:
        cli.fail("interrupted")
        return EXIT_INTERRUPTED


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so the flush at exit does not complain about the pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no file descriptor behind stdout (tests' StringIO)
        pass


def _first_line(error: object) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]


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

Settings come from the environment or a .env file in this folder (see README.md). \
`resetbot COMMAND --help` explains each command.

exit codes: 0 done; 1 refused or a service unreachable (nothing changed); 2 bad settings or \
arguments; 3 the reset ended with mails that never got through; 4 it failed or was cancelled; \
130 interrupted; 141 whoever read the output stopped early (as `| head` does)."""

RESET_DESCRIPTION = (
    "Reset the passwords of the users in one scope. resetbot first shows a preview (how many "
    "users, how many are e-mailed, how many have no e-mail, how many are staff) and asks you "
    "to type yes; then it follows the task with a progress bar until it ends."
)

RESET_EPILOG = """\
who (--scope), one of:
  all                  every user in the directory, staff included
  all_except_selected  everyone but the users named by --user or --users-file
  all_without_role     end users only: anyone with a role (staff) is left alone
  selected_only        only the users named by --user or --users-file

how, one of two modes:
  e-mailed (default)   a new random password for each user, sent by e-mail
  one for all          --default-password-stdin: the same password, no e-mail

users without an e-mail address, when each user is e-mailed (--without-email):
  reset (default)      a new password nobody is told: they use "forgot password"
  skip                 left alone: their password does not change
  set                  a password read from stdin, which you tell each of them

examples:
  resetbot reset --scope selected_only --user alice,bob --dry-run
  resetbot reset --scope selected_only --users-file class-of-2024.csv
  resetbot reset --scope all_except_selected --user carol --user dave
  resetbot reset --scope all_without_role --default-password-stdin
  resetbot reset --scope all --without-email set   (asks for their password)
  resetbot reset --scope all --yes --detach   (in a script: no prompt, no wait)
  resetbot reset --scope all_without_role --at 2027-01-09T06:00
                       (scheduled: starts by itself at 06:00 this host's time;
                        --at 2027-01-09T06:00+01:00 gives the offset)"""

TASKS_DESCRIPTION = (
    "Each reset is a task with a number. List the recent ones, look at one in detail, cancel "
    "one that is still running, or send new passwords to the users whose mail never got "
    "through."
)

TASKS_EPILOG = """\
examples:
  resetbot tasks                        the last 20 tasks (as `tasks list`)
  resetbot tasks show 12                counts and every user's outcome
  resetbot tasks show 12 --csv > to-contact.csv
  resetbot tasks cancel 12
  resetbot tasks retry 12
  resetbot tasks undo 12                put back the passwords task 12 replaced
  resetbot tasks approve 12 --as U024BE7LH   (a second admin, by Slack user id)
  resetbot tasks reject 12
  resetbot tasks start 12               a scheduled reset held because its count changed"""

USERS_EPILOG = """\
The CSV has the columns username, full_name, email and (if you like) role, in any order.

examples:
  resetbot users import users.csv
  resetbot users export backup.csv"""


def build_parser() -> argparse.ArgumentParser:
    parser = _parser(
        argparse.ArgumentParser, prog="resetbot", description=MAIN_DESCRIPTION,
        epilog=MAIN_EPILOG,
    )
    parser.add_argument("--version", action=VersionAction,
                        help="resetbot's version, and which Redis it uses (REDIS_URL, or the "
                             "embedded one's redis-server and its version)")
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", title="commands"
    )
    _add_db(commands)
    _add_users(commands)
    _add_directory(commands)
    _add_reset(commands)
    _add_tasks(commands)
    _add_mail(commands)

    audit_ = _command(commands, "audit", "the audit trail: who did what, and when",
                      epilog="examples:\n  resetbot audit --since 2025-01-31\n"
                             "  resetbot audit --csv > audit.csv")
    audit_.add_argument("--since", type=_since, metavar="DATE",
                        help="only from this date (YYYY-MM-DD) or ISO time on (UTC)")
    audit_.add_argument("--csv", action="store_true", help="as CSV, for a spreadsheet")
    audit_.set_defaults(handler=cmd_audit)

    worker = _command(commands, "worker", "run a worker that carries out the resets",
                      description="Run a worker: it hashes the new passwords, writes them and "
                                  "sends the mails. Run one per CPU core.")
    worker.add_argument("--burst", action="store_true",
                        help="stop when there is no more work instead of waiting for more")
    worker.set_defaults(handler=cmd_worker)

    serve = _command(commands, "serve", "run the Slack app (HTTP, or Socket Mode)")
    serve.add_argument("--port", type=_port, default=3000, help="HTTP port (default 3000)")
    # bot.server.LOOPBACK, not imported here: the command line starts without waitress.
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1: this host only, behind "
                            "the HTTPS reverse proxy; 0.0.0.0: every interface)")
    serve.add_argument("--with-worker", action="store_true",
                       help="also run a worker (everything on one host)")
    serve.set_defaults(handler=cmd_serve)

    demo = _command(commands, "demo",
                    "first run: a real reset of 50 sample users, nothing to set up")
    demo.add_argument("--dir", type=Path, default=Path("resetbot-demo"),
                      help="where the demo keeps its files (default ./resetbot-demo); "
                           "a demo there before is replaced")
    demo.set_defaults(handler=cmd_demo)
    return parser


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and examples keep their line breaks; commands are listed one per line,
    without the lone COMMAND line argparse puts above them."""

    def _format_action(self, action: argparse.Action) -> str:
        if isinstance(action, argparse._SubParsersAction):
            return "".join(self._format_action(sub) for sub in action._get_subactions())
        return super()._format_action(action)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        """Indented lines as written; prose wrapped to the screen."""
        return "\n".join(
            indent + line if line[:1] in ("", " ")
            else textwrap.fill(line, width, initial_indent=indent, subsequent_indent=indent)
            for line in text.splitlines()
        )


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


def _parser(factory: Callable[..., argparse.ArgumentParser], *args: object,
            **kwargs: object) -> argparse.ArgumentParser:
    return factory(*args, formatter_class=HelpFormatter, **kwargs)


def _command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], name: str, summary: str,
    **kwargs: object,
) -> argparse.ArgumentParser:
    """A subcommand: `summary` is its line in the list; its own --help starts with it too."""
    kwargs.setdefault("description", summary[0].upper() + summary[1:] + ".")
    return _parser(commands.add_parser, name, help=summary, **kwargs)


def _add_db(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    db = _command(commands, "db", "the database schema: `resetbot db upgrade`")
    actions = db.add_subparsers(dest="db_command", required=True, metavar="ACTION",
                                title="actions")
    upgrade = _command(actions, "upgrade",
                       "create or update the schema (safe to run again; once per release)")
    upgrade.set_defaults(handler=cmd_db_upgrade)


def _add_users(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    users = _command(commands, "users", "import or export the user directory as CSV",
                     epilog=USERS_EPILOG)
    actions = users.add_subparsers(dest="users_command", required=True, metavar="ACTION",
                                   title="actions")
    import_ = _command(
        actions, "import", "add new users and update known ones from a CSV file",
        description="Add new users and update known ones (by username) from a CSV file in "
                    "UTF-8. All or nothing: a file with a bad row changes nothing. "
                    "Passwords are left alone.",
        epilog=USERS_EPILOG,
    )
    import_.add_argument("file", metavar="FILE", help="the CSV file; '-' reads stdin")
    import_.set_defaults(handler=cmd_users_import)
    export = _command(
        actions, "export", "write every user as CSV (the format import reads)",
        description="Write every user as CSV, in the format `users import` reads, safe to "
                    "open in a spreadsheet. A FILE is written exactly; on a terminal, control "
                    "characters in names are shown as escapes (\\x1b).",
    )
    export.add_argument("file", metavar="FILE", nargs="?", default="-",
                        help="where to write (default '-': the screen, or stdout)")
    export.set_defaults(handler=cmd_users_export)


DIRECTORY_EPILOG = """\
examples:
  resetbot directory check
  resetbot directory check --json
  DIRECTORY_URL=mysql+pymysql://resetbot:PASS@db/koha DIRECTORY_PROFILE=koha \\
    resetbot directory check"""


def _add_directory(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    directory = _command(commands, "directory",
                         "what resetbot sees of the users: `resetbot directory check`",
                         epilog=DIRECTORY_EPILOG)
    actions = directory.add_subparsers(dest="directory_command", required=True,
                                       metavar="ACTION", title="actions")
    check = _command(
        actions, "check", "what resetbot sees in the directory; changes nothing",
        prog="resetbot directory check", epilog=DIRECTORY_EPILOG,
        description="Read-only: the profile, the database (password hidden), the table, how "
                    "many users, staff and users without e-mail, and the password hash "
                    "formats the table holds, with a warning when a reset would write another "
                    "one. Run it before the first reset on a library system's database.",
    )
    check.add_argument("--json", action="store_true", help="the same, machine-readable")
    check.set_defaults(handler=cmd_directory_check)


def _add_reset(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    reset = _command(commands, "reset", "reset passwords now: preview, confirm, follow",
                     description=RESET_DESCRIPTION, epilog=RESET_EPILOG,
                     usage="resetbot reset --scope SCOPE [options]")
    reset.add_argument("--scope", required=True, choices=[scope.value for scope in Scope],
                       metavar="SCOPE", help="who to reset (see below)")
    reset.add_argument("--user", action="append", default=[], metavar="USERNAME[,...]",
                       help="a user to reset or to spare, by username; several as alice,bob "
                            "or with --user again (case does not matter unless two usernames "
                            "differ only by it)")
    reset.add_argument("--users-file", type=Path, metavar="FILE",
                       help="the usernames in a file: one per line, or a CSV with a "
                            "username column")
    reset.add_argument("--default-password-stdin", action="store_true",
                       help="one password for everyone, read from stdin (asked twice on a "
                            "terminal, never shown); nobody is e-mailed")
    reset.add_argument("--without-email", choices=[choice.value for choice in NoEmailChoice],
                       default=NoEmailChoice.RESET.value, metavar="WHAT",
                       help="what happens to users without an e-mail address: reset, skip "
                            "or set (see below)")
    reset.add_argument("--no-require-change", action="store_true",
                       help="do not make users change the password at their next sign-in")
    reset.add_argument("--skip-locked", action=argparse.BooleanOptionalAction, default=None,
                       help="leave out accounts locked on purpose (Koha: login_attempts -1); "
                            "the default with e-mailed passwords, not with a default password")
    reset.add_argument("--dry-run", action="store_true",
                       help="show the preview and stop; nothing changes")
    reset.add_argument("--csv", type=Path, metavar="FILE",
                       help="with --dry-run: write everyone it would reset to FILE (username, "
                            "name, e-mail, staff, locked, what happens; no passwords), the "
                            "same list as Slack's “Send me the list”")
    reset.add_argument("--yes", action="store_true",
                       help="do not ask for confirmation (needed when stdin is not a terminal)")
    reset.add_argument("--detach", action="store_true",
                       help="queue the reset and return at once instead of following it")
    reset.add_argument("--at", type=_start_time, metavar="TIME",
                       help="schedule it: start at TIME (ISO, e.g. 2027-01-09T06:00 in this "
                            "host's time, or with an offset: 2027-01-09T06:00+01:00), at most "
                            "90 days ahead; resetbot prints the task and returns")
    reset.set_defaults(handler=cmd_reset)


def _add_mail(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    mail = _command(commands, "mail", "the password mail: `resetbot mail preview`")
    actions = mail.add_subparsers(dest="mail_command", required=True, metavar="ACTION",
                                  title="actions")
    preview = _command(actions, "preview",
                       "show the mail a user would get, text and HTML, password masked",
                       prog="resetbot mail preview")
    preview.add_argument("--user", metavar="USERNAME",
                         help="a real user from the directory (default: a sample user)")
    preview.add_argument("--lang", metavar="CODE",
                         help="the language to show (e.g. fr; default MAIL_LANGUAGE)")
    preview.set_defaults(handler=cmd_mail_preview)


def _add_tasks(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tasks = _command(commands, "tasks",
                     "list reset tasks; show, cancel, retry, approve, reject or start one",
                     description=TASKS_DESCRIPTION, epilog=TASKS_EPILOG,
                     usage="resetbot tasks [list | show ID | cancel ID | retry ID | undo ID | "
                           "approve ID | reject ID | start ID]")
    tasks.set_defaults(handler=cmd_tasks_list)
    actions = tasks.add_subparsers(dest="tasks_command", metavar="ACTION", title="actions")
    listing = _command(actions, "list", "the last 20 tasks (also what `resetbot tasks` shows)",
                       prog="resetbot tasks list")
    listing.set_defaults(handler=cmd_tasks_list)

    show = _command(actions, "show", "one task: counts and every user's outcome and mails",
                    prog="resetbot tasks show")
    show.add_argument("task_id", type=_task_id, metavar="ID", help="the task's number")
    output = show.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="everything, machine-readable")
    output.add_argument("--csv", action="store_true",
                        help="only the users to contact by hand, as CSV")
    show.set_defaults(handler=cmd_tasks_show)

    _task_action(
        actions, "cancel", "stop a task that is still running", cmd_tasks_cancel,
        "Stop a task that is still running: users not yet reset are left alone, those already "
        "reset stay reset and are reported. As Slack's Cancel button.",
    )
    retry = _task_action(
        actions, "retry", "e-mail new passwords to the users whose mail never got through",
        cmd_tasks_retry,
        "Start a new task that e-mails a fresh password to each user whose mail failed in task "
        "ID. As Slack's Retry button, and once per task.",
    )
    retry.add_argument("--detach", action="store_true",
                       help="queue the retry and return at once instead of following it")
    undo = _task_action(
        actions, "undo", "put back the passwords a task replaced (RESET_UNDO_WINDOW)",
        cmd_tasks_undo,
        "Within RESET_UNDO_WINDOW after task ID ended, give each of its users who has not "
        "changed their password since their previous one back (and the must-change, expiry "
        "and lock as before); those it e-mailed are told to ignore that mail. The counts are "
        "shown first. As Slack's Undo button, and once per task.",
    )
    undo.add_argument("--yes", action="store_true", help="undo without asking")
    undo.add_argument("--detach", action="store_true",
                      help="queue the Undo and return at once instead of following it")
    approve = _task_action(
        actions, "approve", "approve a reset that awaits a second admin", cmd_tasks_approve,
        "Approve task ID, which awaits a second admin's approval, as Slack's Approve button. "
        "The counts are taken again first: if the scope grew by more than a tenth, they are "
        "shown and the command must be run again.",
    )
    _add_as(approve)
    reject = _task_action(
        actions, "reject", "reject a reset that awaits approval: nothing changes",
        cmd_tasks_reject,
        "Reject task ID, which awaits approval: nothing changes and its sealed passwords are "
        "erased. As Slack's Reject button; whoever asked for it may withdraw it.",
    )
    _add_as(reject)
    start = _task_action(
        actions, "start", "start a scheduled reset held because its count changed",
        cmd_tasks_start,
        "A scheduled reset whose count, taken again at its start time, differed by more than "
        "10 % from its preview waits for a new confirmation. This starts it with the new count "
        "(or, if that count needs an approval it does not have, asks another admin for it). "
        "As the Start now button in its Slack thread: for whoever asked for it, or --as an "
        "admin who may approve resets.",
    )
    _add_as(start, "act as this Slack user (whoever asked for the reset, or an admin allowed "
                   "to approve); the terminal alone cannot tell who you are")


def _task_action(
    actions: argparse._SubParsersAction[argparse.ArgumentParser], name: str, summary: str,
    handler: Handler, description: str,
) -> argparse.ArgumentParser:
    """`resetbot tasks NAME ID`: an action on one task."""
    action = _command(actions, name, summary, prog=f"resetbot tasks {name}",
                      description=description)
    action.add_argument("task_id", type=_task_id, metavar="ID", help="the task's number")
    action.set_defaults(handler=handler)
    return action


def _add_as(
    parser: argparse.ArgumentParser,
    help: str = ("act as this Slack user (an admin allowed to approve, never the requester); "
                 "the terminal alone cannot tell who you are, and the audit trail says "
                 "'cli:<login> as <id>'"),
) -> None:
    parser.add_argument("--as", dest="as_user", type=_slack_user, metavar="SLACK_USER_ID",
                        help=help)


def _since(value: str) -> datetime:
    """A date means its midnight; times without a zone are UTC, as the audit trail is."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a date (YYYY-MM-DD) or ISO time"
        ) from None
    try:
        return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    except OverflowError:  # 9999-12-31T23:59-14:00 is in the year 10000 in UTC
        raise argparse.ArgumentTypeError(f"{value!r} is past the year 9999 in UTC") from None


def _start_time(value: str) -> datetime:
    """An ISO time: with an offset as given, without one in this host's local time (aware)."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a time (expected e.g. 2027-01-09T06:00 or "
            "2027-01-09T06:00+01:00)"
        ) from None
    # A naive time is the host's local time: astimezone() reads it so.
    return moment if moment.tzinfo else moment.astimezone()


def _task_id(value: str) -> int:
    if not (value.isascii() and value.isdigit()) or int(value) < 1:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a task number (`resetbot tasks` lists them)"
        )
    return int(value)


def _slack_user(value: str) -> str:
    if re.fullmatch(r"[UW][A-Z0-9]{2,30}", value) is None:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a Slack user id (U... or W..., from the person's profile)"
        )
    return value


def _port(value: str) -> int:
    if not (value.isascii() and value.isdigit()) or not 0 <= int(value) <= 65535:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number (0-65535; 0: any free)")
    return int(value)


# -- what every command shares ------------------------------------------------------------------


@dataclass
class Cli:
    environ: Mapping[str, str] | None
    out: TextIO
    err: TextIO

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def fail(self, text: str) -> None:
        print(f"resetbot: {text}", file=self.err, flush=True)

    def settings(self, *, with_secret_key: bool = False) -> Settings:
        if self.environ is None:
            settings = Settings.from_env()
        else:
            settings = Settings.from_env(self.environ, env_file=None)
        if with_secret_key and not settings.reset_secret_key:
            # Single host: every resetbot process finds the key file beside the database.
            from jobs.connection import state_dir

            directory = state_dir(settings)
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            settings = ensure_secret_key(settings, directory / SECRET_KEY_FILE)
        return settings

    @contextmanager
    def database(self, settings: Settings) -> Iterator[sessionmaker[Session]]:
        engine = open_engine(settings)
        try:
            require_schema(engine, settings)
            yield make_sessionmaker(engine)
        finally:
            engine.dispose()

    @contextmanager
    def redis(self, settings: Settings) -> Iterator[Redis]:
        from jobs.connection import close_redis, connect_redis

        redis = connect_redis(settings)
        try:
            redis.ping()
            yield redis
        finally:
            close_redis(redis)


def open_engine(settings: Settings) -> Engine:
    try:
        return make_engine(settings.database_url)
    except (ArgumentError, NoSuchModuleError, ValueError) as error:
        raise ConfigError(f"DATABASE_URL: not a usable database URL ({error})") from None


def require_schema(engine: Engine, settings: Settings) -> None:
    """A clear word instead of 'no such table' when the database was never set up."""
    try:
        tables = set(inspect(engine).get_table_names())
    except ProgrammingError as error:
        raise Refused(f"the database cannot be read: {_first_line(error.orig)}") from None
    from core.migrate import own_users_names

    own = own_users_names(settings)  # resetbot's own users table, when it lives here
    missing = {"reset_tasks", "reset_items", "audit_log", *([own.table] if own else [])} - tables
    if missing:
        raise Refused(
            f"the database {shown_url(settings.database_url)} has no {', '.join(sorted(missing))}"
            " table yet: run `resetbot db upgrade` first"
        )


def shown_url(url: str) -> str:
    """A database URL with any password hidden, for messages."""
    from core.db import shown_url as shown

    try:
        return shown(make_url(url))
    except (ArgumentError, ValueError):
        return "(invalid URL)"


# -- db, users ----------------------------------------------------------------------------------


def cmd_db_upgrade(cli: Cli, args: argparse.Namespace) -> int:
    from core.migrate import upgrade

    settings = cli.settings()
    open_engine(settings).dispose()  # a bad URL is a configuration error, said as such
    revision = upgrade(settings)
    cli.say(f"Database {shown_url(settings.database_url)} is at revision {revision}.")
    return EXIT_OK


def cmd_users_import(cli: Cli, args: argparse.Namespace) -> int:
    from core.userio import import_users

    settings = cli.settings()
    require_own_users_table(settings, "import")
    data = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    with cli.database(settings) as sessions, sessions.begin() as session, \
            _table_directory(settings, sessions) as directory:
        result = import_users(session, directory, data, actor=requester())
    cli.say(
        f"Imported {plural(result.total, 'user')}: {result.created:,} new, "
        f"{result.updated:,} updated, {result.unchanged:,} unchanged."
    )
    return EXIT_OK


def cmd_users_export(cli: Cli, args: argparse.Namespace) -> int:
    from core.userio import export_users

    settings = cli.settings()
    require_own_users_table(settings, "export")
    with cli.database(settings) as sessions, \
            _table_directory(settings, sessions) as directory:
        content = export_users(directory)
    if args.file == "-":
        # On a terminal, people read it: a name holding an escape sequence must not act on
        # the screen. Redirected or piped, it goes out exactly, so it imports back unchanged.
        cli.out.write(shown_csv(content) if cli.out.isatty() else content)
        cli.out.flush()
    else:
        # With a BOM, spreadsheets read the file as UTF-8; `users import` accepts it.
        with open(args.file, "w", encoding="utf-8-sig", newline="") as handle:
            handle.write(content)
        cli.say(f"Wrote {plural(content.count(chr(10)) - 1, 'user')} to {args.file}.")
    return EXIT_OK


def require_own_users_table(settings: Settings, action: str) -> None:
    """`users import` and `export` are for resetbot's own table: a library system's users are
    that system's to add and change (and its table has no role column to export)."""
    from core.directory import load_profile
    from core.settings import uses_ldap

    if uses_ldap(settings):
        raise ConfigError(
            f"users {action} is for resetbot's own users table; with DIRECTORY_URL=ldap… the "
            "users are in the LDAP directory, which resetbot does not own: manage them there "
            "(nothing was changed; `resetbot directory check` shows what resetbot sees)"
        )
    profile = load_profile(settings.directory_profile, settings.directory)
    if not profile.owned:
        raise ConfigError(
            f"users {action} is for resetbot's own users table; with DIRECTORY_PROFILE="
            f"{settings.directory_profile} the users are in {profile.table!r}, which resetbot "
            "does not own: manage them in that system (nothing was changed; "
            "`resetbot directory check` shows what resetbot sees)"
        )


def cmd_directory_check(cli: Cli, args: argparse.Namespace) -> int:
    from bot.directory_cli import check_directory

    check_directory(cli, cli.settings(), as_json=args.json)
    return EXIT_OK


@contextmanager
def _directory(settings: Settings, sessions: sessionmaker[Session]) -> Iterator[Directory]:
    """The directory, sharing the state database's engine when the users live there too."""
    engine = sessions.kw.get("bind")
    directory = open_directory(settings, engine if isinstance(engine, Engine) else None)
    try:
        yield directory
    finally:
        directory.dispose()


@contextmanager
def _table_directory(
    settings: Settings, sessions: sessionmaker[Session]
) -> Iterator[TableDirectory]:
    """resetbot's own users table (import, export): never an LDAP directory."""
    engine = sessions.kw.get("bind")
    directory = TableDirectory.from_settings(
        settings, engine if isinstance(engine, Engine) else None
    )
    try:
        yield directory
    finally:
        directory.dispose()


def cmd_mail_preview(cli: Cli, args: argparse.Namespace) -> int:
    from bot.mail_preview import SampleUser, preview_text
    from jobs.mail_templates import MailTemplates

    settings = cli.settings()
    templates = MailTemplates.load(settings)
    user: SampleUser | User = SampleUser()
    if args.user is not None:
        with cli.database(settings) as sessions, _directory(settings, sessions) as directory:
            found = directory.by_username([args.user])
        if not found:
            raise Refused(f"there is no user {args.user!r} in the directory")
        user = found[0]
    cli.say(preview_text(templates, username=user.username, full_name=user.full_name,
                         email=user.email, language=args.lang))
    return EXIT_OK


# -- worker, serve, demo ------------------------------------------------------------------------


def cmd_worker(cli: Cli, args: argparse.Namespace) -> int:
    from jobs.worker import run_worker, tune_worker_process

    settings = cli.settings(with_secret_key=True)
    _log_to_stderr()
    tune_worker_process()
    open_engine(settings).dispose()
    # A directory that refuses, or a profile that does not fit it: said now, in one line.
    open_directory(settings).dispose()
    with cli.redis(settings) as redis:
        run_worker(settings, redis, burst=args.burst, with_scheduler=True)
    return EXIT_OK


def cmd_serve(cli: Cli, args: argparse.Namespace) -> int:
    from bot.server import serve

    settings = cli.settings(with_secret_key=True)
    _log_to_stderr()
    serve(settings, port=args.port, host=args.host, with_worker=args.with_worker)
    return EXIT_OK


def cmd_demo(cli: Cli, args: argparse.Namespace) -> int:
    from bot.demo import run_demo

    return run_demo(cli, args.dir)


def _log_to_stderr() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s"
        )


# -- reset, tasks, audit ------------------------------------------------------------------------


def cmd_reset(cli: Cli, args: argparse.Namespace) -> int:
    from bot.reset_flow import ResetChoices, run_reset

    scope = Scope(args.scope)
    without_email = NoEmailChoice(args.without_email)
    if args.default_password_stdin and without_email is not NoEmailChoice.RESET:
        raise UsageError(
            "--without-email is for resets that e-mail each user; with "
            "--default-password-stdin nobody is e-mailed (nothing was changed)"
        )
    usernames = split_usernames(args.user)
    check_selection_options(scope, bool(usernames or args.users_file))
    check_start_time(args.at)
    if args.csv is not None and not args.dry_run:
        raise UsageError("--csv FILE goes with --dry-run: it lists who a reset would reset "
                         "(nothing was changed)")
    if not (args.yes or args.dry_run) and not sys.stdin.isatty():
        raise UsageError(
            "stdin is not a terminal, so I cannot ask for confirmation: add --yes to reset "
            "without asking (nothing was changed)"
        )
    if args.users_file is not None:
        from core.userio import usernames_from_file

        usernames += usernames_from_file(args.users_file.read_bytes(), str(args.users_file))
    choices = ResetChoices(
        scope=scope,
        usernames=usernames,
        default_password_stdin=args.default_password_stdin,
        without_email=without_email,
        require_change=not args.no_require_change,
        dry_run=args.dry_run,
        yes=args.yes,
        detach=args.detach,
        start_at=args.at,
        csv=args.csv,
        skip_locked=args.skip_locked,
    )
    settings = cli.settings(with_secret_key=True)
    with cli.database(settings) as sessions:
        return run_reset(cli, settings, sessions, partial(cli.redis, settings), choices)


def split_usernames(values: Sequence[str]) -> list[str]:
    """`--user alice,bob --user carol`: every name, in order, blanks dropped."""
    return [name.strip() for value in values for name in value.split(",") if name.strip()]


def check_selection_options(scope: Scope, named: bool) -> None:
    """--user and --users-file belong to the two "selected" scopes, which need them."""
    if named and not scope.needs_selection:
        raise UsageError(
            "--user and --users-file name users for selected_only or all_except_selected; "
            f"scope {scope.value} takes no names (nothing was changed)"
        )
    if scope.needs_selection and not named:
        which = "to reset" if scope is Scope.SELECTED_ONLY else "to leave alone"
        raise UsageError(
            f"scope {scope.value} needs the users {which}: give --user alice,bob or "
            "--users-file FILE (nothing was changed)"
        )


def check_start_time(start_at: datetime | None) -> None:
    """--at: within the next 90 days (a minute's grace for "now"), else refused at once."""
    from core.schedule import start_at_problem

    if start_at is None:
        return
    problem = start_at_problem(start_at, datetime.now(UTC))
    if problem:
        raise UsageError(f"--at {start_at.isoformat(timespec='minutes')}: {problem} "
                         "(nothing was changed)")


def cmd_tasks_list(cli: Cli, args: argparse.Namespace) -> int:
    from bot.tasks_cli import list_tasks

    settings = cli.settings()
    with cli.database(settings) as sessions, sessions() as session:
        list_tasks(cli, session)
    return EXIT_OK


def cmd_tasks_show(cli: Cli, args: argparse.Namespace) -> int:
    from bot.tasks_cli import show_task

    settings = cli.settings()
    with cli.database(settings) as sessions, sessions() as session:
        show_task(cli, session, args.task_id, as_csv=args.csv, as_json=args.json)
    return EXIT_OK


def cmd_tasks_cancel(cli: Cli, args: argparse.Namespace) -> int:
    from bot.tasks_cli import cancel_task

    settings = cli.settings()
    with cli.database(settings) as sessions:
        cancel_task(cli, sessions, args.task_id)
    return EXIT_OK


def cmd_tasks_retry(cli: Cli, args: argparse.Namespace) -> int:
    from bot.tasks_cli import retry_task

    settings = cli.settings(with_secret_key=True)
    with cli.database(settings) as sessions:
        return retry_task(cli, settings, sessions, partial(cli.redis, settings), args.task_id,
                          detach=args.detach)


def cmd_tasks_undo(cli: Cli, args: argparse.Namespace) -> int:
    from bot.tasks_cli import undo_task

    if not args.yes and not sys.stdin.isatty():
        raise UsageError("stdin is not a terminal, so I cannot ask for confirmation: add --yes "
                         "to undo without asking (nothing was changed)")
    settings = cli.settings(with_secret_key=True)
    with cli.database(settings) as sessions, _directory(settings, sessions) as directory:
        return undo_task(cli, settings, sessions, directory, partial(cli.redis, settings),
                         args.task_id, yes=args.yes, detach=args.detach)


def cmd_tasks_approve(cli: Cli, args: argparse.Namespace) -> int:
    from bot.tasks_cli import approve_task

    settings = cli.settings()
    with cli.database(settings) as sessions, _directory(settings, sessions) as directory:
        return approve_task(cli, settings, sessions, directory, partial(cli.redis, settings),
                            args.task_id, as_user=args.as_user)


def cmd_tasks_reject(cli: Cli, args: argparse.Namespace) -> int:
    from bot.tasks_cli import reject_task

    settings = cli.settings()
    with cli.database(settings) as sessions:
        return reject_task(cli, settings, sessions, partial(cli.redis, settings), args.task_id,
                           as_user=args.as_user)


def cmd_tasks_start(cli: Cli, args: argparse.Namespace) -> int:
    from bot.tasks_cli import start_held_task

    settings = cli.settings()
    with cli.database(settings) as sessions, _directory(settings, sessions) as directory:
        start_held_task(cli, settings, sessions, directory, partial(cli.redis, settings),
                        args.task_id, as_user=args.as_user)
    return EXIT_OK


def cmd_audit(cli: Cli, args: argparse.Namespace) -> int:
    from bot.tasks_cli import audit_rows, print_audit

    settings = cli.settings()
    with cli.database(settings) as sessions, sessions() as session:
        rows = audit_rows(session, args.since)
    print_audit(cli, rows, as_csv=args.csv)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
