"""Tasks and the audit trail on the terminal: `resetbot tasks`, `tasks show`, `tasks cancel`,
`tasks retry`, `tasks approve`, `tasks reject`, `tasks start`, `tasks undo`, `audit`.

Cancel and retry do what Slack's buttons do, through the same core functions, with the same
checks and audit entries; the operator (`cli:<login>`, as for `reset`) is the actor. Whoever can
run resetbot with its settings may act, as for `reset`.

Text from the directory or a mail server is shown with its control characters as escapes
(`core.controls.visible`); CSV goes out exactly unless it is going to a terminal.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session, sessionmaker

from blocks.text import done_words, ended_words, waits_for
from bot.terminal import (
    EXIT_OK,
    EXIT_REFUSED,
    OUTCOME_WORDS,
    Output,
    Refused,
    login_name,
    plural,
    requester,
    shown,
    shown_csv,
)
from core import approval, audit, undo
from core.csvsafe import to_csv
from core.directory.protocol import Directory
from core.errors import ConflictError, QueueUnavailable
from core.models import ItemState, ResetTask, TaskStatus, utcnow
from core.progress import TaskSnapshot, pace_words, snapshot
from core.settings import Settings
from core.tasks import (
    confirm_held_start,
    create_retry_task,
    gate_new_task,
    items,
    request_cancel,
    scheduled_first,
)

if TYPE_CHECKING:  # a client is handed in by the commands that need one: the rest load no Redis
    from redis import Redis

AuditRow = tuple[str | None, str, str, int | str, str]
#: The control characters of core.controls that json.dumps(ensure_ascii=False) does not escape.
RAW_IN_JSON = re.compile("[\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]+")


def list_tasks(cli: Output, session: Session) -> None:
    """Scheduled tasks first (soonest first), then those awaiting approval, then the last 20
    others."""
    tasks = scheduled_first(session)
    if not tasks:
        cli.say("No tasks yet.")
        return
    cli.say(f"{'ID':>5}  {'STATUS':<22} {'SCOPE':<20} {'MODE':<9} {'USERS':>8}  "
            f"{'CREATED (UTC)':<19}  REQUESTER")
    for task in tasks:
        cli.say(
            f"{task.id:>5}  {TaskStatus(task.status).words:<22} {task.scope:<20} {task.mode:<9} "
            f"{task.total:>8,}  {_when(task.created_at):<19}  {shown(task.requester)}"
            + _schedule_note(task)
        )


def _schedule_note(task: ResetTask) -> str:
    """A scheduled task's start time (UTC), and whether it waits for a new confirmation (or,
    awaiting approval, the time it would start at if approved by then)."""
    if task.start_at is None:
        return ""
    if task.status == TaskStatus.AWAITING_APPROVAL:
        if task.start_at <= utcnow():  # asked again at its start: its count needs approval
            return f"  was to start {_when(task.start_at)} UTC; starts once approved"
        return f"  starts {_when(task.start_at)} UTC if approved by then"
    if task.status != TaskStatus.SCHEDULED:
        return ""
    held = ", held: count changed (tasks start ID)" if task.start_held_at else ""
    return f"  starts {_when(task.start_at)} UTC{held}"


def show_task(
    cli: Output, session: Session, task_id: int, *, as_csv: bool, as_json: bool
) -> None:
    current = snapshot(session, task_id)
    if current is None:
        raise Refused(f"there is no task #{task_id}")
    if as_csv:
        _write_csv(cli, follow_up_csv(session, current.id))
    elif as_json:
        document = json.dumps(task_document(session, current), indent=2, ensure_ascii=False)
        cli.say(json_escaped(document))
    else:
        print_task(cli, session, current)


def task_document(session: Session, task: TaskSnapshot) -> dict[str, Any]:
    """The task as JSON: status, counts and each user's outcome; never a password."""
    row = session.get(ResetTask, task.id)
    return {
        "id": task.id,
        "status": task.status.value,
        "scope": task.scope,
        "mode": task.mode,
        "require_change": task.require_change,
        "requester": task.requester,
        "selection": list(row.selection) if row is not None else [],
        "created_at": _iso(task.created_at),
        "started_at": _iso(task.started_at),
        "finished_at": _iso(task.finished_at),
        "total": task.total,
        "counts": {state.value: count for state, count in task.counts.items()},
        "follow_up": task.follow_up_count,
        "error": task.error,
        "approval": None if task.approval is None else {
            "expires_at": _iso(task.approval.expires_at),
            "approved_by": task.approval.approved_by,
            "rejected_by": task.approval.rejected_by,
            "decided_at": _iso(task.approval.decided_at),
            "users": task.approval.preview.users if task.approval.preview else None,
        },
        "users": [
            {
                "username": item.username,
                "full_name": item.full_name,
                "email": item.email,
                "staff": item.is_staff,
                "outcome": item.state,
                "attempts": item.attempts,
                "last_error": item.last_error,
            }
            for item in items(session, task.id)
        ],
    }


