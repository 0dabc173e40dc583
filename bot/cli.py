"""The `resetbot` command: database, directory CSV, workers, resets, tasks, audit, serve, demo.

Settings are read once here (environment and `.env`) and passed down. Errors meant for people
end as one line on stderr: exit 2 for configuration, 1 for refused input or an unreachable
service; never a traceback for those.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, TextIO

from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy import Engine, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError, ProgrammingError
from sqlalchemy.orm import Session, sessionmaker

from core import audit
from core.csvsafe import to_csv
from core.db import make_engine, make_sessionmaker
from core.directory import Directory, Preview
from core.errors import ConfigError, ResetbotError
from core.models import ItemState, Mode, ResetTask, Scope, TaskStatus
from core.progress import TaskSnapshot, snapshot
from core.settings import Settings, ensure_secret_key
from core.tasks import RequestInvalid, ResetRequest, create_task, items, recent_tasks
from core.tasks import validate_request as check_request

EXIT_OK = 0
EXIT_REFUSED = 1  # bad input, nothing changed; or a service could not be reached
EXIT_CONFIG = 2  # a setting is missing or invalid (argparse uses 2 for bad arguments too)
EXIT_WITH_ERRORS = 3  # the task ended completed_with_errors: some mails never got through
EXIT_NOT_COMPLETED = 4  # the task failed or was cancelled
EXIT_INTERRUPTED = 130
SECRET_KEY_FILE = "secret.key"  # noqa: S105 - a file name, not a secret
POLL_SECONDS = 0.25
OUTCOME_WORDS = {
    ItemState.PENDING: "waiting",
    ItemState.CLAIMED: "in progress",
    ItemState.RETRY_WAIT: "mail retry scheduled",
    ItemState.RESET: "reset (default password)",
    ItemState.NOTIFIED: "e-mailed",
    ItemState.NO_EMAIL: "no e-mail: tell them yourself",
    ItemState.NOTIFY_FAILED: "mail failed: tell them yourself",
    ItemState.CANCELLED: "cancelled, not reset",
}

Handler = Callable[["Cli", argparse.Namespace], int]


class Refused(ResetbotError):
    """The command stops here with a clear message; nothing was changed."""


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


def login_name() -> str:
    try:
        return getpass.getuser()[:50]
    except (OSError, KeyError):
        return "unknown"


def requester() -> str:
    return f"cli:{login_name()}"


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


# -- reset --------------------------------------------------------------------------------------


def cmd_reset(cli: Cli, args: argparse.Namespace) -> int:
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
    settings = cli.settings(with_secret_key=True)
    directory = Directory(settings.directory)
    with cli.database(settings) as sessions:
        with sessions() as session:
            selection = resolve_usernames(session, directory, args.user)
        password = read_default_password() if args.default_password_stdin else None
        request = ResetRequest(
            requester=requester(),
            requester_name=login_name(),
            scope=scope,
            selection=selection,
            default_password=password,
            require_change=not args.no_require_change,
        )
        preview = validate_or_refuse(cli, sessions, settings, directory, request)
        cli.say(describe_preview(request, preview))
        if args.dry_run:
            cli.say("Dry run: nothing was changed.")
            return EXIT_OK
        if not args.yes and not confirm(f"Reset the passwords of {preview.users:,} users?"):
            cli.say("Nothing was changed.")
            return EXIT_REFUSED
        with cli.redis(settings) as redis:
            task_id = start_task(sessions, settings, redis, request)
            cli.say(f"Task #{task_id} queued.")
            if args.detach:
                cli.say(f"Follow it with: resetbot tasks show {task_id}")
                return EXIT_OK
            warn_if_no_worker(cli, settings, redis)
        final = follow(cli, sessions, task_id)
        print_summary(cli, final)
        return exit_code(final)


def resolve_usernames(
    session: Session, directory: Directory, usernames: Sequence[str]
) -> tuple[int, ...]:
    found = {user.username: user.id for user in directory.by_username(session, usernames)}
    unknown = [name for name in dict.fromkeys(usernames) if name not in found]
    if unknown:
        raise Refused(
            "no such user in the directory: " + ", ".join(unknown[:20])
            + (f" and {len(unknown) - 20} more" if len(unknown) > 20 else "")
            + " (nothing was changed)"
        )
    return tuple(sorted(set(found.values())))


def read_default_password(stdin: IO[str] | None = None) -> str:
    """One line from stdin; on a terminal it is asked twice and never shown."""
    stream = stdin if stdin is not None else sys.stdin
    if stream.isatty():
        first = getpass.getpass("Default password (not shown): ")
        if getpass.getpass("The same again: ") != first:
            raise Refused("the two passwords differ (nothing was changed)")
        password = first
    else:
        password = stream.readline().rstrip("\r\n")
    if not password:
        raise Refused("no default password on stdin (nothing was changed)")
    return password


def validate_or_refuse(
    cli: Cli,
    sessions: sessionmaker[Session],
    settings: Settings,
    directory: Directory,
    request: ResetRequest,
) -> Preview:
    with sessions() as session:
        try:
            return check_request(session, settings, directory, request)
        except RequestInvalid as invalid:
            audit.record(
                session, request.requester, "refused", step="request",
                reason="invalid request", fields=sorted(invalid.problems),
            )
            session.commit()
            lines = [
                f"  {field}: {reason}"
                for field, reasons in invalid.problems.items()
                for reason in reasons
            ]
            raise Refused(
                "the request was refused (nothing was changed):\n" + "\n".join(lines)
            ) from None


def describe_preview(request: ResetRequest, preview: Preview) -> str:
    if request.mode is Mode.DEFAULT:
        mode = "one default password for everyone; nobody is e-mailed"
        mailed = 0
    else:
        mode = "a new random password for each user, e-mailed"
        mailed = preview.emailable
    lines = [
        f"Scope: {request.scope.value}" + _scope_note(request),
        f"  Users to reset:        {preview.users:>8,}",
        f"  E-mailed:              {mailed:>8,}",
        f"  Without e-mail:        {preview.without_email:>8,}"
        + ("   (you must tell them yourself)" if request.mode is Mode.GENERATED else ""),
        f"  Staff included:        {preview.staff:>8,}",
        f"  Mode: {mode}",
        "  Must change the password at next sign-in: "
        + ("yes" if request.require_change else "no"),
    ]
    return "\n".join(lines)


def _scope_note(request: ResetRequest) -> str:
    selected = len(request.selection)
    return {
        Scope.ALL: " (every user, staff included)",
        Scope.ALL_EXCEPT_SELECTED: f" (everyone but the {selected} selected)",
        Scope.ALL_WITHOUT_ROLE: " (end users only; everyone with a role is left alone)",
        Scope.SELECTED_ONLY: f" (the {selected} selected users)",
    }[request.scope]


def confirm(question: str) -> bool:
    try:
        answer = input(f"{question} Type 'yes' to go ahead: ")
    except EOFError:
        return False
    return answer.strip().lower() == "yes"


def start_task(
    sessions: sessionmaker[Session], settings: Settings, redis: Redis,
    request: ResetRequest,
) -> int:
    """Commit the task, then put it on the queue (a task the queue lost is found by the reaper)."""
    from jobs.queueing import enqueue_task, make_queue

    with sessions() as session:
        task = create_task(session, settings, request)
        session.commit()
        task_id = task.id
    enqueue_task(make_queue(settings, redis), task_id)
    return task_id


def warn_if_no_worker(cli: Cli, settings: Settings, redis: Redis) -> None:
    from rq import Worker

    from jobs.queueing import make_queue

    if not Worker.all(queue=make_queue(settings, redis)):
        cli.say(
            f"Note: no worker is running on queue {settings.reset_queue!r} yet; the task "
            "starts when one does (`resetbot worker`)."
        )


# -- following a task ---------------------------------------------------------------------------


class ProgressBar:
    """One line redrawn in place on a terminal; a line per tenth elsewhere (logs, pipes)."""

    def __init__(self, stream: TextIO, width: int = 30) -> None:
        self.stream = stream
        self.width = width
        self.interactive = stream.isatty()
        self._last: tuple[str, int] | None = None

    def draw(self, current: TaskSnapshot) -> None:
        filled = int(current.fraction * self.width)
        bar = "#" * filled + "." * (self.width - filled)
        state = _status_words(current)
        users = f"{current.done:,}/{current.total:,} users" if current.total else "users: -"
        line = f"Task #{current.id} [{bar}] {users} {current.fraction:4.0%}  {state}"
        if self.interactive:
            self.stream.write("\r" + line.ljust(100)[:120])
        else:
            key = (state, int(current.fraction * 10))
            if key == self._last:
                return
            self._last = key
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.interactive:
            self.stream.write("\n")
            self.stream.flush()


def _status_words(current: TaskSnapshot) -> str:
    if current.status is TaskStatus.QUEUED:
        return "queued (waiting for a worker, or for another task to end)"
    if current.status is TaskStatus.RUNNING and not current.planned:
        return "planning"
    waiting = current.counts[ItemState.RETRY_WAIT]
    if current.status is TaskStatus.RUNNING and waiting:
        return f"running; {waiting:,} mails wait for a retry"
    return current.status.value


def follow(
    cli: Cli, sessions: sessionmaker[Session], task_id: int, poll: float = POLL_SECONDS
) -> TaskSnapshot:
    """Draw the task's progress from the database until it ends (Ctrl-C stops following only)."""
    bar = ProgressBar(cli.out)
    try:
        final = _poll_until_final(sessions, task_id, bar, poll)
    except KeyboardInterrupt:
        bar.close()
        cli.say(
            f"Stopped following; task #{task_id} goes on. See: resetbot tasks show {task_id}"
        )
        raise
    bar.close()
    return final


