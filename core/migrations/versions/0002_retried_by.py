"""A task is retried once: `reset_tasks.retried_by` names its retry.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30

Tasks retried before this revision get their first retry recorded, so they are not retried again.
A database made by `create_all` from newer models already has the column and keeps it.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    columns = {column["name"] for column in sa.inspect(op.get_bind()).get_columns("reset_tasks")}
    if "retried_by" not in columns:
        op.add_column("reset_tasks", sa.Column("retried_by", sa.Integer(), nullable=True))
    # Read first, then write: MySQL refuses an UPDATE whose subquery reads the table it updates.
    bind = op.get_bind()
    first_retries = bind.execute(
        sa.text(
            "SELECT retry_of, min(id) FROM reset_tasks WHERE retry_of IS NOT NULL "
            "GROUP BY retry_of"
        )
    ).all()
    if first_retries:
        bind.execute(
            sa.text(
                "UPDATE reset_tasks SET retried_by = :retry "
                "WHERE id = :task AND retried_by IS NULL"
            ),
            [{"task": task, "retry": retry} for task, retry in first_retries],
        )


def downgrade() -> None:
    op.drop_column("reset_tasks", "retried_by")
