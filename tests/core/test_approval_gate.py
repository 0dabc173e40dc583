"""The gate a confirmed task goes through: start now, wait for a second admin, or wait for its
start time (and an approval request that must be decided before that time)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from core.models import ResetTask, Scope, TaskStatus
from core.settings import Settings
from core.tasks import approval_deadline, needs_approval, released_status


def task(scope: Scope = Scope.ALL_WITHOUT_ROLE, users: int | None = 10) -> ResetTask:
    counts = None if users is None else {"users": users, "emailable": users, "without_email": 0,
                                         "staff": 0}
    return ResetTask(requester="U1", scope=scope.value, selection=[], mode="generated",
                     preview=counts)


@pytest.mark.parametrize(("minimum", "scope_all", "scope", "users", "waits"), [
    (None, False, Scope.ALL, 10_000, False),  # unset: no approval, as before
    (100, False, Scope.ALL_WITHOUT_ROLE, 99, False),
    (100, False, Scope.ALL_WITHOUT_ROLE, 100, True),
    (100, False, Scope.ALL_WITHOUT_ROLE, None, True),  # never counted: it waits
    (None, True, Scope.ALL, 1, True),
    # RESET_APPROVAL_SCOPE_ALL: every whole-directory scope, whatever its size.
    (None, True, Scope.ALL_WITHOUT_ROLE, 1, True),
    (None, True, Scope.ALL_EXCEPT_SELECTED, 1, True),
    (None, True, Scope.SELECTED_ONLY, 10_000, False),
    (None, False, Scope.ALL, None, False),
])
def test_who_needs_approval(minimum: int | None, scope_all: bool, scope: Scope,
                            users: int | None, waits: bool) -> None:
    settings = replace(Settings(), reset_approval_min_users=minimum,
                       reset_approval_scope_all=scope_all)
    assert needs_approval(settings, task(scope, users)) is waits


@pytest.mark.parametrize(("approved", "users", "needed"), [
    (None, 100, True),  # never approved
    (100, 110, False),  # approved, and within a tenth more
    (100, 90, False),  # fewer than approved
    (100, 111, True),  # more than a tenth more than approved
    (100, 99, False),  # under the minimum: no approval needed, whatever happened before
])
def test_an_approval_covers_its_count_and_a_tenth_more(
    approved: int | None, users: int, needed: bool
) -> None:
    from core.tasks import approval_needed

    settings = replace(Settings(), reset_approval_min_users=100)
    judged = task(users=approved if approved is not None else 100)
    judged.approved_by = None if approved is None else "U2"
    assert approval_needed(settings, judged, users) is needed


def test_the_approval_settings_read_from_the_environment() -> None:
    settings = Settings.from_env({"RESET_APPROVAL_MIN_USERS": "500", "RESET_APPROVAL_TTL": "90",
                                  "RESET_APPROVERS": "U1, U2"}, env_file=None)
    assert (settings.reset_approval_min_users, settings.reset_approval_ttl) == (500, 90.0)
    assert settings.reset_approvers == frozenset({"U1", "U2"})
    assert Settings().reset_approval_ttl == 24 * 3600
    assert Settings().reset_approval_min_users is None


def test_a_scheduled_request_expires_at_its_start_when_that_comes_before_the_ttl() -> None:
    settings = replace(Settings(), reset_approval_ttl=3600.0)
    now = datetime(2027, 1, 8, 12, 0, tzinfo=UTC)
    scheduled = task()
    assert approval_deadline(settings, scheduled, now) == now + timedelta(hours=1)  # no start
    scheduled.start_at = now + timedelta(minutes=20)
    assert approval_deadline(settings, scheduled, now) == now + timedelta(minutes=20)
    scheduled.start_at = now + timedelta(days=2)  # the TTL comes first
    assert approval_deadline(settings, scheduled, now) == now + timedelta(hours=1)


def test_released_is_scheduled_only_while_the_start_is_ahead() -> None:
    now = datetime(2027, 1, 8, 12, 0, tzinfo=UTC)
    later = task()
    assert released_status(later, now) is TaskStatus.QUEUED
    later.start_at = now + timedelta(seconds=1)
    assert released_status(later, now) is TaskStatus.SCHEDULED
    assert released_status(later, now + timedelta(seconds=1)) is TaskStatus.QUEUED
