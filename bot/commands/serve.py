"""`resetbot serve`: run the Slack app, over HTTP or Socket Mode (bot/server.py)."""

from __future__ import annotations

import argparse

from bot.commands.context import Cli, log_to_stderr
from bot.commands.parsing import Subparsers, add_command
from bot.terminal import EXIT_OK


def add_parser(commands: Subparsers) -> None:
    serve = add_command(commands, "serve", "run the Slack app (HTTP, or Socket Mode)")
    serve.add_argument("--port", type=_port, default=3000, help="HTTP port (default 3000)")
    # bot.server.LOOPBACK, not imported here: the command line starts without waitress.
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1: this host only, behind "
                            "the HTTPS reverse proxy; 0.0.0.0: every interface)")
    serve.add_argument("--with-worker", action="store_true",
                       help="also run a worker (everything on one host)")
    serve.set_defaults(handler=cmd_serve)


def _port(value: str) -> int:
    if not (value.isascii() and value.isdigit()) or not 0 <= int(value) <= 65535:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number (0-65535; 0: any free)")
    return int(value)


def cmd_serve(cli: Cli, args: argparse.Namespace) -> int:
    from bot.server import serve

    settings = cli.settings(with_secret_key=True)
    log_to_stderr()
    serve(settings, port=args.port, host=args.host, with_worker=args.with_worker)
    return EXIT_OK
