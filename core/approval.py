"""Four-eyes approval: a big reset waits for a second admin, who approves or rejects it.

`core.tasks.gate_new_task` puts a confirmed task that needs it into `awaiting_approval`; from
there exactly one of these moves it on, each a conditional UPDATE (`WHERE status =
'awaiting_approval'`), so two approvers clicking at once, or a click racing the expiry, change
the row once:
- `approve`: the counts are taken again first; a scope that grew by more than a tenth is shown
  to the approver (kept as the task's new preview) and must be approved again. Otherwise the
  task is released as one that needed no approval is (`core.tasks.released_status`):
  `scheduled` while its start time is ahead (the edge announces it; the reaper starts it), else
  `queued` (the edge enqueues its plan).
- `reject`: `rejected`, nothing changed, the sealed passwords erased.
- `expire_overdue` (the reaper, in every worker, so it survives a lost Redis): `expired`,
  nothing changed, the sealed passwords erased. A scheduled task's request expires at its start
  time if that comes before RESET_APPROVAL_TTL (`core.tasks.approval_deadline`): approval must
  come before the time it was asked to start at.

Whether a task needs approval at all is `core.tasks.approval_needed`, judged on every path
that makes or starts work; a scheduled task whose count at its start is no longer covered by
its approval comes back here (`core.tasks.ask_approval_again`).

Who may approve is the edge's check (Slack user groups live there); that the requester never
approves their own task, whoever types it, is checked here, for every edge. Every refusal
raised here is a `Refusal` carrying its reason, which the edge audits.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core import audit
from core.directory import Preview
from core.directory.ids import user_ids
from core.directory.protocol import Directory
from core.errors import ConflictError
from core.models import ResetTask, Scope, TaskStatus, utcnow
from core.schedule import as_utc
from core.tasks import exceeds_approved, preview_counts, record_schedule, released_status
from core.undo import release_undone

#: The actor of the reaper's expiries in the audit trail.
EXPIRY_ACTOR = "resetbot"


@dataclass(frozen=True)
class ApprovalState:
    """What people are shown of a task's approval (None on tasks that never needed one)."""

    preview: Preview | None
    expires_at: datetime | None
    approved_by: str | None
    rejected_by: str | None
    decided_at: datetime | None
    #: True when the counts were taken again since the request (the scope grew).
    recounted: bool = False


def approval_state(task: ResetTask) -> ApprovalState | None:
    if task.approval_expires_at is None:
        return None
    return ApprovalState(
        preview=preview_of(task.preview),
        expires_at=task.approval_expires_at,
        approved_by=task.approved_by,
        rejected_by=task.rejected_by,
        decided_at=task.decided_at,
        recounted=bool((task.preview or {}).get("recounted")),
    )


def preview_of(counts: dict[str, Any] | None) -> Preview | None:
    if not counts:
        return None
    try:
        return Preview(users=int(counts["users"]), emailable=int(counts["emailable"]),
                       without_email=int(counts["without_email"]), staff=int(counts["staff"]),
                       locked=int(counts.get("locked") or 0))
    except (KeyError, TypeError, ValueError):
        return None


class Refusal(ConflictError):
    """A decision refused: `reason` is its short word for the audit trail (the edge audits
    every refused attempt)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class SelfApproval(Refusal):
    """The requester tried to approve their own task: refused (and audited by the edge)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "own task")


def acting(actor: str, typed_by: str | None = None) -> str:
    """Who acted, as the audit trail says it: the Slack user, or (the terminal cannot prove
    who types) `cli:<login> as <Slack user id>`."""
    return actor if typed_by is None else f"{typed_by} as {actor}"[:64]


@dataclass(frozen=True)
class Approved:
    """The task is released: `status` is what it now is (QUEUED: enqueue it; SCHEDULED:
    announce it, the reaper starts it at its time)."""

    task_id: int
    status: TaskStatus


@dataclass(frozen=True)
class Recounted:
    """The scope grew since the counts approvers were shown: approve again, seeing these."""

    task_id: int
    before: Preview | None
    now: Preview


def approve(
    session: Session, directory: Directory, task_id: int, approver: str, *,
    typed_by: str | None = None,
) -> Approved | Recounted:
    """Approve a waiting task as `approver` (already checked to be allowed to approve);
    `typed_by`: the terminal operator who typed it for them (`cli:<login>`), whom the audit
    trail names too.

    Raises SelfApproval when whoever asked for it would approve it (as `approver`, or as the
    operator typing), a Refusal when the task no longer waits. The caller commits (also a
    Recounted: the new counts are kept for the next click).
    """
    task = _waiting_task(session, task_id)
    if task.requester in (approver, typed_by):
        raise SelfApproval(f"You asked for reset #{task_id}: another admin must approve it.")
    actor = acting(approver, typed_by)
    before = preview_of(task.preview)
    if task.undo_of is not None and before is not None:
        now = before  # an Undo's users are the ones its task kept: they never grow
    else:
        now = directory.preview(Scope(task.scope), user_ids(task.selection))
    if grew_too_much(before, now):
        return _keep_recount(session, task, before, now, actor)
    moment = utcnow()
    status = released_status(task, moment)
    _decide(session, task_id, status=status, approved_by=approver, decided_at=moment)
    audit.record(session, actor, "approve", task_id, requester=task.requester,
                 users=now.users)
    if status is TaskStatus.SCHEDULED:
        record_schedule(session, task, actor)
    return Approved(task_id, status)


