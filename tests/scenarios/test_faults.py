"""Faults resetbot must survive, injected against real services.

Each test breaks something real (a worker process SIGKILLed, a redis-server restarted empty, the
TCP path to PostgreSQL cut, an SMTP port with nothing listening) and then checks the outcome in
the database, the mails aiosmtpd received and the calls the Slack stand-in recorded.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import replace
from typing import Any

import pytest
from redis import Redis
from sqlalchemy import Engine, insert, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from core.directory import Directory
from core.models import (
    AuditEntry,
    ItemState,
    Mode,
    ResetItem,
    ResetTask,
    Scope,
    TaskStatus,
)
from core.passwords import PasswordHasher
from core.progress import TaskSnapshot, snapshot
from core.settings import Settings
from core.tasks import ResetRequest, create_task
from jobs.queueing import enqueue_task, make_queue
from tests.support.engine import as_test_id
from tests.support.faults import (
    PrivateRedis,
    TcpProxy,
    Workers,
    redis_dump,
    tcp_proxy,
    wait_until,
)
from tests.support.faults import private_redis as private_redis
from tests.support.faults import workers as workers
from tests.support.slack_standin import SlackStandIn
from tests.support.slack_standin import slack_standin as slack_standin
from tests.support.smtp import SmtpServer
from tests.support.smtp import smtp_server as smtp_server

# Claims, locks and DDL differ between databases: these run on MariaDB too.
pytestmark = pytest.mark.every_database

CHANNEL = "C0FAULTS"
REQUESTER = "U0STAFF"
#: The servers many processes share (SQLite is one file on one host).
servers_only = pytest.mark.parametrize(
    "database_url",
    [pytest.param("postgres", marks=pytest.mark.postgres),
     pytest.param("mariadb", marks=pytest.mark.mariadb)],
    indirect=True,
)
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


# ---- helpers -------------------------------------------------------------------------------------


class SlowSmtpServer(SmtpServer):
    """aiosmtpd that takes `delay` seconds to accept each message: mails of a batch trickle in,
    so a test can kill the worker between one user's mail and the next."""

    def __init__(self, delay: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.delay = delay

    def _deliver(self, envelope: Any) -> None:
        super()._deliver(envelope)
        time.sleep(self.delay)  # the fault: a slow mail server (blocks only its own loop)


def add_users(
    engine: Engine, directory: Directory, count: int, *, without_email: set[int] | frozenset[int]
    = frozenset(), staff: set[int] | frozenset[int] = frozenset(),
) -> dict[int, str | None]:
    """Users 1..count (`userN`), e-mail `userN@example.org` unless listed; returns id → e-mail."""
    emails = {i: None if i in without_email else f"user{i}@example.org"
              for i in range(1, count + 1)}
    with engine.begin() as connection:
        connection.execute(insert(directory.table), [
            {"id": i, "username": f"user{i}", "full_name": f"User Number{i}", "email": email,
             "role": "librarian" if i in staff else None, "password_hash": "old-hash",
             "must_change_password": False}
            for i, email in emails.items()
        ])
    return emails


def start_task(
    sessions: sessionmaker[Session],
    settings: Settings,
    redis: Redis | None,
    scope: Scope = Scope.ALL,
    selection: tuple[int, ...] = (),
    *,
    default_password: str | None = None,
    channel: str | None = None,
) -> int:
    with sessions.begin() as session:
        task_id = create_task(session, settings, ResetRequest(
            requester=REQUESTER, requester_name="Stella Staff", scope=scope,
            selection=selection, default_password=default_password, slack_channel=channel,
        )).id
    if redis is not None:
        enqueue_task(make_queue(settings, redis), task_id)
    return task_id


def current(sessions: sessionmaker[Session], task_id: int) -> TaskSnapshot:
    with sessions() as session:
        found = snapshot(session, task_id)
    assert found is not None
    return found


def wait_final(
    sessions: sessionmaker[Session], task_id: int, timeout: float, pool: Workers
) -> TaskSnapshot:
    try:
        return wait_until(lambda: (s := current(sessions, task_id)).status.is_final and s,
                          timeout, f"task {task_id} to end")
    except AssertionError:
        raise AssertionError(
            f"{current(sessions, task_id)}\n{pool.logs()[-6000:]}"
        ) from None


def items(sessions: sessionmaker[Session], task_id: int) -> list[ResetItem]:
    with sessions() as session:
        return list(session.scalars(
            select(ResetItem).where(ResetItem.task_id == task_id).order_by(ResetItem.user_id)
        ))


def hashes(sessions: sessionmaker[Session], directory: Directory) -> dict[int, str]:
    c = directory.table.c
    with sessions() as session:
        return {row[0]: row[1] for row in session.execute(select(c.id, c.password_hash))}


def audit_actions(sessions: sessionmaker[Session], task_id: int) -> Counter[str]:
    with sessions() as session:
        return Counter(session.scalars(
            select(AuditEntry.action).where(AuditEntry.task_id == task_id)
        ))


def summaries(standin: SlackStandIn, task_id: int) -> list[str]:
    """Texts of the end-of-task replies the Slack thread got for this task."""
    return [m.text for m in standin.messages(CHANNEL) if m.text.startswith(f"Reset #{task_id} ")]


@pytest.fixture
def fast_hasher_settings(settings: Settings) -> Settings:
    """Hashing that costs ~50 ms a user: slow enough to kill a worker mid-chunk."""
    return replace(settings, password_rounds=50_000)


# ---- the helpers themselves ----------------------------------------------------------------------


@sqlite_only
def test_a_worker_process_gets_exactly_the_settings_of_the_test(settings: Settings) -> None:
    tuned = replace(settings, smtp_username="relay", smtp_password="pw",
                    smtp_allow_plaintext_auth=True, lease_seconds=7,
                    reaper_interval=0.25, reset_admins=frozenset({"U1", "U2"}),
                    slack_bot_token="xoxb-1", slack_api_url="http://127.0.0.1:1/api/")
    assert Settings.from_env(tuned.to_env(), env_file=None) == tuned


def test_the_private_redis_comes_back_empty_on_the_same_port(
    private_redis: PrivateRedis,
) -> None:
    client = private_redis.client()
    client.set("resetbot-probe", b"1")
    port = private_redis.port

    private_redis.restart()

    assert private_redis.port == port
    assert client.get("resetbot-probe") is None  # the client reconnects to an empty server
    assert client.dbsize() == 0
    client.close()


def test_the_redis_scan_reads_what_rq_compresses(private_redis: PrivateRedis) -> None:
    from rq import Queue
    from rq.serializers import JSONSerializer

    client = private_redis.client()
    marker = "Marker-Needle-5150-" * 4
    job = Queue("scan-check", connection=client, serializer=JSONSerializer).enqueue(
        "builtins.print", marker)
    raw = client.hget(job.key, "data") or b""

    assert marker.encode() not in raw  # RQ stores arguments zlib-compressed
    assert marker.encode() in redis_dump(client)
    client.close()


def test_the_proxy_cuts_and_restores_real_connections(private_redis: PrivateRedis) -> None:
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.retry import Retry

    with tcp_proxy("127.0.0.1", private_redis.port) as proxy:
        once = {"socket_timeout": 2, "retry": Retry(NoBackoff(), 0)}  # no client-side retries
        client: Redis = Redis(host="127.0.0.1", port=proxy.port, **once)
        assert client.ping()
        proxy.cut()
        with pytest.raises(RedisConnectionError):
            client.ping()
        with pytest.raises(RedisConnectionError):
            Redis(host="127.0.0.1", port=proxy.port, **once).ping()
        proxy.restore()
        assert client.ping()
        assert proxy.refused >= 1
        client.close()


# ---- a worker SIGKILLed in the middle of a chunk -------------------------------------------------


@pytest.mark.slow
def test_a_worker_killed_mid_chunk_costs_one_lease_and_nobody_keeps_a_stale_mail(
    fast_hasher_settings: Settings, engine: Engine, sessions: sessionmaker[Session],
    directory: Directory, redis_conn: Redis, workers: Workers, slack_standin: SlackStandIn,
) -> None:
    # With the documented defaults (RESET_LEASE_SECONDS=30, RESET_REAPER_INTERVAL=5) the dead
    # worker's claimed users come back at most lease + interval = 30 + 5 = 35 s after the kill
    # (a lease is renewed every lease/3 while a batch runs, so it never reaches further ahead
    # than 30 s); re-running one chunk is then chunk_size hashes (100 x ~0.25 s bcrypt = 25 s
    # for one worker) plus its mails: 35 + 25 + mail << 120 s. This test shortens the lease to
    # its minimum, 5 s, and the interval to 0.5 s only to stay quick; the mechanism is the same.
    smtp = SlowSmtpServer(delay=0.25).start()
    try:
        no_email = {4, 13}
        add_users(engine, directory, 24, without_email=no_email)
        smtp.refuse("user9@example.org", code=550, times=99)  # one permanent failure
        configured = replace(
            smtp.settings(slack_standin.apply_to(fast_hasher_settings)),
            chunk_size=8, claim_batch=4, lease_seconds=5, reaper_interval=0.5,
        )
        task_id = start_task(sessions, configured, redis_conn, channel=CHANNEL)
        first = workers.start(configured)

        def mailed_but_unrecorded() -> dict[str, str]:
            """Users whose mail the server took while their item is still claimed."""
            mailed = {m.to: m.password for m in smtp.messages}
            return {item.email: mailed[item.email] for item in items(sessions, task_id)
                    if item.state == ItemState.CLAIMED and item.email in mailed}

        wait_until(mailed_but_unrecorded, 30, "a mail sent from a batch not yet recorded")
        first.kill()
        killed_at = time.monotonic()
        # What the dead worker left: mails out, outcomes not written, leases still held.
        stale = mailed_but_unrecorded()
        assert stale, "the kill should land between a mail and its outcome"
        at_death = Counter(item.state for item in items(sessions, task_id))
        assert at_death[ItemState.CLAIMED] >= 1 and at_death[ItemState.PENDING] >= 1

        workers.start(configured)
        final = wait_final(sessions, task_id, 60, workers)
        recovered_in = time.monotonic() - killed_at

        assert final.status is TaskStatus.COMPLETED_WITH_ERRORS  # user9's mail is refused
        assert recovered_in < 30, f"took {recovered_in:.1f} s after the kill"
        done = items(sessions, task_id)
        # One row per user.
        assert sorted(as_test_id(item.user_id) for item in done) == list(range(1, 25))
        outcomes = {as_test_id(item.user_id): item.state for item in done}
        assert {u for u, s in outcomes.items() if s == ItemState.NO_EMAIL} == no_email
        assert {u for u, s in outcomes.items() if s == ItemState.NOTIFY_FAILED} == {9}
        assert {u for u, s in outcomes.items() if s == ItemState.NOTIFIED} == (
            set(range(1, 25)) - no_email - {9}
        )
        # The last mail each user got holds the password that now opens their account.
        hasher = PasswordHasher.from_settings(configured)
        stored = hashes(sessions, directory)
        for user_id in set(range(1, 25)) - no_email - {9}:
            mails = smtp.to(f"user{user_id}@example.org")
            assert 1 <= len(mails) <= 2
            assert hasher.verify(mails[-1].password, stored[user_id]), f"user{user_id}"
        for address, old_password in stale.items():
            mails = smtp.to(address)
            assert len(mails) == 2, f"{address} got no mail with their current password"
            user_id = int(address.removeprefix("user").split("@")[0])
            assert not hasher.verify(old_password, stored[user_id])
        # Reported once: one end in the audit trail, one summary and one CSV in the thread.
        assert audit_actions(sessions, task_id)["finish"] == 1
        wait_until(lambda: current(sessions, task_id) and _csv_posted(sessions, task_id), 20,
                   "the follow-up CSV in the thread")
        [summary] = summaries(slack_standin, task_id)
        assert "e-mailed 21" in summary and "no e-mail 2" in summary and "mail failed 1" in summary
        [upload] = slack_standin.files(slack_standin.dm_channel(REQUESTER))
        listed = [line.split(",")[0] for line in upload.text.strip().splitlines()[1:]]
        assert sorted(listed) == ["user13", "user4", "user9"]
    finally:
        smtp.stop()


def _csv_posted(sessions: sessionmaker[Session], task_id: int) -> bool:
    with sessions() as session:
        task = session.get(ResetTask, task_id)
        return bool(task and task.slack_csv_posted)


# ---- Redis restarted empty in the middle of a task ---------------------------------------------


@pytest.mark.parametrize(
    ("database_url", "mode"),
    [("sqlite", Mode.GENERATED), ("sqlite", Mode.DEFAULT),
     pytest.param("postgres", Mode.GENERATED, marks=pytest.mark.postgres)],
    indirect=["database_url"],
)
@pytest.mark.slow
def test_redis_restarted_empty_mid_task_resumes_from_the_database(
    settings: Settings, engine: Engine, sessions: sessionmaker[Session],
    directory: Directory, private_redis: PrivateRedis, workers: Workers,
    smtp_server: SmtpServer, mode: Mode,
) -> None:
    users = range(1, 31)
    add_users(engine, directory, len(users))
    configured = replace(
        smtp_server.settings(settings), redis_url=private_redis.url, password_rounds=20_000,
        # A job for each chunk (RESET_CHUNK_SWEEP=0): the jobs of the chunks left are in Redis.
        chunk_size=5, chunk_sweep=0, claim_batch=5, reaper_interval=0.5,
    )
    redis = private_redis.client()
    password = "Lantern-Quay-4821!" if mode is Mode.DEFAULT else None
    task_id = start_task(sessions, configured, redis, default_password=password)
    worker = workers.start(configured)

    def some_done_most_left() -> bool:
        counts = current(sessions, task_id).counts
        done = counts[ItemState.NOTIFIED] + counts[ItemState.RESET]
        return done >= 5 and counts[ItemState.PENDING] >= 15

    wait_until(some_done_most_left, 30, "the first chunks to finish")
    queued_before = len(make_queue(configured, redis))
    private_redis.restart()  # every queued chunk job is gone

    final = wait_final(sessions, task_id, 60, workers)

    assert queued_before > 0, "work was waiting in Redis when it was lost"
    assert "had no work in Redis" in worker.log()  # the reaper re-enqueued from the database
    assert worker.alive(), "the worker should ride out the Redis restart"
    assert final.status is TaskStatus.COMPLETED
    expected = ItemState.RESET if mode is Mode.DEFAULT else ItemState.NOTIFIED
    assert final.counts[expected] == len(users) == final.done
    stored = hashes(sessions, directory)
    hasher = PasswordHasher.from_settings(configured)
    if password is not None:
        assert all(hasher.verify(password, stored[u]) for u in users)
        assert smtp_server.messages == []
    else:
        for user_id in users:
            mails = smtp_server.to(f"user{user_id}@example.org")
            assert len(mails) == 1  # nobody was reset twice
            assert hasher.verify(mails[0].password, stored[user_id])
    redis.close()


@sqlite_only
@pytest.mark.slow
def test_a_worker_waiting_for_redis_to_come_back_still_stops_when_asked(
    settings: Settings, engine: Engine, sessions: sessionmaker[Session], directory: Directory,
    private_redis: PrivateRedis, workers: Workers,
) -> None:
    add_users(engine, directory, 10)
    configured = replace(settings, redis_url=private_redis.url, password_rounds=100_000,
                         chunk_size=10, reaper_interval=0.5)
    task_id = start_task(sessions, configured, private_redis.client(),
                         default_password="Lantern-Quay-4821!")
    worker = workers.start(configured)
    wait_until(lambda: current(sessions, task_id).counts[ItemState.RESET] >= 1, 30,
               "the chunk to be under way")
    private_redis.stop()  # and it stays down
    wait_until(lambda: "starting again when Redis answers" in worker.log(), 30,
               "the worker to notice Redis is gone")
    assert worker.alive()

    worker.terminate()

    wait_until(lambda: not worker.alive(), 10, "the worker to stop on SIGTERM")
    assert worker.returncode == 0
    # The chunk in hand was finished: the database has every user of it.
    assert current(sessions, task_id).counts[ItemState.RESET] == 10


# ---- the database unreachable for a moment -----------------------------------------------------


def through_proxy(database_url: str, proxy: TcpProxy) -> str:
    url = make_url(database_url)
    return url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)


