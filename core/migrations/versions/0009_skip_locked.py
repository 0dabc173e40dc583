"""Accounts locked on purpose may be left out of a reset: `skip_locked` on tasks and requests.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07

New columns only (the item state `locked` is a value of the existing `state` column). Like
0004, columns already there (a database made by `create_schema` from newer models) are left.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("reset_tasks", "pending_requests")


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    for table_name in TABLES:
        existing = {c["name"] for c in inspector.get_columns(table_name)}
        if "skip_locked" not in existing:
            # In place, never batch mode: on SQLite batch mode copies `reset_tasks` into a new
            # table and drops the old one, and dropping it deletes every task's items (ON
            # DELETE CASCADE, foreign keys on). ADD COLUMN with a default works everywhere.
            op.add_column(table_name, sa.Column("skip_locked", sa.Boolean(), nullable=False,
                                                server_default=sa.false()))


def downgrade() -> None:
    for table_name in TABLES:
        if op.get_bind().dialect.name == "sqlite":  # in place, for the reason above
            op.execute(f"ALTER TABLE {table_name} DROP COLUMN skip_locked")
        else:
            op.drop_column(table_name, "skip_locked")