def follow_up_csv(session: Session, task_id: int) -> str:
    """The users to contact by hand, in the same CSV as the Slack thread's file."""
    from blocks.messages import FollowUp
    from blocks.messages import follow_up_csv as render
    from core.tasks import follow_ups

    return render(
        FollowUp(
            username=item.username, full_name=item.full_name, email=item.email,
            outcome=ItemState(item.state), attempts=item.attempts, last_error=item.last_error,
        )
        for item in follow_ups(session, task_id)
    )


def json_escaped(document: str) -> str:
    """JSON escapes C0 controls but leaves DEL, C1, line separators and bidi controls raw;
    written as \\u escapes they say the same, inertly (outside strings JSON has none)."""
    return RAW_IN_JSON.sub(
        lambda run: "".join(f"\\u{ord(character):04x}" for character in run.group()), document
    )


def _write_csv(cli: Output, content: str) -> None:
    """Exact to a file or a pipe (it may be imported back); made visible on a terminal."""
    cli.out.write(shown_csv(content) if cli.out.isatty() else content)


def print_task(cli: Output, session: Session, task: TaskSnapshot) -> None:
    cli.say(f"Task #{task.id}: {task.status.words}")
    cli.say(f"  Scope {task.scope}, mode {task.mode}, must change: "
            f"{'yes' if task.require_change else 'no'}; asked by {shown(task.requester)}")
    cli.say(f"  Created {_when(task.created_at)}, started {_when(task.started_at)}, "
            f"finished {_when(task.finished_at)} (UTC)")
    _print_approval(cli, task)
    if task.undo_of is not None:
        cli.say(f"  Undo of task #{task.undo_of}: previous passwords put back where unchanged")
    if task.error:
        cli.say(f"  Error: {shown(task.error)}")
    if task.start_at is not None:
        cli.say(f"  Scheduled for {_when(task.start_at)} (UTC); its preview counted "
                f"{_count(task.preview_users)}, the count at its start "
                f"{_count(task.recheck_users)}")
    if task.held:
        cli.say(f"  Held at its start: the count changed by more than 10 %. Start it with the new "
                f"count: resetbot tasks start {task.id}; or: resetbot tasks cancel {task.id}")
    if task.paused:
        cli.say(f"  Paused since {_when(task.paused_since)} (UTC): "
                f"{shown(task.pause_reason or '')} Nobody else's password changes until "
                f"{waits_for(task.pause_reason)} answers; next try {_when(task.paused_until)}.")
    pace = pace_words(task.pace)
    tally = task.tally
    ended = ended_words(tally) if task.status.is_final else ""
    cli.say(f"  {done_words(tally)}{ended}" + (f" · {pace}" if pace else ""))
    for state, count in task.counts.items():
        if count:
            cli.say(f"    {OUTCOME_WORDS[state]:<34} {count:>8,}")
    cli.say("")
    cli.say(f"  {'USERNAME':<24} {'OUTCOME':<34} MAILS  NOTE")
    for item in items(session, task.id):
        note = shown((item.last_error or "").replace("\n", " ")[:60])
        cli.say(f"  {shown(item.username):<24} {OUTCOME_WORDS[ItemState(item.state)]:<34} "
                f"{item.attempts:>5}  {note}")


