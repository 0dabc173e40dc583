"""The terminal progress display (rich) on a terminal and off one (pipes, logs, tests)."""

from __future__ import annotations

import io
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from bot.progress_view import TaskProgress, final_rate, status_words
from core.models import ItemState, TaskStatus
from core.progress import TaskSnapshot

STARTED = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def task(status: TaskStatus, total: int = 0, done: int = 0, retry_wait: int = 0) -> TaskSnapshot:
    counts = dict.fromkeys(ItemState, 0)
    counts[ItemState.NOTIFIED] = done
    counts[ItemState.RETRY_WAIT] = retry_wait
    counts[ItemState.PENDING] = total - done - retry_wait
    return TaskSnapshot(
        id=7, status=status, scope="all", mode="generated", require_change=True,
        requester="cli:ada", requester_name="ada", total=total, planned=total > 0,
        counts=counts, created_at=STARTED, started_at=None, finished_at=None,
        slack_channel=None, slack_thread_ts=None, retry_of=None, cancel_requested=False,
        error=None,
    )


def a_whole_run() -> list[TaskSnapshot]:
    done = replace(
        task(TaskStatus.COMPLETED, total=40, done=40),
        started_at=STARTED, finished_at=STARTED + timedelta(seconds=4),
    )
    return [
        task(TaskStatus.QUEUED),
        task(TaskStatus.RUNNING),
        task(TaskStatus.RUNNING, total=40, done=10, retry_wait=3),
        done,
    ]


def test_off_a_terminal_only_the_final_state_is_written_once_on_one_line() -> None:
    out = io.StringIO()
    with TaskProgress(out) as progress:
        for snapshot in a_whole_run():
            progress.draw(snapshot)
    written = out.getvalue()
    assert written.count("\n") == 1 and written.endswith("\n"), repr(written)
    assert written.startswith("Task #7 ")
    # 40 users between the worker's start and finish times, 4 s apart.
    assert "40 of 40 users 100% 10.0 users/s" in written
    assert "\x1b" not in written and "\r" not in written
    assert "queued" not in written and "planning" not in written


def test_following_stopped_early_leaves_what_the_task_was_doing() -> None:
    out = io.StringIO()
    with TaskProgress(out) as progress:
        progress.draw(task(TaskStatus.QUEUED))
        progress.stop()  # as on Ctrl-C; leaving the block must not draw it again
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("Task #7 ") and "users: -" in lines[0]
    assert lines[1:] == ["  queued (waiting for a worker, or for another task to end)"]


def test_on_a_terminal_each_redraw_erases_the_previous_lines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TERM", "xterm-256color")  # rich draws nothing live on a dumb terminal
    monkeypatch.setenv("COLUMNS", "120")  # narrower, rich cuts the texts short
    out = Terminal()
    with TaskProgress(out) as progress:
        for snapshot in a_whole_run():
            progress.draw(snapshot)
    written = out.getvalue()
    erase_line = "\x1b[2K"
    # The hand-drawn bar padded with spaces and left the tail of a longer line behind.
    assert written.count(erase_line) >= len(a_whole_run())
    assert "running; 3 mails wait for a retry" in written
    assert "40 of 40 users" in written.rsplit(erase_line, 1)[-1]


def test_status_words_and_final_rate() -> None:
    queued, planning, retrying, done = a_whole_run()
    assert status_words(queued).startswith("queued (waiting for a worker")
    assert status_words(planning) == "planning"
    assert status_words(retrying) == "running; 3 mails wait for a retry"
    assert status_words(done) == "completed"
    assert final_rate(retrying) is None
    assert final_rate(done) == 10.0
