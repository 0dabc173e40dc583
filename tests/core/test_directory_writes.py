"""A batch of hashes on Koha's MariaDB: one UPDATE, one round trip, whatever the batch's size;
each row gets its own hash and only its password columns change."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine, delete, event, select

from core.db import make_engine
from core.directory import Directory
from core.directory.protocol import PasswordSet, SetResult
from core.directory.sql import SqlDirectory
from core.settings import Settings
from tests.support.databases import mariadb_database
from tests.support.koha import BORROWERS, PAST, create_borrowers, dump, row

state_on_sqlite = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
def koha_engine() -> Iterator[Engine]:
    with mariadb_database() as url:
        engine = make_engine(url)
        create_borrowers(engine)
        yield engine
        engine.dispose()


@state_on_sqlite
@pytest.mark.mariadb
def test_a_batch_of_hashes_is_one_update_on_mariadb(
    settings: Settings, koha_engine: Engine
) -> None:
    url = koha_engine.url.render_as_string(hide_password=False)
    library = replace(settings, directory_url=url, directory_profile="koha", password_rounds=4,
                      password_allow_weak_rounds=True)
    directory = Directory.from_settings(library)
    statements: list[tuple[str, bool]] = []

    def seen(_c: Any, _cursor: Any, statement: str, _p: Any, _x: Any, many: bool) -> None:
        statements.append((statement.split()[0].upper(), many))

    event.listen(directory.engine, "before_cursor_execute", seen)
    before = dump(koha_engine)
    batch = [(b.number, f"$2a$04$hash-of-{b.number}") for b in BORROWERS]
    try:
        directory.write_hashes(batch, require_change=False,
                               changed_at=datetime(2026, 12, 7, 12, tzinfo=UTC))
    finally:
        directory.dispose()
    assert [s for s in statements if s[0] == "UPDATE"] == [("UPDATE", False)]
    for b in BORROWERS:
        written = row(koha_engine, b.number)
        assert written["password"] == f"$2a$04$hash-of-{b.number}"
        # login_attempts: 0, but -1 (locked on purpose) kept; a past expiry cleared.
        assert written["login_attempts"] == (-1 if b.login_attempts == -1 else 0)
        expected = None if b.expires == PAST else b.expiry()
        assert written["password_expiration_date"] == expected
    assert set(dump(koha_engine)) == set(before)


@pytest.mark.every_database
def test_a_user_gone_since_planning_is_not_found_and_the_others_are_written(
    settings: Settings, engine: Engine, directory: Directory, sample_users: list[object]
) -> None:
    """The UPDATEs' row counts tell who was there; only when one falls short are the rows
    looked up (resetbot's own table: one executemany per must-change value)."""
    table = SqlDirectory(directory)
    with engine.begin() as connection:
        connection.execute(delete(directory.table).where(directory.table.c.id == 4))
    statements = counted_selects(directory.engine)
    everyone = [(PasswordSet(str(n), "x", must_change=n % 2 == 0), f"hash-{n}")
                for n in (1, 2, 3, 5)]

    outcomes = table.write_hashes(everyone, datetime(2026, 12, 7, 12, tzinfo=UTC))

    assert [o.result for o in outcomes] == [SetResult.SET] * 4
    assert statements == []  # all there: no SELECT
    outcomes = table.write_hashes(
        [(PasswordSet("4", "x", must_change=True), "hash-4"),
         (PasswordSet("6", "x", must_change=False), "hash-6")],
        datetime(2026, 12, 7, 12, tzinfo=UTC))

    assert [(o.user_id, o.result) for o in outcomes] == [("4", SetResult.NOT_FOUND),
                                                         ("6", SetResult.SET)]
    assert len(statements) == 1  # one fell short: which, asked once
    with engine.connect() as connection:
        hashes = dict(connection.execute(
            select(directory.table.c.id, directory.table.c.password_hash)).all())
    assert hashes == {1: "hash-1", 2: "hash-2", 3: "hash-3", 5: "hash-5", 6: "hash-6",
                      7: "old-hash"}


@state_on_sqlite
@pytest.mark.mariadb
def test_on_koha_a_row_already_holding_its_values_counts_as_there(
    settings: Settings, koha_engine: Engine
) -> None:
    """MariaDB counts the rows an UPDATE matched (SQLAlchemy connects with CLIENT_FOUND_ROWS),
    also one whose values were already those: the row count alone tells who is gone."""
    url = koha_engine.url.render_as_string(hide_password=False)
    library = replace(settings, directory_url=url, directory_profile="koha", password_rounds=4,
                      password_allow_weak_rounds=True)
    directory = SqlDirectory(Directory.from_settings(library))
    at = datetime(2026, 12, 7, 12, tzinfo=UTC)
    same = [(PasswordSet(str(b.number), "x", must_change=True), f"$2a$04$same-{b.number}")
            for b in BORROWERS[:3]]
    try:
        directory.write_hashes(same, at)
        statements = counted_selects(directory.engine)
        again = directory.write_hashes(same, at)  # the same values: nothing changes
        gone = directory.write_hashes(
            [(PasswordSet("99999", "x", must_change=True), "$2a$04$nobody")], at)
    finally:
        directory.dispose()
    assert [o.result for o in again] == [SetResult.SET] * 3
    assert [o.result for o in gone] == [SetResult.NOT_FOUND]
    assert len(statements) == 1  # only for the batch that fell short


def counted_selects(engine: Engine) -> list[str]:
    """The SELECTs `engine` runs from now on (the probes of Koha's log preference aside)."""
    seen: list[str] = []

    def on_statement(_c: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "systempreferences" not in \
                statement:
            seen.append(statement)

    event.listen(engine, "before_cursor_execute", on_statement)
    return seen
