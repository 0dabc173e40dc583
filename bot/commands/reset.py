"""`resetbot reset`: check the options, then hand over to the flow in bot/reset_flow.py
(preview, confirm, follow)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from bot.commands.context import Cli
from bot.commands.parsing import Subparsers, add_command
from bot.terminal import UsageError
from core.states import NoEmailChoice, Scope

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


def add_parser(commands: Subparsers) -> None:
    reset = add_command(commands, "reset", "reset passwords now: preview, confirm, follow",
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
