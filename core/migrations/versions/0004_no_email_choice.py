"""What an e-mailed reset does to users without an address: reset, skip, or set a typed password.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("reset_tasks", "pending_requests")


def _columns() -> list[sa.Column[object]]:
    return [
        sa.Column("no_email", sa.String(8), nullable=False, server_default="reset"),
        sa.Column("no_email_password_sealed", sa.Text(), nullable=True),
    ]


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    for table_name in TABLES:
        # A database made by `create_all` from newer models has them already.
        existing = {c["name"] for c in inspector.get_columns(table_name)}
        missing = [column for column in _columns() if column.name not in existing]
        if missing:
            with op.batch_alter_table(table_name) as table:
                for column in missing:
                    table.add_column(column)


def downgrade() -> None:
    for table_name in TABLES:
        with op.batch_alter_table(table_name) as table:
            table.drop_column("no_email_password_sealed")
            table.drop_column("no_email")
