"""`resetbot audit`: the audit trail, as a table or CSV (its flow is in bot/tasks_cli.py)."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

from bot.commands.context import Cli
from bot.commands.parsing import Subparsers, add_command
from bot.terminal import EXIT_OK


def add_parser(commands: Subparsers) -> None:
    audit_ = add_command(commands, "audit", "the audit trail: who did what, and when",
                         epilog="examples:\n  resetbot audit --since 2025-01-31\n"
                                "  resetbot audit --csv > audit.csv")
    audit_.add_argument("--since", type=_since, metavar="DATE",
                        help="only from this date (YYYY-MM-DD) or ISO time on (UTC)")
    audit_.add_argument("--csv", action="store_true", help="as CSV, for a spreadsheet")
    audit_.set_defaults(handler=cmd_audit)


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


def cmd_audit(cli: Cli, args: argparse.Namespace) -> int:
    from bot.tasks_cli import audit_rows, print_audit

    settings = cli.settings()
    with cli.database(settings) as sessions, sessions() as session:
        rows = audit_rows(session, args.since)
    print_audit(cli, rows, as_csv=args.csv)
    return EXIT_OK
