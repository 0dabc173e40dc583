"""How many transactions and statements a batch of a reset costs, counted on the real engines.

The worker's settling thread is where a batch's round trips go (claim, lease, hashes, states,
mail outcomes): SQLAlchemy's own events count each engine's commits and statements there,
while one chunk of 20 users is worked in batches of 5. Where the users live in resetbot's
database, a batch is one transaction (lease, hashes, states, the claim of a later batch); on
Koha's `borrowers` (MariaDB, its own database) one in each database, plus Undo's snapshot,
which must be committed before the hashes are. A change that adds a round trip per batch fails
here rather than showing only as a slower benchmark.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from redis import Redis
from sqlalchemy import Engine, event, insert, select, text
from sqlalchemy.orm import Session, sessionmaker

from core.directory import Directory
from core.models import ItemState, ResetItem, ResetTask, Scope, TaskStatus
from core.passwords import PasswordHasher
from core.settings import Settings
from jobs.chunks import work_items
from jobs.claims import chunk_items
from jobs.context import WorkerContext, use_context
from tests.support.engine import build_context, submit, task_snapshot, user_rows, work
from tests.support.koha import Borrower, add_borrowers, koha_accepts, koha_on_mariadb
from tests.support.smtp import SmtpServer
from tests.support.smtp import smtp_server as smtp_server

pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")

USERS = 20
BATCH = 5
BATCHES = USERS // BATCH
DEFAULT_PASSWORD = "Quiet-Harbour-73!"
#: The claim a job makes before its first batch is settled (of the first batch and the one
#: hashed while it is settled); every later claim rides in a batch's own transaction.
CLAIMS_AHEAD = 1


@dataclass
class Tally:
    """Commits and statements per engine, made on the settling thread."""

    commits: Counter[str] = field(default_factory=Counter)
    statements: Counter[str] = field(default_factory=Counter)
    #: Progress checks (each reads the task and counts its settled items) and the steps they
    #: took (an UPDATE, committed). A check is due by users settled or by the clock, so how
    #: many come on a slow machine is not the batches' to say: they are counted apart.
    progress_checks: int = 0
    progress_steps: int = 0


@contextmanager
def counted(engines: dict[str, Engine]) -> Iterator[Tally]:
    """Count what the settling threads do on each engine while the block runs."""
    tally = Tally()

    def settling() -> bool:
        return threading.current_thread().name.startswith("resetbot-settle-")

    hooks: list[tuple[Engine, str, Any]] = []
    for name, engine in engines.items():
        def on_commit(_connection: Any, name: str = name) -> None:
            if settling():
                tally.commits[name] += 1

        def on_statement(
            _connection: Any, _cursor: Any, statement: str, *_args: Any, name: str = name
        ) -> None:
            if not settling():
                return
            tally.statements[name] += 1
            if "reported_step" in statement:
                if statement.lstrip().upper().startswith("UPDATE"):
                    tally.progress_steps += 1
                else:
                    tally.progress_checks += 1

        hooks += [(engine, "commit", on_commit), (engine, "before_cursor_execute", on_statement)]
    for engine, kind, hook in hooks:
        event.listen(engine, kind, hook)
    try:
        yield tally
    finally:
        for engine, kind, hook in hooks:
            event.remove(engine, kind, hook)


def planned(context: WorkerContext, task_id: int) -> None:
    """The task started and its items planned (one chunk), by the worker's own planning job
    (after whatever an earlier round left queued: its chunk's job, worked here already)."""
    chunks: set[int] = set()
    while not chunks and work(context, max_jobs=1):
        with context.sessions() as session:
            chunks = set(session.scalars(
                select(ResetItem.chunk).where(ResetItem.task_id == task_id)))
    assert chunks == {0}


def one_chunk(context: WorkerContext, task_id: int, engines: dict[str, Engine]) -> Tally:
    with use_context(context), counted(engines) as tally:
        work_items(context, task_id, chunk_items(task_id, 0))
    return tally


@pytest.fixture
def round_settings(settings: Settings) -> Settings:
    # One chunk of four batches; one progress step, so no step mid-chunk.
    return replace(settings, chunk_size=USERS, claim_batch=BATCH, progress_steps=1)


@pytest.fixture
def own_users(engine: Engine, directory: Directory) -> None:
    with engine.begin() as connection:
        connection.execute(insert(directory.table), [
            {"id": n, "username": f"user{n}", "full_name": f"User {n}",
             "email": f"user{n}@example.org" if n % 4 else None, "role": None,
             "password_hash": "old-hash", "must_change_password": False}
            for n in range(1, USERS + 1)
        ])


@pytest.mark.every_database
def test_a_batch_on_resetbots_own_table_is_one_transaction(
    round_settings: Settings, redis_conn: Redis, engine: Engine,
    sessions: sessionmaker[Session], directory: Directory, own_users: None,
) -> None:
    context = build_context(round_settings, redis_conn, engine)
    task_id = submit(context, Scope.ALL, default_password=DEFAULT_PASSWORD)
    planned(context, task_id)

    tally = one_chunk(context, task_id, {"state": engine})

    assert task_snapshot(context, task_id).status is TaskStatus.COMPLETED
    hasher = PasswordHasher.from_settings(round_settings)
    rows = user_rows(sessions, directory)
    assert all(hasher.verify(DEFAULT_PASSWORD, row.password_hash or "") for row in rows.values())
    # ... and whatever progress steps the settling thread took (the task's one step, unless a
    # check by the clock came just before the last batch and the job's end took it).
    assert tally.progress_steps <= 1
    assert tally.commits["state"] == CLAIMS_AHEAD + BATCHES + tally.progress_steps
    with context.sessions() as session:
        assert session.scalar(select(ResetTask.reported_step).where(ResetTask.id == task_id)) == 1
    # Per batch: the lock on its items (the check the worker still holds them: no lease to
    # renew, as their states are written in the same transaction), Undo's read and its
    # snapshot, the hashes, the states; MariaDB, without UPDATE ... RETURNING, reads the rows
    # of a claim first. Five claims: three find users (the first two batches, then one
    # each), the last two none.
    mysql = engine.dialect.name == "mysql"
    per_batch = 5
    claims = 3 * (2 if mysql else 1) + 2
    # A progress check reads the task and counts its settled items; a step taken is an UPDATE.
    progress = 2 * tally.progress_checks + tally.progress_steps
    assert tally.statements["state"] == BATCHES * per_batch + claims + progress


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_an_emailed_batch_on_the_own_table_adds_only_its_mail_outcomes(
    round_settings: Settings, redis_conn: Redis, engine: Engine, own_users: None,
    smtp_server: SmtpServer,
) -> None:
    context = build_context(smtp_server.settings(round_settings), redis_conn, engine)
    task_id = submit(context, Scope.ALL)
    planned(context, task_id)

    tally = one_chunk(context, task_id, {"state": engine})

    assert task_snapshot(context, task_id).status is TaskStatus.COMPLETED
    assert len(smtp_server.messages) == USERS - USERS // 4
    # The batch's transaction, then its mail outcomes once the mails are sent; a progress step.
    assert tally.progress_steps <= 1
    assert tally.commits["state"] == CLAIMS_AHEAD + 2 * BATCHES + tally.progress_steps


@pytest.mark.mariadb
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_a_batch_on_koha_is_one_transaction_in_each_database(
    round_settings: Settings, redis_conn: Redis, engine: Engine,
) -> None:
    with koha_on_mariadb(round_settings) as (koha_settings, koha):
        with_undo = koha_round(koha_settings, redis_conn, engine, koha, first=200)
        without = koha_round(replace(koha_settings, reset_undo_window=0), redis_conn, engine,
                             koha, first=300)
    # Each batch: its lease (with the states the batch before left, and a claim) in
    # resetbot's database, its hashes in Koha's; Undo's snapshot is committed before the
    # hashes are, in a transaction of its own. (The last batch's states are written as the job
    # ends, on its own thread.)
    for tally, snapshots in ((with_undo, BATCHES), (without, 0)):
        assert tally.commits["koha"] == BATCHES
        assert tally.commits["state"] == CLAIMS_AHEAD + BATCHES + snapshots
    # Koha, per batch: Undo's locking read, then one UPDATE (no SELECT of who is still there);
    # once per process, whether Undo may read the columns a reset writes (1), and once a minute
    # whether Koha logs password changes (BorrowersLog).
    assert with_undo.statements["koha"] == BATCHES * 2 + 2
    assert without.statements["koha"] == BATCHES * 1 + 1


def koha_round(
    settings: Settings, redis: Redis, engine: Engine, koha: Engine, first: int
) -> Tally:
    """A default-password task over USERS new borrowers from number `first`, its one chunk
    counted; every borrower then signs in as Koha checks it."""
    numbers = range(first, first + USERS)
    add_borrowers(koha, [Borrower(n, f"R{n:04d}", f"round{n}", "Round", f"Trip{n}",
                                  f"round{n}@example.org", None, 0, None) for n in numbers])
    context = WorkerContext.build(settings, redis, engine=engine)
    try:
        task_id = submit(context, Scope.SELECTED_ONLY, tuple(numbers),
                         default_password=DEFAULT_PASSWORD)
        planned(context, task_id)
        directory_engine = context.directory.engine  # type: ignore[attr-defined]

        tally = one_chunk(context, task_id, {"state": engine, "koha": directory_engine})

        assert task_snapshot(context, task_id).status is TaskStatus.COMPLETED
        with context.sessions() as session:
            states = set(session.scalars(
                select(ResetItem.state).where(ResetItem.task_id == task_id)))
        assert states == {ItemState.RESET.value}
    finally:
        context.close()
    with koha.connect() as connection:
        hashes = connection.execute(text(
            "SELECT password FROM borrowers WHERE borrowernumber BETWEEN :a AND :b"),
            {"a": first, "b": first + USERS - 1}).scalars().all()
    assert koha_accepts([(DEFAULT_PASSWORD, value) for value in hashes]) == [True] * USERS
    return tally
