"""The reset engine end to end: real Redis, SQLite and PostgreSQL, real SMTP on loopback."""

from __future__ import annotations

import html
from dataclasses import replace

import pytest
from redis import Redis
from sqlalchemy import Engine, MetaData, select, update
from sqlalchemy.orm import Session, sessionmaker

from core.directory import Directory
from core.models import ItemState, ResetItem, ResetTask, Scope, TaskStatus, utcnow
from core.passwords import PasswordHasher
from core.settings import Settings
from core.tasks import request_cancel
from jobs.context import use_context
from jobs.engine import run_chunk
from tests.support.engine import (
    RecordingReporter,
    build_context,
    items_by_user,
    run_until_final,
    submit,
    task_snapshot,
    user_rows,
    work,
)
from tests.support.smtp import SmtpServer
from tests.support.smtp import smtp_server as smtp_server

# The test server takes AUTH without TLS (loopback only); aiosmtpd warns about that each time.
pytestmark = [
    pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS"),
    pytest.mark.every_database,  # claims, locks and settling differ between databases
]

DEFAULT_PASSWORD = "Quiet-Harbour-73!"
# For behaviour that does not depend on the database (mail, reporting): one database is enough.
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
EVERYONE = {1, 2, 3, 4, 5, 6, 7}
WITH_EMAIL = {1: "alice@example.org", 2: "bob@example.org", 3: "carol@example.org",
              5: "erin@example.org", 7: "grace@example.org"}


@pytest.fixture
def hasher(settings: Settings) -> PasswordHasher:
    return PasswordHasher.from_settings(settings)


@pytest.fixture
def mail_settings(settings: Settings, smtp_server: SmtpServer) -> Settings:
    return smtp_server.settings(settings)


def assert_untouched(rows: dict[int, object], user_ids: set[int]) -> None:
    for user_id in user_ids:
        row = rows[user_id]
        assert row.password_hash == "old-hash", f"user {user_id} was reset"  # type: ignore[attr-defined]
        assert row.must_change_password is False  # type: ignore[attr-defined]


# -- scopes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scope", "selection", "expected"),
    [
        (Scope.ALL, (), EVERYONE),
        (Scope.ALL_EXCEPT_SELECTED, (2, 5), {1, 3, 4, 6, 7}),
        (Scope.ALL_WITHOUT_ROLE, (), {1, 2, 4, 6, 7}),  # carol and erin are staff
        (Scope.SELECTED_ONLY, (3, 4), {3, 4}),
    ],
)
def test_each_scope_resets_exactly_its_users(
    settings: Settings, redis_conn: Redis, engine: Engine, sessions: sessionmaker[Session],
    directory: Directory, sample_users: list[object], hasher: PasswordHasher,
    scope: Scope, selection: tuple[int, ...], expected: set[int],
) -> None:
    context = build_context(settings, redis_conn, engine)
    task_id = submit(context, scope, selection, default_password=DEFAULT_PASSWORD)

    final = run_until_final(context, task_id)

    assert final.status is TaskStatus.COMPLETED
    assert final.total == len(expected)
    assert final.counts[ItemState.RESET] == len(expected)
    rows = user_rows(sessions, directory)
    for user_id in expected:
        assert rows[user_id].password_hash != "old-hash"
        assert hasher.verify(DEFAULT_PASSWORD, rows[user_id].password_hash or "")
        assert rows[user_id].must_change_password is True
    assert_untouched(rows, EVERYONE - expected)  # type: ignore[arg-type]
    assert set(items_by_user(sessions, task_id)) == expected


