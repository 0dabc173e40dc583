"""What a preview counts, kept per user in the app's search copy (core/search_copy.py).

A preview at a million Koha borrowers counted by the table took 2-4 s (a COUNT with a SUM per
rule over the whole table, the addresses that are not plain streamed to be judged, and for a
default password every username streamed again). The copy reads every user anyway; beside
what the picker searches it keeps, per user, one byte of what the preview counts and two
numbers, so a preview of any scope is counted in the app's memory in milliseconds:

- a byte of flags: staff (the profile's staff rule), locked on purpose (its `locked` rule),
  and the address's reason for not being one by the one rule (core.addresses), 0 when usable;
  and "tainted": the username or the address held the copy's separator, which the copy takes
  out of the fields, so for that user the copy cannot say what the table would (a scope
  holding such a user is counted by the table);
- the id, as a number (ids sorted, with where each one is in the directory's order), so that a
  selection is looked up by id;
- a hash of the username as the username check compares it (NFC, lower-cased: see
  core.passwords.contains_username), sorted, so that the usernames a password holds are found
  by hashing the password's own pieces, never by walking every user; each one found is then
  compared for real.

How many users have each byte is counted once, when the copy is built: the whole directory and
"everyone without a role" are then sums over at most 64 values, and a selection is counted by
its own users' bytes (all but a selection: the whole less the selection).
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from core.addresses import ADDRESS_PROBLEMS, PLAIN_ADDRESS, AddressProblem, address_problem
from core.models import Scope
from core.passwords import normalised

#: The low three bits: the address's reason (ADDRESS_PROBLEMS' position + 1), 0 when usable.
ADDRESS_BITS = 0b111
STAFF = 0b1000
LOCKED = 0b10000
#: The username or the address held the copy's separator (taken out of what the copy holds).
TAINTED = 0b100000
KINDS = 64
_CODE: dict[AddressProblem | None, int] = {
    None: 0, **{problem: index + 1 for index, problem in enumerate(ADDRESS_PROBLEMS)}
}
_PLAIN = PLAIN_ADDRESS.fullmatch
MISSING = _CODE["missing"]

IntArray = npt.NDArray[np.int64]


class ScopeCounts(NamedTuple):
    """A scope counted in the copy: what core.directory.users.Preview holds."""

    users: int
    emailable: int
    staff: int
    locked: int
    #: Users without a usable address by reason (every reason, "missing" too; zeros left out).
    problems: dict[str, int]


def username_key(username: str) -> str:
    """A username as the username check compares it (core.passwords.contains_username; so
    does FactsBuilder.add, inline)."""
    return username.lower() if username.isascii() else normalised(username).lower()


class FactsBuilder:
    """Collects each user's facts while the copy is read; `build` makes the arrays."""

    def __init__(self) -> None:
        self.flags = bytearray()
        self.ids = array("q")
        self.names = array("q")
        self.longest_name = 0
        self.categories = array("H")
        self._codes: dict[str, int] = {}
        self._marks: dict[str, tuple[int, int]] = {}

    def add(self, marks: str, user_id: str, username: str, email: str) -> None:
        """One user, from a line of the copy (`marks`: staff, locked, then whether the
        username and the address held the separator, as digits, then the category: see
        line_select). Called a million times for a million users: kept lean."""
        known = self._marks.get(marks)
        if known is None:
            known = self._marks[marks] = self._read_marks(marks)
        flags, category = known
        if not email:  # NULL or empty
            flags |= MISSING
        elif not _PLAIN(email):  # a plain dot-atom address, nothing around it, is usable
            flags |= _CODE[address_problem(email)]
        self.flags.append(flags)
        self.categories.append(category)
        self.ids.append(int(user_id))
        key = username.lower() if username.isascii() else normalised(username).lower()
        self.names.append(hash(key))
        if len(key) > self.longest_name:
            self.longest_name = len(key)

    def _read_marks(self, marks: str) -> tuple[int, int]:
        flags = 0
        if marks[:1] != "0":
            flags |= STAFF
        if marks[1:2] not in ("", "0"):
            flags |= LOCKED
        if marks[2:4].strip("0"):
            flags |= TAINTED
        return flags, self._codes.setdefault(marks[4:], len(self._codes))

    def build(self) -> UserFacts:
        flags = np.frombuffer(bytes(self.flags), dtype=np.uint8)
        ids = np.frombuffer(self.ids, dtype=np.int64)
        names = np.frombuffer(self.names, dtype=np.int64)
        id_order = np.argsort(ids, kind="stable").astype(np.int32)
        name_order = np.argsort(names, kind="stable").astype(np.int32)
        categories = np.frombuffer(self.categories, dtype=np.uint16)
        rows = max(1, len(self._codes))
        by_category = np.bincount(
            categories.astype(np.intp) * 2 + ((flags & STAFF) != 0), minlength=rows * 2
        ).reshape(rows, 2).astype(np.int64)
        facts = UserFacts(
            flags=flags,
            categories=categories, category_names=tuple(self._codes),
            by_category=by_category,
            sorted_ids=ids[id_order], id_order=id_order,
            sorted_names=names[name_order], name_order=name_order,
            longest_name=self.longest_name,
            kinds=np.bincount(flags, minlength=KINDS).astype(np.int64),
        )
        self.flags, self.ids, self.names = bytearray(), array("q"), array("q")
        self.categories = array("H")
        return facts