def _print_approval(cli: Output, task: TaskSnapshot) -> None:
    state = task.approval
    if state is None:
        return
    if task.status is TaskStatus.AWAITING_APPROVAL:
        cli.say(f"  Awaits approval by another admin until {_when(state.expires_at)} (UTC): "
                f"resetbot tasks approve {task.id} --as SLACK_USER_ID")
    if state.preview is not None:
        counts = state.preview
        cli.say(f"  Counted for approval: {counts.users:,} users ({counts.emailable:,} with "
                f"e-mail, {counts.without_email:,} without, {counts.staff:,} staff)"
                + (", counted again when the directory changed" if state.recounted else ""))
    if state.approved_by:
        cli.say(f"  Approved by {shown(state.approved_by)} at {_when(state.decided_at)} (UTC)")
    if state.rejected_by:
        cli.say(f"  Rejected by {shown(state.rejected_by)} at {_when(state.decided_at)} (UTC): "
                "nothing was changed")
    if task.status is TaskStatus.EXPIRED:
        cli.say(f"  Expired unapproved at {_when(state.decided_at)} (UTC): nothing was changed")


def cancel_task(cli: Output, sessions: sessionmaker[Session], task_id: int) -> None:
    """As Slack's Cancel button: pending users are left alone; the jobs end the task."""
    with sessions() as session:
        request_cancel(session, task_id, requester())
        session.commit()
    cli.say(f"Cancelling task #{task_id}: users not yet reset are left alone; those already "
            "reset stay reset and are reported.")
    cli.say(f"See how it ends: resetbot tasks show {task_id}")


def _count(users: int | None) -> str:
    return "-" if users is None else plural(users, "user")


def start_held_task(
    cli: Output, settings: Settings, sessions: sessionmaker[Session], directory: Directory,
    open_redis: Callable[[], AbstractContextManager[Redis]], task_id: int, *,
    as_user: str | None,
) -> None:
    """As the Start now button, with its rule: for whoever asked for it (the operator, or
    --as them), or --as someone who may approve resets. A scheduled task held at its start
    starts with the new count, unless that count needs an approval it does not have: then it
    awaits another admin's approval.

    Committed first; its plan is then enqueued (if Redis cannot be reached, a worker's reaper
    wakes the queued task).
    """
    from redis.exceptions import RedisError

    from jobs.queueing import enqueue_task, make_queue

    actor, typed_by = _requester_or_approver(settings, sessions, as_user, task_id, step="start")
    with sessions() as session:
        try:
            task = confirm_held_start(session, settings, directory, task_id,
                                      approval.acting(actor, typed_by))
            session.commit()
        except ConflictError:
            session.rollback()
            _refuse(sessions, approval.acting(actor, typed_by), task_id, "start", "not held")
            raise
        users = task.recheck_users or 0
        to_approve = task.status == TaskStatus.AWAITING_APPROVAL
    if to_approve:
        _tell_queue(cli, settings, open_redis, task_id, start=False)
        cli.say(f"Task #{task_id} did not start: the {plural(users, 'user')} counted now need "
                "another admin's approval, which it does not have for them.")
        cli.say(f"  It awaits approval: resetbot tasks approve {task_id} --as "
                "THEIR_SLACK_USER_ID (not whoever asked for it).")
        return
    cli.say(f"Task #{task_id} starts now: {plural(users, 'user')}, the count taken at its start.")
    try:
        with open_redis() as redis:
            enqueue_task(make_queue(settings, redis), task_id)
    except (RedisError, QueueUnavailable):
        cli.say("Note: the job queue could not be reached; a worker starts it when it sees it.")
    cli.say(f"Follow it with: resetbot tasks show {task_id}")


