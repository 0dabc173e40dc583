"""What the rest of resetbot knows of a directory's users: plain values, no database."""

from __future__ import annotations

from dataclasses import dataclass, field

#: Options Slack shows at most, and so the most one picker search returns.
SEARCH_LIMIT = 100


@dataclass(frozen=True)
class DirectoryUser:
    id: int
    username: str
    full_name: str
    #: A usable address (core.addresses), else None: a value that cannot be mailed is no address.
    email: str | None
    #: What makes them staff (the role, or the profile's staff column), None for a patron.
    role: str | None
    #: Locked on purpose (the profile's `locked` rule): a new password does not open it.
    locked: bool = False

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
    #: Users without a usable address: none at all, or one that cannot be mailed.
    without_email: int
    staff: int
    #: Of `without_email`, the values that are there but unusable, by reason (core.addresses).
    unusable: dict[str, int] = field(default_factory=dict)
    #: Accounts locked on purpose (the profile's `locked` rule), staff or not.
    locked: int = 0
    #: What the requester should know besides the counts (the library system's rules unread).
    notes: tuple[str, ...] = ()