@servers_only
@pytest.mark.slow
def test_the_database_unreachable_for_a_moment_the_task_finishes_once_it_is_back(
    settings: Settings, database_url: str, engine: Engine, sessions: sessionmaker[Session],
    directory: Directory, redis_conn: Redis, workers: Workers, smtp_server: SmtpServer,
) -> None:
    users = range(1, 41)
    add_users(engine, directory, len(users))
    direct = make_url(database_url)
    with tcp_proxy(direct.host or "127.0.0.1", direct.port or 5432) as proxy:
        configured = replace(
            smtp_server.settings(settings), database_url=through_proxy(database_url, proxy),
            password_rounds=20_000, chunk_size=5, claim_batch=5, lease_seconds=5,
            reaper_interval=0.5,
        )
        # The test itself reads the database directly: only the worker's path is cut.
        task_id = start_task(sessions, configured, redis_conn)
        worker = workers.start(configured)
        wait_until(lambda: current(sessions, task_id).done >= 5, 30, "the first users reset")

        proxy.cut()
        wait_until(lambda: "OperationalError" in worker.log(), 30,
                   "the worker to run into the cut")
        during = current(sessions, task_id)
        seen_during_cut = [during]
        # Keep the database away for a while, watching the task from outside.
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            seen_during_cut.append(current(sessions, task_id))
            time.sleep(0.1)
        proxy.restore()

        final = wait_final(sessions, task_id, 60, workers)

    assert all(not s.status.is_final for s in seen_during_cut)  # nothing ends while cut off
    assert during.counts[ItemState.PENDING] > 0, "the cut should land mid-task"
    assert worker.alive()
    assert final.status is TaskStatus.COMPLETED
    assert final.counts[ItemState.NOTIFIED] == len(users) == final.done
    assert final.counts[ItemState.PENDING] == final.counts[ItemState.CLAIMED] == 0
    hasher = PasswordHasher.from_settings(configured)
    stored = hashes(sessions, directory)
    for user_id in users:
        mails = smtp_server.to(f"user{user_id}@example.org")
        assert mails, f"user{user_id} got no mail"
        assert hasher.verify(mails[-1].password, stored[user_id]), f"user{user_id}"
    assert audit_actions(sessions, task_id)["finish"] == 1
    # The jobs that failed on the cut keep their tracebacks in Redis: no password in them.
    failed = make_queue(configured, redis_conn).failed_job_registry
    assert failed.count > 0
    ours = redis_dump(redis_conn, match=f"*{configured.reset_queue}*")
    assert b"OperationalError" in ours  # the tracebacks were read, decompressed
    for mail in smtp_server.messages:
        assert mail.password.encode() not in ours


