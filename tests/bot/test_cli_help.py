"""Every `resetbot ... --help` renders and names what it takes, and each command's parser sits
beside the function it dispatches to (one module per command group in bot/commands/).

Pure argparse, in-process: no database, Redis or settings are read to show a help.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Iterator

import pytest

from bot.cli import build_parser, main

Words = tuple[str, ...]


def parsers(parser: argparse.ArgumentParser, path: Words = ()) -> Iterator[
    tuple[Words, argparse.ArgumentParser]
]:
    """The parser and every subcommand's, each with the words that reach it."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from parsers(sub, (*path, name))


def what_help_must_name(parser: argparse.ArgumentParser) -> set[str]:
    """Every option string, positional metavar and subcommand of a parser."""
    names: set[str] = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            names.update(action.choices)
        elif action.option_strings:
            names.update(action.option_strings)
        else:
            names.add(str(action.metavar or action.dest))
    return names


ALL = list(parsers(build_parser()))


def test_the_tree_holds_every_command() -> None:
    assert {" ".join(path) for path, _ in ALL} >= {
        "", "db upgrade", "users import", "users export", "directory check", "reset",
        "tasks", "tasks show", "tasks undo", "tasks start", "mail preview", "audit", "worker",
        "serve", "demo",
    }


@pytest.mark.parametrize(("path", "parser"), ALL, ids=[" ".join(p) or "resetbot" for p, _ in ALL])
def test_every_help_renders_and_lists_its_flags(
    path: Words, parser: argparse.ArgumentParser, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([*path, "--help"], environ={})
    assert exit_.value.code == 0
    shown = capsys.readouterr()
    assert shown.err == ""
    assert shown.out.startswith(f"usage: resetbot {' '.join(path)}".rstrip())
    missing = {name for name in what_help_must_name(parser) if name not in shown.out}
    assert not missing, f"`resetbot {' '.join(path)} --help` does not name {sorted(missing)}"


@pytest.mark.parametrize(("path", "parser"), [(p, s) for p, s in ALL if p],
                         ids=[" ".join(p) for p, _ in ALL if p])
def test_a_command_dispatches_to_a_function_beside_its_parser(
    path: Words, parser: argparse.ArgumentParser
) -> None:
    group = importlib.import_module(f"bot.commands.{path[0]}")
    assert callable(group.add_parser)
    handler = parser.get_default("handler")
    if handler is None:  # a group whose action is required: its actions hold the handlers
        assert any(isinstance(action, argparse._SubParsersAction) for action in parser._actions)
        return
    assert handler.__module__ == group.__name__, (
        f"`resetbot {' '.join(path)}` runs {handler.__module__}.{handler.__qualname__}, "
        f"away from its parser in {group.__name__}"
    )
