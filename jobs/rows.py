"""What every part of the engine shares about the database's rows.

Who the audit log names, which item states still need work, and how many rows a conditional
UPDATE changed: that count is how a worker learns whether it won a race with another one.
"""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import Table

from core.models import ItemState, ResetItem

ACTOR = "resetbot"
#: An item in one of these states still needs a worker; a task ends when it has none.
ACTIVE_ITEM_STATES = (ItemState.PENDING, ItemState.CLAIMED, ItemState.RETRY_WAIT)

#: The items table, for statements run with executemany on the connection.
items_table = cast(Table, ResetItem.__table__)


def rowcount(result: Any) -> int:
    return int(result.rowcount)