# ---- two tasks over the same users at once -------------------------------------------------------


@pytest.mark.slow
def test_two_tasks_over_the_same_users_never_reset_anyone_at_the_same_time(
    settings: Settings, engine: Engine, sessions: sessionmaker[Session], directory: Directory,
    redis_conn: Redis, workers: Workers, slack_standin: SlackStandIn,
) -> None:
    import threading

    add_users(engine, directory, 30)
    configured = replace(slack_standin.apply_to(settings), password_rounds=20_000,
                         chunk_size=5, claim_batch=5, reaper_interval=0.5)
    first_password, second_password = "Harbour-Lantern-58!", "Quarry-Tulip-9314!"
    # Both confirmed at once, both over users 11..20; two workers take both plans at once.
    first = start_task(sessions, configured, None, Scope.ALL_EXCEPT_SELECTED,
                       tuple(range(21, 31)), default_password=first_password, channel=CHANNEL)
    second = start_task(sessions, configured, None, Scope.SELECTED_ONLY,
                        tuple(range(11, 31)), default_password=second_password, channel=CHANNEL)
    queue = make_queue(configured, redis_conn)
    enqueue_task(queue, first)
    enqueue_task(queue, second)
    overlaps: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        """Both tasks running, or both holding claimed users, at any moment: an overlap."""
        while not stop.is_set():
            with sessions() as session:
                running = session.scalars(select(ResetTask.id).where(
                    ResetTask.status == TaskStatus.RUNNING)).all()
                claiming = session.scalars(select(ResetItem.task_id).where(
                    ResetItem.state == ItemState.CLAIMED).distinct()).all()
            if len(running) > 1 or len(claiming) > 1:
                overlaps.append(f"running={running} claiming={claiming}")
            stop.wait(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        workers.start(configured)
        workers.start(configured)
        one = wait_final(sessions, first, 60, workers)
        two = wait_final(sessions, second, 60, workers)
    finally:
        stop.set()
        watcher.join(5)

    assert overlaps == []
    assert one.status is two.status is TaskStatus.COMPLETED
    assert (one.counts[ItemState.RESET], two.counts[ItemState.RESET]) == (20, 20)
    with sessions() as session:
        rows = {t: session.get(ResetTask, t) for t in (first, second)}
    # Whichever plan job started first ran first; the other one waited for it to end.
    earlier, later = sorted(rows.values(), key=lambda t: t.started_at)  # type: ignore[union-attr]
    assert earlier.finished_at is not None and later.started_at is not None
    assert later.started_at >= earlier.finished_at
    passwords = {first: first_password, second: second_password}
    hasher = PasswordHasher.from_settings(configured)
    stored = hashes(sessions, directory)
    assert all(hasher.verify(first_password, stored[u]) for u in range(1, 11))
    assert all(hasher.verify(passwords[later.id], stored[u]) for u in range(11, 21))
    assert all(hasher.verify(second_password, stored[u]) for u in range(21, 31))
    # The waiting task's thread said, once, that it was waiting (and for which task).
    waiting = wait_until(
        lambda: [m.text for m in slack_standin.messages(CHANNEL)
                 if m.text.startswith(":hourglass_flowing_sand: Waiting")], 20,
        "the waiting message")
    assert len(waiting) == 1 and f"reset #{earlier.id} is still running" in waiting[0]