def retry_task(
    cli: Output, settings: Settings, sessions: sessionmaker[Session],
    open_redis: Callable[[], AbstractContextManager[Redis]], task_id: int, *, detach: bool,
) -> int:
    """As Slack's Retry button: a new task e-mails fresh passwords to the users whose mail failed.

    Redis is reached first, so an unreachable queue leaves no task behind.
    """
    from bot.reset_flow import (
        exit_code,
        follow,
        print_summary,
        say_awaiting_approval,
        warn_if_no_worker,
    )
    from jobs.queueing import enqueue_task, make_queue
    from jobs.slack_reporter import announce

    with open_redis() as redis:
        with sessions() as session:
            task = create_retry_task(session, task_id, requester(), login_name())
            status = gate_new_task(session, settings, task)
            session.commit()
            retry_id, users = task.id, len(task.selection)
        if status is TaskStatus.AWAITING_APPROVAL:
            if settings.slack_bot_token:
                announce(make_queue(settings, redis), retry_id)
            say_awaiting_approval(cli, settings, retry_id)
            return EXIT_OK
        enqueue_task(make_queue(settings, redis), retry_id)
        cli.say(f"Task #{retry_id} queued: new passwords by e-mail for the "
                f"{plural(users, 'user')} whose mail failed in task #{task_id}.")
        if detach:
            cli.say(f"Follow it with: resetbot tasks show {retry_id}")
            return EXIT_OK
        warn_if_no_worker(cli, settings, redis)
    final = follow(cli, sessions, retry_id)
    print_summary(cli, final)
    return exit_code(final)


def undo_task(
    cli: Output, settings: Settings, sessions: sessionmaker[Session], directory: Directory,
    open_redis: Callable[[], AbstractContextManager[Redis]], task_id: int, *, yes: bool,
    detach: bool,
) -> int:
    """As Slack's Undo button: the counts first, a typed yes (or --yes), then an Undo task
    puts back each user's previous password where they have not changed it since."""
    from bot.reset_flow import confirm, exit_code, follow, print_summary, say_awaiting_approval
    from jobs.queueing import enqueue_task, make_queue
    from jobs.slack_reporter import announce

    actor = requester()
    with sessions() as session:
        reason = undo.refusal(session, settings, directory, task_id)
        found = undo.counts(session, settings, directory, task_id) if reason is None else None
    if reason is not None or found is None:
        _refuse(sessions, actor, task_id, "undo", reason or "")
        raise Refused(f"{reason} Nothing was changed.")
    _say_undo_counts(cli, found)
    if found.unchanged == 0:
        raise Refused("Nobody to put back. Nothing was changed.")
    if not yes and not confirm(cli, f"Undo task #{task_id}?"):
        return EXIT_REFUSED
    with open_redis() as redis:
        with sessions() as session:
            task, _ = undo.create_undo_task(session, settings, directory, task_id, actor,
                                            login_name())
            session.commit()
            undo_id, status = task.id, TaskStatus(task.status)
        if status is TaskStatus.AWAITING_APPROVAL:
            if settings.slack_bot_token:
                announce(make_queue(settings, redis), undo_id)
            say_awaiting_approval(cli, settings, undo_id)
            return EXIT_OK
        enqueue_task(make_queue(settings, redis), undo_id)
    cli.say(f"Task #{undo_id} queued: it undoes task #{task_id}.")
    if detach:
        cli.say(f"Follow it with: resetbot tasks show {undo_id}")
        return EXIT_OK
    final = follow(cli, sessions, undo_id)
    print_summary(cli, final)
    return exit_code(final)


def _say_undo_counts(cli: Output, found: undo.UndoCounts) -> None:
    cli.say(f"Undo task #{found.task_id} (possible until {_when(found.until)} UTC):")
    cli.say(f"  {plural(found.unchanged, 'user')} still have the password it set: each gets "
            "their previous password back (and their must-change, expiry and lock as before)")
    cli.say(f"    of them {found.mailed:,} were e-mailed, and are told to ignore that mail")
    cli.say(f"  {plural(found.changed, 'user')} changed their password since: left alone")


