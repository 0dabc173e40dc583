"""User ids as text: a directory's ids are opaque strings (an entryUUID, an objectGUID, or an
integer written as text), issue 19.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07

`reset_items.user_id` and `undo_snapshots.user_id` (main's Undo, 0010) become VARCHAR(255);
`reset_tasks.plan_cursor` (the last user id planned) becomes a nullable VARCHAR(255), NULL
meaning "from the start" (the old 0). Existing integer ids are kept as their decimal text, so
a task planned before the upgrade goes on. Columns already text (a database made by
`create_schema` from newer models) are left as they are. The downgrade works
only while every id is an integer.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID_TEXT = sa.String(255)


def _is_integer(table: str, column: str) -> bool:
    for reflected in sa.inspect(op.get_bind()).get_columns(table):
        if reflected["name"] == column:
            return isinstance(reflected["type"], sa.Integer)
    return False


def upgrade() -> None:
    if _is_integer("undo_snapshots", "user_id"):
        # Nothing refers to the snapshots, so a batch copy of this table on SQLite is safe.
        with op.batch_alter_table("undo_snapshots") as batch:
            batch.alter_column(
                "user_id", existing_type=sa.Integer(), type_=ID_TEXT, existing_nullable=False,
                postgresql_using="user_id::varchar",
            )
    if _is_integer("reset_items", "user_id"):
        with op.batch_alter_table("reset_items") as batch:
            batch.alter_column(
                "user_id", existing_type=sa.Integer(), type_=ID_TEXT, existing_nullable=False,
                postgresql_using="user_id::varchar",
            )
    if _is_integer("reset_tasks", "plan_cursor"):
        if op.get_bind().dialect.name == "sqlite":
            _sqlite_text_cursor()
        else:
            op.alter_column(
                "reset_tasks", "plan_cursor", existing_type=sa.Integer(), type_=ID_TEXT,
                nullable=True, postgresql_using="plan_cursor::varchar",
            )
        op.execute("UPDATE reset_tasks SET plan_cursor = NULL WHERE plan_cursor = '0'")


def _sqlite_text_cursor() -> None:
    """SQLite: a new column, the values copied, the old one dropped and the new one renamed,
    in place. Batch mode would copy `reset_tasks` into a new table and drop the old one, and
    dropping it deletes every item of every task (ON DELETE CASCADE, foreign keys on)."""
    op.add_column("reset_tasks", sa.Column("plan_cursor_text", ID_TEXT, nullable=True))
    op.execute("UPDATE reset_tasks SET plan_cursor_text = CAST(plan_cursor AS TEXT)")
    op.execute("ALTER TABLE reset_tasks DROP COLUMN plan_cursor")
    op.execute("ALTER TABLE reset_tasks RENAME COLUMN plan_cursor_text TO plan_cursor")


def downgrade() -> None:
    op.execute("UPDATE reset_tasks SET plan_cursor = '0' WHERE plan_cursor IS NULL")
    if op.get_bind().dialect.name == "sqlite":
        op.add_column("reset_tasks", sa.Column("plan_cursor_int", sa.Integer(), nullable=False,
                                               server_default="0"))
        op.execute("UPDATE reset_tasks SET plan_cursor_int = CAST(plan_cursor AS INTEGER)")
        op.execute("ALTER TABLE reset_tasks DROP COLUMN plan_cursor")
        op.execute("ALTER TABLE reset_tasks RENAME COLUMN plan_cursor_int TO plan_cursor")
    else:
        op.alter_column(
            "reset_tasks", "plan_cursor", existing_type=ID_TEXT, type_=sa.Integer(),
            nullable=False, postgresql_using="plan_cursor::integer",
        )
    with op.batch_alter_table("reset_items") as batch:
        batch.alter_column(
            "user_id", existing_type=ID_TEXT, type_=sa.Integer(), existing_nullable=False,
            postgresql_using="user_id::integer",
        )
    with op.batch_alter_table("undo_snapshots") as batch:
        batch.alter_column(
            "user_id", existing_type=ID_TEXT, type_=sa.Integer(), existing_nullable=False,
            postgresql_using="user_id::integer",
        )
