"""What the rest of resetbot knows of a directory's users: plain values, no database."""

from __future__ import annotations

from dataclasses import dataclass

#: Options Slack shows at most, and so the most one picker search returns.
SEARCH_LIMIT = 100


@dataclass(frozen=True)
class DirectoryUser:
    id: int
    username: str
    full_name: str
    email: str | None
    #: What makes them staff (the role, or the profile's staff column), None for a patron.
    role: str | None

    @property
    def is_staff(self) -> bool:
        return bool(self.role)

    @property
    def has_email(self) -> bool:
        return bool(self.email)


@dataclass(frozen=True)
class Preview:
    """What a scope would do, counted before anything changes."""

    users: int
    emailable: int
    without_email: int
    staff: int
    #: Users locked on purpose among `users` (kept locked by a reset; left out of
    #: generated-password tasks).
    locked_on_purpose: int = 0
