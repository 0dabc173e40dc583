"""`resetbot` run in-process by tests: its exit code and what it printed.

Import the fixtures where they are used (`from tests.support.cli import run as run`), as with
`smtp_server`.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from bot.cli import main
from core.settings import Settings
from tests.support.smtp import SmtpServer


@dataclass
class Run:
    code: int
    out: str
    err: str


class FakeTerminal(io.StringIO):
    """A stream that says it is a terminal: typed answers in, or what the screen shows."""

    def isatty(self) -> bool:
        return True


RunCli = Callable[..., Run]


@pytest.fixture
def cli_settings(settings: Settings, smtp_server: SmtpServer) -> Settings:
    return smtp_server.settings(settings)


@pytest.fixture
def run(
    cli_settings: Settings, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> RunCli:
    """`run("tasks", "show", "1", stdin=..., stdout=..., SOME_SETTING="x")`: one command."""

    def run_cli(*argv: str, stdin: io.StringIO | None = None,
                stdout: io.StringIO | None = None, **env: str) -> Run:
        with monkeypatch.context() as patch:
            patch.setattr("sys.stdin", stdin if stdin is not None else io.StringIO(""))
            if stdout is not None:
                patch.setattr("sys.stdout", stdout)
            try:
                code = main(list(argv), environ={**cli_settings.to_env(), **env})
            except SystemExit as exit_:  # argparse's own mistakes and --help
                code = int(exit_.code or 0)
        captured = capsys.readouterr()
        out = stdout.getvalue() if stdout is not None else captured.out
        return Run(code, out, captured.err)

    return run_cli
