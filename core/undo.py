"""Undo: put back what a task replaced, for the users who have not changed their password since.

While a task writes a batch of hashes, `keeper` reads, in the directory's same transaction, the
columns the write replaces (the password hash, and the must-change, expiry and lock columns the
profile writes) and keeps them, with the hash written, sealed with RESET_SECRET_KEY in
resetbot's own database (`undo_snapshots`; never in Redis, never in a log). For
RESET_UNDO_WINDOW after the task ends, an admin may undo it (`create_undo_task`): an Undo task
of its own (jobs/undo.py) puts the old values back for every user whose hash is still the one
the task wrote, and leaves anyone who changed it alone, counted. The reaper erases the sealed
values when the window closes, or once the Undo has ended (`erase_expired`).

A directory whose password column resetbot may not read (a least-privilege Koha account) cannot
give the old value back: nothing is kept and Undo is not offered (`undo_unavailable`). Nor can
an LDAP directory (OpenLDAP, Active Directory): it sets passwords itself and never hands their
old values back, so Undo is not offered there either.

Snapshots and items name users by their text id (as every task does); the table directory is
asked in its own integer keys.
"""

from __future__ import annotations

import functools
import json
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, cast

from sqlalchemy import (
    Connection,
    Engine,
    Table,
    and_,
    bindparam,
    delete,
    exists,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, aliased, sessionmaker

from core import audit
from core.db import MYSQL_BACKENDS
from core.directory import Directory
from core.directory.protocol import Directory as AnyDirectory
from core.directory.sql import SqlDirectory, sql_id, sql_ids
from core.directory.sql.table import BeforeWrite
from core.errors import ConflictError
from core.models import ItemState, Mode, ResetItem, ResetTask, TaskStatus, UndoSnapshot, utcnow
from core.sealing import seal, unseal
from core.settings import Settings
from core.tasks import gate_new_task

#: Users read, compared and put back per round trip.
UNDO_BATCH = 500
FINAL_STATUSES = [status.value for status in TaskStatus if status.is_final]
snapshots_table = cast(Table, UndoSnapshot.__table__)

# Whether each directory lets resetbot read its password column back: probed once per process
# and directory (a SELECT of no rows), not once per batch.
_readable: weakref.WeakKeyDictionary[Directory, bool] = weakref.WeakKeyDictionary()


def table_of(directory: AnyDirectory | Directory) -> Directory | None:
    """The SQL table behind `directory`; None for a directory that is not a table (LDAP)."""
    if isinstance(directory, SqlDirectory):
        return directory.sql
    return directory if isinstance(directory, Directory) else None


def undo_unavailable(directory: AnyDirectory | Directory) -> str | None:
    """Why this directory cannot give a user's previous password back; None when it can."""
    table = table_of(directory)
    if table is None:
        return ("Undo is not possible with this directory: an LDAP directory sets passwords "
                "itself and never gives resetbot their previous values")
    directory = table
    if directory.profile.owned:
        return None
    if directory not in _readable:
        from core.directory.capabilities import feature_available, undo

        _readable[directory] = feature_available(directory, undo)
    if _readable[directory]:
        return None
    columns = ", ".join(directory.written_columns)
    return (f"Undo is not possible with this directory: resetbot may not read "
            f"{directory.profile.table}'s {columns}, so it cannot keep what a reset replaces "
            f"(GRANT SELECT ({columns}) ON {directory.profile.table})")


def preview_note(settings: Settings, directory: AnyDirectory | Directory) -> str | None:
    """What a reset's preview says when Undo is on but this directory cannot give a user's
    previous password back (so the reset could not be undone); None otherwise."""
    if settings.reset_undo_window <= 0:
        return None
    reason = undo_unavailable(directory)
    return None if reason is None else f"This reset cannot be undone. {reason}."


# ---- keeping: in the worker's write path -----------------------------------------------------


def keeper(
    settings: Settings, any_directory: AnyDirectory | Directory, state_engine: Engine,
    sessions: sessionmaker[Session], task_id: int,
) -> BeforeWrite | None:
    """What to run in the directory's transaction before task `task_id` writes hashes (None:
    Undo is off, or this directory cannot give old values back). `state_engine` and
    `sessions` are resetbot's own database."""
    directory = table_of(any_directory)
    if (settings.reset_undo_window <= 0 or directory is None
            or undo_unavailable(directory) is not None):
        return None

    def keep(connection: Connection, hashes: Sequence[tuple[int, str]]) -> None:
        previous = directory.written_values(connection, [user_id for user_id, _ in hashes])
        if directory.engine is state_engine:
            # The users live beside resetbot's state: one transaction keeps both (on SQLite a
            # second connection could not write while this one reads).
            _store(connection, settings.reset_secret_key, task_id, previous, hashes)
            return
        # Committed before the hashes are: a crash in between leaves a snapshot whose hash
        # was never written, which Undo reads as "changed since" and leaves alone.
        with sessions() as session:
            _store(session.connection(), settings.reset_secret_key, task_id, previous, hashes)
            session.commit()

    return keep


def _store(
    connection: Connection, key: str, task_id: int, previous: dict[int, dict[str, Any]],
    hashes: Sequence[tuple[int, str]],
) -> None:
    """One row per user: the values before the task (the first ones kept, as a re-done or
    retried write replaces the task's own hash) and the hash written last; one statement (an
    upsert: a user kept already gets only the hash written last). The table's integer ids are
    kept as their text, as the task's items name them."""
    before = {str(user_id): values for user_id, values in previous.items()}
    written = {str(user_id): new_hash for user_id, new_hash in hashes if user_id in previous}
    if not written:
        return
    now = utcnow()
    users = list(written)
    previous_sealed = [seal(key, _encoded(before[user_id])) for user_id in users]
    written_sealed = [seal(key, written[user_id]) for user_id in users]
    if connection.dialect.name == "postgresql":
        # The whole batch as three arrays: one statement of the same text every batch (planned
        # once, one execution) however many users it holds.
        connection.execute(_kept_once_unnested(), {
            "task_id": task_id, "created_at": now, "users": users,
            "previous": previous_sealed, "written": written_sealed,
        })
        return
    # An executemany: PyMySQL sends it as one multi-row INSERT; SQLite runs it in process.
    connection.execute(_kept_once(connection.dialect.name), [
        {"task_id": task_id, "user_id": user_id, "created_at": now,
         "previous_sealed": previous, "written_sealed": written_hash}
        for user_id, previous, written_hash in zip(users, previous_sealed, written_sealed,
                                                   strict=True)
    ])


def _kept_once(dialect: str) -> Any:
    """INSERT a snapshot; on a user kept already, only its written hash is replaced."""
    if dialect in MYSQL_BACKENDS:
        from sqlalchemy.dialects.mysql import insert as mysql_insert  # loaded only on MySQL

        statement: Any = mysql_insert(snapshots_table)
        return statement.on_duplicate_key_update(written_sealed=statement.inserted.written_sealed)
    upsert = sqlite_insert if dialect == "sqlite" else postgresql_insert
    statement = upsert(snapshots_table)
    return statement.on_conflict_do_update(
        index_elements=[snapshots_table.c.task_id, snapshots_table.c.user_id],
        set_={"written_sealed": statement.excluded.written_sealed},
    )


@functools.cache
def _kept_once_unnested() -> Any:
    """PostgreSQL: `_kept_once` for a whole batch, its users and sealed values as arrays."""
    c = snapshots_table.c
    rows = select(
        bindparam("task_id", type_=c.task_id.type),
        func.unnest(bindparam("users", type_=postgresql.ARRAY(c.user_id.type))),
        bindparam("created_at", type_=c.created_at.type),
        func.unnest(bindparam("previous", type_=postgresql.ARRAY(c.previous_sealed.type))),
        func.unnest(bindparam("written", type_=postgresql.ARRAY(c.written_sealed.type))),
    )
    statement = postgresql_insert(snapshots_table).from_select(
        ["task_id", "user_id", "created_at", "previous_sealed", "written_sealed"], rows)
    return statement.on_conflict_do_update(
        index_elements=[c.task_id, c.user_id],
        set_={"written_sealed": statement.excluded.written_sealed},
    )


def _encoded(values: dict[str, Any]) -> str:
    return json.dumps({name: _plain(value) for name, value in values.items()})


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, datetime):
        return {"datetime": value.isoformat()}
    if isinstance(value, date):
        return {"date": value.isoformat()}
    if isinstance(value, Decimal):
        return {"decimal": str(value)}
    raise TypeError(f"a {type(value).__name__} column cannot be kept for Undo")


