"""How many users a worker claims per batch: RESET_CLAIM_BATCH, fewer where hashing or
settling them would take more than a sixth of the lease (jobs.chunks.batch_size)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from redis import Redis
from sqlalchemy import Engine

from core.settings import Settings
from jobs.chunks import batch_size
from tests.support.engine import build_context


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_batch_is_claim_batch_users_unless_hashing_or_settling_them_takes_long(
    settings: Settings, redis_conn: Redis, engine: Engine
) -> None:
    context = build_context(replace(settings, claim_batch=50, lease_seconds=30), redis_conn,
                            engine)
    try:
        assert batch_size(context) == 50  # nothing measured yet
        context.hash_seconds_per_user = 0.015  # bcrypt at cost 8: 50 users in 0.75 s
        assert batch_size(context) == 50
        context.hash_seconds_per_user = 0.25  # bcrypt at cost 12: 20 users in 5 s
        assert batch_size(context) == 20
        context.settle_seconds_per_user = 1.0  # a directory taking a second a password
        assert batch_size(context) == 5
        context.settle_seconds_per_user = 60.0  # slower than the lease: one at a time
        assert batch_size(context) == 1
    finally:
        context.close()
