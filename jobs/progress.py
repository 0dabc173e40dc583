"""Progress reports: when a task has crossed another of its settings.progress_steps.

Any worker may notice first; a conditional UPDATE lets exactly one of them report each step,
so a task makes at most progress_steps progress reports whatever its size. A job checks after
its settled batches (see `ProgressWatch`), so progress moves within a chunk, not only when one
ends.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from sqlalchemy import func, select, update

from core.models import FINAL_ITEM_STATES, ResetItem, ResetTask
from jobs.context import ProgressPace, WorkerContext
from jobs.reporting import SafeReporter
from jobs.rows import rowcount

#: A job that keeps settling users checks its task's progress at least this often, so the
#: users other workers settle move the count too ...
CHECK_EVERY_SECONDS = 1.0
#: ... but never spends more than about 1/CHECK_COST_SHARE of its time on those checks: the
#: COUNT walks the task's settled items (a million at the end of the largest tasks, ~0.1 s),
#: so a big task's clock-driven checks come further apart as it goes.
CHECK_COST_SHARE = 50
#: Tasks whose pace a worker keeps (a few run at once; the oldest is let go).
KEPT_PACES = 16


def report_progress(context: WorkerContext, task_id: int) -> int:
    """At most one report per progress step per task, whichever worker gets there first.

    Returns the task's total as planned so far (0 while unknown).
    """
    steps = context.settings.progress_steps
    with context.sessions() as session:
        row = session.execute(
            select(ResetTask.total, ResetTask.planned, ResetTask.reported_step).where(
                ResetTask.id == task_id
            )
        ).one_or_none()
        if row is None or not row.planned or not row.total:
            return 0
        done = session.scalar(
            select(func.count()).where(
                ResetItem.task_id == task_id,
                ResetItem.state.in_([state.value for state in FINAL_ITEM_STATES]),
            )
        ) or 0
        step = min(steps, done * steps // row.total)
        if step <= row.reported_step:
            return int(row.total)
        won = rowcount(
            session.execute(
                update(ResetTask)
                .where(ResetTask.id == task_id, ResetTask.reported_step < step)
                .values(reported_step=step)
            )
        )
        session.commit()
    if won:
        SafeReporter(context.reporter).task_progress(task_id, step, steps)
    return int(row.total)


class ProgressWatch:
    """When one job checks its task's progress: after a settled batch, once the users this
    worker has settled since its last check make a progress step's worth, or its clock-driven
    check is due (CHECK_EVERY_SECONDS, or CHECK_COST_SHARE times as long as the last check
    took); and when the job ends (see `job_ended`).

    A check is one COUNT on the task's items, so a worker makes about one per step and one per
    second however small its batches; Slack still hears at most once per step (see
    `report_progress`). The pace is the worker's, kept across its jobs
    (`WorkerContext.progress_paces`): checked at every job's end, a million-user task's
    10,000 jobs each counted up to a million items. Called on the helper thread that settles
    batches, never on the hashing one.
    """

    def __init__(
        self,
        context: WorkerContext,
        task_id: int,
        total: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.context = context
        self.task_id = task_id
        self.clock = clock
        self.per_step = self._per_step(total)
        self.pace = self._pace_of(context, task_id)

    def _pace_of(self, context: WorkerContext, task_id: int) -> ProgressPace:
        paces = context.progress_paces
        pace = paces.get(task_id)
        if pace is None:
            if len(paces) >= KEPT_PACES:  # the oldest task's: long ended, most likely
                del paces[next(iter(paces))]
            pace = paces[task_id] = ProgressPace(self.clock(), CHECK_EVERY_SECONDS)
        return pace

    @property
    def unchecked(self) -> int:
        return self.pace.unchecked

    @property
    def checked_at(self) -> float:
        return self.pace.checked_at

    def _per_step(self, total: int) -> float:
        # Unknown total (planning goes on): only the clock prompts a check.
        return math.ceil(total / self.context.settings.progress_steps) if total else math.inf

    def settled(self, users: int) -> None:
        pace = self.pace
        pace.unchecked += users
        now = self.clock()
        if pace.unchecked < self.per_step and now - pace.checked_at < pace.every:
            return
        self._check(now)

    def job_ended(self) -> None:
        """A check, unless the last one was less than CHECK_COST_SHARE times its own length
        ago: a small task's jobs each end with one (its last step told before its summary),
        a million-user task's ~every 25 s rather than at each of its 10,000 jobs."""
        now = self.clock()
        if now - self.pace.checked_at >= self.pace.cost * CHECK_COST_SHARE:
            self._check(now)

    def _check(self, now: float) -> None:
        pace = self.pace
        pace.unchecked = 0
        total = report_progress(self.context, self.task_id)
        pace.checked_at = self.clock()
        pace.cost = pace.checked_at - now
        pace.every = max(CHECK_EVERY_SECONDS, pace.cost * CHECK_COST_SHARE)
        if total:
            self.per_step = self._per_step(total)
