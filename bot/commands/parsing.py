"""How every `resetbot` parser looks: one help formatter, and a subcommand's summary line that
also opens its own --help."""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Callable
from typing import TypeAlias

from bot.commands.context import Cli

Handler: TypeAlias = Callable[[Cli, argparse.Namespace], int]
# Generic for the type checker only: argparse's class takes no subscript at run time.
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


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


def new_parser(factory: Callable[..., argparse.ArgumentParser], *args: object,
               **kwargs: object) -> argparse.ArgumentParser:
    return factory(*args, formatter_class=HelpFormatter, **kwargs)


def add_command(commands: Subparsers, name: str, summary: str,
                **kwargs: object) -> argparse.ArgumentParser:
    """A subcommand: `summary` is its line in the list; its own --help starts with it too."""
    kwargs.setdefault("description", summary[0].upper() + summary[1:] + ".")
    return new_parser(commands.add_parser, name, help=summary, **kwargs)