@sqlite_only
def test_default_mode_sends_no_mail_and_salts_each_hash(
    mail_settings: Settings, redis_conn: Redis, engine: Engine, sessions: sessionmaker[Session],
    directory: Directory, sample_users: list[object], hasher: PasswordHasher,
    smtp_server: SmtpServer,
) -> None:
    context = build_context(mail_settings, redis_conn, engine)
    task_id = submit(context, Scope.ALL, default_password=DEFAULT_PASSWORD, require_change=False)

    final = run_until_final(context, task_id)

    assert final.status is TaskStatus.COMPLETED
    assert smtp_server.messages == []
    rows = user_rows(sessions, directory)
    hashes = [rows[user_id].password_hash or "" for user_id in EVERYONE]
    assert all(hasher.verify(DEFAULT_PASSWORD, value) for value in hashes)
    assert len(set(hashes)) == len(hashes)  # one salt per user
    assert not any(rows[user_id].must_change_password for user_id in EVERYONE)
    with sessions() as session:
        task = session.get(ResetTask, task_id)
        assert task is not None
        assert task.default_password_sealed is None


# -- generated passwords, mail and retries ---------------------------------------------------------


def test_generated_passwords_are_mailed_and_verify(
    mail_settings: Settings, redis_conn: Redis, engine: Engine, sessions: sessionmaker[Session],
    directory: Directory, sample_users: list[object], hasher: PasswordHasher,
    smtp_server: SmtpServer,
) -> None:
    reporter = RecordingReporter()
    context = build_context(mail_settings, redis_conn, engine, reporter)
    task_id = submit(context, Scope.ALL)

    final = run_until_final(context, task_id)

    assert final.status is TaskStatus.COMPLETED
    assert final.counts[ItemState.NOTIFIED] == 5
    assert final.counts[ItemState.NO_EMAIL] == 2
    items = items_by_user(sessions, task_id)
    assert {items[4].state, items[6].state} == {ItemState.NO_EMAIL}
    rows = user_rows(sessions, directory)
    passwords = set()
    for user_id, address in WITH_EMAIL.items():
        mails = smtp_server.to(address)
        assert len(mails) == 1
        password = mails[0].password
        passwords.add(password)
        assert hasher.verify(password, rows[user_id].password_hash or "")
        assert rows[user_id].must_change_password is True
        assert items[user_id].state == ItemState.NOTIFIED and items[user_id].attempts == 1
        assert rows[user_id].username in mails[0].text
        assert "https://portal.library.example/login" in mails[0].text
        assert "change this password the next time you sign in" in mails[0].text
        assert html.escape(password) in mails[0].html  # escaped, like every value
    assert len(passwords) == 5
    # Users without an address were reset too; staff tell them.
    assert rows[4].password_hash != "old-hash" and rows[6].password_hash != "old-hash"
    assert len(smtp_server.messages) == 5
    assert reporter.named("task_started") == [(task_id,)]
    assert reporter.named("task_finished") == [(task_id,)]


def test_a_recipient_refused_twice_is_notified_after_three_attempts(
    mail_settings: Settings, redis_conn: Redis, engine: Engine, sessions: sessionmaker[Session],
    directory: Directory, sample_users: list[object], hasher: PasswordHasher,
    smtp_server: SmtpServer,
) -> None:
    smtp_server.refuse("bob@example.org", code=451, times=2)
    reporter = RecordingReporter()
    context = build_context(mail_settings, redis_conn, engine, reporter)
    task_id = submit(context, Scope.SELECTED_ONLY, (1, 2))

    final = run_until_final(context, task_id)

    assert final.status is TaskStatus.COMPLETED
    bob = items_by_user(sessions, task_id)[2]
    assert (bob.state, bob.attempts) == (ItemState.NOTIFIED, 3)
    assert smtp_server.rcpt_attempts["bob@example.org"] == 3
    # Each retry made a new password; the one mail that arrived holds the current one.
    [mail] = smtp_server.to("bob@example.org")
    assert hasher.verify(mail.password, user_rows(sessions, directory)[2].password_hash or "")
    rounds = reporter.named("retries_scheduled")
    assert [(users, attempt) for _task, users, attempt, _delay in rounds] == [(1, 2), (1, 3)]


