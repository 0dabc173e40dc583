"""The reaper: puts back work a dead worker or an emptied Redis lost. The database decides."""

from __future__ import annotations

from dataclasses import dataclass

from jobs.context import WorkerContext


@dataclass
class ReapReport:
    leases_returned: int = 0
    chunks_enqueued: int = 0
    retries_enqueued: int = 0
    plans_enqueued: int = 0
    tasks_finished: int = 0

    @property
    def changed(self) -> bool:
        return any(
            (
                self.leases_returned,
                self.chunks_enqueued,
                self.retries_enqueued,
                self.plans_enqueued,
                self.tasks_finished,
            )
        )


def reap(context: WorkerContext) -> ReapReport:
    return ReapReport()
