"""Tasks and the audit trail on the terminal: `resetbot tasks`, `tasks show`, `audit`."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from bot.terminal import OUTCOME_WORDS, Output, Refused
from core import audit
from core.csvsafe import to_csv
from core.models import ItemState, ResetTask
from core.progress import TaskSnapshot, pace_words, snapshot
from core.tasks import items, recent_tasks

AuditRow = tuple[str | None, str, str, int | str, str]


def list_tasks(cli: Output, session: Session) -> None:
    tasks = recent_tasks(session)
    if not tasks:
        cli.say("No tasks yet.")
        return
    cli.say(f"{'ID':>5}  {'STATUS':<22} {'SCOPE':<20} {'MODE':<9} {'USERS':>8}  "
            f"{'CREATED (UTC)':<19}  REQUESTER")
    for task in tasks:
        cli.say(
            f"{task.id:>5}  {task.status:<22} {task.scope:<20} {task.mode:<9} "
            f"{task.total:>8,}  {_when(task.created_at):<19}  {task.requester}"
        )


def show_task(
    cli: Output, session: Session, task_id: int, *, as_csv: bool, as_json: bool
) -> None:
    current = snapshot(session, task_id)
    if current is None:
        raise Refused(f"there is no task #{task_id}")
    if as_csv:
        cli.out.write(follow_up_csv(session, current.id))
    elif as_json:
        cli.say(json.dumps(task_document(session, current), indent=2, ensure_ascii=False))
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


def print_task(cli: Output, session: Session, task: TaskSnapshot) -> None:
    cli.say(f"Task #{task.id}: {task.status.value}")
    cli.say(f"  Scope {task.scope}, mode {task.mode}, must change: "
            f"{'yes' if task.require_change else 'no'}; asked by {task.requester}")
    cli.say(f"  Created {_when(task.created_at)}, started {_when(task.started_at)}, "
            f"finished {_when(task.finished_at)} (UTC)")
    if task.error:
        cli.say(f"  Error: {task.error}")
    pace = pace_words(task.pace)
    cli.say(f"  {task.done:,} of {task.total:,} users done" + (f" · {pace}" if pace else ""))
    for state, count in task.counts.items():
        if count:
            cli.say(f"    {OUTCOME_WORDS[state]:<34} {count:>8,}")
    cli.say("")
    cli.say(f"  {'USERNAME':<24} {'OUTCOME':<34} MAILS  NOTE")
    for item in items(session, task.id):
        note = (item.last_error or "").replace("\n", " ")[:60]
        cli.say(f"  {item.username:<24} {OUTCOME_WORDS[ItemState(item.state)]:<34} "
                f"{item.attempts:>5}  {note}")


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
        cli.out.write(to_csv(("at", "actor", "action", "task_id", "detail"), rows))
        return
    if not rows:
        cli.say("No audit entries.")
    for at, actor, action, task_id, detail in rows:
        task = f"#{task_id}" if task_id != "" else "-"
        cli.say(f"{at:<25} {actor:<24} {action:<14} {task:<6} {detail}")


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat(timespec="seconds")


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S")
