"""Whether two tasks may reset the same user: decided from their scopes, cheaply and safely.

Only a task that picked its users (`selected_only`) can be told apart from another without
listing the directory: its picks against the other's picks, against the other's exceptions,
or, against `all_without_role`, whether every pick has a role. Anything else is taken to
overlap (`all` reaches everyone; two "everyone but ..." scopes almost always share users).
Saying "overlap" wrongly only makes a task wait; saying "apart" wrongly would let two tasks
reset the same user at once, so every doubt is an overlap.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from core.directory.ids import user_ids
from core.models import Scope

#: Whether every one of these user ids has a role (staff) in the directory now.
AllStaff = Callable[[frozenset[str]], bool]


@dataclass(frozen=True)
class Reach:
    """Who a task resets, as far as telling overlap needs: its scope and its picked users."""

    scope: Scope
    selection: frozenset[str]

    @classmethod
    def of(cls, scope: str, selection: Iterable[object]) -> Reach:
        return cls(Scope(scope), frozenset(user_ids(selection)))


def overlaps(one: Reach, other: Reach, all_staff: AllStaff) -> bool:
    """True unless the two tasks provably share no user."""
    if one.scope is not Scope.SELECTED_ONLY:
        one, other = other, one
    if one.scope is not Scope.SELECTED_ONLY:
        return True
    picked = one.selection
    if other.scope is Scope.SELECTED_ONLY:
        return not picked.isdisjoint(other.selection)
    if other.scope is Scope.ALL_EXCEPT_SELECTED:
        return not picked <= other.selection
    if other.scope is Scope.ALL_WITHOUT_ROLE:
        # A role given or taken away between this check and the other task's planning could
        # still bring a user into both; roles change rarely, and never by resetbot.
        return not all_staff(picked)
    return True
