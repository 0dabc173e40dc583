"""The `resetbot` command: database, directory CSV, workers, resets, tasks, audit, serve, demo.

Settings are read once here (environment and `.env`) and passed down. Errors meant for people
end as one line on stderr: exit 2 for configuration, 1 for refused input or an unreachable
service; never a traceback for those. This module parses and dispatches; the terminal flows live
in `bot/reset_flow.py` (a reset and its progress) and `bot/tasks_cli.py` (tasks, audit).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TextIO

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
    EXIT_REFUSED,
    EXIT_WITH_ERRORS,
    SECRET_KEY_FILE,
    Refused,
    requester,
)
from core.db import make_engine, make_sessionmaker
from core.directory import Directory, DirectoryUser
from core.errors import ConfigError, ResetbotError
from core.models import Scope
from core.settings import Settings, ensure_secret_key

__all__ = [  # the exit codes are part of the command's interface; tests and scripts import them
    "EXIT_CONFIG", "EXIT_INTERRUPTED", "EXIT_NOT_COMPLETED", "EXIT_OK", "EXIT_REFUSED",
    "EXIT_WITH_ERRORS", "main",
]

Handler = Callable[["Cli", argparse.Namespace], int]


# -- entry point --------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run one command; `environ` replaces os.environ and `.env` (tests, the demo's children)."""
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    cli = Cli(environ=environ, out=sys.stdout, err=sys.stderr)
    try:
        return handler(cli, args)
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
    except OSError as error:  # a file that cannot be read or written
        cli.fail(f"{error.strerror or error}: {error.filename}" if error.filename else str(error))
        return EXIT_REFUSED
    except KeyboardInterrupt:
        cli.fail("interrupted")
        return EXIT_INTERRUPTED


def _first_line(error: object) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resetbot",
        description="Reset the passwords of many library users at once.",
        epilog="Settings come from the environment and a .env file; see README.md.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    db = commands.add_parser("db", help="database schema").add_subparsers(
        dest="db_command", required=True, metavar="ACTION"
    )
    upgrade = db.add_parser("upgrade", help="create or migrate the schema")
    upgrade.set_defaults(handler=cmd_db_upgrade)

    users = commands.add_parser("users", help="the user directory as CSV").add_subparsers(
        dest="users_command", required=True, metavar="ACTION"
    )
    import_ = users.add_parser(
        "import", help="upsert users from a CSV file (username,full_name,email,role)"
    )
    import_.add_argument("file", help="CSV file in UTF-8; '-' reads stdin")
    import_.set_defaults(handler=cmd_users_import)
    export = users.add_parser("export", help="write every user as CSV")
    export.add_argument("file", nargs="?", default="-", help="output file; '-' (default) = stdout")
    export.set_defaults(handler=cmd_users_export)

    mail = commands.add_parser("mail", help="the password mail").add_subparsers(
        dest="mail_command", required=True, metavar="ACTION"
    )
    mail_preview = mail.add_parser(
        "preview", help="show the mail a user would get (password masked), text and HTML"
    )
    mail_preview.add_argument("--user", metavar="USERNAME",
                              help="a real user from the directory (default: a sample user)")
    mail_preview.add_argument("--lang", metavar="CODE",
                              help="the language to show (e.g. fr); default MAIL_LANGUAGE")
    mail_preview.set_defaults(handler=cmd_mail_preview)

    worker = commands.add_parser("worker", help="run a reset worker (with the scheduler)")
    worker.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    worker.set_defaults(handler=cmd_worker)

    reset = commands.add_parser("reset", help="reset passwords now")
    reset.add_argument("--scope", required=True, choices=[scope.value for scope in Scope])
    reset.add_argument("--user", action="append", default=[], metavar="USERNAME",
                       help="a selected user (repeat for more)")
    reset.add_argument("--default-password-stdin", action="store_true",
                       help="read one password for everyone from stdin; nobody is e-mailed")
    reset.add_argument("--no-require-change", action="store_true",
                       help="do not make users change the password at next sign-in")
    reset.add_argument("--dry-run", action="store_true", help="show the preview and stop")
    reset.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    reset.add_argument("--detach", action="store_true", help="do not follow the progress")
    reset.set_defaults(handler=cmd_reset)

    tasks = commands.add_parser("tasks", help="list tasks, or show one")
    tasks.set_defaults(handler=cmd_tasks_list)
    show_commands = tasks.add_subparsers(dest="tasks_command", metavar="ACTION")
    show = show_commands.add_parser("show", help="one task: counts and every user's outcome")
    show.add_argument("task_id", type=int, metavar="ID")
    output = show.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="machine-readable")
    output.add_argument("--csv", action="store_true", help="the users to contact by hand")
    show.set_defaults(handler=cmd_tasks_show)

    audit_ = commands.add_parser("audit", help="the audit trail")
    audit_.add_argument("--since", type=_since, metavar="DATE",
                        help="from this date or ISO time on (UTC)")
    audit_.add_argument("--csv", action="store_true", help="as CSV")
    audit_.set_defaults(handler=cmd_audit)

    serve = commands.add_parser("serve", help="run the Slack app")
    serve.add_argument("--port", type=int, default=3000)
    serve.add_argument("--host", default="0.0.0.0")  # noqa: S104 - Slack must reach it
    serve.add_argument("--with-worker", action="store_true",
                       help="also run a reset worker (single host)")
    serve.set_defaults(handler=cmd_serve)

    demo = commands.add_parser(
        "demo", help="first run: a real bulk reset on embedded defaults, no configuration"
    )
    demo.add_argument("--dir", type=Path, default=Path("resetbot-demo"),
                      help="where the demo keeps its files (default ./resetbot-demo)")
    demo.set_defaults(handler=cmd_demo)
    return parser


