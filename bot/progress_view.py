"""One task's progress on the terminal, drawn by rich: bar, N of M users, users/s, time left.

While the task runs, a second line says what it is doing (queued, planning, mails waiting for a
retry); once it ends, the bar stays and the summary that follows says how it ended. On a terminal
the display is redrawn in place. Elsewhere (a pipe, a log, a test's StringIO) rich draws no live
redraws: the last state is written once. Imported only where progress is drawn, so
`resetbot --help` does not load rich.
"""

from __future__ import annotations

from collections.abc import Iterable
from types import TracebackType
from typing import TextIO

from rich.console import Console, RenderableType
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Column
from rich.text import Text

from bot.terminal import plural
from core.models import ItemState, TaskStatus
from core.progress import TaskSnapshot

#: A pipe or file has no width of its own; a log line this wide reads everywhere.
NOT_A_TERMINAL_WIDTH = 100
#: What the texts beside the bar take with up to 99,999 users; the bar gets the rest.
TEXT_WIDTH = 60
BAR_WIDTHS = range(10, 41)


class UsersPerSecond(ProgressColumn):
    """The rate over rich's recent samples; once the task ended, over its whole run.

    A short task can end between two polls, leaving rich no samples to measure: the task's own
    start and finish times (both written by the worker) still give its rate.
    """

    def render(self, task: Task) -> Text:
        speed = task.fields.get("final_rate") or task.speed
        shown = "-" if speed is None else f"{speed:,.1f}"
        return Text(f"{shown} users/s", style="progress.data.speed")


class ProgressWithWords(Progress):
    """rich's progress table, with one line of words under it while there are words to say."""

    words = ""

    def get_renderables(self) -> Iterable[RenderableType]:
        yield from super().get_renderables()
        if self.words:
            yield Text(f"  {self.words}", no_wrap=True, overflow="ellipsis")


class TaskProgress:
    """The progress of one task, as a context manager; `draw` shows a fresh snapshot."""

    def __init__(self, stream: TextIO) -> None:
        interactive = stream.isatty()
        console = Console(
            file=stream,
            # Decided here, as for every other line the CLI writes, not by FORCE_COLOR & co.
            force_terminal=interactive,
            width=None if interactive else NOT_A_TERMINAL_WIDTH,
        )
        self._progress = ProgressWithWords(
            TextColumn("{task.description}", table_column=_one_line()),
            BarColumn(bar_width=_bar_width(console), table_column=_one_line()),
            TextColumn("{task.fields[users]}", table_column=_one_line()),
            TaskProgressColumn(table_column=_one_line()),
            UsersPerSecond(table_column=_one_line()),
            TimeRemainingColumn(elapsed_when_finished=True, table_column=_one_line()),
            console=console,
            auto_refresh=interactive,
        )
        self._task: TaskID | None = None
        self._stopped = False

    def __enter__(self) -> TaskProgress:
        self._progress.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def draw(self, current: TaskSnapshot) -> None:
        description = f"Task #{current.id}"
        # Unknown until planned: rich then pulses the bar instead of showing 0 %.
        total = current.total or None
        # The one tally (core/tally.py): users not reached after a cancel are not done.
        done = current.tally.done
        users = (f"{done:,} of {plural(current.total, 'user')}" if current.total
                 else "users: -")
        if self._task is None:
            self._task = self._progress.add_task(
                description, total=total, completed=done, users=users,
                final_rate=final_rate(current),
            )
        else:
            self._progress.update(
                self._task, description=description, total=total, completed=done,
                users=users, final_rate=final_rate(current),
            )
        self._progress.words = "" if current.status.is_final else status_words(current)
        self._progress.refresh()

    def stop(self) -> None:
        """End the display, leaving the last state on screen (once, however often called)."""
        if self._stopped:
            return
        self._stopped = True
        self._progress.stop()


def _bar_width(console: Console) -> int:
    """As wide as the texts leave room for, within reason (rich would shrink every column)."""
    wanted = console.width - TEXT_WIDTH
    return max(BAR_WIDTHS.start, min(BAR_WIDTHS.stop - 1, wanted))


def _one_line() -> Column:
    """A column cut with an ellipsis rather than wrapped, so the bar stays one line."""
    return Column(no_wrap=True, overflow="ellipsis")


def final_rate(current: TaskSnapshot) -> float | None:
    """Users per second over the task's whole run, once it has ended."""
    if not (current.status.is_final and current.started_at and current.finished_at):
        return None
    seconds = (current.finished_at - current.started_at).total_seconds()
    return current.done / seconds if seconds > 0 else None


def status_words(current: TaskSnapshot) -> str:
    if current.status is TaskStatus.QUEUED:
        return "queued (waiting for a worker, or for another task to end)"
    if current.status is TaskStatus.RUNNING and not current.planned:
        return "planning"
    waiting = current.counts[ItemState.RETRY_WAIT]
    if current.status is TaskStatus.RUNNING and waiting:
        verb = "waits" if waiting == 1 else "wait"
        return f"running; {plural(waiting, 'mail')} {verb} for a retry"
    return current.status.words