def test_a_recipient_refused_four_times_fails_after_exactly_four_attempts(
    mail_settings: Settings, redis_conn: Redis, engine: Engine, sessions: sessionmaker[Session],
    directory: Directory, sample_users: list[object], hasher: PasswordHasher,
    smtp_server: SmtpServer,
) -> None:
    smtp_server.refuse("bob@example.org", code=450, times=4)
    context = build_context(mail_settings, redis_conn, engine)
    task_id = submit(context, Scope.SELECTED_ONLY, (1, 2))

    final = run_until_final(context, task_id)

    assert final.status is TaskStatus.COMPLETED_WITH_ERRORS
    items = items_by_user(sessions, task_id)
    assert (items[2].state, items[2].attempts) == (ItemState.NOTIFY_FAILED, 4)
    assert "450" in (items[2].last_error or "")
    assert items[1].state == ItemState.NOTIFIED
    assert smtp_server.rcpt_attempts["bob@example.org"] == 4
    assert smtp_server.to("bob@example.org") == []


@sqlite_only
def test_a_permanent_refusal_is_not_retried(
    mail_settings: Settings, redis_conn: Redis, engine: Engine, sessions: sessionmaker[Session],
    sample_users: list[object], smtp_server: SmtpServer,
) -> None:
    smtp_server.refuse("grace@example.org", code=550, times=10, text="5.1.1 No such mailbox")
    context = build_context(mail_settings, redis_conn, engine)
    task_id = submit(context, Scope.ALL_WITHOUT_ROLE)

    final = run_until_final(context, task_id)

    assert final.status is TaskStatus.COMPLETED_WITH_ERRORS
    grace = items_by_user(sessions, task_id)[7]
    assert (grace.state, grace.attempts) == (ItemState.NOTIFY_FAILED, 1)
    assert grace.last_error == "550 5.1.1 No such mailbox"
    assert smtp_server.rcpt_attempts["grace@example.org"] == 1


@sqlite_only
def test_scheduled_retries_run_through_rqs_scheduler(
    mail_settings: Settings, redis_conn: Redis, engine: Engine, sessions: sessionmaker[Session],
    sample_users: list[object], smtp_server: SmtpServer,
) -> None:
    """With real delays the retry waits in RQ's ScheduledJobRegistry until it is due."""
    settings = replace(mail_settings, mail_retry_delays=(1, 1, 1))
    smtp_server.refuse("alice@example.org", code=421, times=1)
    context = build_context(settings, redis_conn, engine)
    task_id = submit(context, Scope.SELECTED_ONLY, (1,))

    work(context)  # plans, tries once, schedules the retry a second from now
    assert task_snapshot(context, task_id).counts[ItemState.RETRY_WAIT] == 1
    assert context.queue.scheduled_job_registry.count == 1

    final = run_until_final(context, task_id, timeout=20)

    assert final.status is TaskStatus.COMPLETED
    alice = items_by_user(sessions, task_id)[1]
    assert (alice.state, alice.attempts) == (ItemState.NOTIFIED, 2)


def test_wrong_smtp_credentials_fail_the_task_once_and_reset_nobody(
    settings: Settings, redis_conn: Redis, engine: Engine, sessions: sessionmaker[Session],
    directory: Directory, sample_users: list[object],
) -> None:
    server = SmtpServer(username="resetbot", password="right").start()
    try:
        wrong = replace(server.settings(settings), smtp_password="wrong", chunk_size=2)
        reporter = RecordingReporter()
        context = build_context(wrong, redis_conn, engine, reporter)
        task_id = submit(context, Scope.ALL)

        final = run_until_final(context, task_id)

        assert final.status is TaskStatus.FAILED
        assert final.error is not None and "535" in final.error
        assert server.messages == []
        assert len(server.logins) <= 3  # a login per mechanism smtplib tries, once per task
        items = items_by_user(sessions, task_id)
        assert {item.state for item in items.values()} == {ItemState.NOTIFY_FAILED}
        assert all((item.last_error or "").startswith("Not reset:") for item in items.values())
        assert_untouched(user_rows(sessions, directory), EVERYONE)  # type: ignore[arg-type]
        assert reporter.named("task_finished") == [(task_id,)]
    finally:
        server.stop()


