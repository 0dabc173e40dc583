"""`resetbot mail preview`: the password mail a user would get (bot/mail_preview.py)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from bot.commands.context import Cli, users_directory
from bot.commands.parsing import Subparsers, add_command
from bot.terminal import EXIT_OK, Refused

if TYPE_CHECKING:
    from core.directory.protocol import User


def add_parser(commands: Subparsers) -> None:
    mail = add_command(commands, "mail", "the password mail: `resetbot mail preview`")
    actions = mail.add_subparsers(dest="mail_command", required=True, metavar="ACTION",
                                  title="actions")
    preview = add_command(actions, "preview",
                          "show the mail a user would get, text and HTML, password masked",
                          prog="resetbot mail preview")
    preview.add_argument("--user", metavar="USERNAME",
                         help="a real user from the directory (default: a sample user)")
    preview.add_argument("--lang", metavar="CODE",
                         help="the language to show (e.g. fr; default MAIL_LANGUAGE)")
    preview.set_defaults(handler=cmd_mail_preview)


def cmd_mail_preview(cli: Cli, args: argparse.Namespace) -> int:
    from bot.mail_preview import SampleUser, preview_text
    from jobs.mail_templates import MailTemplates

    settings = cli.settings()
    templates = MailTemplates.load(settings)
    user: SampleUser | User = SampleUser()
    if args.user is not None:
        with cli.database(settings) as sessions, users_directory(settings, sessions) as directory:
            found = directory.by_username([args.user])
        if not found:
            raise Refused(f"there is no user {args.user!r} in the directory")
        user = found[0]
    cli.say(preview_text(templates, username=user.username, full_name=user.full_name,
                         email=user.email, language=args.lang))
    return EXIT_OK
