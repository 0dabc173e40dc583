"""What a paused task waits for: the mail server or its directory.

jobs/outage.py pauses and resumes; blocks/ says it. The task keeps the pause's reason and not
its cause, so a directory outage's reason always begins with DIRECTORY_REASON_START and that
beginning tells the two apart (the reason stays after the pause ends, for the "resumed" line).
"""

from __future__ import annotations

from enum import StrEnum


class Outage(StrEnum):
    MAIL = "mail"
    DIRECTORY = "directory"


DIRECTORY_REASON_START = "The directory"


def outage_of(reason: str | None) -> Outage:
    """Which outage paused a task, from the reason it keeps."""
    if (reason or "").startswith(DIRECTORY_REASON_START):
        return Outage.DIRECTORY
    return Outage.MAIL


def directory_reason(said: str) -> str:
    """A directory's own words about its outage, as a pause reason (so `outage_of` finds it)."""
    capitalised = said[:1].upper() + said[1:]
    if capitalised.startswith(DIRECTORY_REASON_START):
        return capitalised
    return f"{DIRECTORY_REASON_START} cannot be used: {said}"