@sqlite_only
def test_right_smtp_credentials_send(
    settings: Settings, redis_conn: Redis, engine: Engine, sessions: sessionmaker[Session],
    sample_users: list[object],
) -> None:
    server = SmtpServer(username="resetbot", password="right").start()
    try:
        context = build_context(server.settings(settings), redis_conn, engine)
        task_id = submit(context, Scope.SELECTED_ONLY, (1, 7))

        final = run_until_final(context, task_id)

        assert final.status is TaskStatus.COMPLETED
        assert len(server.messages) == 2
        assert server.logins == [("resetbot", True)]  # one connection for the chunk
    finally:
        server.stop()


# -- no secrets at rest ----------------------------------------------------------------------------


def redis_contents(redis: Redis) -> bytes:
    """Every key and value in the Redis, whatever its type, as one blob to search."""
    blob = bytearray()
    for key in redis.scan_iter(count=1000):
        blob += key + b"\n"
        kind = redis.type(key)
        if kind == b"string":
            blob += redis.get(key) or b""
        elif kind == b"hash":
            for field, value in redis.hgetall(key).items():
                blob += field + b"=" + value + b"\n"
        elif kind == b"list":
            blob += b"\n".join(redis.lrange(key, 0, -1))
        elif kind == b"set":
            blob += b"\n".join(redis.smembers(key))
        elif kind == b"zset":
            blob += b"\n".join(redis.zrange(key, 0, -1))
        elif kind == b"stream":
            for entry_id, fields in redis.xrange(key):
                blob += entry_id + b"".join(k + b"=" + v for k, v in fields.items())
        blob += b"\n"
    return bytes(blob)


def database_contents(engine: Engine) -> str:
    metadata = MetaData()
    metadata.reflect(engine)
    parts: list[str] = []
    with engine.connect() as connection:
        for table in metadata.sorted_tables:
            for row in connection.execute(select(table)):
                parts.extend(str(value) for value in row)
    return "\n".join(parts)


def test_no_plaintext_password_in_redis_or_the_database(
    mail_settings: Settings, redis_conn: Redis, engine: Engine, sessions: sessionmaker[Session],
    sample_users: list[object], smtp_server: SmtpServer,
) -> None:
    smtp_server.refuse("alice@example.org", code=450, times=1)
    smtp_server.refuse("erin@example.org", code=450, times=4)
    context = build_context(mail_settings, redis_conn, engine)
    generated = submit(context, Scope.ALL)
    default = submit(context, Scope.SELECTED_ONLY, (4, 6), default_password=DEFAULT_PASSWORD)
    # A task not yet run holds its default password, but only sealed.
    with sessions() as session:
        sealed = session.scalar(
            select(ResetTask.default_password_sealed).where(ResetTask.id == default)
        )
    assert sealed and DEFAULT_PASSWORD not in database_contents(engine)

    assert run_until_final(context, generated).status is TaskStatus.COMPLETED_WITH_ERRORS
    assert run_until_final(context, default).status is TaskStatus.COMPLETED

    secrets = [mail.password for mail in smtp_server.messages] + [DEFAULT_PASSWORD]
    assert len(secrets) == 4 + 1  # alice (second try), bob, carol, grace; erin never got one
    in_redis = redis_contents(redis_conn)
    in_database = database_contents(engine)
    for secret in secrets:
        assert secret.encode() not in in_redis
        assert secret not in in_database
    assert sealed not in in_database  # an ended task forgets even the sealed form


# -- idempotence, cancel, queueing, reaper ---------------------------------------------------------


