"""An expired preview's sealed default password is erased by the reaper, not only when someone
opens another preview: directly by a reaper pass, and by a real `resetbot worker` within its
reaper interval.
"""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from redis import Redis
from sqlalchemy import Engine, update
from sqlalchemy.orm import Session, sessionmaker

from core.models import PendingRequest, Scope, utcnow
from core.settings import Settings
from core.tasks import PENDING_TTL, ResetRequest, create_pending
from jobs.reaper import reap
from tests.support.engine import build_context
from tests.support.faults import WorkerProcess

# Claims, locks and DDL differ between databases: these run on MariaDB too.
pytestmark = pytest.mark.every_database

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
DEFAULT_PASSWORD = "Quiet-Harbour-92-Lamp"


def preview(sessions: sessionmaker[Session], settings: Settings) -> str:
    """A preview with a default password, as the modal leaves it before the confirm."""
    with sessions() as session:
        pending = create_pending(session, settings, ResetRequest(
            requester="UADMIN", scope=Scope.SELECTED_ONLY, selection=(1,),
            default_password=DEFAULT_PASSWORD))
        session.commit()
        return pending.id


def sealed(sessions: sessionmaker[Session], pending_id: str) -> str | None:
    with sessions() as session:
        pending = session.get(PendingRequest, pending_id)
        assert pending is not None
        return pending.default_password_sealed


def test_a_reaper_pass_erases_the_sealed_password_once_the_preview_expires(
    settings: Settings, redis_conn: Redis, engine: Engine, sessions: sessionmaker[Session],
    sample_users: list[Any],
) -> None:
    context = build_context(settings, redis_conn, engine)
    pending_id = preview(sessions, settings)

    assert reap(context).passwords_erased == 0
    assert sealed(sessions, pending_id) is not None
    just_before = utcnow() + PENDING_TTL - timedelta(seconds=5)
    assert reap(context, now=just_before).passwords_erased == 0

    report = reap(context, now=utcnow() + PENDING_TTL + timedelta(seconds=1))
    assert report.passwords_erased == 1
    assert sealed(sessions, pending_id) is None


@sqlite_only
@pytest.mark.services
def test_a_running_worker_erases_an_expired_preview_s_password_within_its_reaper_interval(
    settings: Settings, engine: Engine, sessions: sessionmaker[Session],
    sample_users: list[Any], tmp_path: Path,
) -> None:
    expired, waiting = preview(sessions, settings), preview(sessions, settings)
    with sessions() as session:  # the first one's 15 minutes are over
        session.execute(update(PendingRequest).where(PendingRequest.id == expired)
                        .values(expires_at=utcnow() - timedelta(seconds=1)))
        session.commit()
    worker = WorkerProcess(replace(settings, reaper_interval=0.5), tmp_path).start()
    try:
        deadline = time.monotonic() + 30
        while sealed(sessions, expired) is not None:
            assert worker.alive(), worker.log_path.read_text()
            assert time.monotonic() < deadline, "the worker's reaper did not erase it"
            time.sleep(0.1)
    finally:
        worker.stop()
    assert sealed(sessions, waiting) is not None  # not expired: still confirmable
    assert DEFAULT_PASSWORD not in worker.log_path.read_text()
