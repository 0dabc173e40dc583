"""resetbot's own tables (typed ORM) and the library's users table (configurable Core table)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeEngine

from core.settings import DirectoryNames

# Defined apart (core/states.py) so that the command line names them without SQLAlchemy.
from core.states import FINAL_ITEM_STATES as FINAL_ITEM_STATES
from core.states import FOLLOW_UP_STATES as FOLLOW_UP_STATES
from core.states import ItemState as ItemState
from core.states import Mode as Mode
from core.states import NoEmailChoice as NoEmailChoice
from core.states import Scope as Scope
from core.states import TaskStatus as TaskStatus


def utcnow() -> datetime:
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """A timestamp that is always read back timezone-aware, in UTC.

    SQLite keeps no zone and hands back naive values; everything resetbot writes is UTC, so the
    zone is put back here, once, instead of at every place that compares with `utcnow()`.
    MariaDB/MySQL keep no zone either, and whole seconds unless asked for microseconds.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name in ("mysql", "mariadb"):
            # Microseconds: a bare DATETIME keeps whole seconds, and leases, retries and the
            # audit log are ordered by these. (Imported here: other databases never load it.)
            from sqlalchemy.dialects.mysql import DATETIME

            return DATETIME(fsp=6)
        return super().load_dialect_impl(dialect)

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            return value.astimezone(UTC)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


def preview_users_of(counts: dict[str, Any] | None) -> int | None:
    """The users a preview JSON (`ResetTask.preview`) counted; None when there is none."""
    users = (counts or {}).get("users")
    return users if isinstance(users, int) and not isinstance(users, bool) else None


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UtcDateTime(), dict[str, Any]: JSON}