def test_a_chunk_that_runs_twice_changes_nothing(
    mail_settings: Settings, redis_conn: Redis, engine: Engine, sessions: sessionmaker[Session],
    directory: Directory, sample_users: list[object], smtp_server: SmtpServer,
) -> None:
    context = build_context(mail_settings, redis_conn, engine)
    task_id = submit(context, Scope.ALL)
    run_until_final(context, task_id)
    before_users = user_rows(sessions, directory)
    before_items = {k: (v.state, v.attempts) for k, v in items_by_user(sessions, task_id).items()}
    mails = len(smtp_server.messages)

    with use_context(context):
        run_chunk(task_id, 0)
    work(context)

    assert user_rows(sessions, directory) == before_users
    after_items = {k: (v.state, v.attempts) for k, v in items_by_user(sessions, task_id).items()}
    assert after_items == before_items
    assert len(smtp_server.messages) == mails


def test_cancel_stops_the_remaining_work(
    settings: Settings, redis_conn: Redis, engine: Engine, sessions: sessionmaker[Session],
    directory: Directory, sample_users: list[object],
) -> None:
    # A job for each chunk of two, none going on into the next (RESET_CHUNK_SWEEP=0).
    settings = replace(settings, chunk_size=2, claim_batch=1, chunk_sweep=0)
    reporter = RecordingReporter()
    context = build_context(settings, redis_conn, engine, reporter)
    task_id = submit(context, Scope.ALL, default_password=DEFAULT_PASSWORD)

    work(context, max_jobs=2)  # the plan, then the first chunk (users 1 and 2)
    with sessions() as session:
        request_cancel(session, task_id, "cli:tester")
        session.commit()
    final = run_until_final(context, task_id)

    assert final.status is TaskStatus.CANCELLED
    assert final.counts[ItemState.RESET] == 2
    assert final.counts[ItemState.CANCELLED] == 5
    rows = user_rows(sessions, directory)
    assert rows[1].password_hash != "old-hash" and rows[2].password_hash != "old-hash"
    assert_untouched(rows, {3, 4, 5, 6, 7})  # type: ignore[arg-type]
    assert reporter.named("task_finished") == [(task_id,)]


def test_a_chunk_job_goes_on_into_the_chunks_after_it_while_their_users_wait(
    settings: Settings, redis_conn: Redis, engine: Engine, sessions: sessionmaker[Session],
    directory: Directory, sample_users: list[object],
) -> None:
    """RESET_CHUNK_SWEEP=1, chunks of two: the first chunk's job resets the second chunk's
    users too, whose own job then finds nothing to do; the third chunk's job takes the rest."""
    settings = replace(settings, chunk_size=2, claim_batch=1, chunk_sweep=1)
    context = build_context(settings, redis_conn, engine)
    task_id = submit(context, Scope.ALL, default_password=DEFAULT_PASSWORD)

    def reset_so_far() -> set[int]:
        rows = user_rows(sessions, directory)
        return {user_id for user_id, row in rows.items() if row.password_hash != "old-hash"}

    work(context, max_jobs=2)  # the plan, then chunk 0's job
    assert reset_so_far() == {1, 2, 3, 4}
    work(context, max_jobs=1)  # chunk 1's job
    assert reset_so_far() == {1, 2, 3, 4}
    assert task_snapshot(context, task_id).counts[ItemState.PENDING] == 3
    work(context, max_jobs=1)  # chunk 2's job
    assert reset_so_far() == EVERYONE

    final = run_until_final(context, task_id)  # chunk 3's job: nothing left, the task ends
    assert final.status is TaskStatus.COMPLETED
    assert final.counts[ItemState.RESET] == 7
    items = items_by_user(sessions, task_id)
    assert sorted(item.chunk for item in items.values()) == [0, 0, 1, 1, 2, 2, 3]


