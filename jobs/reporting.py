"""Where a task's progress goes: the Slack thread, the terminal, or nowhere.

The engine decides *when* to report (it throttles, so a task makes a bounded number of calls
whatever its size); a reporter only decides *how*. Reporters receive ids and counts, never a
password, and are called after the database work they describe has been committed. The engine
calls them through a `SafeReporter`, so a failing reporter never fails a reset.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

logger = logging.getLogger(__name__)


class Reporter(Protocol):
    """What the engine says about a task, and how often it says it (at most):

    - `task_started`: once, when the task starts (no running task shares a user with it);
    - `task_progress`: once per step (`step` of `steps`, from settings.progress_steps), whichever
      worker first sees the users done cross it (checked after settled batches: within chunks);
    - `task_waiting`: once, when the task first finds a running one that shares users with it
      (`blocking_task_id`);
    - `retries_scheduled`: once per retry round; `attempt` is the number of the mail attempt
      coming up (2 to max_mail_attempts), `users` how many wait for it when it is said;
    - `task_paused` / `task_resumed`: once per mail outage, when the task first pauses
      because the mail server cannot be used, and when it answers again;
    - `task_finished`: exactly once, after the final status is committed (also for a task
      cancelled before it started, which never had `task_started`);
    - `schedule_reminder`: once, RESET_SCHEDULE_REMINDER before a scheduled task's start;
    - `schedule_reached`: once, when a scheduled task's time has come and it was started (or
      held, its counts having changed); `late_seconds` after its start time.
    """

    def task_started(self, task_id: int) -> None: ...

    def task_progress(self, task_id: int, step: int, steps: int) -> None: ...

    def task_waiting(self, task_id: int, blocking_task_id: int) -> None: ...

    def retries_scheduled(
        self, task_id: int, users: int, attempt: int, delay_seconds: int
    ) -> None: ...

    def task_paused(self, task_id: int) -> None: ...

    def task_resumed(self, task_id: int) -> None: ...

    def task_finished(self, task_id: int) -> None: ...

    def schedule_reminder(self, task_id: int) -> None: ...

    def schedule_reached(self, task_id: int, late_seconds: int) -> None: ...


class NullReporter:
    """Reports nothing: for workers with no Slack configured, and for tests."""

    def task_started(self, task_id: int) -> None:
        return None

    def task_progress(self, task_id: int, step: int, steps: int) -> None:
        return None

    def task_waiting(self, task_id: int, blocking_task_id: int) -> None:
        return None

    def retries_scheduled(
        self, task_id: int, users: int, attempt: int, delay_seconds: int
    ) -> None:
        return None

    def task_paused(self, task_id: int) -> None:
        return None

    def task_resumed(self, task_id: int) -> None:
        return None

    def task_finished(self, task_id: int) -> None:
        return None

    def schedule_reminder(self, task_id: int) -> None:
        return None

    def schedule_reached(self, task_id: int, late_seconds: int) -> None:
        return None


class SafeReporter:
    """Forwards to a reporter; a failing reporter is logged, never fails the reset.

    The database already holds the outcome being reported, so a Slack outage must not turn a
    finished reset into a failed job (and a retried job would redo nothing but the report).
    """

    def __init__(self, reporter: Reporter) -> None:
        self.reporter = reporter

    def task_started(self, task_id: int) -> None:
        self._forward("task_started", task_id, lambda: self.reporter.task_started(task_id))

    def task_progress(self, task_id: int, step: int, steps: int) -> None:
        self._forward(
            "task_progress", task_id, lambda: self.reporter.task_progress(task_id, step, steps)
        )

    def task_waiting(self, task_id: int, blocking_task_id: int) -> None:
        self._forward(
            "task_waiting", task_id,
            lambda: self.reporter.task_waiting(task_id, blocking_task_id),
        )

    def retries_scheduled(
        self, task_id: int, users: int, attempt: int, delay_seconds: int
    ) -> None:
        self._forward(
            "retries_scheduled", task_id,
            lambda: self.reporter.retries_scheduled(task_id, users, attempt, delay_seconds),
        )

    def task_paused(self, task_id: int) -> None:
        self._forward("task_paused", task_id, lambda: self.reporter.task_paused(task_id))

    def task_resumed(self, task_id: int) -> None:
        self._forward("task_resumed", task_id, lambda: self.reporter.task_resumed(task_id))

    def task_finished(self, task_id: int) -> None:
        self._forward("task_finished", task_id, lambda: self.reporter.task_finished(task_id))

    def schedule_reminder(self, task_id: int) -> None:
        self._forward("schedule_reminder", task_id,
                      lambda: self.reporter.schedule_reminder(task_id))

    def schedule_reached(self, task_id: int, late_seconds: int) -> None:
        self._forward("schedule_reached", task_id,
                      lambda: self.reporter.schedule_reached(task_id, late_seconds))

    @staticmethod
    def _forward(method: str, task_id: int, call: Callable[[], None]) -> None:
        try:
            call()
        except Exception:  # any reporter bug: logged with its traceback, not hidden
            logger.exception("reporter %s failed for task %s", method, task_id)
