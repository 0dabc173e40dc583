"""An Undo task's mode says so: `undo`, not the `default` it was stored with.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07

`reset_tasks.mode` is a plain VARCHAR(16) (no enum, no check), so only the rows change: every
task that undoes another (`undo_of` set) gets the mode `undo`, so `tasks list` and the task
centre stop calling it a default-password reset. The downgrade gives them back `default`, the
mode the older code expects of an Undo task.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0012"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("UPDATE reset_tasks SET mode = 'undo' WHERE undo_of IS NOT NULL")


def downgrade() -> None:
    op.execute("UPDATE reset_tasks SET mode = 'default' WHERE mode = 'undo'")