class ResetTask(Base):
    __tablename__ = "reset_tasks"

    id: Mapped[int] = mapped_column(primary_key=True)
    requester: Mapped[str] = mapped_column(String(64))  # Slack user id, or "cli:<login>"
    requester_name: Mapped[str] = mapped_column(String(255), default="")
    scope: Mapped[str] = mapped_column(String(32))
    # The picked user ids (text; rows written before ids were text hold integers: read them
    # through `core.directory.ids.user_ids`).
    selection: Mapped[list[str]] = mapped_column(JSON, default=list)
    mode: Mapped[str] = mapped_column(String(16))
    require_change: Mapped[bool] = mapped_column(Boolean, default=True)
    status: Mapped[str] = mapped_column(String(32), default=TaskStatus.QUEUED, index=True)
    # The default password, sealed with RESET_SECRET_KEY; cleared when the task ends.
    default_password_sealed: Mapped[str | None] = mapped_column(Text, default=None)
    # Users without an address in an e-mailed reset (NoEmailChoice); for `set`, the sealed
    # password staff typed for them, cleared when the task ends.
    no_email: Mapped[str] = mapped_column(String(8), default=NoEmailChoice.RESET)
    no_email_password_sealed: Mapped[str | None] = mapped_column(Text, default=None)
    # Accounts locked on purpose (the profile's `locked` rule) are left out: never changed.
    skip_locked: Mapped[bool] = mapped_column(Boolean, default=False)
    retry_of: Mapped[int | None] = mapped_column(ForeignKey("reset_tasks.id"), default=None)
    # The task that retried this one's failed notifications: set once, by a conditional UPDATE,
    # so two retries asked at the same moment (CLI, Slack button) make one task.
    retried_by: Mapped[int | None] = mapped_column(Integer, default=None)
    slack_channel: Mapped[str | None] = mapped_column(String(32), default=None)
    slack_thread_ts: Mapped[str | None] = mapped_column(String(32), default=None)
    total: Mapped[int] = mapped_column(Integer, default=0)
    planned: Mapped[bool] = mapped_column(Boolean, default=False)
    # The last user id (in the directory's stable order) written to reset_items so far, so an
    # interrupted plan resumes; None before the first batch.
    plan_cursor: Mapped[str | None] = mapped_column(String(255), default=None)
    reported_step: Mapped[int] = mapped_column(Integer, default=0)
    # Throttles for the reporter: waiting is said once, each mail retry round once.
    reported_waiting: Mapped[bool] = mapped_column(Boolean, default=False)
    reported_retry_round: Mapped[int] = mapped_column(Integer, default=0)
    # Held by the job planning the task (and briefly by a reaper that re-enqueued planning), so a
    # dead planner is noticed within a lease and two planners never interleave.
    plan_lease_until: Mapped[datetime | None] = mapped_column(default=None)
    # When a reaper last put this task's lost work back on the queue: one reaper per interval.
    rescued_at: Mapped[datetime | None] = mapped_column(default=None)
    summary_posted: Mapped[bool] = mapped_column(Boolean, default=False)
    # The Slack thread's own bookkeeping, so a retried or late delivery says each thing once.
    # A delivery claims the parent post (stale after a while, should its worker die mid-post).
    slack_parent_claimed_at: Mapped[datetime | None] = mapped_column(default=None)
    slack_started_posted: Mapped[bool] = mapped_column(Boolean, default=False)
    slack_milestone: Mapped[int] = mapped_column(Integer, default=0)  # quarters announced
    slack_error_posted: Mapped[bool] = mapped_column(Boolean, default=False)
    slack_csv_posted: Mapped[bool] = mapped_column(Boolean, default=False)
    # Where the task was asked for when the bot could not post there (it reports in a DM).
    slack_fallback_from: Mapped[str | None] = mapped_column(String(32), default=None)
    slack_fallback_reason: Mapped[str | None] = mapped_column(String(64), default=None)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    cancelled_by: Mapped[str | None] = mapped_column(String(64), default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    # A mail outage: no pending user is claimed before `paused_until`; `pauses` tries so far.
    paused_until: Mapped[datetime | None] = mapped_column(default=None)
    paused_since: Mapped[datetime | None] = mapped_column(default=None)
    pauses: Mapped[int] = mapped_column(Integer, default=0)
    pause_reason: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    # The counts of the preview its requester confirmed (the one source of "how many users it
    # was asked for": approvers are shown them, a scheduled start compares against them); an
    # approval's re-count replaces them (marked `recounted`).
    preview: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    # Four-eyes approval: when the request expires, and who decided (see core/approval.py).
    approval_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    approved_by: Mapped[str | None] = mapped_column(String(64), default=None)
    rejected_by: Mapped[str | None] = mapped_column(String(64), default=None)
    decided_at: Mapped[datetime | None] = mapped_column(default=None)
    # A scheduled reset (status `scheduled`): when it starts (UTC), the count taken again when
    # its time came, when the reminder went to its thread, and since when it is held because
    # that count differs from the preview's (core/schedule.py).
    start_at: Mapped[datetime | None] = mapped_column(default=None)
    recheck_users: Mapped[int | None] = mapped_column(Integer, default=None)
    reminded_at: Mapped[datetime | None] = mapped_column(default=None)
    start_held_at: Mapped[datetime | None] = mapped_column(default=None)
    # Undo (core/undo.py): an Undo task names the task it undoes; that task names its Undo,
    # set once by a conditional UPDATE, so a second click makes no second Undo.
    undo_of: Mapped[int | None] = mapped_column(Integer, default=None)
    undone_by: Mapped[int | None] = mapped_column(Integer, default=None)

    @property
    def preview_users(self) -> int | None:
        """The users its preview counted (None: no preview was kept)."""
        return preview_users_of(self.preview)


class StartLock(Base):
    """One row every task start locks (an UPDATE) while it checks which tasks run.

    Tasks whose users do not overlap run side by side; whether a task may start depends on the
    other running tasks, so two starts deciding at once could each miss the other. Taking this
    row's lock first makes the checks take turns, on SQLite, PostgreSQL and MariaDB alike.
    """

    __tablename__ = "task_start_lock"

    id: Mapped[int] = mapped_column(primary_key=True)
    starts: Mapped[int] = mapped_column(Integer, default=0)


class ResetItem(Base):
    __tablename__ = "reset_items"
    __table_args__ = (
        UniqueConstraint("task_id", "user_id"),
        Index("ix_reset_items_task_state", "task_id", "state"),
        Index("ix_reset_items_task_chunk", "task_id", "chunk"),
        # The reaper's scans across tasks: expired leases, overdue retries.
        Index("ix_reset_items_state_lease", "state", "lease_until"),
        Index("ix_reset_items_state_next_attempt", "state", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("reset_tasks.id", ondelete="CASCADE"))
    # The directory's id of the user, as text (an integer id is one kind of string).
    user_id: Mapped[str] = mapped_column(String(255))
    chunk: Mapped[int] = mapped_column(Integer)
    # Snapshot of who this was at plan time, for mails and the follow-up list.
    username: Mapped[str] = mapped_column(String(255))
    full_name: Mapped[str] = mapped_column(String(255), default="")
    email: Mapped[str | None] = mapped_column(String(320), default=None)
    is_staff: Mapped[bool] = mapped_column(Boolean, default=False)
    state: Mapped[str] = mapped_column(String(16), default=ItemState.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(default=None)
    leased_by: Mapped[str | None] = mapped_column(String(128), default=None)
    lease_until: Mapped[datetime | None] = mapped_column(default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class PendingRequest(Base):
    """What a preview waits on; consumed once, atomically, by the confirm."""

    __tablename__ = "pending_requests"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # opaque, unguessable
    requester: Mapped[str] = mapped_column(String(64))
    requester_name: Mapped[str] = mapped_column(String(255), default="")
    scope: Mapped[str] = mapped_column(String(32))
    selection: Mapped[list[str]] = mapped_column(JSON, default=list)
    require_change: Mapped[bool] = mapped_column(Boolean, default=True)
    default_password_sealed: Mapped[str | None] = mapped_column(Text, default=None)
    no_email: Mapped[str] = mapped_column(String(8), default=NoEmailChoice.RESET)
    no_email_password_sealed: Mapped[str | None] = mapped_column(Text, default=None)
    skip_locked: Mapped[bool] = mapped_column(Boolean, default=False)
    slack_channel: Mapped[str | None] = mapped_column(String(32), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()
    task_id: Mapped[int | None] = mapped_column(ForeignKey("reset_tasks.id"), default=None)
    # The counts the requester saw, handed to the task (approvers are shown the same).
    preview: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    # A scheduled reset: when it should start (UTC).
    start_at: Mapped[datetime | None] = mapped_column(default=None)
    # Users named by a file (core.userio.FileMatch.report): counts and the lines that named
    # nobody, with line numbers. What the file said, never a password; not copied to the task.
    file_report: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)


class UndoSnapshot(Base):
    """What a task's write replaced for one user, kept for its Undo (core/undo.py).

    Both values are sealed with RESET_SECRET_KEY: `previous_sealed` the columns as they were
    before the task (password hash, must-change, expiry, lock), `written_sealed` the hash the
    task wrote last, to tell whether the user has changed it since. Erased when the task's
    Undo window closes (jobs/reaper.py).
    """

    __tablename__ = "undo_snapshots"
    __table_args__ = (UniqueConstraint("task_id", "user_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("reset_tasks.id", ondelete="CASCADE"))
    # The directory's id of the user, as text (as reset_items.user_id).
    user_id: Mapped[str] = mapped_column(String(255))
    previous_sealed: Mapped[str] = mapped_column(Text)
    written_sealed: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AuditEntry(Base):
    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(32))  # request, refused, confirm, cancel, ...
    task_id: Mapped[int | None] = mapped_column(Integer, default=None)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


def users_table(names: DirectoryNames, metadata: MetaData | None = None) -> Table:
    """The library's users table: fixed column *keys*, database names as configured.

    Code always says `users.c.username`; the SQL says whatever the library system calls it.
    """
    metadata = metadata if metadata is not None else MetaData()
    c = names.column
    return Table(
        names.table,
        metadata,
        Column(c("id"), Integer, primary_key=True, key="id"),
        Column(c("username"), String(255), nullable=False, unique=True, key="username"),
        Column(c("full_name"), String(255), nullable=False, default="", key="full_name"),
        Column(c("email"), String(320), nullable=True, key="email"),
        Column(c("role"), String(64), nullable=True, key="role"),
        Column(c("password_hash"), String(255), nullable=True, key="password_hash"),
        Column(
            c("password_changed_at"), UtcDateTime(), nullable=True,
            key="password_changed_at",
        ),
        Column(
            c("must_change_password"), Boolean, nullable=False, default=False,
            key="must_change_password",
        ),
    )
