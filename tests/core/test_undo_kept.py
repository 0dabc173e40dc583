"""An opened Undo snapshot holds password hashes: its repr never shows them; a user written
twice keeps the first values and the last hash."""

from __future__ import annotations

import pytest
from redis import Redis
from sqlalchemy import Engine

from core.models import Scope
from core.settings import Settings
from core.undo import Kept, _store, kept_batch, opened
from tests.support.engine import build_context, submit

PREVIOUS_HASH = "$2b$04$previouspreviouspreviou.previouspreviouspreviousprev"
WRITTEN_HASH = "$2b$04$writtenwrittenwrittenwri.writtenwrittenwrittenwrittenw"


def test_an_opened_snapshot_shows_its_user_but_never_its_hashes() -> None:
    kept = Kept(7, {"password_hash": PREVIOUS_HASH, "must_change_password": False}, WRITTEN_HASH)
    shown = repr(kept)
    assert "user_id=7" in shown
    assert PREVIOUS_HASH not in shown and WRITTEN_HASH not in shown
    assert "previous" not in shown and "written" not in shown


@pytest.mark.every_database
def test_a_user_written_again_keeps_the_first_values_and_the_last_hash(
    settings: Settings, redis_conn: Redis, engine: Engine, sample_users: list[object]
) -> None:
    """Undo's snapshot is one upsert a batch: a re-done or retried write of the same user keeps
    what the task first replaced and the hash it wrote last."""
    context = build_context(settings, redis_conn, engine)
    task_id = submit(context, Scope.ALL, default_password="Quiet-Harbour-73!", enqueue=False)
    key = settings.reset_secret_key
    with engine.begin() as connection:
        _store(connection, key, task_id,
               {1: {"password_hash": "before"}, 2: {"password_hash": "b2"}},
               [(1, "first"), (2, "second")])
    with engine.begin() as connection:
        _store(connection, key, task_id, {1: {"password_hash": "first"}}, [(1, "again")])
    with context.sessions() as session:
        kept = {k.user_id: k for k in opened(settings, kept_batch(session, task_id, "", 10))}
    context.close()
    assert kept["1"].previous == {"password_hash": "before"} and kept["1"].written == "again"
    assert kept["2"].previous == {"password_hash": "b2"} and kept["2"].written == "second"