def audit_rows(session: Session, since: datetime | None) -> list[AuditRow]:
    """The audit trail as plain values, read while the session is open."""
    return [
        (_iso(entry.at), entry.actor, entry.action,
         "" if entry.task_id is None else entry.task_id,
         json.dumps(entry.detail, sort_keys=True, ensure_ascii=False))
        for entry in audit.entries(session, since=since)
    ]


def print_audit(cli: Output, rows: list[AuditRow], *, as_csv: bool) -> None:
    if as_csv:
        _write_csv(cli, to_csv(("at", "actor", "action", "task_id", "detail"), rows))
        return
    if not rows:
        cli.say("No audit entries.")
    for at, actor, action, task_id, detail in rows:
        task = f"#{task_id}" if task_id != "" else "-"
        cli.say(f"{at:<25} {shown(actor):<24} {action:<14} {task:<6} {shown(detail)}")


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat(timespec="seconds")


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S")


# -- four-eyes approval -------------------------------------------------------------------------

#: Why the terminal alone cannot approve: it cannot tell who is typing.
NEEDS_AS = (
    "approving needs --as SLACK_USER_ID: the Slack user id of an admin (and approver) other "
    "than whoever asked for the reset; the terminal alone cannot tell who you are "
    "(nothing was changed)"
)


def approve_task(
    cli: Output, settings: Settings, sessions: sessionmaker[Session], directory: Directory,
    open_redis: Callable[[], AbstractContextManager[Redis]], task_id: int, *,
    as_user: str | None,
) -> int:
    """As Slack's Approve button, for the admin named by --as (never the requester, whoever
    types it); the audit trail names the operator acting as them."""
    actor = _approver(settings, sessions, as_user, task_id, step="approve")
    typed_by = requester()
    with sessions() as session:
        try:
            outcome = approval.approve(session, directory, task_id, actor, typed_by=typed_by)
            session.commit()
        except approval.SelfApproval:
            session.rollback()
            _refuse(sessions, approval.acting(actor, typed_by), task_id, "approve", "own task")
            raise Refused(f"{_asker(sessions, task_id)} asked for task #{task_id}: another "
                          "admin must approve it (nothing was changed)") from None
        except approval.Refusal as refused:
            session.rollback()
            _refuse(sessions, approval.acting(actor, typed_by), task_id, "approve",
                    refused.reason)
            raise
    if isinstance(outcome, approval.Recounted):
        _say_recount(cli, outcome)
        return EXIT_REFUSED
    _tell_queue(cli, settings, open_redis, task_id, start=outcome.status is TaskStatus.QUEUED)
    cli.say(f"Task #{task_id} approved by {actor}: {outcome.status.words}"
            + _starts(sessions, task_id, outcome.status) + ".")
    cli.say(f"Follow it with: resetbot tasks show {task_id}")
    return EXIT_OK


def reject_task(
    cli: Output, settings: Settings, sessions: sessionmaker[Session],
    open_redis: Callable[[], AbstractContextManager[Redis]], task_id: int, *,
    as_user: str | None,
) -> int:
    """As Slack's Reject button: an approver (--as), or the requester withdrawing their own;
    the audit trail names the operator (acting as --as)."""
    actor, typed_by = _requester_or_approver(settings, sessions, as_user, task_id,
                                             step="reject")
    with sessions() as session:
        try:
            approval.reject(session, task_id, actor, typed_by=typed_by)
            session.commit()
        except approval.Refusal as refused:
            session.rollback()
            _refuse(sessions, approval.acting(actor, typed_by), task_id, "reject",
                    refused.reason)
            raise
    _tell_queue(cli, settings, open_redis, task_id, start=False)
    cli.say(f"Task #{task_id} rejected by {actor}: nothing was changed.")
    return EXIT_OK


def _asker(sessions: sessionmaker[Session], task_id: int) -> str:
    with sessions() as session:
        return shown(approval.requester_of(session, task_id) or "someone")


