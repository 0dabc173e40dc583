"""What the terminal commands share: exit codes, the refusal they end with, how they write.

`bot/cli.py` and the command groups in `bot/commands/` parse and dispatch; the flows
(`bot/reset_flow.py`, `bot/tasks_cli.py`) and the demo write through an `Output` (the commands'
`Cli` context satisfies it) and end with these exit codes.
"""

from __future__ import annotations

import getpass
from typing import Protocol, TextIO

from core.controls import visible
from core.errors import ResetbotError
from core.states import ItemState

EXIT_OK = 0
EXIT_REFUSED = 1  # bad input, nothing changed; or a service could not be reached
EXIT_CONFIG = 2  # a setting is missing or invalid
EXIT_USAGE = 2  # the command line itself is wrong (as argparse says it)
EXIT_WITH_ERRORS = 3  # the task ended completed_with_errors: some mails never got through
EXIT_NOT_COMPLETED = 4  # the task failed or was cancelled
EXIT_INTERRUPTED = 130
EXIT_PIPE_CLOSED = 141  # whoever read the output stopped (`| head`): 128 + SIGPIPE, as Unix tools
SECRET_KEY_FILE = "secret.key"  # noqa: S105 - a file name, not a secret
OUTCOME_WORDS = {
    ItemState.PENDING: "waiting",
    ItemState.CLAIMED: "in progress",
    ItemState.RETRY_WAIT: "mail retry scheduled",
    ItemState.RESET: "reset (default password)",
    ItemState.NOTIFIED: "e-mailed",
    ItemState.NO_EMAIL: "no e-mail: tell them yourself",
    ItemState.NOTIFY_FAILED: "mail failed: tell them yourself",
    ItemState.CANCELLED: "cancelled, not reset",
    ItemState.SKIPPED: "no e-mail: left alone, not reset",
    ItemState.HANDED_OUT: "no e-mail: tell them the typed password",
    ItemState.LOCKED: "locked on purpose: left alone",
    ItemState.RESTORED: "undone: previous password back",
    ItemState.CHANGED_SINCE: "changed since: left alone",
}


class Refused(ResetbotError):
    """The command stops here with a clear message; nothing was changed."""


class UsageError(ResetbotError):
    """The options do not fit together (exit 2, like argparse's own mistakes); nothing changed."""


class Output(Protocol):
    """Where a terminal flow writes: whole lines through `say`, or the stream itself."""

    @property
    def out(self) -> TextIO: ...

    def say(self, text: str = "") -> None: ...


def login_name() -> str:
    try:
        return getpass.getuser()[:50]
    except (OSError, KeyError):
        return "unknown"


def requester() -> str:
    return f"cli:{login_name()}"


def plural(count: int, singular: str, many: str | None = None) -> str:
    """`1 user`, `2 users`, `1,000 users`."""
    return f"{count:,} {singular if count == 1 else (many or singular + 's')}"


def shown(text: str | None) -> str:
    """Text from the directory or a mail server, safe to print: control characters as escapes."""
    return "" if text is None else visible(text)


def shown_csv(content: str) -> str:
    """CSV for a terminal: each row made visible; the row breaks (CRLF) stay line breaks."""
    return "\n".join(visible(row) for row in content.split("\r\n"))
