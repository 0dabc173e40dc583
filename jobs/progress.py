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
from jobs.context import WorkerContext
from jobs.reporting import SafeReporter
from jobs.rows import rowcount

#: A job that keeps settling users checks its task's progress at least this often, so the
#: users other workers settle move the count too ...
CHECK_EVERY_SECONDS = 1.0
#: ... but never spends more than about 1/CHECK_COST_SHARE of its time on those checks: the
#: COUNT walks the task's settled items (a million at the end of the largest tasks, ~0.1 s),
#: so a big task's clock-driven checks come further apart as it goes.
CHECK_COST_SHARE = 50


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
    """When one job checks its task's progress: after a settled batch, once the users it has
    settled since its last check make a progress step's worth, or CHECK_EVERY_SECONDS passed.

    A check is one COUNT on the task's items, so a job makes about one per step and one per
    second however small its batches; Slack still hears at most once per step (see
    `report_progress`). Called on the helper thread that settles batches, never on the
    hashing one.
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
        self.unchecked = 0
        self.checked_at = clock()
        self.every = CHECK_EVERY_SECONDS

    def _per_step(self, total: int) -> float:
        # Unknown total (planning goes on): only the clock prompts a check.
        return math.ceil(total / self.context.settings.progress_steps) if total else math.inf

    def settled(self, users: int) -> None:
        self.unchecked += users
        now = self.clock()
        if self.unchecked < self.per_step and now - self.checked_at < self.every:
            return
        self.unchecked = 0
        total = report_progress(self.context, self.task_id)
        self.checked_at = self.clock()
        self.every = max(CHECK_EVERY_SECONDS, (self.checked_at - now) * CHECK_COST_SHARE)
        if total:
            self.per_step = self._per_step(total)
