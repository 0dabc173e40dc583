"""A batch of hashes on Koha's MariaDB: one UPDATE, one round trip, whatever the batch's size;
each row gets its own hash and only its password columns change."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine, event

from core.db import make_engine
from core.directory import Directory
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
