"""Koha's own log: with BorrowersLog on and INSERT on action_logs, every changed password gets
the row Koha writes for a staff password change; off, or without the grant, nothing is written.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from redis import Redis
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url

from bot.directory_cli import directory_report
from core.db import make_engine
from core.directory import Directory
from core.directory.sql.koha_log import koha_log_status
from core.models import ItemState, Scope
from core.settings import Settings
from tests.support.databases import MARIADB_ADMIN_URL, mariadb_database
from tests.support.engine import build_context, run_until_final, submit
from tests.support.koha import (
    OLD_HASH,
    action_logs,
    create_action_logs,
    create_borrowers,
    create_password_rules,
    row,
)

pytestmark = [pytest.mark.mariadb,
              pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)]
PASSWORD = "Quiet-Harbour-73!"


@pytest.fixture
def koha(settings: Settings) -> Iterator[tuple[Settings, Engine]]:
    with mariadb_database() as url:
        engine = make_engine(url)
        create_borrowers(engine)
        create_action_logs(engine)
        configured = replace(settings, directory_url=url, directory_profile="koha",
                             password_rounds=4, password_allow_weak_rounds=True)
        yield configured, engine
        engine.dispose()


def _reset(settings: Settings, redis: Redis, selection: tuple[int, ...]) -> None:
    from core.migrate import upgrade

    upgrade(settings)
    state = make_engine(settings.database_url)
    context = build_context(settings, redis, state)
    try:
        final = run_until_final(context, submit(context, Scope.SELECTED_ONLY, selection,
                                                default_password=PASSWORD))
    finally:
        context.close()
        state.dispose()
    assert final.counts.get(ItemState.RESET) == len(selection)


def test_each_changed_password_gets_kohas_change_pass_row_when_borrowerslog_is_on(
    koha: tuple[Settings, Engine], redis_conn: Redis
) -> None:
    settings, engine = koha
    create_password_rules(engine, {}, {"BorrowersLog": "1"})
    assert koha_log_status(engine) == (True, True)
    assert "  Koha's log: granted" in directory_report(settings).lines()
    _reset(settings, redis_conn, (1, 7))
    logged = action_logs(engine)
    assert [(r["user"], r["module"], r["action"], r["object"], r["info"], r["interface"])
            for r in logged] == [(0, "MEMBERS", "CHANGE PASS", 1, "", "commandline"),
                                 (0, "MEMBERS", "CHANGE PASS", 7, "", "commandline")]
    assert all(r["timestamp"] is not None for r in logged)


def test_with_borrowerslog_off_nothing_is_logged(
    koha: tuple[Settings, Engine], redis_conn: Redis
) -> None:
    settings, engine = koha
    create_password_rules(engine, {}, {"BorrowersLog": "0"})
    assert ("  Koha's log: granted (Koha's BorrowersLog preference is off: nothing is "
            "written)") in directory_report(settings).lines()
    _reset(settings, redis_conn, (1, 7))
    assert action_logs(engine) == []
    assert row(engine, 1)["password"] != OLD_HASH


def test_without_the_insert_grant_nothing_is_logged_and_the_reset_still_happens(
    koha: tuple[Settings, Engine], redis_conn: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    settings, engine = koha
    create_password_rules(engine, {}, {"BorrowersLog": "1"})
    url = make_url(str(settings.directory_url))
    database, user, secret = url.database, f"rb_{uuid.uuid4().hex[:10]}", uuid.uuid4().hex
    admin = create_engine(MARIADB_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"CREATE USER '{user}'@'%' IDENTIFIED BY '{secret}'"))
        connection.execute(text(f"GRANT SELECT, UPDATE ON `{database}`.borrowers TO '{user}'@'%'"))
        connection.execute(text(f"GRANT SELECT ON `{database}`.systempreferences TO '{user}'@'%'"))
    try:
        limited = url.set(username=user, password=secret).render_as_string(hide_password=False)
        limited_engine = make_engine(limited)
        assert koha_log_status(limited_engine) == (True, False)
        limited_engine.dispose()
        assert ("  Koha's log: not granted (INSERT ON action_logs); without it no CHANGE PASS "
                "entry is written to Koha's action_logs; resets work as before") in (
            directory_report(replace(settings, directory_url=limited)).lines())
        _reset(replace(settings, directory_url=limited), redis_conn, (1, 7))
    finally:
        with admin.connect() as connection:
            connection.execute(text(f"DROP USER IF EXISTS '{user}'@'%'"))
        admin.dispose()
    assert action_logs(engine) == []
    assert row(engine, 7)["password"] != OLD_HASH
    assert "Koha's action_logs is not written: resetbot may not INSERT there" in caplog.text


class CommitRefused(Exception):
    """The fault: the directory's database refuses a commit (a lost connection, a deadlock)."""


def test_a_commit_that_fails_leaves_neither_the_hash_nor_the_log_row(
    koha: tuple[Settings, Engine],
) -> None:
    """Koha's row goes in the hash's own transaction: when that transaction does not commit,
    neither is there; when it does, both are."""
    settings, engine = koha
    create_password_rules(engine, {}, {"BorrowersLog": "1"})
    directory = Directory.from_settings(settings)
    refusing = [True]

    def marks_hash_writes(connection: Connection, _cursor: object, statement: str,
                          *_: object) -> None:
        if statement.lstrip().upper().startswith("UPDATE"):
            connection.info["writes hashes"] = True

    def refuses_their_commit(connection: Connection) -> None:
        # Only the commit of the transaction that wrote the hashes: a log row committed
        # anywhere else would stay.
        if connection.info.pop("writes hashes", False) and refusing[0]:
            raise CommitRefused

    event.listen(directory.engine, "before_cursor_execute", marks_hash_writes)
    event.listen(directory.engine, "commit", refuses_their_commit)
    at = datetime(2026, 12, 7, 12, tzinfo=UTC)
    try:
        with pytest.raises(CommitRefused):
            directory.write_hashes([(1, "$2a$04$refused")], require_change=True, changed_at=at)
        assert row(engine, 1)["password"] == OLD_HASH
        assert action_logs(engine) == []
        refusing[0] = False
        directory.write_hashes([(1, "$2a$04$committed")], require_change=True, changed_at=at)
    finally:
        event.remove(directory.engine, "before_cursor_execute", marks_hash_writes)
        event.remove(directory.engine, "commit", refuses_their_commit)
        directory.dispose()
    assert row(engine, 1)["password"] == "$2a$04$committed"
    assert [r["object"] for r in action_logs(engine)] == [1]
