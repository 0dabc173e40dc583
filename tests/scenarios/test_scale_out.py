"""Scale-out: several worker processes, as on several hosts, share one task through one Redis and
one PostgreSQL (or MariaDB), and every user ends in exactly one final outcome.

Each worker is a real `resetbot worker` process configured only by its environment (no shared
memory with the test or with each other). Which worker held which user is watched while the task
runs, from the leases in the database (`reset_items.leased_by` is `host:pid:...`).
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import replace

import pytest
from redis import Redis
from rq import Worker
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from bench.synth import OLD_HASH, populate, synth_users
from core.directory import Directory
from core.models import ItemState, ResetItem, Scope, TaskStatus
from core.passwords import PasswordHasher
from core.progress import snapshot
from core.settings import Settings
from core.tasks import ResetRequest, create_task
from jobs.queueing import enqueue_task, make_queue
from tests.support.engine import as_test_id, user_rows
from tests.support.faults import WorkerProcess, Workers, wait_until
from tests.support.faults import workers as workers
from tests.support.smtp import SmtpServer
from tests.support.smtp import smtp_server as smtp_server

USERS = 240
WORKERS = 3
DEFAULT_PASSWORD = "Lantern-Quay-8841"
#: The servers many processes share (SQLite is one file on one host).
servers_only = pytest.mark.parametrize(
    "database_url",
    [pytest.param("postgres", marks=pytest.mark.postgres),
     pytest.param("mariadb", marks=pytest.mark.mariadb)],
    indirect=True,
)


class LeaseWatcher:
    """Records every lease owner seen on the task's items until stopped."""

    def __init__(self, sessions: sessionmaker[Session], task_id: int) -> None:
        self.sessions = sessions
        self.task_id = task_id
        self.owners: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _look(self) -> None:
        with self.sessions() as session:
            found = session.scalars(
                select(ResetItem.leased_by)
                .where(ResetItem.task_id == self.task_id, ResetItem.leased_by.is_not(None))
                .distinct()
            )
            self.owners.update(owner for owner in found if owner)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self._look()

    def __enter__(self) -> LeaseWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._look()

    def pids(self) -> set[int]:
        """Worker process ids, from owners written as `host:pid:nonce`."""
        return {int(owner.split(":")[1]) for owner in self.owners if owner.count(":") >= 2}


@pytest.fixture
def directory_users(engine: Engine, directory: Directory) -> dict[int, str | None]:
    """USERS synthetic users (20 % without e-mail, 30 % staff); id -> e-mail."""
    populate(engine, directory, USERS)
    return {user.id: user.email or None for user in synth_users(USERS)}


def start_workers(workers: Workers, settings: Settings, redis: Redis) -> list[WorkerProcess]:
    """WORKERS worker processes, each registered on the queue before any work is there."""
    started = [workers.start(settings) for _ in range(WORKERS)]
    queue = make_queue(settings, redis)
    wait_until(lambda: len(Worker.all(connection=redis, queue=queue)) >= WORKERS
               or any(not w.alive() for w in started),
               60, f"{WORKERS} workers to register")
    assert all(w.alive() for w in started), workers.logs()
    return started


@pytest.mark.slow
@servers_only
@pytest.mark.parametrize("mode", ["generated", "default"])
def test_worker_processes_share_a_task_and_settle_every_user_once(
    settings: Settings,
    engine: Engine,
    sessions: sessionmaker[Session],
    directory: Directory,
    redis_conn: Redis,
    smtp_server: SmtpServer,
    workers: Workers,
    directory_users: dict[int, str | None],
    mode: str,
) -> None:
    # A hash costly enough that one worker cannot finish a chunk before the others start.
    configured = replace(smtp_server.settings(settings), password_rounds=20_000)
    started = start_workers(workers, configured, redis_conn)

    with sessions() as session:
        task = create_task(session, configured, ResetRequest(
            requester="cli:scale-out", scope=Scope.ALL,
            default_password=DEFAULT_PASSWORD if mode == "default" else None,
        ))
        session.commit()
        task_id = task.id
    with LeaseWatcher(sessions, task_id) as watcher:
        enqueue_task(make_queue(configured, redis_conn), task_id)

        def final() -> bool:
            with sessions() as session:
                found = snapshot(session, task_id)
            return found is not None and found.status.is_final

        wait_until(final, 120, f"task {task_id} to end; logs:\n{workers.logs()}")

    with sessions() as session:
        ended = snapshot(session, task_id)
        items = list(session.scalars(select(ResetItem).where(ResetItem.task_id == task_id)))
    assert ended is not None and ended.status is TaskStatus.COMPLETED, workers.logs()
    assert ended.total == USERS

    # Every user exactly once, in the one final outcome its data calls for.
    assert sorted(as_test_id(item.user_id) for item in items) == sorted(directory_users)
    expected = {
        user_id: ItemState.RESET if mode == "default"
        else (ItemState.NOTIFIED if email else ItemState.NO_EMAIL)
        for user_id, email in directory_users.items()
    }
    assert {as_test_id(item.user_id): ItemState(item.state) for item in items} == expected
    assert all(
        item.attempts == (1 if expected[as_test_id(item.user_id)] is ItemState.NOTIFIED else 0)
        for item in items
    )

    # Nobody was hashed or mailed twice: one mail per address, and the hash the user has now
    # is the one for the password in that mail (or the default password).
    hasher = PasswordHasher.from_settings(configured)
    rows = user_rows(sessions, directory)
    assert all(row.password_hash and row.password_hash != OLD_HASH for row in rows.values())
    if mode == "generated":
        mailed = Counter(rcpt.lower() for mail in smtp_server.messages for rcpt in mail.rcpt_tos)
        emailable = {email.lower() for email in directory_users.values() if email}
        assert set(mailed) == emailable
        assert set(mailed.values()) == {1}
        for user_id, email in list(directory_users.items())[:40]:
            if email:
                password = smtp_server.last_password(email)
                assert hasher.verify(password, rows[user_id].password_hash or "")
    else:
        assert smtp_server.messages == []
        for user_id in list(directory_users)[:10]:
            assert hasher.verify(DEFAULT_PASSWORD, rows[user_id].password_hash or "")

    # Every worker process held some of the users: the work was shared, not done by one.
    assert watcher.pids() == {worker.pid for worker in started}, (watcher.owners, workers.logs())

