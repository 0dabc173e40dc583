"""Faults on a Koha directory (MariaDB, the `koha` profile) in e-mailed mode, with real
`resetbot worker` processes: a worker SIGKILLed mid-chunk, and the TCP path to the directory's
MariaDB cut mid-task.

resetbot's state is on SQLite or PostgreSQL; only the directory is on MariaDB. Each test ends
with one final outcome per user in the state database, and Koha's own check (Perl's
Crypt::Eksblowfish::Bcrypt) on every row: a row whose hash changed holds the password of the
last mail its user got; a row whose hash did not change got no mail with a password that now
works. Nobody holds a password nobody was told.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import replace

import pytest
from redis import Redis
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from core.db import make_engine, make_sessionmaker
from core.migrate import upgrade
from core.models import ItemState, Scope, TaskStatus
from core.settings import Settings
from tests.scenarios.test_faults import (
    SlowSmtpServer,
    current,
    items,
    start_task,
    through_proxy,
    wait_final,
)
from tests.support.databases import mariadb_database
from tests.support.engine import as_test_id
from tests.support.faults import Workers, tcp_proxy, wait_until
from tests.support.faults import workers as workers
from tests.support.koha import BORROWERS, OLD_HASH, create_borrowers, koha_accepts
from tests.support.smtp import SmtpServer
from tests.support.smtp import smtp_server as smtp_server

pytestmark = [pytest.mark.mariadb, pytest.mark.slow,
              pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")]

#: Borrowers beyond the eight of tests/support/koha.py: patrons with an e-mail.
EXTRA = range(9, 41)
EVERYONE = {b.number for b in BORROWERS} | set(EXTRA)


@pytest.fixture
def koha_url() -> Iterator[str]:
    with mariadb_database() as url:
        engine = make_engine(url)
        create_borrowers(engine)
        with engine.begin() as connection:
            connection.execute(
                text("INSERT INTO borrowers (borrowernumber, cardnumber, userid, firstname, "
                     "surname, email, flags, password, branchcode, categorycode) VALUES (:n, "
                     ":card, :userid, 'Pat', :sur, :email, 0, :hash, 'MAIN', 'PT')"),
                [{"n": n, "card": f"C{n:04d}", "userid": f"pat{n}", "sur": f"Patron{n}",
                  "email": f"pat{n}@example.org", "hash": OLD_HASH} for n in EXTRA],
            )
        engine.dispose()
        yield url


@pytest.fixture
def koha_engine(koha_url: str) -> Iterator[Engine]:
    engine = make_engine(koha_url)
    yield engine
    engine.dispose()


def koha_settings(settings: Settings, smtp: SmtpServer, directory_url: str) -> Settings:
    """Mailed mode on Koha (bcrypt $2a$ at cost 6: ~5 ms a user), leases short."""
    return replace(
        smtp.settings(settings), directory_url=directory_url, directory_profile="koha",
        password_rounds=6, password_allow_weak_rounds=True,
        chunk_size=8, claim_batch=4, lease_seconds=5, reaper_interval=0.5,
    )


def state_sessions(configured: Settings) -> tuple[Engine, sessionmaker[Session]]:
    upgrade(configured)
    engine = make_engine(configured.database_url)
    return engine, make_sessionmaker(engine)


def stored_hashes(koha_engine: Engine) -> dict[int, str | None]:
    with koha_engine.connect() as connection:
        rows = connection.execute(text("SELECT borrowernumber, password FROM borrowers"))
        return {int(number): password for number, password in rows}


def emails(koha_engine: Engine) -> dict[int, str]:
    with koha_engine.connect() as connection:
        rows = connection.execute(text(
            "SELECT borrowernumber, email FROM borrowers WHERE email IS NOT NULL AND email <> ''"
        ))
        return {int(number): str(email) for number, email in rows}


def assert_everyone_told_their_password(
    smtp: SmtpServer, koha_engine: Engine, final_states: dict[int, ItemState]
) -> None:
    """Every row whose hash changed holds the password of its user's last mail (Koha's own
    check), except those recorded as having no address (staff are told to tell them); every
    user mailed was reset."""
    stored, addresses = stored_hashes(koha_engine), emails(koha_engine)
    changed = {n for n, value in stored.items() if value != OLD_HASH}
    mailed = {n for n, address in addresses.items() if smtp.to(address)}
    no_address = {n for n, s in final_states.items() if s == ItemState.NO_EMAIL}
    assert no_address == EVERYONE - set(addresses)
    assert changed - no_address == mailed, "a hash nobody was told, or a mail not used"
    assert {n for n, s in final_states.items() if s == ItemState.NOTIFIED} == mailed
    pairs = [(smtp.last_password(addresses[n]), str(stored[n])) for n in sorted(mailed)]
    assert koha_accepts(pairs) == [True] * len(pairs)


def one_final_outcome_each(sessions: sessionmaker[Session], task_id: int) -> dict[int, ItemState]:
    done = items(sessions, task_id)
    assert sorted(as_test_id(item.user_id) for item in done) == sorted(EVERYONE)  # one row per user
    states = {as_test_id(item.user_id): ItemState(item.state) for item in done}
    assert all(state.is_final for state in states.values()), Counter(states.values())
    return states


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_worker_killed_mid_chunk_every_last_mail_opens_koha(
    settings: Settings, koha_url: str, koha_engine: Engine, workers: Workers,
    redis_conn: Redis,
) -> None:
    smtp = SlowSmtpServer(delay=0.1).start()
    try:
        configured = koha_settings(settings, smtp, koha_url)
        state, sessions = state_sessions(configured)
        task_id = start_task(sessions, configured, redis_conn, Scope.ALL)
        first = workers.start(configured)

        def mailed_but_unrecorded() -> dict[str, str]:
            mailed = {m.to: m.password for m in smtp.messages}
            return {item.email: mailed[item.email] for item in items(sessions, task_id)
                    if item.state == ItemState.CLAIMED and item.email in mailed}

        wait_until(mailed_but_unrecorded, 60, "a mail sent from a batch not yet recorded")
        first.kill()
        stale = mailed_but_unrecorded()
        assert stale, "the kill should land between a mail and its outcome"
        assert Counter(i.state for i in items(sessions, task_id))[ItemState.PENDING] >= 1

        workers.start(configured)  # a new worker; its reaper frees the dead one's leases
        final = wait_final(sessions, task_id, 90, workers)

        assert final.status is TaskStatus.COMPLETED
        outcomes = one_final_outcome_each(sessions, task_id)
        assert_everyone_told_their_password(smtp, koha_engine, outcomes)
        addresses = emails(koha_engine)
        by_address = {address: n for n, address in addresses.items()}
        stored = stored_hashes(koha_engine)
        for address, old_password in stale.items():
            assert len(smtp.to(address)) == 2, f"{address} got no mail with their password"
            assert koha_accepts([(old_password, str(stored[by_address[address]]))]) == [False]
        state.dispose()
    finally:
        smtp.stop()


@pytest.mark.parametrize("database_url", [
    "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)
], indirect=True)
def test_the_directory_connection_cut_mid_task_the_task_ends_by_itself(
    settings: Settings, koha_url: str, koha_engine: Engine, workers: Workers,
    redis_conn: Redis, smtp_server: SmtpServer,
) -> None:
    direct = make_url(koha_url)
    with tcp_proxy(direct.host or "127.0.0.1", direct.port or 3306) as proxy:
        # Only the worker's way to the directory goes through the proxy; the test reads it
        # directly, and the state database is never cut.
        configured = koha_settings(settings, smtp_server, through_proxy(koha_url, proxy))
        state, sessions = state_sessions(configured)
        task_id = start_task(sessions, configured, redis_conn, Scope.ALL)
        worker = workers.start(configured)
        wait_until(lambda: len(smtp_server.messages) >= 6, 60, "the first users mailed")

        proxy.cut()
        wait_until(lambda: "OperationalError" in worker.log(), 60,
                   "the worker to run into the cut")
        during = current(sessions, task_id)
        proxy.restore()

        final = wait_final(sessions, task_id, 90, workers)

    assert not during.status.is_final
    assert during.counts[ItemState.PENDING] + during.counts[ItemState.CLAIMED] > 0, (
        "the cut should land mid-task"
    )
    assert worker.alive()
    assert final.status is TaskStatus.COMPLETED
    outcomes = one_final_outcome_each(sessions, task_id)
    assert_everyone_told_their_password(smtp_server, koha_engine, outcomes)
    # Everyone with an e-mail was reset and told, but accounts locked on purpose (left out).
    with koha_engine.connect() as connection:
        locked = set(connection.execute(text(
            "SELECT borrowernumber FROM borrowers WHERE login_attempts = -1")).scalars())
    assert {n for n, s in outcomes.items() if s == ItemState.NOTIFIED} == (
        set(emails(koha_engine)) - locked
    )
    assert {n for n, s in outcomes.items() if s == ItemState.LOCKED} == locked
    state.dispose()
