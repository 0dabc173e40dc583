"""Undo: the values a task replaced, kept sealed for its Undo window; an Undo task's links.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07

`undo_snapshots` holds, per task and user, the sealed columns before the task and the sealed
hash it wrote (core/undo.py); the reaper erases them when the window closes. The new item
states (`restored`, `changed_since`) are values of the existing `state` column. Each step is
skipped when already done (a database made by `create_schema` from these models).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# MariaDB/MySQL: with microseconds (a bare DATETIME keeps whole seconds).
UTC_DATETIME = sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
SNAPSHOTS = "undo_snapshots"


def _task_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("undo_of", sa.Integer(), nullable=True),
        sa.Column("undone_by", sa.Integer(), nullable=True),
    ]


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    existing = {c["name"] for c in inspector.get_columns("reset_tasks")}
    missing = [column for column in _task_columns() if column.name not in existing]
    if missing:
        with op.batch_alter_table("reset_tasks") as batch:
            for column in missing:
                batch.add_column(column)
    if not inspector.has_table(SNAPSHOTS):
        op.create_table(
            SNAPSHOTS,
            sa.Column("id", sa.Integer(), primary_key=True),
            sa.Column("task_id", sa.Integer(),
                      sa.ForeignKey("reset_tasks.id", ondelete="CASCADE"), nullable=False),
            sa.Column("user_id", sa.Integer(), nullable=False),
            sa.Column("previous_sealed", sa.Text(), nullable=False),
            sa.Column("written_sealed", sa.Text(), nullable=False),
            sa.Column("created_at", UTC_DATETIME, nullable=False),
            sa.UniqueConstraint("task_id", "user_id"),
        )


def downgrade() -> None:
    op.drop_table(SNAPSHOTS)
    with op.batch_alter_table("reset_tasks") as batch:
        for column in reversed(_task_columns()):
            batch.drop_column(column.name)