def _poll_until_final(
    sessions: sessionmaker[Session], task_id: int, bar: ProgressBar, poll: float
) -> TaskSnapshot:
    while True:
        with sessions() as session:
            current = snapshot(session, task_id)
        if current is None:
            raise Refused(f"task #{task_id} is gone from the database")
        bar.draw(current)
        if current.status.is_final:
            return current
        time.sleep(poll)  # the database is the truth; a worker elsewhere writes it


def print_summary(cli: Cli, task: TaskSnapshot) -> None:
    took = ""
    if task.started_at and task.finished_at:
        took = f" in {(task.finished_at - task.started_at).total_seconds():.1f} s"
    cli.say(f"Task #{task.id} {task.status.value}{took}: {task.total:,} users.")
    for state, count in task.counts.items():
        if count:
            cli.say(f"  {OUTCOME_WORDS[state]:<34} {count:>8,}")
    if task.error:
        cli.say(f"  Error: {task.error}")
    follow_ups = task.follow_up_count
    cli.say(f"Users to contact by hand: {follow_ups:,}")
    if follow_ups:
        cli.say(f"  The list (CSV): resetbot tasks show {task.id} --csv")


def exit_code(task: TaskSnapshot) -> int:
    if task.status is TaskStatus.COMPLETED:
        return EXIT_OK
    if task.status is TaskStatus.COMPLETED_WITH_ERRORS:
        return EXIT_WITH_ERRORS
    return EXIT_NOT_COMPLETED


