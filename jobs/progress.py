"""Progress reports: when a task has crossed another of its settings.progress_steps.

Any worker may notice first; a conditional UPDATE lets exactly one of them report each step,
so a task makes at most progress_steps progress reports whatever its size.
"""

from __future__ import annotations

from sqlalchemy import func, select, update

from core.models import FINAL_ITEM_STATES, ResetItem, ResetTask
from jobs.context import WorkerContext
from jobs.reporting import SafeReporter
from jobs.rows import rowcount


def report_progress(context: WorkerContext, task_id: int) -> None:
    """At most one report per progress step per task, whichever worker gets there first."""
    steps = context.settings.progress_steps
    with context.sessions() as session:
        row = session.execute(
            select(ResetTask.total, ResetTask.planned, ResetTask.reported_step).where(
                ResetTask.id == task_id
            )
        ).one_or_none()
        if row is None or not row.planned or not row.total:
            return
        done = session.scalar(
            select(func.count()).where(
                ResetItem.task_id == task_id,
                ResetItem.state.in_([state.value for state in FINAL_ITEM_STATES]),
            )
        ) or 0
        step = min(steps, done * steps // row.total)
        if step <= row.reported_step:
            return
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
