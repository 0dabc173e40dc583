"""Tasks and the audit trail on the terminal: `resetbot tasks`, `tasks show`, `tasks cancel`,
`tasks retry`, `tasks start`, `audit`.

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
from typing import Any

from redis import Redis
from sqlalchemy.orm import Session, sessionmaker

from bot.terminal import (
    EXIT_OK,
    OUTCOME_WORDS,
    Output,
    Refused,
    login_name,
    plural,
    requester,
    shown,
    shown_csv,
)
from core import audit
from core.csvsafe import to_csv
from core.errors import QueueUnavailable
from core.models import ItemState, ResetTask, TaskStatus
from core.progress import TaskSnapshot, pace_words, snapshot
from core.settings import Settings
from core.tasks import (
    confirm_held_start,
    create_retry_task,
    items,
    request_cancel,
    scheduled_first,
)

AuditRow = tuple[str | None, str, str, int | str, str]
#: The control characters of core.controls that json.dumps(ensure_ascii=False) does not escape.
RAW_IN_JSON = re.compile("[\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]+")


def list_tasks(cli: Output, session: Session) -> None:
    """Scheduled tasks first (soonest first), then the last 20 others."""
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
    """A scheduled task's start time (UTC), and whether it waits for a new confirmation."""
    if task.status != TaskStatus.SCHEDULED or task.start_at is None:
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
                f"{shown(task.pause_reason or '')} Nobody else's password changes until the "
                f"mail server answers; next try {_when(task.paused_until)}.")
    pace = pace_words(task.pace)
    cli.say(f"  {task.done:,} of {task.total:,} users done" + (f" · {pace}" if pace else ""))
    for state, count in task.counts.items():
        if count:
            cli.say(f"    {OUTCOME_WORDS[state]:<34} {count:>8,}")
    cli.say("")
    cli.say(f"  {'USERNAME':<24} {'OUTCOME':<34} MAILS  NOTE")
    for item in items(session, task.id):
        note = shown((item.last_error or "").replace("\n", " ")[:60])
        cli.say(f"  {shown(item.username):<24} {OUTCOME_WORDS[ItemState(item.state)]:<34} "
                f"{item.attempts:>5}  {note}")


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
    cli: Output, settings: Settings, sessions: sessionmaker[Session],
    open_redis: Callable[[], AbstractContextManager[Redis]], task_id: int,
) -> None:
    """As the Start now button: a scheduled task held at its start starts with the new count.

    Committed first; its plan is then enqueued (if Redis cannot be reached, a worker's reaper
    wakes the queued task).
    """
    from redis.exceptions import RedisError

    from jobs.queueing import enqueue_task, make_queue

    with sessions() as session:
        task = confirm_held_start(session, task_id, requester())
        session.commit()
        users = task.recheck_users or 0
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
    from bot.reset_flow import exit_code, follow, print_summary, warn_if_no_worker
    from jobs.queueing import enqueue_task, make_queue

    with open_redis() as redis:
        with sessions() as session:
            task = create_retry_task(session, task_id, requester(), login_name())
            session.commit()
            retry_id, users = task.id, len(task.selection)
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