# -- tasks, audit -------------------------------------------------------------------------------


def cmd_tasks_list(cli: Cli, args: argparse.Namespace) -> int:
    settings = cli.settings()
    with cli.database(settings) as sessions, sessions() as session:
        tasks = recent_tasks(session)
        if not tasks:
            cli.say("No tasks yet.")
            return EXIT_OK
        cli.say(f"{'ID':>5}  {'STATUS':<22} {'SCOPE':<20} {'MODE':<9} {'USERS':>8}  "
                f"{'CREATED (UTC)':<19}  REQUESTER")
        for task in tasks:
            cli.say(
                f"{task.id:>5}  {task.status:<22} {task.scope:<20} {task.mode:<9} "
                f"{task.total:>8,}  {_when(task.created_at):<19}  {task.requester}"
            )
    return EXIT_OK


def cmd_tasks_show(cli: Cli, args: argparse.Namespace) -> int:
    settings = cli.settings()
    with cli.database(settings) as sessions, sessions() as session:
        current = snapshot(session, args.task_id)
        if current is None:
            raise Refused(f"there is no task #{args.task_id}")
        if args.csv:
            cli.out.write(follow_up_csv(session, current.id))
        elif args.json:
            cli.say(json.dumps(task_document(session, current), indent=2, ensure_ascii=False))
        else:
            print_task(cli, session, current)
    return EXIT_OK


