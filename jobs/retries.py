"""Mail retries: what a mail's delivery means for its user, and when the next attempt runs.

A mail refused for now (a busy server, a full mailbox) is tried again after the delays in
settings.mail_retry_delays, each time with a fresh password; after the last one the user is
listed for follow-up. Retries of one job are scheduled as one job per round.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, func, select, update

from core.models import ItemState, ResetItem, ResetTask
from jobs.batches import Claimed, Conditions, ItemOutcome
from jobs.context import WorkerContext
from jobs.mailer import Delivery, Outcome
from jobs.queueing import enqueue_retry
from jobs.reporting import SafeReporter
from jobs.rows import rowcount

#: A retry may run this much before its due time (clocks of hosts differ a little).
DUE_TOLERANCE = timedelta(seconds=2)


def retry_delay(delays: Sequence[int], attempt: int) -> int | None:
    """Seconds to wait before mail attempt number `attempt` (the first retry is attempt 2).

    None when there is no such retry: attempt 1 is the first mail, and after the last delay
    the mail gives up.
    """
    if 2 <= attempt <= len(delays) + 1:
        return delays[attempt - 2]
    return None


def due_retries(task_id: int, item_ids: list[int]) -> Conditions:
    """The users of a retry job whose next attempt is due."""
    wanted = sorted(set(item_ids))

    def conditions(now: datetime) -> list[ColumnElement[bool]]:
        return [
            ResetItem.task_id == task_id,
            ResetItem.id.in_(wanted),
            ResetItem.state == ItemState.RETRY_WAIT,
            ResetItem.next_attempt_at <= now + DUE_TOLERANCE,
        ]

    return conditions


def mail_outcome(
    delays: Sequence[int], item: Claimed, delivery: Delivery, now: datetime
) -> ItemOutcome:
    attempts = item.attempts + 1
    if delivery.outcome is Outcome.SENT:
        return ItemOutcome(item.id, ItemState.NOTIFIED, attempts)
    delay = retry_delay(delays, attempts + 1) if delivery.outcome is Outcome.TRANSIENT else None
    if delay is not None:
        due = now + timedelta(seconds=delay)
        return ItemOutcome(item.id, ItemState.RETRY_WAIT, attempts, due, delivery.reason)
    reason = delivery.reason or "The mail could not be sent."
    if delivery.outcome is Outcome.TRANSIENT:
        reason = f"{reason} (gave up after {attempts} attempts)"
    return ItemOutcome(item.id, ItemState.NOTIFY_FAILED, attempts, None, reason)


def schedule_retries(
    context: WorkerContext, task_id: int, retries: dict[int, list[int]]
) -> None:
    """One scheduled job per round of this job's failed mails; the thread hears once per round."""
    delays = context.settings.mail_retry_delays
    for attempt, item_ids in sorted(retries.items()):
        delay = retry_delay(delays, attempt)
        assert delay is not None, "only a mail with an attempt left waits for a retry"
        enqueue_retry(context.queue, task_id, item_ids, delay)
        with context.sessions() as session:
            first = rowcount(
                session.execute(
                    update(ResetTask)
                    .where(ResetTask.id == task_id, ResetTask.reported_retry_round < attempt)
                    .values(reported_retry_round=attempt)
                )
            )
            users = session.scalar(
                select(func.count()).where(
                    ResetItem.task_id == task_id,
                    ResetItem.state == ItemState.RETRY_WAIT,
                    ResetItem.attempts == attempt - 1,
                )
            ) if first else 0
            session.commit()
        if first:
            SafeReporter(context.reporter).retries_scheduled(
                task_id, int(users or len(item_ids)), attempt, delay
            )
