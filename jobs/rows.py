"""What every part of the engine shares about the database's rows.

Who the audit log names, which item states still need work, and how many rows a conditional
UPDATE changed: that count is how a worker learns whether it won a race with another one.

The two statements that differ between databases are spelled here, once: an UPDATE that tells
which rows it changed (`update_returning`) and an INSERT that does nothing when the row is there
(`insert_unless_present`). Everywhere else the engine's SQL is the same on SQLite, PostgreSQL
and MariaDB/MySQL.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import ColumnElement, Table, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import InstrumentedAttribute, Session

from core.db import MYSQL_BACKENDS
from core.models import ItemState, ResetItem

ACTOR = "resetbot"
#: An item in one of these states still needs a worker; a task ends when it has none.
ACTIVE_ITEM_STATES = (ItemState.PENDING, ItemState.CLAIMED, ItemState.RETRY_WAIT)

#: The items table, for statements run with executemany on the connection.
items_table = cast(Table, ResetItem.__table__)


def rowcount(result: Any) -> int:
    return int(result.rowcount)


def update_returning(
    session: Session,
    where: Sequence[ColumnElement[bool]],
    values: dict[str, Any],
    columns: Sequence[InstrumentedAttribute[Any]],
    *,
    limit: int | None = None,
) -> list[tuple[Any, ...]]:
    """UPDATE the items matching `where`; `columns` of each row it changed, in id order.

    With a `limit`, only the first `limit` matching rows by chunk and id that no other
    transaction is changing right now (a claim: the rows another worker is claiming are skipped,
    not waited for). That order is the (task, chunk) index's: a claim over several chunks
    reads the first pending rows in it and stops (MariaDB's entries hold the id after the
    chunk; PostgreSQL sorts each chunk's few rows). `columns` must be ones the UPDATE does not
    set. Safe with many workers everywhere:
    - PostgreSQL and SQLite: one UPDATE ... RETURNING (PostgreSQL picks the `limit` rows with
      FOR UPDATE SKIP LOCKED; SQLite has one writer at a time).
    - MariaDB/MySQL have no UPDATE ... RETURNING: the rows are read with SELECT ... FOR UPDATE
      (SKIP LOCKED with a `limit`), which locks them until the commit, then the same
      conditional UPDATE runs on exactly those ids. A locked row cannot change in between, so
      it still matches, and no other worker can take it meanwhile.
    """
    # Core statements on the items' table, run on the session's connection: the ORM's own
    # UPDATE path (bulk persistence) would cost a batch more Python than the statement itself.
    connection = session.connection()
    dialect = connection.dialect
    if dialect.update_returning:
        items = items_table.c
        statement = update(items_table)
        if limit is not None:
            candidates = (select(items.id).where(*where).order_by(items.chunk, items.id)
                          .limit(limit))
            if dialect.name == "postgresql":
                # In a CTE, run once: as a subquery PostgreSQL may run it again for each row,
                # each time skipping the rows this UPDATE just changed, taking far more than
                # `limit` rows (a whole chunk in one claim).
                locked = candidates.with_for_update(of=items_table, skip_locked=True).cte()
                statement = statement.where(items.id.in_(select(locked.c.id)))
            else:
                statement = statement.where(items.id.in_(candidates.scalar_subquery()))
        rows = connection.execute(
            statement.where(*where)
            .values(**values)
            .returning(items.id, *[items[column.key] for column in columns])
        ).all()
        return [tuple(row[1:]) for row in sorted(rows, key=lambda row: int(row[0]))]
    return _lock_then_update(session, where, values, columns, limit)


def _lock_then_update(
    session: Session,
    where: Sequence[ColumnElement[bool]],
    values: dict[str, Any],
    columns: Sequence[InstrumentedAttribute[Any]],
    limit: int | None,
) -> list[tuple[Any, ...]]:
    locked = session.execute(
        select(ResetItem.id, *columns)
        .where(*where)
        .order_by(ResetItem.chunk, ResetItem.id)
        .limit(limit)
        .with_for_update(skip_locked=limit is not None)
    ).all()
    if not locked:
        return []
    ids = [int(row[0]) for row in locked]
    changed = rowcount(
        session.execute(
            update(ResetItem)
            .where(ResetItem.id.in_(ids), *where)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
    )
    if changed != len(ids):
        # A condition on another row (the task's, not locked here: workers would queue on it)
        # changed between the two statements: keep the ids the UPDATE did change, told by
        # the values it wrote.
        wrote = [getattr(ResetItem, key) == value for key, value in values.items()]
        kept = set(session.scalars(select(ResetItem.id).where(ResetItem.id.in_(ids), *wrote)))
        locked = [row for row in locked if int(row[0]) in kept]
    return [tuple(row[1:]) for row in locked]


def insert_unless_present(session: Session, table: Any, **values: Any) -> None:
    """INSERT one row; nothing (and no error) when a row with its key is there already.

    Of two sessions inserting the same key at once, the second waits for the first one's
    commit, then does nothing.
    """
    dialect = session.get_bind().dialect.name
    if dialect in MYSQL_BACKENDS:
        from sqlalchemy.dialects.mysql import insert as mysql_insert  # loaded only on MySQL

        # The key set to itself: an update that changes nothing (INSERT IGNORE would also
        # silence errors other than the duplicate).
        key = next(iter(values))
        statement: Any = (
            mysql_insert(table).values(**values).on_duplicate_key_update({key: values[key]})
        )
    elif dialect == "sqlite":
        statement = sqlite_insert(table).values(**values).on_conflict_do_nothing()
    else:
        statement = postgresql_insert(table).values(**values).on_conflict_do_nothing()
    session.execute(statement)