def task_document(session: Session, task: TaskSnapshot) -> dict[str, Any]:
    """The task as JSON: status, counts and each user's outcome; never a password."""
    row = session.get(ResetTask, task.id)
    return {
        "id": task.id,
        "status": task.status.value,
        "scope": task.scope,
        "mode": task.mode,
        "require_change": task.require_change,
        "requester": task.requester,
        "selection": list(row.selection) if row is not None else [],
        "created_at": _iso(task.created_at),
        "started_at": _iso(task.started_at),
        "finished_at": _iso(task.finished_at),
        "total": task.total,
        "counts": {state.value: count for state, count in task.counts.items()},
        "follow_up": task.follow_up_count,
        "error": task.error,
        "users": [
            {
                "username": item.username,
                "full_name": item.full_name,
                "email": item.email,
                "staff": item.is_staff,
                "outcome": item.state,
                "attempts": item.attempts,
                "last_error": item.last_error,
            }
            for item in items(session, task.id)
        ],
    }


def follow_up_csv(session: Session, task_id: int) -> str:
    """The users to contact by hand, in the same CSV as the Slack thread's file."""
    from blocks.messages import FollowUp
    from blocks.messages import follow_up_csv as render
    from core.tasks import follow_ups

    return render(
        FollowUp(
            username=item.username, full_name=item.full_name, email=item.email,
            outcome=ItemState(item.state), attempts=item.attempts, last_error=item.last_error,
        )
        for item in follow_ups(session, task_id)
    )


def print_task(cli: Cli, session: Session, task: TaskSnapshot) -> None:
    cli.say(f"Task #{task.id}: {task.status.value}")
    cli.say(f"  Scope {task.scope}, mode {task.mode}, must change: "
            f"{'yes' if task.require_change else 'no'}; asked by {task.requester}")
    cli.say(f"  Created {_when(task.created_at)}, started {_when(task.started_at)}, "
            f"finished {_when(task.finished_at)} (UTC)")
    if task.error:
        cli.say(f"  Error: {task.error}")
    cli.say(f"  {task.done:,} of {task.total:,} users done")
    for state, count in task.counts.items():
        if count:
            cli.say(f"    {OUTCOME_WORDS[state]:<34} {count:>8,}")
    cli.say("")
    cli.say(f"  {'USERNAME':<24} {'OUTCOME':<34} MAILS  NOTE")
    for item in items(session, task.id):
        note = (item.last_error or "").replace("\n", " ")[:60]
        cli.say(f"  {item.username:<24} {OUTCOME_WORDS[ItemState(item.state)]:<34} "
                f"{item.attempts:>5}  {note}")


def cmd_audit(cli: Cli, args: argparse.Namespace) -> int:
    settings = cli.settings()
    with cli.database(settings) as sessions, sessions() as session:
        entries = audit.entries(session, since=args.since)
        rows = [
            (_iso(entry.at), entry.actor, entry.action,
             "" if entry.task_id is None else entry.task_id,
             json.dumps(entry.detail, sort_keys=True, ensure_ascii=False))
            for entry in entries
        ]
    if args.csv:
        cli.out.write(to_csv(("at", "actor", "action", "task_id", "detail"), rows))
        return EXIT_OK
    if not rows:
        cli.say("No audit entries.")
    for at, actor, action, task_id, detail in rows:
        task = f"#{task_id}" if task_id != "" else "-"
        cli.say(f"{at:<25} {actor:<24} {action:<14} {task:<6} {detail}")
    return EXIT_OK


def _aware(moment: datetime) -> datetime:
    # SQLite returns naive datetimes; resetbot writes UTC everywhere.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else _aware(moment).isoformat(timespec="seconds")


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else _aware(moment).strftime("%Y-%m-%d %H:%M:%S")


def settings_environment(settings: Settings) -> dict[str, str]:
    """Environment variables that make `Settings.from_env` build exactly `settings`."""
    return settings.to_env()


if __name__ == "__main__":
    sys.exit(main())
