"""The reset engine's RQ jobs: plan a task, run its chunks, retry mails.

Every state change is a conditional UPDATE on the database, which is the source of truth; Redis
only carries ids of work to do, so running a job twice (or losing Redis) is safe. Work is batched
per claim (one claim statement, one executemany of hashes, one of states), so the cost of a task
is the hashing itself. A generated password exists only in this process's memory between its
hash being committed and its mail being accepted; a retry makes a new one.

Only the entry points live here, at the paths queued jobs name (`jobs.queueing.PLAN`, ...), so
jobs queued by an older version still run. The engine itself, in the order a task meets it:
`jobs.planning` (start a task or wait for one sharing its users, write its items),
`jobs.chunks` (claim, hash and settle batch after batch), `jobs.claims` (the leased items'
UPDATEs), `jobs.settling` (write a hashed batch, mail it), `jobs.retries` (mail outcomes and
retry delays), `jobs.progress` (throttled progress reports) and `jobs.finishing` (fail, settle,
end a task).
"""

from __future__ import annotations

from jobs.chunks import work_items
from jobs.claims import chunk_has_pending, chunk_items
from jobs.context import current_context
from jobs.finishing import finish_if_done
from jobs.planning import plan_items, start_task
from jobs.retries import due_retries
from jobs.undo import undo_of, work_undo_items


def plan_task(task_id: int) -> None:
    """Start the task if no running task shares its users, then write its items and chunks."""
    context = current_context()
    started = start_task(context, task_id)
    if started is not None:
        plan_items(context, task_id, resuming=not started)


def run_chunk(task_id: int, chunk: int) -> None:
    """Reset the pending users of one chunk, and of the next ones while they wait, a claim
    batch at a time (an Undo task's: put their previous passwords back, jobs/undo.py)."""
    context = current_context()
    if not chunk_has_pending(context, task_id, chunk):
        # A job before it took them (RESET_CHUNK_SWEEP), or the task was cancelled: any job
        # may be the one to end it.
        finish_if_done(context, task_id)
        return
    items = chunk_items(task_id, chunk, context.settings.chunk_sweep)
    if undo_of(context, task_id) is not None:
        work_undo_items(context, task_id, items)
        return
    work_items(context, task_id, items)


def retry_mails(task_id: int, item_ids: list[int]) -> None:
    """Mail these users again, each with a fresh password (whose hash replaces the last one)."""
    work_items(current_context(), task_id, due_retries(task_id, item_ids))
