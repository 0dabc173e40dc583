"""Selections of up to 100,000 ids (a file of users given in Slack, `--users-file`): every
query over them works on each database, and the planner's pages over them are full until the
scope has no more (a short page ends planning)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from core import tasks
from core.directory import Directory
from core.models import Scope
from core.settings import Settings

pytestmark = pytest.mark.every_database


def pages(directory: Directory, scope: Scope, selection: tuple[int, ...], limit: int
          ) -> list[list[int]]:
    found, after = [], 0
    while True:
        batch = [user.id for user in directory.scope_batch(scope, selection, after, limit)]
        found.append(batch)
        if len(batch) < limit:
            return found
        after = batch[-1]


def test_pages_over_a_selection_are_full_until_its_end(
    directory: Directory, sample_users: list[Any]
) -> None:
    # Ids no longer in the directory (50..52) among them, out of order.
    selected = (7, 50, 1, 51, 52, 3, 4)
    assert pages(directory, Scope.SELECTED_ONLY, selected, 2) == [[1, 3], [4, 7], []]
    assert pages(directory, Scope.ALL_EXCEPT_SELECTED, (2, 5, 99), 2) == [
        [1, 3], [4, 6], [7]]


def test_a_hundred_thousand_ids_are_checked_counted_and_paged(
    settings: Settings, directory: Directory, sessions: sessionmaker[Session],
    sample_users: list[Any],
) -> None:
    many = tuple(range(1, 100_001))
    assert len(directory.missing_ids(many)) == 100_000 - 7
    assert directory.preview(Scope.SELECTED_ONLY, many).users == 7
    assert directory.preview(Scope.ALL_EXCEPT_SELECTED, many[3:]).users == 3
    assert pages(directory, Scope.SELECTED_ONLY, many, 1000) == [[1, 2, 3, 4, 5, 6, 7]]
    request = tasks.ResetRequest(requester="U0ADMIN", scope=Scope.SELECTED_ONLY,
                                 selection=many)
    with pytest.raises(tasks.RequestInvalid) as refused:
        tasks.validate_request(settings, directory, request)
    assert refused.value.problems["users"] == [
        "99993 of the picked users no longer exist in the directory."]
    too_many = tasks.ResetRequest(requester="U0ADMIN", scope=Scope.SELECTED_ONLY,
                                  selection=tuple(range(1, 100_002)))
    with pytest.raises(tasks.RequestInvalid, match="Name at most 100,000 users"):
        tasks.validate_request(settings, directory, too_many)
    # Kept with the pending request as ids, and handed to the task whole.
    existing = tuple(range(1, 8))
    kept = tasks.ResetRequest(requester="U0ADMIN", scope=Scope.SELECTED_ONLY, selection=many)
    with sessions() as session:
        pending = tasks.create_pending(session, settings, kept)
        session.commit()
        task = tasks.consume_pending(session, pending.id, "U0ADMIN")
        session.commit()
        assert task.selection == list(many)
    assert existing == tuple(u.id for u in directory.get_many(many))
