"""Several workers on one task: claims never overlap, and a SIGKILLed worker costs one lease."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest
from redis import Redis
from sqlalchemy import Engine, func, insert, select
from sqlalchemy.orm import Session, sessionmaker

from core.directory import Directory
from core.models import ItemState, ResetItem, Scope, TaskStatus
from core.passwords import PasswordHasher
from core.settings import Settings
from jobs.context import use_context
from jobs.engine import plan_task, run_chunk
from tests.support.engine import build_context, items_by_user, submit, task_snapshot, user_rows
from tests.support.smtp import SmtpServer
from tests.support.smtp import smtp_server as smtp_server

# Claims, locks and DDL differ between databases: these run on MariaDB too.
pytestmark = pytest.mark.every_database

DEFAULT_PASSWORD = "Quiet-Harbour-73!"


def add_users(engine: Engine, directory: Directory, count: int) -> list[int]:
    with engine.begin() as connection:
        connection.execute(
            insert(directory.table),
            [
                {"id": n, "username": f"user{n}", "full_name": f"User {n}",
                 "email": f"user{n}@example.org", "role": None, "password_hash": "old-hash",
                 "must_change_password": False}
                for n in range(1, count + 1)
            ],
        )
    return list(range(1, count + 1))


def test_two_workers_on_one_chunk_reset_and_mail_each_user_once(
    settings: Settings, redis_conn: Redis, engine: Engine, sessions: sessionmaker[Session],
    directory: Directory, smtp_server: SmtpServer,
) -> None:
    settings = replace(smtp_server.settings(settings), chunk_size=60, claim_batch=3)
    users = add_users(engine, directory, 60)
    contexts = [build_context(settings, redis_conn, engine) for _ in range(2)]
    task_id = submit(contexts[0], Scope.ALL, enqueue=False)
    with use_context(contexts[0]):
        plan_task(task_id)
    start = threading.Barrier(2)

    def worker(index: int) -> None:
        with use_context(contexts[index]):
            start.wait()
            run_chunk(task_id, 0)

    with ThreadPoolExecutor(max_workers=2) as pool:
        for done in [pool.submit(worker, index) for index in range(2)]:
            done.result(timeout=60)  # re-raises a worker's error here

    assert task_snapshot(contexts[0], task_id).status is TaskStatus.COMPLETED
    items = items_by_user(sessions, task_id)
    assert {item.leased_by for item in items.values()} == {None}
    assert all((i.state, i.attempts) == (ItemState.NOTIFIED, 1) for i in items.values())
    hasher = PasswordHasher.from_settings(settings)
    rows = user_rows(sessions, directory)
    for user_id in users:
        [mail] = smtp_server.to(f"user{user_id}@example.org")  # exactly one mail each
        assert hasher.verify(mail.password, rows[user_id].password_hash or "")


WORKER_SCRIPT = """
import logging, sys
import pytest
from redis import Redis
from core.settings import Settings
from jobs.worker import run_worker
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
settings = Settings.from_env(env_file=None)
run_worker(settings, Redis.from_url(settings.redis_url))
"""


def start_worker(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=settings.database_url,
        REDIS_URL=settings.redis_url or "",
        RESET_QUEUE=settings.reset_queue,
        PASSWORD_SCHEMES=",".join(settings.password_schemes),
        PASSWORD_ROUNDS=str(settings.password_rounds),
        PASSWORD_ALLOW_WEAK_ROUNDS="true",
        RESET_SECRET_KEY=settings.reset_secret_key,
        RESET_CHUNK_SIZE=str(settings.chunk_size),
        RESET_CLAIM_BATCH=str(settings.claim_batch),
        RESET_LEASE_SECONDS=str(settings.lease_seconds),
        RESET_REAPER_INTERVAL=str(settings.reaper_interval),
    )
    handle = log.open("ab")
    return subprocess.Popen(
        [sys.executable, "-c", WORKER_SCRIPT], env=env, stdout=handle, stderr=handle,
        cwd=Path(__file__).resolve().parents[2],
        # Its own process group: the kill below takes the RQ scheduler it forks with it.
        start_new_session=True,
    )


def wait_for(condition: object, timeout: float, what: str) -> float:
    deadline = time.monotonic() + timeout
    started = time.monotonic()
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)
    return time.monotonic() - started


# tests/scenarios/test_faults.py kills a worker mid-chunk on both databases; here the plain
# property.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.slow
def test_a_task_survives_a_sigkilled_worker_within_seconds(
    settings: Settings, redis_conn: Redis, engine: Engine, sessions: sessionmaker[Session],
    directory: Directory, tmp_path: Path,
) -> None:
    # Slow enough hashing that the kill lands mid-chunk; a short lease and a fast reaper.
    settings = replace(
        settings, password_rounds=150_000, chunk_size=10, claim_batch=5, lease_seconds=5,
        reaper_interval=0.5,
    )
    users = add_users(engine, directory, 20)
    context = build_context(settings, redis_conn, engine)
    task_id = submit(context, Scope.ALL, default_password=DEFAULT_PASSWORD)
    log = tmp_path / "workers.log"

    def count(state: ItemState) -> int:
        with sessions() as session:
            return int(session.scalar(
                select(func.count()).where(ResetItem.task_id == task_id, ResetItem.state == state)
            ) or 0)

    first = start_worker(settings, log)
    try:
        wait_for(lambda: count(ItemState.CLAIMED) > 0 and count(ItemState.RESET) > 0, 60,
                 "the first worker to be mid-task")
        os.killpg(first.pid, signal.SIGKILL)  # the worker and its forked scheduler
        first.wait(timeout=10)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert count(ItemState.CLAIMED) > 0  # it died holding a lease

    second = start_worker(settings, log)
    try:
        took = wait_for(lambda: task_snapshot(context, task_id).status.is_final, 60,
                        "the second worker to finish the task")
    finally:
        second.send_signal(signal.SIGTERM)
        try:
            second.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(second.pid, signal.SIGKILL)

    final = task_snapshot(context, task_id)
    assert final.status is TaskStatus.COMPLETED, log.read_text()[-3000:]
    assert final.counts[ItemState.RESET] == len(users)
    assert took < 45  # a lease (5 s), a reaper pass, a worker's start-up (slow on a busy box)
    hasher = PasswordHasher.from_settings(settings)
    rows = user_rows(sessions, directory)
    assert all(hasher.verify(DEFAULT_PASSWORD, rows[u].password_hash or "") for u in users)
