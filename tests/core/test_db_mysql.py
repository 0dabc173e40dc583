"""MariaDB/MySQL URLs: the bare schemes open with PyMySQL, and connections are set up the way the
engine relies on (READ COMMITTED, recycled before the server drops them)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from core.db import MYSQL_POOL_RECYCLE, make_engine, with_shipped_driver
from core.migrate import head_revision, upgrade
from core.models import AuditEntry, StartLock
from core.settings import Settings
from jobs.rows import insert_unless_present
from tests.support.databases import MARIADB_SERVER, mariadb_database


@pytest.mark.parametrize(("given", "opened"), [
    ("mysql://u:p@db:3306/lib", "mysql+pymysql://u:p@db:3306/lib"),
    ("mariadb://u@db/lib", "mariadb+pymysql://u@db/lib"),
    ("postgresql://u@db/lib", "postgresql+psycopg://u@db/lib"),
    ("mysql+pymysql://u@db/lib", "mysql+pymysql://u@db/lib"),  # a driver named is kept
    ("sqlite:///resetbot.db", "sqlite:///resetbot.db"),
])
def test_bare_schemes_open_with_the_driver_resetbot_ships(given: str, opened: str) -> None:
    assert with_shipped_driver(given) == opened


def test_a_mysql_engine_is_recycled_before_the_server_drops_its_connections() -> None:
    engine = make_engine("mysql://reset@127.0.0.1:1/none")  # nothing is connected here
    try:
        assert engine.dialect.driver == "pymysql"
        assert engine.pool._recycle == MYSQL_POOL_RECYCLE
        assert engine.dialect._on_connect_isolation_level == "READ COMMITTED"
    finally:
        engine.dispose()


@pytest.fixture
def bare_mariadb_url() -> Iterator[str]:
    """A throw-away database, named by the bare `mariadb://` scheme."""
    with mariadb_database() as url:
        yield url.replace(MARIADB_SERVER.split("://")[0], "mariadb", 1)


@pytest.mark.mariadb
def test_a_bare_mariadb_url_is_migrated_and_used(bare_mariadb_url: str) -> None:
    assert bare_mariadb_url.startswith("mariadb://")
    settings = replace(Settings.from_env({}, env_file=None), database_url=bare_mariadb_url)
    assert upgrade(settings) == head_revision()
    engine = make_engine(bare_mariadb_url)
    try:
        assert engine.dialect.name == "mariadb"
        with engine.connect() as connection:
            assert connection.scalar(text("SELECT @@tx_isolation")) == "READ-COMMITTED"
        at = datetime(2026, 11, 30, 5, 6, 7, 654321, tzinfo=UTC)
        with Session(engine) as session:
            session.add(AuditEntry(at=at, actor="cli:test", action="request", detail={}))
            insert_unless_present(session, StartLock.__table__, id=1, starts=0)  # 0005 made it
            session.commit()
            assert session.scalar(select(AuditEntry.at)) == at  # microseconds kept
            assert session.execute(select(StartLock.id, StartLock.starts)).all() == [(1, 0)]
    finally:
        engine.dispose()
