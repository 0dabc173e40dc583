"""Tasks side by side: the start lock replaces the single running slot.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30

Tasks whose users do not overlap now run at the same time, so the unique `active_slot`
(one running task at most) goes; a one-row `task_start_lock` makes the start checks take turns.
Like 0001, each step is skipped when already done (a database made by `create_schema`).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    if "task_start_lock" not in inspector.get_table_names():
        lock = op.create_table(
            "task_start_lock",
            sa.Column("id", sa.Integer(), primary_key=True),
            sa.Column("starts", sa.Integer(), nullable=False),
        )
        op.bulk_insert(lock, [{"id": 1, "starts": 0}])
    columns = {column["name"] for column in inspector.get_columns("reset_tasks")}
    if "active_slot" in columns:
        # SQLite cannot drop a column with a UNIQUE constraint in place: batch mode copies it
        # (core.migrate runs this with foreign keys off, so the DROP keeps every task's items).
        with op.batch_alter_table("reset_tasks") as batch:
            batch.drop_column("active_slot")


def downgrade() -> None:
    with op.batch_alter_table("reset_tasks") as batch:
        batch.add_column(sa.Column("active_slot", sa.Integer(), nullable=True))
        batch.create_unique_constraint("uq_reset_tasks_active_slot", ["active_slot"])
    op.drop_table("task_start_lock")