def grew_too_much(before: Preview | None, now: Preview) -> bool:
    """More than GROWTH_TO_RECONFIRM more users than approvers were shown (or never counted)."""
    return exceeds_approved(None if before is None else before.users, now.users)


def _keep_recount(
    session: Session, task: ResetTask, before: Preview | None, now: Preview, actor: str
) -> Recounted:
    counts = preview_counts(now) or {}
    counts["recounted"] = True
    _decide(session, task.id, preview=counts)  # still waiting, with the counts to approve
    audit.record(session, actor, "approval_recount", task.id,
                 before=None if before is None else before.users, now=now.users)
    return Recounted(task.id, before, now)


def reject(session: Session, task_id: int, actor: str, *, typed_by: str | None = None) -> None:
    """Reject a waiting task: nothing changes, its sealed passwords are erased. The caller
    commits. The requester may reject (withdraw) their own. Raises a Refusal when the task no
    longer waits."""
    _waiting_task(session, task_id)
    moment = utcnow()
    _decide(session, task_id, status=TaskStatus.REJECTED, rejected_by=actor, decided_at=moment,
            finished_at=moment, default_password_sealed=None, no_email_password_sealed=None)
    release_undone(session, [task_id])
    audit.record(session, acting(actor, typed_by), "reject", task_id)


def expire_overdue(session: Session, now: datetime | None = None) -> list[int]:
    """Expire every request nobody decided on in time; returns their ids. The caller commits.

    In time: before `approval_expires_at`, which for a scheduled task is its start time when
    that comes first. Each is a conditional UPDATE: an approval committed a moment earlier
    wins, and the task is left alone.
    """
    moment = now if now is not None else utcnow()
    overdue = session.execute(
        select(ResetTask.id, ResetTask.start_at).where(
            ResetTask.status == TaskStatus.AWAITING_APPROVAL,
            ResetTask.approval_expires_at < moment,
        ).order_by(ResetTask.id)
    ).all()
    expired = []
    for task_id, start_at in overdue:
        changed = session.execute(
            update(ResetTask)
            .where(ResetTask.id == task_id, ResetTask.status == TaskStatus.AWAITING_APPROVAL)
            .values(status=TaskStatus.EXPIRED, decided_at=moment, finished_at=moment,
                    default_password_sealed=None, no_email_password_sealed=None)
            .execution_options(synchronize_session=False)
        )
        if changed.rowcount == 1:  # type: ignore[attr-defined]
            audit.record(session, EXPIRY_ACTOR, "expire", int(task_id),
                         start_passed=start_at is not None and as_utc(start_at) <= moment)
            expired.append(int(task_id))
    release_undone(session, expired)
    return expired


def awaiting_ids(session: Session) -> list[int]:
    """Every task waiting for approval, oldest first."""
    return [int(task_id) for task_id in session.scalars(
        select(ResetTask.id).where(ResetTask.status == TaskStatus.AWAITING_APPROVAL)
        .order_by(ResetTask.id)
    )]


def _waiting_task(session: Session, task_id: int) -> ResetTask:
    task = session.get(ResetTask, task_id)
    if task is None:
        raise Refusal(f"There is no reset #{task_id}.", "no such task")
    if task.status != TaskStatus.AWAITING_APPROVAL:
        raise _no_longer_waiting(session, task_id)
    if task.approval_expires_at is not None and task.approval_expires_at < utcnow():
        raise Refusal(f"The approval request for reset #{task_id} has expired: nothing "
                      "was changed. Ask for the reset again.", "expired")
    return task


def _decide(session: Session, task_id: int, **values: Any) -> None:
    """Change a task only while it waits for approval: of two decisions at the same moment
    only one wins, and a recount cannot land on a task decided meanwhile."""
    won = session.execute(
        update(ResetTask)
        .where(ResetTask.id == task_id, ResetTask.status == TaskStatus.AWAITING_APPROVAL)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if won.rowcount != 1:  # type: ignore[attr-defined]
        raise _no_longer_waiting(session, task_id)


def _no_longer_waiting(session: Session, task_id: int) -> Refusal:
    """Why a task does not wait for approval (any more), as the person acting reads it."""
    session.expire_all()
    task = session.get(ResetTask, task_id)
    if task is None:
        return Refusal(f"There is no reset #{task_id}.", "no such task")
    status = TaskStatus(task.status)
    if task.approved_by and status is not TaskStatus.REJECTED:
        return Refusal(f"Reset #{task_id} was already approved (by {task.approved_by}).",
                       "already approved")
    if status is TaskStatus.REJECTED:
        return Refusal(f"Reset #{task_id} was already rejected (by {task.rejected_by}).",
                       "already rejected")
    if status is TaskStatus.EXPIRED:
        return Refusal(f"The approval request for reset #{task_id} has expired: nothing "
                       "was changed.", "expired")
    return Refusal(f"Reset #{task_id} does not wait for approval ({status.words}).",
                   "not awaiting approval")


def requester_of(session: Session, task_id: int) -> str | None:
    """Who asked for the task (None: no such task); they may reject, never approve, it."""
    return session.scalar(select(ResetTask.requester).where(ResetTask.id == task_id))
