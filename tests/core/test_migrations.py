"""Alembic migrations on SQLite, PostgreSQL and MariaDB: create everything, idempotent, match
the models."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, func, insert, inspect, select, text
from sqlalchemy.orm import Session

from core.db import make_engine
from core.directory import Directory
from core.migrate import (
    VERSION_TABLE,
    downgrade_engine,
    head_revision,
    schema_metadata,
    upgrade,
    upgrade_engine,
)
from core.models import AuditEntry, Base, users_table
from core.schema import create_schema
from core.settings import DirectoryNames, Settings

# Claims, locks and DDL differ between databases: these run on MariaDB too.
pytestmark = pytest.mark.every_database

RESETBOT_TABLES = {"reset_tasks", "reset_items", "pending_requests", "audit_log",
                   "task_start_lock", "undo_snapshots"}
HEAD = "0012"


@pytest.fixture
def fresh_engine(settings: Settings) -> Any:
    engine = make_engine(settings.database_url)
    yield engine
    engine.dispose()


def _schema_differences(engine: Engine, names: DirectoryNames) -> list[Any]:
    def ours(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
        # The search index lives outside the models: the FTS5 table (SQLite), the trigram
        # index on an expression (PostgreSQL); the version table is Alembic's own.
        if type_ == "table" and name is not None:
            return not name.startswith(f"{names.table}_search") and name != VERSION_TABLE
        return not (type_ == "index" and name is not None and name.endswith("_search_trgm"))

    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"include_object": ours, "compare_type": True}
        )
        return list(compare_metadata(context, schema_metadata(names)))


def _search_finds(engine: Engine, directory: Directory, term: str) -> list[str]:
    assert directory.engine is engine
    return [user.username for user in directory.search(term)]


def test_upgrade_creates_every_table_and_the_search_index(
    settings: Settings, fresh_engine: Engine
) -> None:
    assert upgrade(settings) == head_revision() == HEAD
    tables = set(inspect(fresh_engine).get_table_names())
    assert {*RESETBOT_TABLES, "users", VERSION_TABLE} <= tables
    directory = Directory.own_table(fresh_engine, settings.directory)
    with fresh_engine.begin() as connection:
        connection.execute(
            insert(directory.table),
            [{"username": "ann.walker", "full_name": "Ann Walker", "email": "aw@example.org",
              "must_change_password": False}],
        )
    # "walk" is long enough for the trigram path on both databases.
    assert _search_finds(fresh_engine, directory, "walk") == ["ann.walker"]
    indexes = {index["name"] for index in inspect(fresh_engine).get_indexes("users")}
    if fresh_engine.dialect.name == "sqlite":
        assert "users_search" in tables
    elif fresh_engine.dialect.name in ("mysql", "mariadb"):
        # MariaDB/MySQL search with LIKE: no search index, only the username's unique one.
        assert not any(str(name).endswith("_search_trgm") for name in indexes)
        assert not any(table.startswith("users_search") for table in tables)
    else:
        assert "ix_users_search_trgm" in indexes


def test_upgrade_is_idempotent_and_keeps_data(settings: Settings, fresh_engine: Engine) -> None:
    upgrade(settings)
    directory = Directory.own_table(fresh_engine, settings.directory)
    with fresh_engine.begin() as connection:
        connection.execute(
            insert(directory.table),
            [{"username": "kept", "full_name": "Kept", "must_change_password": False}],
        )
    assert upgrade(settings) == HEAD
    assert upgrade(settings) == HEAD
    with fresh_engine.connect() as connection:
        assert connection.execute(select(directory.table.c.username)).scalars().all() == ["kept"]
        versions = connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).all()
    assert versions == [(HEAD,)]


def test_migrated_schema_matches_the_models(settings: Settings, fresh_engine: Engine) -> None:
    upgrade(settings)
    differences = _schema_differences(fresh_engine, settings.directory)
    assert differences == [], (
        "core/models.py and core/migrations/versions differ; add a revision for the change: "
        f"{differences}"
    )


def test_configured_names_are_used_for_a_new_users_table(
    settings: Settings, fresh_engine: Engine
) -> None:
    names = DirectoryNames(
        table="patrons",
        columns={**DirectoryNames().columns, "username": "login", "email": "mail_address"},
    )
    upgrade(replace(settings, directory=names))
    columns = {column["name"] for column in inspect(fresh_engine).get_columns("patrons")}
    assert {"login", "mail_address", "full_name"} <= columns
    assert "users" not in inspect(fresh_engine).get_table_names()
    assert _schema_differences(fresh_engine, names) == []
    directory = Directory.own_table(fresh_engine, names)
    with fresh_engine.begin() as connection:
        connection.execute(
            insert(directory.table),
            [{"username": "zed.q", "full_name": "Zed", "email": "zq@example.org",
              "must_change_password": False}],
        )
    assert _search_finds(fresh_engine, directory, "ed.q") == ["zed.q"]


def test_a_library_users_table_is_adopted_untouched(
    settings: Settings, fresh_engine: Engine
) -> None:
    # The library system's own table, with a column resetbot knows nothing about.
    with fresh_engine.begin() as connection:
        connection.execute(
            text(
                "CREATE TABLE users (id INTEGER PRIMARY KEY, username VARCHAR(255) NOT NULL "
                "UNIQUE, full_name VARCHAR(255) NOT NULL, email VARCHAR(320), role VARCHAR(64), "
                "password_hash VARCHAR(255), password_changed_at TIMESTAMP, "
                "must_change_password BOOLEAN NOT NULL, branch VARCHAR(20))"
            )
        )
        connection.execute(
            text(
                "INSERT INTO users (id, username, full_name, must_change_password, branch) "
                "VALUES (1, 'libuser', 'Lib User', false, 'north')"
            )
        )
    upgrade(settings)
    with fresh_engine.connect() as connection:
        row = connection.execute(text("SELECT username, branch FROM users")).one()
    assert tuple(row) == ("libuser", "north")
    assert set(inspect(fresh_engine).get_table_names()) >= RESETBOT_TABLES
    directory = Directory.own_table(fresh_engine, settings.directory)
    assert _search_finds(fresh_engine, directory, "libus") == ["libuser"]


def test_migrated_timestamps_keep_microseconds(settings: Settings, fresh_engine: Engine) -> None:
    """Leases, retries and the audit log are ordered by their timestamps: a bare DATETIME on
    MariaDB/MySQL would keep whole seconds (and compare_type does not see the difference)."""
    upgrade(settings)
    at = datetime(2026, 11, 30, 4, 5, 6, 123456, tzinfo=UTC)
    with Session(fresh_engine) as session:
        session.add(AuditEntry(at=at, actor="cli:test", action="request", detail={}))
        session.commit()
    with Session(fresh_engine) as session:
        assert session.scalar(select(AuditEntry.at)) == at
        assert session.scalar(select(func.count()).where(AuditEntry.at > at.replace(
            microsecond=123455))) == 1


def test_upgrade_adopts_a_schema_made_by_create_schema(
    settings: Settings, fresh_engine: Engine
) -> None:
    directory = Directory.own_table(fresh_engine, settings.directory)
    create_schema(fresh_engine, directory)
    assert upgrade_engine(fresh_engine, settings.directory) == HEAD
    assert _schema_differences(fresh_engine, settings.directory) == []


def test_downgrade_removes_resetbot_tables_but_not_users(
    settings: Settings, fresh_engine: Engine
) -> None:
    from core.migrate import downgrade_engine

    upgrade(settings)
    assert downgrade_engine(fresh_engine, settings.directory, "base") is None
    tables = set(inspect(fresh_engine).get_table_names())
    assert not tables & RESETBOT_TABLES
    assert "users" in tables
    directory = Directory.own_table(fresh_engine, settings.directory)
    with fresh_engine.begin() as connection:  # no trigger left pointing at a dropped index
        connection.execute(
            insert(directory.table),
            [{"username": "after", "full_name": "After", "must_change_password": False}],
        )
    assert upgrade(settings) == HEAD


def test_schema_metadata_covers_every_model_table() -> None:
    metadata = schema_metadata(DirectoryNames())
    assert set(Base.metadata.tables) | {"users"} == set(metadata.tables)
    assert users_table(DirectoryNames()).c.keys() == metadata.tables["users"].c.keys()


def test_0005_drops_the_running_slot_and_adds_the_start_lock(
    settings: Settings, fresh_engine: Engine
) -> None:
    assert upgrade(settings, "0004") == "0004"
    with fresh_engine.begin() as connection:
        connection.execute(text(
            "INSERT INTO reset_tasks (requester, requester_name, scope, selection, mode, "
            "require_change, status, total, planned, plan_cursor, reported_step, "
            "reported_waiting, reported_retry_round, summary_posted, slack_started_posted, "
            "slack_milestone, slack_error_posted, slack_csv_posted, cancel_requested, "
            "active_slot, created_at) VALUES ('cli:x', '', 'all', '[]', 'default', true, "
            "'running', 0, false, 0, 0, false, 0, false, false, 0, false, false, false, 1, "
            "CURRENT_TIMESTAMP)"
        ))
    assert upgrade(settings) == HEAD
    columns = {column["name"] for column in inspect(fresh_engine).get_columns("reset_tasks")}
    assert "active_slot" not in columns
    with fresh_engine.connect() as connection:
        assert connection.execute(text("SELECT status FROM reset_tasks")).all() == [("running",)]
        assert connection.execute(text("SELECT id FROM task_start_lock")).all() == [(1,)]
    assert _schema_differences(fresh_engine, settings.directory) == []


def test_0011_keeps_integer_user_ids_as_their_text_and_resumes_plans_0012_names_undo(
    settings: Settings, fresh_engine: Engine
) -> None:
    """Ids become opaque text (issue 19): a task planned before the upgrade goes on, its items'
    ids read back as their decimal text, a plan not yet begun has no cursor (NULL), one under
    way keeps its last id; a text id (an entryUUID) is then stored as it is.

    0012 (in the same test: each revision step costs seconds on MariaDB): an Undo task stored
    as `default` is `undo` after the upgrade, a reset keeps its mode, and the downgrade gives
    the Undo back `default`."""
    assert upgrade(settings, "0007") == "0007"
    task_columns = (
        "requester, requester_name, scope, selection, mode, require_change, status, total, "
        "planned, plan_cursor, reported_step, reported_waiting, reported_retry_round, "
        "summary_posted, slack_started_posted, slack_milestone, slack_error_posted, "
        "slack_csv_posted, cancel_requested, no_email, pauses, created_at"
    )
    values = ("'cli:x', '', 'all', '[]', 'default', true, 'running', 0, false, {cursor}, 0, "
              "false, 0, false, false, 0, false, false, false, 'reset', 0, CURRENT_TIMESTAMP")
    with fresh_engine.begin() as connection:
        for cursor in (0, 1234):
            connection.execute(text(f"INSERT INTO reset_tasks ({task_columns}) VALUES "
                                    f"({values.format(cursor=cursor)})"))
        connection.execute(text(
            "INSERT INTO reset_items (task_id, user_id, chunk, username, full_name, is_staff, "
            "state, attempts, updated_at) VALUES (2, 1234, 0, 'ann', '', false, 'pending', 0, "
            "CURRENT_TIMESTAMP)"
        ))
    assert upgrade(settings, "0011") == "0011"
    with fresh_engine.begin() as connection:  # an Undo of task 1, as 0010's code stored it
        connection.execute(text(f"INSERT INTO reset_tasks ({task_columns}, undo_of) VALUES "
                                f"({values.format(cursor='NULL')}, 1)"))
    assert upgrade(settings) == HEAD
    assert _schema_differences(fresh_engine, settings.directory) == []
    uuid = "9b2f6c1e-5a1d-4c3e-8f0a-0c1d2e3f4a5b"
    with fresh_engine.begin() as connection:
        cursors = connection.execute(text("SELECT plan_cursor FROM reset_tasks ORDER BY id"))
        assert cursors.all() == [(None,), ("1234",), (None,)]
        assert connection.execute(text("SELECT user_id FROM reset_items")).all() == [("1234",)]
        connection.execute(text(
            "INSERT INTO reset_items (task_id, user_id, chunk, username, full_name, is_staff, "
            "state, attempts, updated_at) VALUES (2, :uuid, 0, 'bob', '', false, 'pending', 0, "
            "CURRENT_TIMESTAMP)"
        ), {"uuid": uuid})
        ids = connection.execute(text("SELECT user_id FROM reset_items ORDER BY id")).all()
        assert ids == [("1234",), (uuid,)]
    modes = text("SELECT id, mode FROM reset_tasks ORDER BY id")
    with fresh_engine.connect() as connection:
        assert connection.execute(modes).all() == [(1, "default"), (2, "default"), (3, "undo")]
    assert downgrade_engine(fresh_engine, settings.directory, "0011") == "0011"
    with fresh_engine.connect() as connection:
        assert connection.execute(modes).all() == [(1, "default"), (2, "default"),
                                                   (3, "default")]

