"""Scheduled resets: when a start time may be asked for, and whether a task may start at it.

Pure rules, no I/O: the edges check a start time with `start_at_problem`; the reaper
(jobs/scheduling.py) starts a due task when `counts_drifted` says its scope still holds about
the users its preview counted, and says how late it started (`lateness`).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

#: How far ahead a reset may be scheduled.
MAX_AHEAD = timedelta(days=90)
#: A start time this little in the past is taken as "now": a form filled in at 06:00 and sent
#: at 06:00:40 meant 06:00.
PAST_GRACE = timedelta(minutes=1)
#: A start within this of its time is "on time"; later, its thread says how late.
ON_TIME = timedelta(minutes=1)
#: The preview taken at the start may differ this much (a share of the scheduled preview)
#: before the task waits for someone to confirm it again.
DRIFT_LIMIT = 0.10


def start_at_problem(start_at: datetime, now: datetime) -> str | None:
    """Why a reset cannot be scheduled for `start_at` (None when it can)."""
    try:
        moment = as_utc(start_at)
    except OverflowError:
        # In UTC it falls outside datetime's years 1-9999 (9999-12-31T23:59-14:00): far
        # ahead, or long past; either way not a time to schedule.
        moment = datetime.max.replace(tzinfo=UTC) if start_at.year > 1 else (
            datetime.min.replace(tzinfo=UTC)
        )
    if moment < now - PAST_GRACE:
        return "This time has passed: choose a time in the future, or leave it empty to start now."
    if moment > now + MAX_AHEAD:
        return f"Choose a time at most {MAX_AHEAD.days} days ahead."
    return None


def as_utc(moment: datetime) -> datetime:
    """An aware time in UTC (a naive one is taken as UTC, as the database keeps them)."""
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


def is_future(start_at: datetime | None, now: datetime) -> bool:
    """A start time that has not come yet: the task waits for it."""
    return start_at is not None and as_utc(start_at) > now


def counts_drifted(scheduled_users: int | None, users_now: int) -> bool:
    """True when the preview at the start differs from the scheduled one by more than 10 %."""
    if scheduled_users is None:
        return False  # nothing was counted when it was scheduled: nothing to compare
    if scheduled_users == 0:
        return users_now != 0
    return abs(users_now - scheduled_users) > DRIFT_LIMIT * scheduled_users


def lateness(start_at: datetime, started: datetime) -> timedelta:
    """How late a start was (zero when it was early or on the dot)."""
    return max(timedelta(0), as_utc(started) - as_utc(start_at))


def is_late(start_at: datetime, started: datetime) -> bool:
    return lateness(start_at, started) >= ON_TIME
