"""Reset requests and tasks in the database: validate, preview, confirm once, cancel, retry.

Both edges (the CLI and the Slack app) come through here; the jobs do the work afterwards.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, literal, select, update
from sqlalchemy.orm import Session

from core import audit
from core.directory import Directory, Preview
from core.errors import ConflictError, InputError
from core.models import (
    FOLLOW_UP_STATES,
    ItemState,
    Mode,
    NoEmailChoice,
    PendingRequest,
    ResetItem,
    ResetTask,
    Scope,
    TaskStatus,
    utcnow,
)
from core.passwords import policy_violations
from core.sealing import seal
from core.settings import Settings

PENDING_TTL = timedelta(minutes=15)
MAX_SELECTION = 1000


@dataclass(frozen=True)
class ResetRequest:
    """What a person asked for, before anything changes."""

    requester: str
    scope: Scope
    selection: tuple[int, ...] = ()
    default_password: str | None = field(default=None, repr=False)
    require_change: bool = True
    requester_name: str = ""
    slack_channel: str | None = None
    #: E-mailed mode only: what happens to users without an address.
    no_email: NoEmailChoice = NoEmailChoice.RESET
    no_email_password: str | None = field(default=None, repr=False)

    @property
    def mode(self) -> Mode:
        return Mode.DEFAULT if self.default_password else Mode.GENERATED

    @property
    def no_email_choice(self) -> NoEmailChoice:
        """With a default password nobody is mailed, so nobody needs another way in."""
        return self.no_email if self.mode is Mode.GENERATED else NoEmailChoice.RESET


def parse_scope(value: str | None) -> Scope:
    try:
        return Scope(value or "")
    except ValueError:
        raise InputError("Choose who to reset.", field="scope") from None


def validate_request(
    session: Session, settings: Settings, directory: Directory, request: ResetRequest
) -> Preview:
    """Check everything a person typed; raise InputError naming the field, or return the preview.

    Problems are collected per field so one answer can show every reason at once.
    """
    problems: dict[str, list[str]] = {}
    selection = request.selection
    if len(selection) > MAX_SELECTION:
        problems.setdefault("users", []).append(
            f"Pick at most {MAX_SELECTION} users; for more, use a broader scope."
        )
    elif request.scope.needs_selection and not selection:
        problems.setdefault("users", []).append("Pick at least one user for this scope.")
    elif selection:
        missing = directory.missing_ids(session, selection)
        if missing:
            problems.setdefault("users", []).append(
                f"{len(missing)} of the picked users no longer exist in the directory."
            )
    if request.default_password:
        reasons = policy_violations(
            request.default_password, settings.policy, schemes=settings.password_schemes
        )
        if not reasons and settings.policy.forbid_username and "users" not in problems:
            clashes = _usernames_in_password(session, directory, request)
            if clashes:
                reasons.append(
                    f"It contains the username of {clashes} of the users it would be set for."
                )
        if reasons:
            problems["password"] = reasons
    no_email_problems = _no_email_problems(settings, request)
    if no_email_problems:
        problems["no_email_password"] = no_email_problems
    if problems:
        raise RequestInvalid(problems)
    preview = directory.preview(session, request.scope, selection)
    if preview.users == 0:
        raise RequestInvalid({"scope": ["Nobody matches this scope: there is no one to reset."]})
    return preview


def _no_email_problems(settings: Settings, request: ResetRequest) -> list[str]:
    typed = request.no_email_password
    if request.no_email_choice is not NoEmailChoice.SET:
        if typed:
            return ["This password is only for “give them a password I type”, with no default "
                    "password: clear it, or choose that."]
        return []
    if not typed:
        return ["Type the password to give the users without an e-mail address."]
    return policy_violations(typed, settings.policy, schemes=settings.password_schemes)


class RequestInvalid(InputError):
    """Every problem with a request, by the field where it was typed."""

    def __init__(self, problems: dict[str, list[str]]) -> None:
        first_field = next(iter(problems))
        super().__init__(" ".join(problems[first_field]), field=first_field)
        self.problems = problems


def _usernames_in_password(session: Session, directory: Directory, request: ResetRequest) -> int:
    assert request.default_password is not None
    c = directory.table.c
    lowered = literal(request.default_password.lower())
    query = (
        select(func.count())
        .select_from(directory.table)
        .where(
            directory.scope_condition(request.scope, request.selection),
            func.length(c.username) > 0,
            lowered.contains(func.lower(c.username)),
        )
    )
    return int(session.execute(query).scalar_one())


def create_pending(
    session: Session, settings: Settings, request: ResetRequest, preview: Preview | None = None
) -> PendingRequest:
    """Park a validated request (and the counts its requester is shown) until they confirm it."""
    pending = PendingRequest(
        preview=preview_counts(preview),
        id=secrets.token_urlsafe(24),
        requester=request.requester,
        requester_name=request.requester_name,
        scope=request.scope.value,
        selection=list(request.selection),
        require_change=request.require_change,
        default_password_sealed=_sealed(settings, request.default_password),
        no_email=request.no_email_choice.value,
        no_email_password_sealed=_no_email_sealed(settings, request),
        slack_channel=request.slack_channel,
        expires_at=utcnow() + PENDING_TTL,
    )
    session.add(pending)
    forget_expired_passwords(session)
    audit.record(
        session, request.requester, "request", scope=request.scope.value,
        mode=request.mode.value, selected=len(request.selection),
        no_email=request.no_email_choice.value,
    )
    return pending


def forget_expired_passwords(session: Session, now: datetime | None = None) -> int:
    """Drop the sealed password of every preview nobody confirmed in time; returns how many.

    An expired preview can never be confirmed, so its password has no reason to stay. Each
    worker's reaper calls this every few seconds; opening a preview calls it too.
    """
    result = session.execute(
        update(PendingRequest)
        .where(
            PendingRequest.expires_at < (now if now is not None else utcnow()),
            PendingRequest.default_password_sealed.is_not(None)
            | PendingRequest.no_email_password_sealed.is_not(None),
        )
        .values(default_password_sealed=None, no_email_password_sealed=None)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def consume_pending(session: Session, pending_id: str, requester: str) -> ResetTask:
    """Turn a pending request into a queued task, exactly once, even if confirmed twice at once."""
    pending = session.get(PendingRequest, pending_id)
    if pending is None or pending.requester != requester:
        raise ConflictError("This request is unknown or not yours. Start again.")
    if pending.task_id is not None:
        raise ConflictError(f"This request was already confirmed as task #{pending.task_id}.")
    if pending.expires_at < utcnow():
        raise ConflictError("This request has expired. Start again.")
    task = ResetTask(
        requester=pending.requester,
        requester_name=pending.requester_name,
        scope=pending.scope,
        selection=list(pending.selection),
        mode=Mode.DEFAULT if pending.default_password_sealed else Mode.GENERATED,
        require_change=pending.require_change,
        default_password_sealed=pending.default_password_sealed,
        no_email=pending.no_email,
        no_email_password_sealed=pending.no_email_password_sealed,
        slack_channel=pending.slack_channel,
        status=TaskStatus.QUEUED,
        preview=pending.preview,
    )
    session.add(task)
    session.flush()
    # The conditional update is the guard: of two concurrent confirms only one changes a row.
    claimed = session.execute(
        update(PendingRequest)
        .where(PendingRequest.id == pending_id, PendingRequest.task_id.is_(None))
        .values(task_id=task.id, default_password_sealed=None, no_email_password_sealed=None)
    )
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        raise ConflictError("This request was already confirmed.")
    audit.record(session, requester, "confirm", task.id, scope=task.scope, mode=task.mode)
    return task


def create_task(
    session: Session, settings: Settings, request: ResetRequest, preview: Preview | None = None
) -> ResetTask:
    """A queued task straight from a validated request (the CLI confirms in the terminal)."""
    task = ResetTask(
        preview=preview_counts(preview),
        requester=request.requester,
        requester_name=request.requester_name,
        scope=request.scope.value,
        selection=list(request.selection),
        mode=request.mode.value,
        require_change=request.require_change,
        default_password_sealed=_sealed(settings, request.default_password),
        no_email=request.no_email_choice.value,
        no_email_password_sealed=_no_email_sealed(settings, request),
        slack_channel=request.slack_channel,
        status=TaskStatus.QUEUED,
    )
    session.add(task)
    session.flush()
    audit.record(session, request.requester, "confirm", task.id, scope=task.scope, mode=task.mode)
    return task


def preview_counts(preview: Preview | None) -> dict[str, Any] | None:
    """A preview as the JSON kept with a request and its task."""
    return None if preview is None else asdict(preview)


# ---- the gate: what a confirmed task does next ----------------------------------------------


def gate_new_task(session: Session, settings: Settings, task: ResetTask) -> TaskStatus:
    """THE decision for a task just confirmed (Slack's confirm, `resetbot reset`): the status
    it now has. QUEUED: the edge enqueues its planning job; AWAITING_APPROVAL: it waits for a
    second admin (core/approval.py), and nothing is enqueued.

    Call it in the transaction that created the task, before the commit, so no reaper or
    worker ever sees a task that should wait as queued.
    """
    if needs_approval(settings, task):
        task.status = TaskStatus.AWAITING_APPROVAL
        task.approval_expires_at = utcnow() + timedelta(seconds=settings.reset_approval_ttl)
        audit.record(session, task.requester, "approval_request", task.id, scope=task.scope,
                     users=(task.preview or {}).get("users"))
        return TaskStatus.AWAITING_APPROVAL
    task.status = released_status(task)
    return TaskStatus(task.status)


def released_status(task: ResetTask) -> TaskStatus:
    """The status of a task every gate has let through (no approval needed, or approved):
    QUEUED, it starts now. The one place a later gate (a start time) would make it wait."""
    return TaskStatus.QUEUED


def needs_approval(settings: Settings, task: ResetTask) -> bool:
    """RESET_APPROVAL_MIN_USERS reached by the preview's count, or scope `all` when
    RESET_APPROVAL_SCOPE_ALL. Counts unknown (no preview kept) while a minimum is set: it waits,
    rather than start a reset nobody counted."""
    if settings.reset_approval_scope_all and task.scope == Scope.ALL:
        return True
    minimum = settings.reset_approval_min_users
    if minimum is None:
        return False
    users = (task.preview or {}).get("users")
    return not isinstance(users, int) or users >= minimum


def _sealed(settings: Settings, password: str | None) -> str | None:
    return seal(settings.reset_secret_key, password) if password else None


def _no_email_sealed(settings: Settings, request: ResetRequest) -> str | None:
    if request.no_email_choice is not NoEmailChoice.SET:
        return None
    return _sealed(settings, request.no_email_password)


def request_cancel(session: Session, task_id: int, actor: str) -> ResetTask:
    """Stop what has not started: pending users are cancelled, waiting mails given up.

    Users already reset stay reset and are reported; the jobs finish the task.
    """
    task = session.get(ResetTask, task_id)
    if task is None:
        raise ConflictError(f"There is no task #{task_id}.")
    status = TaskStatus(task.status)
    if status.is_final:
        raise ConflictError(f"Task #{task_id} has already ended ({status.words}).")
    if status is TaskStatus.AWAITING_APPROVAL:
        # Nothing has started: withdrawing it is a rejection (the requester may reject theirs).
        raise ConflictError(f"Task #{task_id} awaits approval and has not started: reject it "
                            "instead (Reject in its thread, or `resetbot tasks reject "
                            f"{task_id}`).")
    task.cancel_requested = True
    task.cancelled_by = actor
    now = utcnow()
    session.execute(
        update(ResetItem)
        .where(ResetItem.task_id == task_id, ResetItem.state == ItemState.PENDING)
        .values(state=ItemState.CANCELLED, updated_at=now)
    )
    session.execute(
        update(ResetItem)
        .where(ResetItem.task_id == task_id, ResetItem.state == ItemState.RETRY_WAIT)
        .values(
            state=ItemState.NOTIFY_FAILED,
            last_error="The task was cancelled before the mail could be sent again.",
            next_attempt_at=None,
            updated_at=now,
        )
    )
    audit.record(session, actor, "cancel", task_id)
    return task


def state_counts(session: Session, task_id: int) -> dict[ItemState, int]:
    """Users per state, straight from the database (never from a worker's memory)."""
    query = (
        select(ResetItem.state, func.count())
        .where(ResetItem.task_id == task_id)
        .group_by(ResetItem.state)
    )
    counts = dict.fromkeys(ItemState, 0)
    for state, count in session.execute(query):
        counts[ItemState(state)] = int(count)
    return counts


def follow_ups(session: Session, task_id: int) -> list[ResetItem]:
    """Users staff must contact by hand: no address, or the mail never got through."""
    query = (
        select(ResetItem)
        .where(ResetItem.task_id == task_id, ResetItem.state.in_(list(FOLLOW_UP_STATES)))
        .order_by(ResetItem.username)
    )
    return list(session.scalars(query))


def items(session: Session, task_id: int) -> Sequence[ResetItem]:
    query = select(ResetItem).where(ResetItem.task_id == task_id).order_by(ResetItem.username)
    return list(session.scalars(query))


def create_retry_task(session: Session, task_id: int, requester: str, name: str = "") -> ResetTask:
    """A new task mailing fresh passwords to the users whose notification failed in `task_id`.

    A task is retried once, whichever edge asks: a second retry is refused, naming the first.
    """
    original = session.get(ResetTask, task_id)
    if original is None:
        raise ConflictError(f"There is no task #{task_id}.")
    if original.retried_by is not None:
        raise _already_retried(task_id, original.retried_by)
    if not TaskStatus(original.status).is_final:
        raise ConflictError(f"Task #{task_id} is still running; retry when it has ended.")
    failed = list(
        session.scalars(
            select(ResetItem.user_id)
            .where(ResetItem.task_id == task_id, ResetItem.state == ItemState.NOTIFY_FAILED)
            .order_by(ResetItem.user_id)
        )
    )
    if not failed:
        raise ConflictError(f"Task #{task_id} has no failed notifications to retry.")
    task = ResetTask(
        requester=requester,
        requester_name=name,
        scope=Scope.SELECTED_ONLY.value,
        selection=failed,
        mode=Mode.GENERATED.value,
        require_change=original.require_change,
        slack_channel=original.slack_channel,
        slack_thread_ts=None,
        retry_of=task_id,
        status=TaskStatus.QUEUED,
    )
    session.add(task)
    session.flush()
    # The conditional update is the guard: of two concurrent retries only one changes the row
    # (on PostgreSQL the second waits for the first to commit, then finds retried_by set).
    claimed = session.execute(
        update(ResetTask)
        .where(ResetTask.id == task_id, ResetTask.retried_by.is_(None))
        .values(retried_by=task.id)
    )
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        winner = session.scalar(select(ResetTask.retried_by).where(ResetTask.id == task_id))
        raise _already_retried(task_id, winner)
    audit.record(session, requester, "retry", task.id, retry_of=task_id, users=len(failed))
    return task


def _already_retried(task_id: int, retry_id: int | None) -> ConflictError:
    return ConflictError(f"Reset #{task_id} was already retried as reset #{retry_id}.")


def recent_tasks(session: Session, limit: int = 20) -> list[ResetTask]:
    query = select(ResetTask).order_by(ResetTask.id.desc()).limit(limit)
    return list(session.scalars(query))
