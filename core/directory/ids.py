"""User ids as resetbot keeps them: opaque text (an integer id is one kind of string).

Rows written before ids were text (a task's `selection` JSON) may hold integers: every reader
passes them through `user_ids`, so an old task and a new one compare alike.
"""

from __future__ import annotations

from collections.abc import Iterable

#: The longest id kept (an objectGUID or entryUUID as text is 36 characters; Slack's option
#: values hold at most 150).
MAX_ID_LENGTH = 150


def user_ids(values: Iterable[object] | None) -> tuple[str, ...]:
    """The ids as text, in the order given (integers written as their decimal text)."""
    return tuple(str(value) for value in (values or ()))


def is_user_id(value: object) -> bool:
    """Text that can name a user: not empty, not too long, no control characters."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_ID_LENGTH
        and value.strip() == value
        and value.isprintable()
    )


def id_order(value: str) -> tuple[int, int, str]:
    """A stable sort key for ids: integers-as-text by their number (so "9" comes before "10",
    as a SQL table orders its keys), then any other text (an entryUUID, an objectGUID) as text."""
    if value.isascii() and value.isdigit():
        return (0, int(value), value)
    return (1, 0, value)
