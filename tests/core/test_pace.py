"""A task's pace: rate and time left from what the database holds, in humane words."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from core.progress import FirstDone, Pace, duration_words, pace, pace_words, rate_words

START = datetime(2026, 1, 1, 9, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return START + timedelta(seconds=seconds)


def test_rate_and_time_left_from_done_started_and_now() -> None:
    measured = pace(3_400, 10_000, START, at(85))
    assert measured.rate == pytest.approx(40.0)
    assert measured.seconds_left == pytest.approx(165.0)
    assert pace_words(measured) == "40 users/s · about 3 min left"


@pytest.mark.parametrize(
    ("done", "total", "seconds", "planned"),
    [
        (0, 100, 60, True),  # nothing done yet
        (50, 100, 4.9, True),  # too soon: the first seconds say little
        (99, 10_000, 60, True),  # under 1 % done
        (400, 10_000, 60, False),  # still listing users: the total is not known yet
        (100, 100, 60, True),  # everyone done (mails may still wait for a retry)
    ],
)
def test_no_time_left_before_a_meaningful_sample(
    done: int, total: int, seconds: float, planned: bool
) -> None:
    assert pace(done, total, START, at(seconds), planned=planned).seconds_left is None


def test_no_pace_at_all_before_the_task_started_or_within_its_first_seconds() -> None:
    assert pace(10, 100, None, at(60)) == Pace()
    assert pace(10, 100, START, at(2)) == Pace()
    assert pace_words(Pace()) == ""


def test_an_ended_task_has_its_rate_and_no_time_left() -> None:
    measured = pace(1_000, 1_000, START, at(20), finished=True)
    assert measured == Pace(rate=50.0)
    assert pace_words(measured) == "50 users/s"


@pytest.mark.parametrize(
    ("seconds", "words"),
    [
        (5, "less than a minute"),
        (59, "less than a minute"),
        (60, "about 1 min"),
        (130, "about 2 min"),
        (9 * 60 + 10, "about 9 min"),
        (44 * 60, "about 45 min"),
        (3_500, "about 1 hour"),
        (5_400, "about 1.5 hours"),
        (4 * 3600 + 600, "about 4 hours"),
        (3 * 86_400, "about 3 days"),
    ],
)
def test_time_left_is_rounded_as_people_say_it(seconds: float, words: str) -> None:
    assert duration_words(seconds) == words


def test_rates_keep_two_significant_figures_at_least() -> None:
    assert rate_words(1234.4) == "1,234 users/s"
    assert rate_words(41.2) == "41 users/s"
    assert rate_words(4.25) == "4.2 users/s"
    assert rate_words(0.348) == "0.35 users/s"


def test_while_running_the_rate_leaves_out_the_start_up() -> None:
    # Planning and the first batch took 2 s; 25 users were done at once, then 475 in 4 s.
    measured = pace(500, 5_000, START, at(6), first=FirstDone(at(2), 25))
    assert measured.rate == pytest.approx(475 / 4)
    assert measured.seconds_left == pytest.approx(4_500 / (475 / 4))
    # Too soon after the first users to tell: the average since the start is used.
    assert pace(500, 5_000, START, at(6), first=FirstDone(at(5), 25)).rate == pytest.approx(
        500 / 6)
    # Once ended, the rate is over the whole run.
    ended = pace(5_000, 5_000, START, at(50), finished=True, first=FirstDone(at(2), 25))
    assert ended.rate == pytest.approx(100.0)
