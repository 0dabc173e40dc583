"""Initial schema: resetbot's tables, the users table (unless the library has its own), search.

Revision ID: 0001
Revises:
Create Date: 2025-11-29

The tables are spelled out as they are at this revision, not taken from `core/models.py`: a
revision must keep creating the same thing when the models move on. Every later change to the
models gets its own revision (`tests/core/test_migrations.py` fails while models and revisions
differ).
Each table is created only if missing, so a database made earlier by `create_all`, or a library
system's own users table, is adopted as it is.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

from core.directory import create_search_index
from core.migrate import migration_directory_names
from core.settings import DirectoryNames

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# MariaDB/MySQL: with microseconds (a bare DATETIME keeps whole seconds).
UTC_DATETIME = sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    names = migration_directory_names()
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    if names is not None and names.table not in existing:
        _create_users(names)
    if "reset_tasks" not in existing:
        _create_reset_tasks()
    if "reset_items" not in existing:
        _create_reset_items()
    if "pending_requests" not in existing:
        _create_pending_requests()
    if "audit_log" not in existing:
        _create_audit_log()
    if names is not None:  # resetbot's own users table, in this database
        create_search_index(op.get_bind(), names)


def _create_users(names: DirectoryNames) -> None:
    c = names.column
    op.create_table(
        names.table,
        sa.Column(c("id"), sa.Integer(), primary_key=True),
        sa.Column(c("username"), sa.String(255), nullable=False, unique=True),
        sa.Column(c("full_name"), sa.String(255), nullable=False),
        sa.Column(c("email"), sa.String(320), nullable=True),
        sa.Column(c("role"), sa.String(64), nullable=True),
        sa.Column(c("password_hash"), sa.String(255), nullable=True),
        sa.Column(c("password_changed_at"), UTC_DATETIME, nullable=True),
        sa.Column(c("must_change_password"), sa.Boolean(), nullable=False),
    )


def _create_reset_tasks() -> None:
    op.create_table(
        "reset_tasks",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("requester", sa.String(64), nullable=False),
        sa.Column("requester_name", sa.String(255), nullable=False),
        sa.Column("scope", sa.String(32), nullable=False),
        sa.Column("selection", sa.JSON(), nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("require_change", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("default_password_sealed", sa.Text(), nullable=True),
        sa.Column("retry_of", sa.Integer(), sa.ForeignKey("reset_tasks.id"), nullable=True),
        sa.Column("slack_channel", sa.String(32), nullable=True),
        sa.Column("slack_thread_ts", sa.String(32), nullable=True),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("planned", sa.Boolean(), nullable=False),
        sa.Column("plan_cursor", sa.Integer(), nullable=False),
        sa.Column("reported_step", sa.Integer(), nullable=False),
        sa.Column("reported_waiting", sa.Boolean(), nullable=False),
        sa.Column("reported_retry_round", sa.Integer(), nullable=False),
        sa.Column("plan_lease_until", UTC_DATETIME, nullable=True),
        sa.Column("rescued_at", UTC_DATETIME, nullable=True),
        sa.Column("summary_posted", sa.Boolean(), nullable=False),
        sa.Column("slack_parent_claimed_at", UTC_DATETIME, nullable=True),
        sa.Column("slack_started_posted", sa.Boolean(), nullable=False),
        sa.Column("slack_milestone", sa.Integer(), nullable=False),
        sa.Column("slack_error_posted", sa.Boolean(), nullable=False),
        sa.Column("slack_csv_posted", sa.Boolean(), nullable=False),
        sa.Column("slack_fallback_from", sa.String(32), nullable=True),
        sa.Column("slack_fallback_reason", sa.String(64), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("cancelled_by", sa.String(64), nullable=True),
        sa.Column("active_slot", sa.Integer(), nullable=True, unique=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.Column("started_at", UTC_DATETIME, nullable=True),
        sa.Column("finished_at", UTC_DATETIME, nullable=True),
    )
    op.create_index("ix_reset_tasks_status", "reset_tasks", ["status"])


def _create_reset_items() -> None:
    op.create_table(
        "reset_items",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "task_id", sa.Integer(), sa.ForeignKey("reset_tasks.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("chunk", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(255), nullable=False),
        sa.Column("full_name", sa.String(255), nullable=False),
        sa.Column("email", sa.String(320), nullable=True),
        sa.Column("is_staff", sa.Boolean(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", UTC_DATETIME, nullable=True),
        sa.Column("leased_by", sa.String(128), nullable=True),
        sa.Column("lease_until", UTC_DATETIME, nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("updated_at", UTC_DATETIME, nullable=False),
        sa.UniqueConstraint("task_id", "user_id"),
    )
    op.create_index("ix_reset_items_task_state", "reset_items", ["task_id", "state"])
    op.create_index("ix_reset_items_task_chunk", "reset_items", ["task_id", "chunk"])
    op.create_index("ix_reset_items_state_lease", "reset_items", ["state", "lease_until"])
    op.create_index(
        "ix_reset_items_state_next_attempt", "reset_items", ["state", "next_attempt_at"]
    )


def _create_pending_requests() -> None:
    op.create_table(
        "pending_requests",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("requester", sa.String(64), nullable=False),
        sa.Column("requester_name", sa.String(255), nullable=False),
        sa.Column("scope", sa.String(32), nullable=False),
        sa.Column("selection", sa.JSON(), nullable=False),
        sa.Column("require_change", sa.Boolean(), nullable=False),
        sa.Column("default_password_sealed", sa.Text(), nullable=True),
        sa.Column("slack_channel", sa.String(32), nullable=True),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.Column("expires_at", UTC_DATETIME, nullable=False),
        sa.Column("task_id", sa.Integer(), sa.ForeignKey("reset_tasks.id"), nullable=True),
    )


def _create_audit_log() -> None:
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("at", UTC_DATETIME, nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
    )
    op.create_index("ix_audit_log_at", "audit_log", ["at"])


def downgrade() -> None:
    # The users table may be the library's own: never dropped here.
    names = migration_directory_names()
    if names is None:
        pass  # no users table of resetbot's here, so no search index either
    elif op.get_bind().dialect.name == "sqlite":
        for suffix in ("ai", "ad", "au"):
            op.execute(sa.text(f"DROP TRIGGER IF EXISTS {names.table}_search_{suffix}"))
        op.execute(sa.text(f"DROP TABLE IF EXISTS {names.table}_search"))
    elif op.get_bind().dialect.name == "postgresql":  # MariaDB/MySQL have no search index
        op.execute(sa.text(f"DROP INDEX IF EXISTS ix_{names.table}_search_trgm"))
    for table in ("audit_log", "pending_requests", "reset_items", "reset_tasks"):
        op.drop_table(table)