@sqlite_only
def test_a_task_cancelled_before_it_starts_ends_cancelled(
    settings: Settings, redis_conn: Redis, engine: Engine, sessions: sessionmaker[Session],
    directory: Directory, sample_users: list[object],
) -> None:
    context = build_context(settings, redis_conn, engine)
    task_id = submit(context, Scope.ALL, default_password=DEFAULT_PASSWORD)
    with sessions() as session:
        request_cancel(session, task_id, "cli:tester")
        session.commit()

    final = run_until_final(context, task_id)

    assert final.status is TaskStatus.CANCELLED
    assert final.total == 0
    assert_untouched(user_rows(sessions, directory), EVERYONE)  # type: ignore[arg-type]


def test_a_second_task_waits_for_the_first(
    settings: Settings, redis_conn: Redis, engine: Engine, sessions: sessionmaker[Session],
    sample_users: list[object],
) -> None:
    reporter = RecordingReporter()
    context = build_context(settings, redis_conn, engine, reporter)
    first = submit(context, Scope.ALL, default_password=DEFAULT_PASSWORD)
    second = submit(context, Scope.SELECTED_ONLY, (1,), default_password=DEFAULT_PASSWORD)

    run_until_final(context, first)
    final = run_until_final(context, second)

    assert final.status is TaskStatus.COMPLETED
    assert reporter.named("task_waiting") == [(second, first)]
    with sessions() as session:
        one, two = (session.get(ResetTask, task) for task in (first, second))
        assert one is not None and two is not None
        assert one.finished_at is not None and two.started_at is not None
        assert two.started_at >= one.finished_at
    started = [args[0] for args in reporter.named("task_started")]
    finished = [args[0] for args in reporter.named("task_finished")]
    assert started == [first, second] and finished == [first, second]


def test_the_reaper_returns_expired_leases_and_the_task_completes(
    settings: Settings, redis_conn: Redis, engine: Engine, sessions: sessionmaker[Session],
    directory: Directory, sample_users: list[object], hasher: PasswordHasher,
) -> None:
    from jobs.reaper import reap

    context = build_context(settings, redis_conn, engine)
    task_id = submit(context, Scope.ALL, default_password=DEFAULT_PASSWORD)
    work(context, max_jobs=1)  # plan only
    # A worker claimed three users, then was SIGKILLed: its lease ran out, its job is gone.
    context.queue.empty()
    past = utcnow()
    with sessions() as session:
        session.execute(
            update(ResetItem)
            .where(ResetItem.task_id == task_id, ResetItem.user_id.in_(["1", "2", "3"]))
            .values(state=ItemState.CLAIMED, leased_by="dead-worker", lease_until=past)
        )
        session.commit()

    report = reap(context)

    assert report.leases_returned == 3
    assert report.chunks_enqueued >= 1
    counts = task_snapshot(context, task_id).counts
    assert counts[ItemState.CLAIMED] == 0 and counts[ItemState.PENDING] == 7
    final = run_until_final(context, task_id)
    assert final.status is TaskStatus.COMPLETED
    rows = user_rows(sessions, directory)
    assert all(hasher.verify(DEFAULT_PASSWORD, rows[u].password_hash or "") for u in EVERYONE)


def test_the_reaper_requeues_a_task_whose_redis_was_emptied(
    settings: Settings, redis_conn: Redis, engine: Engine, sample_users: list[object],
) -> None:
    from jobs.reaper import reap

    context = build_context(settings, redis_conn, engine)
    task_id = submit(context, Scope.ALL, default_password=DEFAULT_PASSWORD)
    work(context, max_jobs=1)  # plan only; the chunk job waits in Redis
    context.queue.empty()  # ... and is lost

    report = reap(context)
    again = reap(context)  # a second reaper in the same interval does not duplicate the work

    assert report.chunks_enqueued == 1
    assert not again.changed
    assert run_until_final(context, task_id).status is TaskStatus.COMPLETED


