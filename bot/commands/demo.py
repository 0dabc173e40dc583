"""`resetbot demo`: a first run on sample users, nothing to set up (bot/demo.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from bot.commands.context import Cli
from bot.commands.parsing import Subparsers, add_command


def add_parser(commands: Subparsers) -> None:
    demo = add_command(commands, "demo",
                       "first run: a real reset of 50 sample users, nothing to set up")
    demo.add_argument("--dir", type=Path, default=Path("resetbot-demo"),
                      help="where the demo keeps its files (default ./resetbot-demo); "
                           "a demo there before is replaced")
    demo.set_defaults(handler=cmd_demo)


def cmd_demo(cli: Cli, args: argparse.Namespace) -> int:
    from bot.demo import run_demo

    return run_demo(cli, args.dir)
