"""Reset requests and tasks in the database: validate, preview, confirm once, cancel, retry.

Both edges (the CLI and the Slack app) come through here; the jobs do the work afterwards.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, func, select, update
from sqlalchemy.orm import Session

from core import audit
from core.directory import Preview
from core.directory.ids import user_ids
from core.directory.protocol import CountsElsewhere, Directory, ScopeRules
from core.directory.sql import as_protocol
from core.directory.sql.table import Directory as TableDirectory
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
from core.schedule import as_utc, is_future, start_at_problem
from core.sealing import seal
from core.settings import Settings

PENDING_TTL = timedelta(minutes=15)
#: Users picked one by one (the picker, --user); a file names more.
MAX_SELECTION = 1000
#: Users one request may name (a file of users, `--users-file`): kept with the request as ids.
MAX_NAMED = 100_000


@dataclass(frozen=True)
class ResetRequest:
    """What a person asked for, before anything changes."""

    requester: str
    scope: Scope
    #: The picked users' directory ids (text).
    selection: tuple[str, ...] = ()
    default_password: str | None = field(default=None, repr=False)
    require_change: bool = True
    requester_name: str = ""
    slack_channel: str | None = None
    #: E-mailed mode only: what happens to users without an address.
    no_email: NoEmailChoice = NoEmailChoice.RESET
    no_email_password: str | None = field(default=None, repr=False)
    #: When the reset should start (aware); None: as soon as it is confirmed.
    start_at: datetime | None = None
    #: Leave out accounts locked on purpose; None: the mode's default (`leaves_locked`).
    skip_locked: bool | None = None

    @property
    def mode(self) -> Mode:
        return Mode.DEFAULT if self.default_password else Mode.GENERATED

    @property
    def leaves_locked(self) -> bool:
        """Unless asked otherwise, an e-mailed reset leaves locked accounts out: a mail with a
        password that cannot be used is noise. A default password is set for them too."""
        return self.skip_locked if self.skip_locked is not None else self.mode is Mode.GENERATED

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
    settings: Settings, directory: Directory | TableDirectory, request: ResetRequest,
    counts: CountsElsewhere | None = None,
) -> Preview:
    """Check everything a person typed; raise InputError naming the field, or return the preview.

    Problems are collected per field so one answer can show every reason at once. (A table
    directory is taken as the protocol's SqlDirectory.) `counts`: where the preview is counted
    when it can be (the app's search copy), else by the directory.
    """
    directory = as_protocol(directory)
    counted = _Counted(directory, counts)
    problems: dict[str, list[str]] = {}
    selection = request.selection
    library = counted.rules_for_scope(request.scope, selection)
    if len(selection) > MAX_NAMED:
        problems.setdefault("users", []).append(
            f"Name at most {MAX_NAMED:,} users; for more, use a broader scope."
        )
    elif request.scope.needs_selection and not selection:
        problems.setdefault("users", []).append("Pick at least one user for this scope.")
    elif selection:
        missing = directory.missing_ids(selection)
        if missing:
            problems.setdefault("users", []).append(
                f"{len(missing)} of the picked users no longer exist in the directory."
            )
    if request.default_password:
        # The bcrypt length limit follows the hash the directory writes (its profile's).
        reasons = password_problems(directory, request.default_password, settings)
        if not reasons and settings.policy.forbid_username and "users" not in problems:
            clashes = counted.usernames_in_password(
                request.default_password, request.scope, request.selection
            )
            if clashes:
                reasons.append(
                    f"It contains the username of {clashes} of the users it would be set for."
                )
        if not reasons and "users" not in problems:
            reasons += library.violations(request.default_password)
        if reasons:
            problems["password"] = reasons
    no_email_problems = _no_email_problems(settings, directory, counted, request)
    if not no_email_problems and request.no_email_choice is NoEmailChoice.SET and (
        request.no_email_password and "users" not in problems
    ):
        no_email_problems = library.violations(request.no_email_password)
    if no_email_problems:
        problems["no_email_password"] = no_email_problems
    if request.start_at is not None:
        late = start_at_problem(request.start_at, utcnow())
        if late:
            problems["start_at"] = [late]
    if problems:
        raise RequestInvalid(problems)
    preview = counted.preview(request.scope, selection)
    if preview.users == 0:
        raise RequestInvalid({"scope": ["Nobody matches this scope: there is no one to reset."]})
    if library.unread:
        preview = replace(preview, notes=(*preview.notes, library.unread))
    return preview


class _Counted:
    """A preview's counts: from `counts` when it has them, else from the directory."""

    def __init__(self, directory: Directory, counts: CountsElsewhere | None) -> None:
        self.directory = directory
        self.counts = counts

    def preview(self, scope: Scope, selection: Sequence[str]) -> Preview:
        found = None if self.counts is None else self.counts.preview(scope, selection)
        return self.directory.preview(scope, selection) if found is None else found

    def rules_for_scope(self, scope: Scope, selection: Sequence[str]) -> ScopeRules:
        found = None if self.counts is None else self.counts.rules_for_scope(scope, selection)
        return self.directory.rules_for_scope(scope, selection) if found is None else found

    def usernames_in_password(
        self, password: str, scope: Scope, selection: Sequence[str], *,
        without_email_only: bool = False,
    ) -> int:
        found = None if self.counts is None else self.counts.usernames_in_password(
            password, scope, selection, without_email_only=without_email_only)
        if found is not None:
            return found
        return self.directory.usernames_in_password(
            password, scope, selection, without_email_only=without_email_only)


def _no_email_problems(
    settings: Settings, directory: Directory, counted: _Counted, request: ResetRequest
) -> list[str]:
    typed = request.no_email_password
    if request.no_email_choice is not NoEmailChoice.SET:
        if not typed:
            return []
        if request.no_email is NoEmailChoice.SET:
            # “Give them a password I type” is chosen, but the default password wins.
            return ["With a default password nobody is e-mailed, so everyone gets that one: "
                    "clear this password, or clear the default password."]
        return ["This password is only for “give them a password I type”, with no default "
                "password: clear it, or choose that."]
    if not typed:
        return ["Type the password to give the users without an e-mail address."]
    reasons = password_problems(directory, typed, settings)
    if not reasons and settings.policy.forbid_username and not (
        request.scope.needs_selection and not request.selection
    ):
        clashes = counted.usernames_in_password(
            typed, request.scope, request.selection, without_email_only=True
        )
        if clashes:
            reasons.append(f"It contains the username of {clashes} of the users without an "
                           "e-mail address it would be set for.")
    return reasons


def password_problems(directory: Directory, password: str, settings: Settings) -> list[str]:
    """Why resetbot's policy would refuse this password (a SQL table's hash adds its length
    limit, bcrypt's 72 bytes; the directory's own rules are `Directory.rules_for_scope`)."""
    return policy_violations(password, settings.policy, schemes=directory.hash_schemes)


class RequestInvalid(InputError):
    """Every problem with a request, by the field where it was typed."""

    def __init__(self, problems: dict[str, list[str]]) -> None:
        first_field = next(iter(problems))
        super().__init__(" ".join(problems[first_field]), field=first_field)
        self.problems = problems


def create_pending(
    session: Session, settings: Settings, request: ResetRequest, preview: Preview | None = None,
    file_report: dict[str, Any] | None = None,
) -> PendingRequest:
    """Park a validated request (and the counts its requester is shown) until they confirm it.

    The counts go with the task: approvers are shown them, and a scheduled reset's start
    compares the count taken then against them. `file_report`: what a file of users matched
    and every line that named nobody (core.userio.FileMatch.report), for the preview's lists.
    """
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
        skip_locked=request.leaves_locked,
        slack_channel=request.slack_channel,
        expires_at=utcnow() + PENDING_TTL,
        start_at=_start_at(request),
        file_report=file_report,
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
    """Turn a pending request into a task, exactly once, even if confirmed twice at once.

    The task is `queued` until the caller's `gate_new_task`, in the same transaction, decides
    what it does next (wait for approval, wait for its time, or start now).
    """
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
        skip_locked=pending.skip_locked,
        slack_channel=pending.slack_channel,
        status=TaskStatus.QUEUED,
        preview=pending.preview,
        start_at=pending.start_at,
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
    """A task straight from a validated request (the CLI confirms in the terminal): `queued`
    until the caller's `gate_new_task`, in the same transaction, decides what it does next."""
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
        skip_locked=request.leaves_locked,
        slack_channel=request.slack_channel,
        start_at=_start_at(request),
        status=TaskStatus.QUEUED,
    )
    session.add(task)
    session.flush()
    audit.record(session, request.requester, "confirm", task.id, scope=task.scope, mode=task.mode)
    return task


def preview_counts(preview: Preview | None) -> dict[str, Any] | None:
    """A preview's counts as the JSON kept with a request and its task (what approvers are
    shown and a scheduled start compares)."""
    if preview is None:
        return None
    counts = asdict(preview)
    return {key: counts[key]
            for key in ("users", "emailable", "without_email", "staff", "locked")}


def _start_at(request: ResetRequest) -> datetime | None:
    return as_utc(request.start_at) if request.start_at is not None else None


# ---- the gate: what a confirmed task does next ----------------------------------------------


def gate_new_task(
    session: Session, settings: Settings, task: ResetTask, now: datetime | None = None
) -> TaskStatus:
    """THE decision for a task just confirmed (Slack's confirm, `resetbot reset`); returns the
    status it now has:
    - AWAITING_APPROVAL: it needs a second admin (core/approval.py); nothing is enqueued. With
      a start time, the approval must come before it: the request expires at the earlier of
      RESET_APPROVAL_TTL and the start time;
    - otherwise as `release_task` decides: SCHEDULED (the caller announces it; the reaper
      starts it at its time) or QUEUED (the caller enqueues its plan).

    Call it in the transaction that created the task, before the commit, so no reaper or
    worker ever sees a task that should wait as queued.
    """
    now = now if now is not None else utcnow()
    if needs_approval(settings, task):
        task.status = TaskStatus.AWAITING_APPROVAL
        task.approval_expires_at = approval_deadline(settings, task, now)
        audit.record(session, task.requester, "approval_request", task.id, scope=task.scope,
                     users=task.preview_users, start_at=_iso(task.start_at))
        session.flush()
        return TaskStatus.AWAITING_APPROVAL
    return release_task(session, task, task.requester, now)


def approval_deadline(settings: Settings, task: ResetTask, now: datetime) -> datetime:
    """When an approval request expires: after RESET_APPROVAL_TTL, or at the task's start time
    if that comes first (a scheduled reset approved late would start late, unannounced)."""
    deadline = now + timedelta(seconds=settings.reset_approval_ttl)
    if task.start_at is not None and as_utc(task.start_at) < deadline:
        return as_utc(task.start_at)
    return deadline


def released_status(task: ResetTask, now: datetime | None = None) -> TaskStatus:
    """The status of a task every gate has let through (no approval needed, or approved):
    SCHEDULED while its start time is ahead, else QUEUED (it starts now)."""
    return TaskStatus.SCHEDULED if is_future(task.start_at, now or utcnow()) else TaskStatus.QUEUED


def release_task(
    session: Session, task: ResetTask, actor: str, now: datetime | None = None
) -> TaskStatus:
    """Release a task that needs no approval; returns its new status (see `released_status`).

    `queued`: it starts now, and the caller (the edge) enqueues its plan after the commit.
    `scheduled`: its start time is still ahead; nothing is enqueued, the reaper starts it when
    the time comes (jobs/scheduling.py), and the caller announces it. A start time that passed
    while the preview waited for its confirm starts it now.
    """
    task.status = released_status(task, now)
    if task.status == TaskStatus.SCHEDULED:
        record_schedule(session, task, actor)
    session.flush()
    return TaskStatus(task.status)


def record_schedule(session: Session, task: ResetTask, actor: str) -> None:
    """The audit entry of a task that now waits for its start time (released or approved)."""
    audit.record(session, actor, "schedule", task.id, start_at=_iso(task.start_at),
                 users=task.preview_users)


def needs_approval(settings: Settings, task: ResetTask) -> bool:
    """Whether a confirmed task waits for a second admin (see `approval_needed`)."""
    return approval_needed(settings, task, task.preview_users)


#: The scopes that reach the whole directory (everyone, or everyone but a few picked, or every
#: patron): RESET_APPROVAL_SCOPE_ALL gates each of them.
WHOLE_DIRECTORY_SCOPES = frozenset({Scope.ALL, Scope.ALL_EXCEPT_SELECTED, Scope.ALL_WITHOUT_ROLE})
#: A count that grew by more than this share over what approvers were shown is approved again.
GROWTH_TO_RECONFIRM = 0.10


def approval_needed(settings: Settings, task: ResetTask, users: int | None) -> bool:
    """THE approval rule, judged on every path that makes or starts work: a new task's gate
    (Slack's confirm, `resetbot reset`, a Retry), a scheduled task at its start
    (jobs/scheduling.py) and Start now / `tasks start` (`confirm_held_start`); a worker
    judges it again before it starts any queued task (jobs/planning.py), so an edge that
    forgot the gate cannot start one; the approve click judges its recount with
    `exceeds_approved`.

    True when resetting `users` users of the task's scope needs a second admin
    (`approval_required`) and no approval covers them: the task was never approved, or was
    approved for a count they exceed by more than GROWTH_TO_RECONFIRM. An Undo is judged the
    same way (its task's scope, the users it would put back): it changes as many passwords as
    a reset, and a second admin may know why the first reset was wanted.
    """
    if not approval_required(settings, task.scope, users):
        return False
    return task.approved_by is None or exceeds_approved(task.preview_users, users)


def exceeds_approved(approved: int | None, users: int | None) -> bool:
    """More than GROWTH_TO_RECONFIRM more users than approvers were shown (or either count
    unknown: an approval covers only what was counted)."""
    if approved is None or users is None:
        return True
    return users > approved * (1 + GROWTH_TO_RECONFIRM)


def approval_required(settings: Settings, scope: str, users: int | None) -> bool:
    """RESET_APPROVAL_MIN_USERS reached by the count, or a whole-directory scope (`all`,
    `all_except_selected`, `all_without_role`) when RESET_APPROVAL_SCOPE_ALL. Counts unknown
    (no preview kept) while a minimum is set: it waits, rather than start a reset nobody
    counted."""
    if settings.reset_approval_scope_all and scope in WHOLE_DIRECTORY_SCOPES:
        return True
    minimum = settings.reset_approval_min_users
    if minimum is None:
        return False
    return users is None or users >= minimum


def ask_approval_again(
    session: Session, settings: Settings, task_id: int, counts: Preview, actor: str,
    now: datetime, *only_while: Any,
) -> bool:
    """Put a task about to start (a scheduled one at its start, a held one at Start now, a
    queued one a worker picks up) back to awaiting approval, showing `counts` (the count taken
    now), when `approval_needed` says no approval covers them; True if this call's
    conditional UPDATE (`only_while`) won. The caller commits.

    The request waits RESET_APPROVAL_TTL from now (its start time, if any, has come);
    approved, it starts at once (`released_status`). Its sealed passwords stay for that
    start; a rejection or an expiry erases them.
    """
    preview = preview_counts(counts) or {}
    preview["recounted"] = True
    won = session.execute(
        update(ResetTask)
        .where(ResetTask.id == task_id, *only_while)
        .values(status=TaskStatus.AWAITING_APPROVAL, preview=preview, recheck_users=counts.users,
                approved_by=None, decided_at=None, start_held_at=None,
                approval_expires_at=now + timedelta(seconds=settings.reset_approval_ttl))
        .execution_options(synchronize_session=False)
    )
    if won.rowcount != 1:  # type: ignore[attr-defined]
        return False
    audit.record(session, actor, "approval_request", task_id, users=counts.users, again=True)
    return True


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
    if status is TaskStatus.SCHEDULED and _cancel_scheduled(session, task, actor):
        return task
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


def _cancel_scheduled(session: Session, task: ResetTask, actor: str) -> bool:
    """A task that has not reached its start time ends at once, its sealed passwords erased.

    Conditional: if the reaper started it a moment ago, this changes nothing and the cancel
    goes the way of any queued task's (its planner ends it unstarted).
    """
    now = utcnow()
    ended = session.execute(
        update(ResetTask)
        .where(ResetTask.id == task.id, ResetTask.status == TaskStatus.SCHEDULED)
        .values(
            status=TaskStatus.CANCELLED, cancel_requested=True, cancelled_by=actor,
            finished_at=now, planned=True, default_password_sealed=None,
            no_email_password_sealed=None,
        )
        .execution_options(synchronize_session=False)
    )
    if ended.rowcount != 1:  # type: ignore[attr-defined]
        session.refresh(task)
        return False
    session.refresh(task)
    audit.record(session, actor, "cancel", task.id, scheduled=True,
                 start_at=_iso(task.start_at))
    return True


def confirm_held_start(
    session: Session, settings: Settings, directory: Directory, task_id: int, actor: str
) -> ResetTask:
    """Start a scheduled task held at its start time because its counts changed: `queued`
    now, or `awaiting_approval` when the users counted now need an approval it does not have
    (`approval_needed`): then another admin must approve them, never whoever asked for it.

    Whoever confirms accepts the counts its thread showed; the caller enqueues the plan after
    the commit (a lost enqueue is made good by the reaper, which wakes queued tasks), or
    announces the approval request.
    """
    task = session.get(ResetTask, task_id)
    if task is None:
        raise ConflictError(f"There is no task #{task_id}.")
    held = (ResetTask.status == TaskStatus.SCHEDULED, ResetTask.start_held_at.is_not(None))
    counts = None
    if task.status == TaskStatus.SCHEDULED and task.start_held_at is not None:
        counts = directory.preview(Scope(task.scope), user_ids(task.selection))
    if counts is not None and approval_needed(settings, task, counts.users):
        if ask_approval_again(session, settings, task_id, counts, actor, utcnow(), *held):
            session.refresh(task)
            return task
    else:
        released = session.execute(
            update(ResetTask)
            .where(ResetTask.id == task_id, *held)
            .values(status=TaskStatus.QUEUED, start_held_at=None)
            .execution_options(synchronize_session=False)
        )
        if released.rowcount == 1:  # type: ignore[attr-defined]
            session.refresh(task)
            audit.record(session, actor, "reconfirm", task_id, users=task.recheck_users)
            return task
    session.refresh(task)
    raise ConflictError(f"Task #{task_id} is not waiting for a new confirmation "
                        f"({TaskStatus(task.status).words}).")


def _iso(moment: datetime | None) -> str | None:
    return as_utc(moment).isoformat(timespec="seconds") if moment is not None else None


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
    """A new task mailing fresh passwords to the users whose notification failed in `task_id`:
    `queued`, with their counts as its preview, until the caller's `gate_new_task`, in the
    same transaction, decides what it does next (a retry of many users waits for approval as
    any reset of as many does).

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
        preview=_retry_counts(session, task_id),
        requester=requester,
        requester_name=name,
        scope=Scope.SELECTED_ONLY.value,
        selection=failed,
        mode=Mode.GENERATED.value,
        require_change=original.require_change,
        skip_locked=original.skip_locked,
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


def _retry_counts(session: Session, task_id: int) -> dict[str, Any]:
    """A retry's preview, from the failed users' rows: approvers are shown it, and the gate
    judges it as any new task's."""
    counts = session.execute(
        select(func.count(), func.count(ResetItem.email),
               func.sum(case((ResetItem.is_staff, 1), else_=0)))
        .where(ResetItem.task_id == task_id, ResetItem.state == ItemState.NOTIFY_FAILED)
    ).one()
    users, emailable, staff = int(counts[0]), int(counts[1]), int(counts[2] or 0)
    return {"users": users, "emailable": emailable, "without_email": users - emailable,
            "staff": staff}


def _already_retried(task_id: int, retry_id: int | None) -> ConflictError:
    return ConflictError(f"Reset #{task_id} was already retried as reset #{retry_id}.")


def recent_tasks(session: Session, limit: int = 20) -> list[ResetTask]:
    query = select(ResetTask).order_by(ResetTask.id.desc()).limit(limit)
    return list(session.scalars(query))


def scheduled_first(session: Session, limit: int = 20) -> list[ResetTask]:
    """Every task waiting before its start: scheduled ones (soonest first), then those awaiting
    approval (oldest first), so the ones someone must act on are never pushed off the list;
    then the most recent of the others."""
    waiting = (TaskStatus.SCHEDULED, TaskStatus.AWAITING_APPROVAL)
    scheduled = list(session.scalars(
        select(ResetTask).where(ResetTask.status == TaskStatus.SCHEDULED)
        .order_by(ResetTask.start_at, ResetTask.id)
    ))
    awaiting = list(session.scalars(
        select(ResetTask).where(ResetTask.status == TaskStatus.AWAITING_APPROVAL)
        .order_by(ResetTask.id)
    ))
    others = session.scalars(
        select(ResetTask).where(ResetTask.status.not_in(waiting))
        .order_by(ResetTask.id.desc()).limit(limit)
    )
    return scheduled + awaiting + list(others)