def test_the_reaper_replans_a_task_whose_planner_died(
    settings: Settings, redis_conn: Redis, engine: Engine, sessions: sessionmaker[Session],
    sample_users: list[object],
) -> None:
    from datetime import timedelta

    from jobs.reaper import reap

    context = build_context(settings, redis_conn, engine)
    task_id = submit(context, Scope.ALL, default_password=DEFAULT_PASSWORD, enqueue=False)
    with sessions() as session:  # started, then the planner was killed before writing anything
        session.execute(
            update(ResetTask).where(ResetTask.id == task_id).values(
                status=TaskStatus.RUNNING, started_at=utcnow(),
                plan_lease_until=utcnow() - timedelta(seconds=1),
            )
        )
        session.commit()

    report = reap(context)

    assert report.plans_enqueued == 1
    final = run_until_final(context, task_id)
    assert (final.status, final.total) == (TaskStatus.COMPLETED, 7)


@sqlite_only
def test_a_failing_reporter_does_not_fail_the_reset(
    settings: Settings, redis_conn: Redis, engine: Engine, sample_users: list[object],
) -> None:
    class BrokenReporter(RecordingReporter):
        def task_started(self, task_id: int) -> None:
            raise ConnectionError("slack is down")

        def task_finished(self, task_id: int) -> None:
            raise ConnectionError("slack is down")

    context = build_context(settings, redis_conn, engine, BrokenReporter())
    task_id = submit(context, Scope.ALL, default_password=DEFAULT_PASSWORD)

    assert run_until_final(context, task_id).status is TaskStatus.COMPLETED


@sqlite_only
def test_slack_traffic_stays_flat_whatever_the_size(
    mail_settings: Settings, redis_conn: Redis, engine: Engine, sample_users: list[object],
    smtp_server: SmtpServer,
) -> None:
    # Seven jobs of one user each (RESET_CHUNK_SWEEP=0), each scheduling its retry.
    settings = replace(mail_settings, chunk_size=1, claim_batch=1, progress_steps=4,
                       chunk_sweep=0)
    for address in WITH_EMAIL.values():
        smtp_server.refuse(address, code=450, times=1)
    reporter = RecordingReporter()
    context = build_context(settings, redis_conn, engine, reporter)
    task_id = submit(context, Scope.ALL)

    assert run_until_final(context, task_id).status is TaskStatus.COMPLETED

    steps = [step for _task, step, _steps in reporter.named("task_progress")]
    assert steps == sorted(set(steps)) and steps[-1] == 4
    rounds = reporter.named("retries_scheduled")
    assert len(rounds) == 1  # seven chunks, one round: said once
    assert rounds[0][2] == 2
    assert len(reporter.calls) <= 1 + 4 + 1 + 1


@sqlite_only
def test_the_reaper_puts_back_a_lost_mail_retry(
    mail_settings: Settings, redis_conn: Redis, engine: Engine, sessions: sessionmaker[Session],
    directory: Directory, sample_users: list[object], smtp_server: SmtpServer,
    hasher: PasswordHasher,
) -> None:
    from datetime import timedelta

    from jobs.reaper import reap

    settings = replace(mail_settings, mail_retry_delays=(600, 600, 600))
    smtp_server.refuse("alice@example.org", code=450, times=1)
    context = build_context(settings, redis_conn, engine)
    task_id = submit(context, Scope.SELECTED_ONLY, (1,))
    work(context)
    registry = context.queue.scheduled_job_registry
    assert registry.count == 1
    # Redis lost the scheduled retry, and the retry is long overdue.
    for job_id in registry.get_job_ids():
        registry.remove(job_id, delete_job=True)
    with sessions() as session:
        session.execute(
            update(ResetItem).where(ResetItem.task_id == task_id)
            .values(next_attempt_at=utcnow() - timedelta(minutes=5))
        )
        session.commit()

    report = reap(context)

    assert report.retries_enqueued == 1
    final = run_until_final(context, task_id)
    assert final.status is TaskStatus.COMPLETED
    alice = items_by_user(sessions, task_id)[1]
    assert (alice.state, alice.attempts) == (ItemState.NOTIFIED, 2)
    password = smtp_server.last_password("alice@example.org")
    assert hasher.verify(password, user_rows(sessions, directory)[1].password_hash or "")
