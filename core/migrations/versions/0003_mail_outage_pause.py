"""A task pauses while the mail server cannot be used (jobs/outage.py).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# MariaDB/MySQL: with microseconds (a bare DATETIME keeps whole seconds).
UTC_DATETIME = sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    columns: list[sa.Column[object]] = [
        sa.Column("paused_until", UTC_DATETIME, nullable=True),
        sa.Column("paused_since", UTC_DATETIME, nullable=True),
        sa.Column("pauses", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("pause_reason", sa.Text(), nullable=True),
    ]
    # A database made by `create_all` from newer models has them already: adopt it as it is.
    existing = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("reset_tasks")}
    missing = [column for column in columns if column.name not in existing]
    if missing:
        with op.batch_alter_table("reset_tasks") as table:
            for column in missing:
                table.add_column(column)


def downgrade() -> None:
    with op.batch_alter_table("reset_tasks") as table:
        for column in ("pause_reason", "pauses", "paused_since", "paused_until"):
            table.drop_column(column)
