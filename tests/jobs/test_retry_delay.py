"""The delay before each mail attempt, at the edges of the retry schedule (no services needed)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from core.models import ItemState
from jobs.batches import Claimed
from jobs.mailer import Delivery, Outcome
from jobs.retries import mail_outcome, retry_delay

DELAYS = (60, 300, 900)
NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("attempt", "delay"),
    [(0, None), (1, None), (2, 60), (3, 300), (4, 900), (5, None), (99, None)],
)
def test_each_retry_waits_its_own_delay_and_none_follows_the_last(
    attempt: int, delay: int | None
) -> None:
    assert retry_delay(DELAYS, attempt) == delay


def test_without_delays_there_is_no_retry() -> None:
    assert [retry_delay((), attempt) for attempt in range(4)] == [None] * 4


def item(attempts: int) -> Claimed:
    return Claimed(7, 1, 0, "alice", "Alice", "alice@example.org", attempts)


@pytest.mark.parametrize(("made", "delay"), [(0, 60), (1, 300), (2, 900)])
def test_a_refused_mail_waits_the_delay_of_the_attempt_coming_up(made: int, delay: int) -> None:
    outcome = mail_outcome(DELAYS, item(made), Delivery(Outcome.TRANSIENT, "busy"), NOW)

    assert outcome.state is ItemState.RETRY_WAIT
    assert outcome.attempts == made + 1
    assert outcome.next_attempt_at == NOW + timedelta(seconds=delay)
    assert retry_delay(DELAYS, outcome.attempts + 1) == delay


def test_the_last_attempt_refused_gives_up() -> None:
    outcome = mail_outcome(DELAYS, item(3), Delivery(Outcome.TRANSIENT, "busy"), NOW)

    assert (outcome.state, outcome.attempts, outcome.next_attempt_at) == (
        ItemState.NOTIFY_FAILED, 4, None,
    )
    assert outcome.error == "busy (gave up after 4 attempts)"


def test_a_permanent_refusal_is_never_retried() -> None:
    outcome = mail_outcome(DELAYS, item(0), Delivery(Outcome.PERMANENT, None), NOW)

    assert (outcome.state, outcome.error) == (
        ItemState.NOTIFY_FAILED, "The mail could not be sent.",
    )