@dataclass(frozen=True)
class UserFacts:
    """The preview's facts of every user of one copy (immutable, shared by threads)."""

    flags: npt.NDArray[np.uint8]  # per user, in the directory's order
    sorted_ids: IntArray
    id_order: npt.NDArray[np.int32]  # sorted_ids[i] is the id of user id_order[i]
    sorted_names: IntArray  # username hashes, sorted
    name_order: npt.NDArray[np.int32]
    longest_name: int
    kinds: IntArray  # how many users have each flags byte
    categories: npt.NDArray[np.uint16]  # per user: their category's place in category_names
    category_names: tuple[str, ...]
    by_category: IntArray  # users per category (rows), patrons then staff (columns)

    @property
    def nbytes(self) -> int:
        return sum(int(part.nbytes) for part in (
            self.flags, self.sorted_ids, self.id_order, self.sorted_names, self.name_order,
            self.kinds, self.categories, self.by_category))

    def users_of(self, ids: Sequence[int]) -> npt.NDArray[np.int32] | None:
        """Where these ids' users are in the copy; None when one of them is not in it."""
        wanted = np.unique(np.asarray(ids, dtype=np.int64))
        at = np.searchsorted(self.sorted_ids, wanted)
        if at.size and (int(at.max()) >= self.sorted_ids.size
                        or not np.array_equal(self.sorted_ids[at], wanted)):
            return None
        return self.id_order[at]

    def _kinds(self, scope: Scope, picked: npt.NDArray[np.int32] | None) -> IntArray:
        """How many users of the scope have each flags byte."""
        if scope is Scope.ALL:
            return self.kinds
        if scope is Scope.ALL_WITHOUT_ROLE:
            patrons = self.kinds.copy()
            patrons[[kind for kind in range(KINDS) if kind & STAFF]] = 0
            return patrons
        assert picked is not None
        chosen = np.bincount(self.flags[picked], minlength=KINDS).astype(np.int64)
        return chosen if scope is Scope.SELECTED_ONLY else self.kinds - chosen

    def count(self, scope: Scope, picked: npt.NDArray[np.int32] | None) -> ScopeCounts | None:
        """The scope counted (`picked`: the selection's users, see `users_of`); None when a
        user in it is tainted (the table must count)."""
        kinds = self._kinds(scope, picked)
        if _total(kinds, TAINTED):
            return None
        problems = {
            problem: int(sum(int(kinds[kind]) for kind in range(KINDS)
                             if kind & ADDRESS_BITS == code))
            for problem, code in _CODE.items() if problem is not None
        }
        users = int(kinds.sum())
        return ScopeCounts(
            users=users,
            emailable=users - sum(problems.values()),
            staff=_total(kinds, STAFF),
            locked=_total(kinds, LOCKED),
            problems={problem: count for problem, count in problems.items() if count},
        )

    def categories_in(self, scope: Scope, picked: npt.NDArray[np.int32] | None) -> list[str]:
        """The categories the scope's users are in (Koha's password rules are by category)."""
        if scope is Scope.ALL:
            held = self.by_category.sum(axis=1)
        elif scope is Scope.ALL_WITHOUT_ROLE:
            held = self.by_category[:, 0]
        else:
            chosen = np.bincount(self.categories[np.asarray(picked)],
                                 minlength=len(self.by_category))
            held = chosen if scope is Scope.SELECTED_ONLY else (
                self.by_category.sum(axis=1) - chosen)
        return [self.category_names[code] for code in np.flatnonzero(held).tolist()]

    def usernames_in(
        self, password: str, scope: Scope, picked: npt.NDArray[np.int32] | None,
        username_of: Callable[[int], str], *, without_email_only: bool = False,
    ) -> int | None:
        """How many users of the scope have a username the password holds (see
        core.passwords.contains_username); None when a user in the scope is tainted.

        Every piece of the password up to the longest username is hashed and looked up among
        the usernames' hashes; each user found is compared for real (`username_of`)."""
        if _total(self._kinds(scope, picked), TAINTED):
            return None
        folded = normalised(password).lower()
        pieces = {folded[start:start + length]
                  for length in range(1, min(self.longest_name, len(folded)) + 1)
                  for start in range(len(folded) - length + 1)}
        if not pieces:
            return 0
        hashes = np.array(sorted(hash(piece) for piece in pieces), dtype=np.int64)
        starts = np.searchsorted(self.sorted_names, hashes, side="left")
        ends = np.searchsorted(self.sorted_names, hashes, side="right")
        found = [int(self.name_order[at]) for start, end in zip(starts, ends, strict=True)
                 for at in range(int(start), int(end))]
        if not found:
            return 0
        users = np.array(sorted(set(found)), dtype=np.int32)
        flags = self.flags[users]
        keep = np.ones(users.size, dtype=bool)
        if scope is Scope.ALL_WITHOUT_ROLE:
            keep &= (flags & STAFF) == 0
        elif scope is not Scope.ALL:
            inside = np.isin(users, np.asarray(picked))
            keep &= inside if scope is Scope.SELECTED_ONLY else ~inside
        if without_email_only:
            keep &= (flags & ADDRESS_BITS) != 0
        return sum(1 for user in users[keep].tolist()
                   if (key := username_key(username_of(user))) and key in folded)


def _total(kinds: IntArray, bit: int) -> int:
    return int(sum(int(kinds[kind]) for kind in range(KINDS) if kind & bit))
