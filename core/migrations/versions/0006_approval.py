"""Four-eyes approval: the counts approvers see, the request's expiry, who decided and when.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01

New task statuses (`awaiting_approval`, `rejected`, `expired`) are values of the existing
`status` column; no constraint lists them. Each step is skipped when already done (a database
made by `create_schema` from these models).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# MariaDB/MySQL: with microseconds (a bare DATETIME keeps whole seconds).
UTC_DATETIME = sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def _task_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("preview", sa.JSON(), nullable=True),
        sa.Column("approval_expires_at", UTC_DATETIME, nullable=True),
        sa.Column("approved_by", sa.String(64), nullable=True),
        sa.Column("rejected_by", sa.String(64), nullable=True),
        sa.Column("decided_at", UTC_DATETIME, nullable=True),
    ]


def _pending_columns() -> list[sa.Column[object]]:
    return [sa.Column("preview", sa.JSON(), nullable=True)]


def _add_missing(table_name: str, columns: list[sa.Column[object]]) -> None:
    existing = {c["name"] for c in sa.inspect(op.get_bind()).get_columns(table_name)}
    missing = [column for column in columns if column.name not in existing]
    if missing:
        with op.batch_alter_table(table_name) as table:
            for column in missing:
                table.add_column(column)


def upgrade() -> None:
    _add_missing("reset_tasks", _task_columns())
    _add_missing("pending_requests", _pending_columns())


def downgrade() -> None:
    with op.batch_alter_table("pending_requests") as table:
        table.drop_column("preview")
    with op.batch_alter_table("reset_tasks") as table:
        for column in reversed(_task_columns()):
            table.drop_column(column.name)
