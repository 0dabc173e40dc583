"""`resetbot users import | export`: resetbot's own users table as CSV (core/userio.py)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from bot.commands.context import Cli, bound_engine
from bot.commands.parsing import Subparsers, add_command
from bot.terminal import EXIT_OK, plural, requester, shown_csv
from core.errors import ConfigError
from core.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from core.directory import Directory as TableDirectory

USERS_EPILOG = """\
The CSV has the columns username, full_name, email and (if you like) role, in any order.

examples:
  resetbot users import users.csv
  resetbot users export backup.csv"""


def add_parser(commands: Subparsers) -> None:
    users = add_command(commands, "users", "import or export the user directory as CSV",
                        epilog=USERS_EPILOG)
    actions = users.add_subparsers(dest="users_command", required=True, metavar="ACTION",
                                   title="actions")
    import_ = add_command(
        actions, "import", "add new users and update known ones from a CSV file",
        description="Add new users and update known ones (by username) from a CSV file in "
                    "UTF-8. All or nothing: a file with a bad row changes nothing. "
                    "Passwords are left alone.",
        epilog=USERS_EPILOG,
    )
    import_.add_argument("file", metavar="FILE", help="the CSV file; '-' reads stdin")
    import_.set_defaults(handler=cmd_users_import)
    export = add_command(
        actions, "export", "write every user as CSV (the format import reads)",
        description="Write every user as CSV, in the format `users import` reads, safe to "
                    "open in a spreadsheet. A FILE is written exactly; on a terminal, control "
                    "characters in names are shown as escapes (\\x1b).",
    )
    export.add_argument("file", metavar="FILE", nargs="?", default="-",
                        help="where to write (default '-': the screen, or stdout)")
    export.set_defaults(handler=cmd_users_export)


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


@contextmanager
def _table_directory(
    settings: Settings, sessions: sessionmaker[Session]
) -> Iterator[TableDirectory]:
    """resetbot's own users table (import, export): never an LDAP directory."""
    from core.directory import Directory as TableDirectory

    directory = TableDirectory.from_settings(settings, bound_engine(sessions))
    try:
        yield directory
    finally:
        directory.dispose()