def _since(value: str) -> datetime:
    """A date means its midnight; times without a zone are UTC, as the audit trail is."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a date (YYYY-MM-DD) or ISO time"
        ) from None
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


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
    missing = {"reset_tasks", "reset_items", "audit_log", settings.directory.table} - tables
    if missing:
        raise Refused(
            f"the database {shown_url(settings.database_url)} has no {', '.join(sorted(missing))}"
            " table yet: run `resetbot db upgrade` first"
        )


def shown_url(url: str) -> str:
    """A database URL with any password hidden, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
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
    data = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    with cli.database(settings) as sessions, sessions.begin() as session:
        result = import_users(session, Directory(settings.directory), data, actor=requester())
    cli.say(
        f"Imported {result.total:,} users: {result.created:,} new, {result.updated:,} updated, "
        f"{result.unchanged:,} unchanged."
    )
    return EXIT_OK


def cmd_users_export(cli: Cli, args: argparse.Namespace) -> int:
    from core.userio import export_users

    settings = cli.settings()
    with cli.database(settings) as sessions, sessions() as session:
        content = export_users(session, Directory(settings.directory))
    if args.file == "-":
        cli.out.write(content)
        cli.out.flush()
    else:
        # With a BOM, spreadsheets read the file as UTF-8; `users import` accepts it.
        with open(args.file, "w", encoding="utf-8-sig", newline="") as handle:
            handle.write(content)
        cli.say(f"Wrote {content.count(chr(10)) - 1:,} users to {args.file}.")
    return EXIT_OK


def cmd_mail_preview(cli: Cli, args: argparse.Namespace) -> int:
    from bot.mail_preview import SampleUser, preview_text
    from jobs.mail_templates import MailTemplates

    settings = cli.settings()
    templates = MailTemplates.load(settings)
    user: SampleUser | DirectoryUser = SampleUser()
    if args.user is not None:
        with cli.database(settings) as sessions, sessions() as session:
            found = Directory(settings.directory).by_username(session, [args.user])
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

    if not (args.yes or args.dry_run) and not sys.stdin.isatty():
        raise Refused(
            "stdin is not a terminal, so I cannot ask for confirmation: add --yes to reset "
            "without asking (nothing was changed)"
        )
    scope = Scope(args.scope)
    if args.user and not scope.needs_selection:
        raise Refused(
            f"--user picks users for selected_only or all_except_selected; scope {scope.value} "
            "takes no selection (nothing was changed)"
        )
    choices = ResetChoices(
        scope=scope,
        usernames=args.user,
        default_password_stdin=args.default_password_stdin,
        require_change=not args.no_require_change,
        dry_run=args.dry_run,
        yes=args.yes,
        detach=args.detach,
    )
    settings = cli.settings(with_secret_key=True)
    with cli.database(settings) as sessions:
        return run_reset(cli, settings, sessions, partial(cli.redis, settings), choices)


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


def cmd_audit(cli: Cli, args: argparse.Namespace) -> int:
    from bot.tasks_cli import audit_rows, print_audit

    settings = cli.settings()
    with cli.database(settings) as sessions, sessions() as session:
        rows = audit_rows(session, args.since)
    print_audit(cli, rows, as_csv=args.csv)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
