"""An Undo task's work (core/undo.py): its items, then each batch's previous values put back.

An Undo task is a task like any other: planned into items and chunks by `jobs.planning`
(`undo_users` stands for the directory's scope), its chunks claimed under leases by
`jobs.claims`, ended by `jobs.finishing`. Only the work on a claimed batch differs
(`work_undo_items`): the users' sealed snapshots are opened, the directory puts back the
previous values of those whose hash is still the one the task wrote (one transaction, rows
locked, a conditional UPDATE), then those the task had e-mailed are told to ignore that mail.

A re-done batch (its worker died) finds the users it already put back holding their previous
hash: they count as restored, and nobody is changed twice. An item's e-mail is the address to
tell (the original task mailed them) or None.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session, aliased

from core.directory.protocol import User
from core.directory.sql import sql_id
from core.models import ItemState, ResetItem, ResetTask, TaskStatus, UndoSnapshot, utcnow
from core.undo import Kept, kept_batch, opened, table_of
from jobs.batches import Claimed, Conditions, ItemOutcome
from jobs.claims import claim_items, record_outcomes, renew
from jobs.context import WorkerContext
from jobs.finishing import finish_if_done
from jobs.mailer import Mailer, MailSetupError, PasswordMail
from jobs.progress import report_progress


def undo_of(context: WorkerContext, task_id: int) -> int | None:
    """The task that task `task_id` undoes, or None for any other task."""
    with context.sessions() as session:
        return session.scalar(select(ResetTask.undo_of).where(ResetTask.id == task_id))


def undo_users(
    session: Session, original: int, after: str | None, limit: int
) -> list[User]:
    """The next `limit` users whose values task `original` kept, by id after `after`, as the
    planner writes them into items: who they were then, and the address to tell (only if the
    task e-mailed them)."""
    item = aliased(ResetItem)
    rows = session.execute(
        select(UndoSnapshot.user_id, item.username, item.full_name, item.email, item.state)
        .join(item, (item.task_id == UndoSnapshot.task_id) & (item.user_id == UndoSnapshot.user_id))
        .where(UndoSnapshot.task_id == original, UndoSnapshot.user_id > (after or ""))
        .order_by(UndoSnapshot.user_id).limit(limit)
    ).all()
    return [
        User(str(user_id), username, full_name or "",
             email if state == ItemState.NOTIFIED else None, None)
        for user_id, username, full_name, email, state in rows
    ]


def work_undo_items(context: WorkerContext, task_id: int, conditions: Conditions) -> None:
    """Claim batch after batch of the Undo task's items, put them back, tell them; then maybe
    end the task."""
    with context.sessions() as session:
        task = session.get(ResetTask, task_id)
        if task is None or task.status != TaskStatus.RUNNING or task.undo_of is None:
            return
        original = task.undo_of
    with Mailer(context.settings, context.smtp_factory, context.templates) as mailer:
        while True:
            claimed = claim_items(context, task_id, conditions)
            if not claimed:
                break
            _undo_batch(context, original, claimed, mailer)
            report_progress(context, task_id)
    finish_if_done(context, task_id)


def _undo_batch(
    context: WorkerContext, original: int, claimed: list[Claimed], mailer: Mailer
) -> None:
    with context.sessions() as session:
        rows = kept_batch(session, original, "", len(claimed),
                          only=[item.user_id for item in claimed])
        held = renew(context, session, [item.id for item in claimed])
        session.commit()
    kept = {entry.user_id: entry for entry in opened(context.settings, rows)}
    mine = [item for item in claimed if item.id in held]
    restored, already = _put_back(context, [kept[i.user_id] for i in mine if i.user_id in kept])
    outcomes: list[ItemOutcome] = []
    for item in mine:
        if item.user_id in restored or item.user_id in already:
            error = _tell(mailer, item) if item.email else None
            outcomes.append(ItemOutcome(item.id, ItemState.RESTORED, item.attempts + 1,
                                        error=error))
        else:
            outcomes.append(ItemOutcome(item.id, ItemState.CHANGED_SINCE, item.attempts))
    with context.sessions() as session:
        record_outcomes(context, session, outcomes, utcnow())
        session.commit()


def _put_back(context: WorkerContext, kept: list[Kept]) -> tuple[set[str], set[str]]:
    """Who got their previous values back, and who already had them (a re-done batch), by
    text id. Only a SQL table keeps snapshots (core/undo.py), so only one is asked."""
    table = table_of(context.directory)
    numbered = {number: entry for entry in kept if (number := sql_id(entry.user_id)) is not None}
    if table is None or not numbered:
        return set(), set()
    restored, already = table.put_back(
        {number: entry.written for number, entry in numbered.items()},
        {number: entry.previous for number, entry in numbered.items()},
    )
    return {str(number) for number in restored}, {str(number) for number in already}


def _tell(mailer: Mailer, item: Claimed) -> str | None:
    """Mail "ignore the earlier mail"; the reason it could not be sent, if so. The password
    is back whatever happens to the mail: a mail server that refuses resetbot (wrong
    credentials) is recorded on the user, not retried for ever."""
    try:
        delivery = mailer.send(PasswordMail(
            full_name=item.full_name, address=item.email or "", username=item.username,
            password="", require_change=False, kind="undone",
        ))
    except MailSetupError as error:
        return f"The mail could not be sent: {error}"
    return delivery.reason
