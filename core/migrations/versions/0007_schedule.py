"""Scheduled resets: a task waits, `scheduled`, for its start time (core/schedule.py).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30

New columns only (the status is a value of the existing `status` column). Like 0003, columns
already there (a database made by `create_schema` from newer models) are left as they are.
The users the preview counted have no column of their own: 0006's `preview` JSON (the
requester's counts, also shown to approvers) is the one source.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# MariaDB/MySQL: with microseconds (a bare DATETIME keeps whole seconds).
UTC_DATETIME = sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def _task_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("start_at", UTC_DATETIME, nullable=True),
        sa.Column("recheck_users", sa.Integer(), nullable=True),
        sa.Column("reminded_at", UTC_DATETIME, nullable=True),
        sa.Column("start_held_at", UTC_DATETIME, nullable=True),
    ]


def _pending_columns() -> list[sa.Column[object]]:
    return [sa.Column("start_at", UTC_DATETIME, nullable=True)]


def _add_missing(table: str, columns: list[sa.Column[object]]) -> None:
    existing = {c["name"] for c in sa.inspect(op.get_bind()).get_columns(table)}
    missing = [column for column in columns if column.name not in existing]
    if missing:
        with op.batch_alter_table(table) as batch:
            for column in missing:
                batch.add_column(column)


def upgrade() -> None:
    _add_missing("reset_tasks", _task_columns())
    _add_missing("pending_requests", _pending_columns())


def downgrade() -> None:
    with op.batch_alter_table("pending_requests") as batch:
        for column in reversed(_pending_columns()):
            batch.drop_column(column.name)
    with op.batch_alter_table("reset_tasks") as batch:
        for column in reversed(_task_columns()):
            batch.drop_column(column.name)
