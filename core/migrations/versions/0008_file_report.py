"""Users from a file in Slack: the preview keeps what the file matched and the lines that named
nobody (`pending_requests.file_report`, JSON), for its lists.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07

A new nullable column only; like 0007, a column already there (a database made by
`create_schema` from newer models) is left as it is.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    existing = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("pending_requests")}
    if "file_report" not in existing:
        with op.batch_alter_table("pending_requests") as batch:
            batch.add_column(sa.Column("file_report", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("pending_requests") as batch:
        batch.drop_column("file_report")