def decoded(text: str) -> dict[str, Any]:
    """The column values `_encoded` kept, with their Python types back."""
    return {name: _typed(value) for name, value in json.loads(text).items()}


def _typed(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    if "datetime" in value:
        return datetime.fromisoformat(value["datetime"])
    if "date" in value:
        return date.fromisoformat(value["date"])
    return Decimal(value["decimal"])


# ---- reading back ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Kept:
    """One user's snapshot, opened (in memory only, for one batch). Its hashes stay out of its
    repr, so no log line or traceback that shows one carries them."""

    user_id: str
    previous: dict[str, Any] = field(repr=False)
    written: str = field(repr=False)


def opened(settings: Settings, rows: Sequence[tuple[str, str, str]]) -> list[Kept]:
    key, old = settings.reset_secret_key, settings.reset_secret_key_old
    return [Kept(str(user_id), decoded(unseal(key, previous, old)), unseal(key, written, old))
            for user_id, previous, written in rows]


def kept_batch(
    session: Session, task_id: int, after: str, limit: int, only: Sequence[str] | None = None
) -> list[tuple[str, str, str]]:
    """The next `limit` snapshots of task `task_id` by user id after `after` (still sealed)."""
    query = (
        select(UndoSnapshot.user_id, UndoSnapshot.previous_sealed, UndoSnapshot.written_sealed)
        .where(UndoSnapshot.task_id == task_id, UndoSnapshot.user_id > after)
        .order_by(UndoSnapshot.user_id).limit(limit)
    )
    if only is not None:
        query = query.where(UndoSnapshot.user_id.in_(list(only)))
    return [(str(row[0]), str(row[1]), str(row[2])) for row in session.execute(query)]


def _all_kept(session: Session, settings: Settings, task_id: int) -> Iterator[list[Kept]]:
    after = ""
    while True:
        rows = kept_batch(session, task_id, after, UNDO_BATCH)
        if not rows:
            return
        yield opened(settings, rows)
        after = rows[-1][0]


# ---- offering, counting and asking for an Undo ------------------------------------------------


@dataclass(frozen=True)
class UndoCounts:
    """What an Undo of a task would do now, counted before anything changes."""

    task_id: int
    #: Users whose previous values were kept.
    users: int
    #: Of them, still holding the task's password: these get their previous one back.
    unchanged: int
    #: Of the unchanged, those the task e-mailed: they are told to ignore that mail.
    mailed: int
    #: When the window to undo closes.
    until: datetime

    @property
    def changed(self) -> int:
        """Changed their password since the task: left alone."""
        return self.users - self.unchanged


def window_end(settings: Settings, task: ResetTask) -> datetime | None:
    """Until when task `task` may be undone, or None when it may not (never, or no more)."""
    if settings.reset_undo_window <= 0 or task.undo_of is not None or task.undone_by is not None:
        return None
    if not TaskStatus(task.status).is_final or task.finished_at is None:
        return None
    return task.finished_at + timedelta(seconds=settings.reset_undo_window)


def offered(settings: Settings, task: ResetTask, now: datetime | None = None) -> bool:
    """Whether task `task`'s thread shows Undo (its window is open, it changed passwords)."""
    until = window_end(settings, task)
    return until is not None and until > (now or utcnow()) and _changed_any(task)


def undo_offered_until(
    session: Session, settings: Settings, directory: AnyDirectory | Directory, task: ResetTask,
    now: datetime | None = None,
) -> datetime | None:
    """Until when task `task`'s thread shows Undo: its window is open, the directory can give
    old values back and some were kept; None when it shows none."""
    if not offered(settings, task, now) or undo_unavailable(directory) is not None:
        return None
    return window_end(settings, task) if _has_snapshots(session, task.id) else None


def _changed_any(task: ResetTask) -> bool:
    return task.status in (TaskStatus.COMPLETED, TaskStatus.COMPLETED_WITH_ERRORS,
                           TaskStatus.CANCELLED, TaskStatus.FAILED)


def refusal(
    session: Session, settings: Settings, directory: AnyDirectory | Directory, task_id: int,
    now: datetime | None = None,
) -> str | None:
    """Why task `task_id` cannot be undone now; None when it can."""
    task = session.get(ResetTask, task_id)
    if task is None:
        return f"There is no task #{task_id}."
    if settings.reset_undo_window <= 0:
        return "Undo is off (RESET_UNDO_WINDOW is 0)."
    reason = undo_unavailable(directory)
    if reason is not None:
        return reason
    if task.undo_of is not None:
        return f"Task #{task_id} is itself an Undo: it cannot be undone."
    if task.undone_by is not None:
        return f"Task #{task_id} was already undone by task #{task.undone_by}."
    if not TaskStatus(task.status).is_final:
        return f"Task #{task_id} is still running: Undo once it has ended (or cancel it first)."
    until = window_end(settings, task)
    if until is None or until <= (now or utcnow()):
        return (f"Task #{task_id} can no longer be undone: the window of "
                f"{_duration(settings.reset_undo_window)} after it ended has closed.")
    if not _has_snapshots(session, task_id):
        return f"Task #{task_id} changed no password that could be put back."
    return None


def counts(
    session: Session, settings: Settings, any_directory: AnyDirectory | Directory, task_id: int
) -> UndoCounts:
    """What an Undo would do now: each kept user's current hash compared with the task's."""
    task = session.get(ResetTask, task_id)
    directory = table_of(any_directory)
    assert task is not None and task.finished_at is not None and directory is not None
    users = unchanged = 0
    unchanged_ids: list[str] = []
    password = directory.profile.password
    for batch in _all_kept(session, settings, task_id):
        with directory.engine.connect() as connection:
            now = directory.written_values(
                connection, sql_ids([kept.user_id for kept in batch]), lock=False)
        users += len(batch)
        for kept in batch:
            number = sql_id(kept.user_id)
            if number in now and now[number][password] == kept.written:
                unchanged += 1
                unchanged_ids.append(kept.user_id)
    mailed = _mailed_among(session, task_id, unchanged_ids)
    return UndoCounts(task_id, users, unchanged, mailed,
                      task.finished_at + timedelta(seconds=settings.reset_undo_window))


def _mailed_among(session: Session, task_id: int, user_ids: list[str]) -> int:
    total = 0
    for start in range(0, len(user_ids), UNDO_BATCH):
        total += int(session.scalar(
            select(func.count()).select_from(ResetItem)
            .where(ResetItem.task_id == task_id, ResetItem.state == ItemState.NOTIFIED,
                   ResetItem.user_id.in_(user_ids[start:start + UNDO_BATCH]))
        ) or 0)
    return total


def _has_snapshots(session: Session, task_id: int) -> bool:
    return session.scalar(
        select(UndoSnapshot.id).where(UndoSnapshot.task_id == task_id).limit(1)
    ) is not None


def create_undo_task(
    session: Session, settings: Settings, directory: AnyDirectory | Directory, task_id: int,
    actor: str, name: str = "",
) -> tuple[ResetTask, UndoCounts]:
    """The Undo task of task `task_id` and the counts it was made with; audited. Through the
    gate every new task passes (`core.tasks.gate_new_task`, the approval rule): `queued` (the
    caller commits, then enqueues its plan) or `awaiting_approval` (the caller commits and
    announces it; an approval enqueues it). Once per task, whichever edge asks: a second Undo
    is refused, naming the first (a conditional UPDATE decides between two at once).
    """
    reason = refusal(session, settings, directory, task_id)
    if reason is not None:
        raise ConflictError(reason)
    found = counts(session, settings, directory, task_id)
    if found.unchanged == 0:
        raise ConflictError(f"Nothing to undo: all {found.users} users of task #{task_id} have "
                            "changed their password since.")
    original = session.get(ResetTask, task_id)
    assert original is not None
    task = ResetTask(
        requester=actor, requester_name=name, scope=original.scope,
        selection=list(original.selection or ()), mode=Mode.UNDO.value, require_change=False,
        slack_channel=original.slack_channel, undo_of=task_id, status=TaskStatus.QUEUED,
        preview={"users": found.users, "emailable": found.mailed,
                 "without_email": found.users - found.mailed, "staff": 0,
                 "unchanged": found.unchanged, "changed": found.changed},
    )
    session.add(task)
    session.flush()
    claimed = session.execute(
        update(ResetTask)
        .where(ResetTask.id == task_id, ResetTask.undone_by.is_(None))
        .values(undone_by=task.id)
        .execution_options(synchronize_session=False)
    )
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        winner = session.scalar(select(ResetTask.undone_by).where(ResetTask.id == task_id))
        raise ConflictError(f"Task #{task_id} was already undone by task #{winner}.")
    audit.record(session, actor, "undo", task.id, undo_of=task_id, users=found.users,
                 unchanged=found.unchanged, changed=found.changed)
    gate_new_task(session, settings, task)
    return task, found


def release_undone(session: Session, undo_ids: Sequence[int]) -> None:
    """Undo tasks that never ran (rejected, expired) no longer hold the tasks they would have
    undone: Undo may be asked again while the window is open, and the reaper erases the kept
    values when it closes. The caller commits."""
    if undo_ids:
        session.execute(
            update(ResetTask).where(ResetTask.undone_by.in_(list(undo_ids)))
            .values(undone_by=None).execution_options(synchronize_session=False)
        )


# ---- erasing ---------------------------------------------------------------------------------


def erase_expired(
    session: Session, settings: Settings, now: datetime | None = None
) -> tuple[int, list[int]]:
    """Erase the sealed values of every task whose Undo window has closed (unless its Undo still
    runs) or whose Undo has ended; (how many users' values were erased, the tasks whose values
    they were: their threads no longer offer Undo). The caller commits."""
    cutoff = (now or utcnow()) - timedelta(seconds=settings.reset_undo_window)
    undo = aliased(ResetTask)
    undo_ended = exists(
        select(undo.id).where(undo.id == ResetTask.undone_by, undo.status.in_(FINAL_STATUSES))
    )
    done = select(ResetTask.id).where(
        ResetTask.status.in_(FINAL_STATUSES),
        or_(and_(ResetTask.finished_at < cutoff, ResetTask.undone_by.is_(None)), undo_ended),
    )
    ids = list(session.scalars(
        select(UndoSnapshot.task_id).where(UndoSnapshot.task_id.in_(done)).distinct()
    ))
    if not ids:
        return 0, []
    result = session.execute(
        delete(UndoSnapshot).where(UndoSnapshot.task_id.in_(ids))
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount), [int(task_id) for task_id in ids]  # type: ignore[attr-defined]


def _duration(seconds: int) -> str:
    if seconds % 3600 == 0:
        hours = seconds // 3600
        return f"{hours} hour" + ("s" if hours != 1 else "")
    minutes = max(1, seconds // 60)
    return f"{minutes} minute" + ("s" if minutes != 1 else "")
