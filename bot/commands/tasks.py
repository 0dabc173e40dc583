"""`resetbot tasks [list | show | cancel | retry | undo | approve | reject | start]`: the reset
tasks, one at a time (their flows are in bot/tasks_cli.py)."""

from __future__ import annotations

import argparse
import re
import sys
from functools import partial

from bot.commands.context import Cli, users_directory
from bot.commands.parsing import Handler, Subparsers, add_command
from bot.terminal import EXIT_OK, UsageError

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


def add_parser(commands: Subparsers) -> None:
    tasks = add_command(commands, "tasks",
                        "list reset tasks; show, cancel, retry, approve, reject or start one",
                        description=TASKS_DESCRIPTION, epilog=TASKS_EPILOG,
                        usage="resetbot tasks [list | show ID | cancel ID | retry ID | undo ID | "
                              "approve ID | reject ID | start ID]")
    tasks.set_defaults(handler=cmd_tasks_list)
    actions = tasks.add_subparsers(dest="tasks_command", metavar="ACTION", title="actions")
    listing = add_command(actions, "list",
                          "the last 20 tasks (also what `resetbot tasks` shows)",
                          prog="resetbot tasks list")
    listing.set_defaults(handler=cmd_tasks_list)

    show = add_command(actions, "show", "one task: counts and every user's outcome and mails",
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
    actions: Subparsers, name: str, summary: str, handler: Handler, description: str,
) -> argparse.ArgumentParser:
    """`resetbot tasks NAME ID`: an action on one task."""
    action = add_command(actions, name, summary, prog=f"resetbot tasks {name}",
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
    with cli.database(settings) as sessions, users_directory(settings, sessions) as directory:
        return undo_task(cli, settings, sessions, directory, partial(cli.redis, settings),
                         args.task_id, yes=args.yes, detach=args.detach)


def cmd_tasks_approve(cli: Cli, args: argparse.Namespace) -> int:
    from bot.tasks_cli import approve_task

    settings = cli.settings()
    with cli.database(settings) as sessions, users_directory(settings, sessions) as directory:
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
    with cli.database(settings) as sessions, users_directory(settings, sessions) as directory:
        start_held_task(cli, settings, sessions, directory, partial(cli.redis, settings),
                        args.task_id, as_user=args.as_user)
    return EXIT_OK