def _requester_or_approver(
    settings: Settings, sessions: sessionmaker[Session], as_user: str | None, task_id: int, *,
    step: str,
) -> tuple[str, str | None]:
    """Who acts on task `task_id` (reject, start), as Slack's rule for Reject and Start now:
    whoever asked for it (the operator, or --as them), or --as someone who may approve resets;
    refused (and audited) otherwise. (actor, the operator typing for them or None)."""
    with sessions() as session:
        requester_id = approval.requester_of(session, task_id)
    if requester_id is None:
        raise Refused(f"there is no task #{task_id}")
    if as_user is None and requester() == requester_id:
        return requester_id, None
    if as_user == requester_id:
        return as_user, requester()
    return _approver(settings, sessions, as_user, task_id, step=step), requester()


def _approver(settings: Settings, sessions: sessionmaker[Session], as_user: str | None,
              task_id: int, *, step: str) -> str:
    """The Slack user id given by --as, if they may approve; refused (and audited) otherwise."""
    from slack_sdk import WebClient

    from bot.auth import Admins, Approvers

    if as_user is None:
        _refuse(sessions, requester(), task_id, step, "no --as")
        if step == "approve":
            raise Refused(NEEDS_AS)
        raise Refused(f"{step}ing task #{task_id}, which you did not ask for, "
                      "needs --as SLACK_USER_ID: an admin allowed to approve resets (or whoever "
                      "asked for it); the terminal alone cannot tell who you are (nothing was "
                      "changed)")
    # Only a RESET_ADMIN_GROUP or RESET_APPROVER_GROUP makes this ask Slack.
    client = WebClient(token=settings.slack_bot_token, base_url=settings.slack_api_url)
    refusal = Approvers(settings, client, Admins(settings, client)).refusal(as_user)
    if refusal is not None:
        _refuse(sessions, f"{requester()} as {as_user}", task_id, step, refusal.reason)
        raise Refused(f"{as_user} may not {step} resets ({refusal.reason}); nothing was changed")
    return as_user


def _refuse(sessions: sessionmaker[Session], actor: str, task_id: int, step: str,
            reason: str) -> None:
    with sessions() as session:
        audit.record(session, actor[:64], "refused", task_id, step=step, reason=reason)
        session.commit()


def _starts(sessions: sessionmaker[Session], task_id: int, status: TaskStatus) -> str:
    """", starts 2027-01-09 06:00:00 UTC" for an approved task that waits for its time."""
    if status is not TaskStatus.SCHEDULED:
        return ""
    with sessions() as session:
        task = session.get(ResetTask, task_id)
        start_at = task.start_at if task is not None else None
    return f", starts {_when(start_at)} UTC" if start_at is not None else ""


def _say_recount(cli: Output, outcome: approval.Recounted) -> None:
    before = outcome.before.users if outcome.before is not None else None
    now = outcome.now
    was = f"{before:,} when it was asked for" if before is not None else "not counted before"
    cli.say(f"The directory changed: task #{outcome.task_id} would now reset "
            f"{plural(now.users, 'user')} ({was}).")
    cli.say(f"  With e-mail {now.emailable:,}, without e-mail {now.without_email:,}, staff "
            f"{now.staff:,}.")
    cli.say("Not approved yet: run the same command again to approve these counts.")


def _tell_queue(cli: Output, settings: Settings,
                open_redis: Callable[[], AbstractContextManager[Redis]], task_id: int, *,
                start: bool) -> None:
    """Enqueue an approved task that starts now, and have its Slack thread updated (when
    there is Slack): a scheduled one's parent then says when it starts.

    The decision is committed already: if Redis cannot be reached, a worker's reaper starts
    the task (a scheduled one at its time) and tells the thread when it sees them.
    """
    from redis.exceptions import RedisError

    from jobs.queueing import enqueue_task, make_queue
    from jobs.slack_reporter import announce

    try:
        with open_redis() as redis:
            queue = make_queue(settings, redis)
            if settings.slack_bot_token:
                announce(queue, task_id)
            if start:
                enqueue_task(queue, task_id)
    except (RedisError, QueueUnavailable) as error:
        cli.say(f"Note: Redis cannot be reached ({type(error).__name__}); a worker picks "
                f"task #{task_id} up when it sees it.")
