"""The workers on one queue take turns at the reaper's pass (jobs.worker.ReaperThread): one pass
per interval between them, not one per worker."""

from __future__ import annotations

from dataclasses import replace

import pytest
from redis import Redis
from sqlalchemy import Engine

from core.settings import Settings
from jobs.worker import REAPER_TURN, ReaperThread
from tests.support.engine import build_context


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_of_two_workers_on_a_queue_one_reaps_each_interval(
    settings: Settings, redis_conn: Redis, engine: Engine
) -> None:
    settings = replace(settings, reaper_interval=30.0)
    first, second = (build_context(settings, redis_conn, engine) for _ in range(2))
    elsewhere = build_context(replace(settings, reset_queue=settings.reset_queue + "-other"),
                              redis_conn, engine)
    try:
        assert ReaperThread(first)._my_turn()
        assert not ReaperThread(second)._my_turn()  # the first holds this interval's turn
        assert not ReaperThread(first)._my_turn()  # ... itself too, until it passes
        assert ReaperThread(elsewhere)._my_turn()  # another queue's workers reap their own
        key = f"resetbot:{settings.reset_queue}:reaper-turn"
        held_ms = int(redis_conn.pttl(key))
        assert 0 < held_ms <= settings.reaper_interval * REAPER_TURN * 1000
        redis_conn.delete(key)  # the turn has run out: whoever asks next reaps
        assert ReaperThread(second)._my_turn()
    finally:
        for context in (first, second, elsewhere):
            context.close()
        redis_conn.delete(f"resetbot:{settings.reset_queue}-other:reaper-turn")
