"""What the engine needs of a directory, whatever holds the users: a SQL table or an LDAP server.

`Directory` below is derived from the methods of today's SQL directory (core/directory/sql/table.py)
that jobs/, bot/ and core/ call, restated so that a directory which hashes for itself (OpenLDAP's
Password Modify, Active Directory's `unicodePwd`) can sit behind the same seam:

- ids are opaque strings (`UserId`): an integer id is one kind of string, an entryUUID or an
  objectGUID another. The only order the engine relies on is the one `scope_batch` streams in,
  and it only has to be stable within a task;
- `set_passwords` takes *passwords*, never hashes: the SQL directory hashes them (in the worker,
  as today), an LDAP directory hands them to the server over TLS. Its answer is one outcome per
  user, and "refused by the directory" (its policy said no, with its reason) is one of them:
  that user is not mailed and the batch goes on;
- "locked on purpose" is the directory's own notion (Koha's -1, ppolicy's permanent lock, AD's
  disabled flag): counted in the preview, kept locked, left out of generated-password tasks;
- the directory's own password rules (`password_rules`; for one scope's users
  `rules_for_scope`, as Koha's differ by patron category) are read from it, so a default or
  typed password it would refuse is refused where it was typed, with its reason.

The seam (issue 19): `core/directory/factory.py` makes the directory of Settings, either
`core/directory/sql.SqlDirectory` (the table directories of table.py: text ids in and out,
hashing in the worker) or `core/directory/ldap.LdapDirectory`; the planner, the worker, the
preview, the approval and schedule re-counts, the CLI and the Slack app use only this protocol.
Two things exist for a SQL table alone and say so where they are: the worker's hashing pipeline
(jobs/chunks.py, jobs/settling.py: hashes made on the job's thread while the previous batch is
written, so the hash floor is what it was) and Undo (core/undo.py: only a table gives its
previous hashes back). Left to do:
- an LDAP preview reads every entry of the scope (LDAP has no COUNT), page by page (one page in
  memory, as `scope_batch`'s walk: core/directory/ldap/directory.py), so its time grows with
  the scope.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol, TypeVar, runtime_checkable

from core.addresses import usable_address
from core.directory.users import Preview
from core.errors import ConfigError, ResetbotError
from core.states import Scope

#: A user's id in the directory, as resetbot keeps it: opaque text.
UserId = str


@dataclass(frozen=True)
class User:
    """One user as the engine sees them (the protocol's `DirectoryUser`, with a text id)."""

    id: UserId
    username: str
    full_name: str
    email: str | None
    #: What makes them staff (a role, "staff" for a group member), None for a patron.
    role: str | None
    #: Locked on purpose by the library (kept locked; left out of generated-password tasks).
    locked_on_purpose: bool = False
    #: Why the directory's value for the address is not one (`n/a`, a blank: the preview says
    #: so, by reason); None when it is one or when there is none.
    address_problem: str | None = None

    @property
    def is_staff(self) -> bool:
        return bool(self.role)

    @property
    def has_email(self) -> bool:
        """A usable address by the one rule (core/addresses.py), whatever the directory."""
        return usable_address(self.email) is not None


#: What a scope would do, counted before anything changes (users, emailable, without_email,
#: staff, locked: the users locked on purpose, ...): one record for every directory.
Counts = Preview


class PickerRow(NamedTuple):
    """One user as the picker's in-memory search copy shows and searches them."""

    id: UserId
    username: str
    display_name: str
    #: A second name users sign in with (Koha's card number), searched too; None without one.
    card_number: str | None
    email: str | None
    is_staff: bool


@dataclass(frozen=True)
class PasswordSet:
    """One user's new password, as handed to `set_passwords`. Its repr never shows it."""

    user_id: UserId
    password: str = field(repr=False)
    must_change: bool


class SetResult(enum.StrEnum):
    SET = "set"  # the directory took the password (and the must-change and unlock rules)
    REFUSED = "refused"  # the directory's policy said no: not mailed, the task goes on
    NOT_FOUND = "not_found"  # no such user any more


@dataclass(frozen=True)
class SetOutcome:
    user_id: UserId
    result: SetResult
    #: The directory's own words for a refusal (never holding the password).
    reason: str | None = None


@dataclass(frozen=True)
class PasswordRules:
    """The directory's own password rules, as read from it (at check and preview time)."""

    #: Where they were read from, for messages ("the default ppolicy cn=default,ou=policies,…").
    source: str
    min_length: int | None = None
    #: Whether the directory asks for a mix of character kinds (AD's complexity).
    complexity: bool = False
    #: Rules read whole: nothing to say in the preview (see ScopeRules).
    unread: None = None

    def violations(self, password: str) -> list[str]:
        """Every reason the directory would refuse `password`, in its terms; empty if none."""
        reasons: list[str] = []
        if self.min_length is not None and len(password) < self.min_length:
            reasons.append(
                f"The directory refuses passwords shorter than {self.min_length} characters "
                f"({self.source})."
            )
        if self.complexity and _kinds(password) < COMPLEXITY_KINDS:
            reasons.append(
                f"The directory asks for {COMPLEXITY_KINDS} of: uppercase letters, lowercase "
                f"letters, digits, other characters ({self.source})."
            )
        return reasons


class ScopeRules(Protocol):
    """The directory's own rules for a new password of one scope's users (Koha's differ by
    patron category, a server's are the same for everyone)."""

    def violations(self, password: str) -> list[str]:
        """Every reason the directory would refuse `password` for a user in scope, its words."""
        ...

    @property
    def unread(self) -> str | None:
        """Why the rules were not checked (said in the preview), None when they were."""
        ...


class RulesWhenAsked:
    """A directory's rules, read from it the first time a password is checked: a preview with
    no password typed asks the directory nothing."""

    unread = None

    def __init__(self, read: Callable[[], PasswordRules]) -> None:
        self._read = read
        self._rules: PasswordRules | None = None

    def violations(self, password: str) -> list[str]:
        if self._rules is None:
            self._rules = self._read()
        return self._rules.violations(password)


#: Active Directory's complexity: three of the four kinds (the name rule is the server's).
COMPLEXITY_KINDS = 3


def _kinds(password: str) -> int:
    return sum((
        any(ch.isupper() for ch in password),
        any(ch.islower() for ch in password),
        any(ch.isdigit() for ch in password),
        any(not ch.isalnum() for ch in password),
    ))


class DirectoryUnavailable(ResetbotError):
    """The directory cannot be reached or stopped answering: retry later (nothing is lost).

    Raised by `set_passwords` mid-batch too: `done` then holds the outcomes of the users handled
    before it stopped (their passwords changed; the rest did not). The text never holds a
    password.
    """

    retryable = True

    def __init__(self, message: str, done: Sequence[SetOutcome] = ()) -> None:
        super().__init__(message)
        self.done = tuple(done)


@runtime_checkable
class Directory(Protocol):
    """What the planner, the worker, the preview, the re-counts and the CLI use of a directory."""

    #: Whether resetbot owns the users (its own table: `users import/export`, its own index).
    @property
    def owns_users(self) -> bool: ...

    def check(self) -> None:
        """Refuse (ConfigError, naming the setting or profile key) what cannot work; reads only."""

    def dispose(self) -> None:
        """Close connections; the directory may be used again after (it reopens)."""

    def ping(self) -> None:
        """Prove cheaply that the directory answers (for /healthz): raises when it does not
        (DirectoryUnavailable, or the SQL driver's error), reads no user."""

    # -- reading -------------------------------------------------------------------------------

    def users_by_id(self, ids: Sequence[UserId]) -> list[User]:
        """The users of these ids that exist, in id order."""

    def missing_ids(self, ids: Sequence[UserId]) -> list[UserId]:
        """The ids of these that name no user (any more)."""

    def by_username(self, usernames: Sequence[str]) -> list[User]:
        """Users whose username is exactly one of these."""

    def usernames_ignoring_case(
        self, names: Sequence[str]
    ) -> dict[str, list[tuple[str, UserId]]]:
        """Lower-cased name -> the (username, id) pairs it matches when case is ignored."""

    def emails_ignoring_case(
        self, emails: Sequence[str]
    ) -> dict[str, list[tuple[str, UserId]]]:
        """Lower-cased address -> the (username, id) of each user who has it, case ignored."""

    def patrons_among(self, ids: Sequence[UserId]) -> int:
        """How many of these users are not staff."""

    # -- scopes --------------------------------------------------------------------------------

    def preview(self, scope: Scope, selection: Sequence[UserId]) -> Counts:
        """The scope counted (InputError when it needs a selection and has none)."""

    def scope_batch(
        self, scope: Scope, selection: Sequence[UserId], after: UserId | None, limit: int
    ) -> list[User]:
        """The next `limit` users of the scope after `after` (None: from the start), in the
        directory's stable order; fewer than `limit` means the scope is done."""

    def usernames_in_password(
        self, password: str, scope: Scope, selection: Sequence[UserId], *,
        without_email_only: bool = False,
    ) -> int:
        """How many users of the scope have a username the password contains (with
        `without_email_only`, of those without a usable address)."""

    # -- the picker ----------------------------------------------------------------------------

    def search(self, term: str, limit: int) -> list[User]:
        """Case-insensitive substring search over usernames, names and e-mail."""

    def picker_rows(self) -> Iterator[PickerRow]:
        """Every user as the picker's search copy keeps them (paged; for the copy's reload)."""

    # -- writing -------------------------------------------------------------------------------

    def set_passwords(self, batch: Sequence[PasswordSet]) -> list[SetOutcome]:
        """Give each user their new password (and the must-change and unlock rules); one
        outcome per user, in order. Raises DirectoryUnavailable when the directory stops
        answering (`done` says which users were handled)."""

    def password_rules(self) -> PasswordRules:
        """The directory's own rules for a new password, read from it now."""

    def rules_for_scope(self, scope: Scope, selection: Sequence[UserId]) -> ScopeRules:
        """The directory's own rules for the users of this scope (read when first used)."""

    def generated_minimum(self) -> int:
        """The longest minimum length the directory's own rules ask of anyone's password (0:
        none known), which every generated password meets."""

    #: The hashes a SQL table writes, whose limits (bcrypt's 72 bytes) bound a new password;
    #: empty where the server hashes for itself.
    @property
    def hash_schemes(self) -> tuple[str, ...]: ...

    def survey(self) -> Counts:
        """Every user counted (what `resetbot directory check` shows); reads only."""


class CountsElsewhere(Protocol):
    """Where a preview may be counted instead of the directory itself (the app's search copy
    of a SQL table: core.directory.picker.CopyCounts). None: not there, the directory counts."""

    def preview(self, scope: Scope, selection: Sequence[UserId]) -> Counts | None: ...

    def usernames_in_password(
        self, password: str, scope: Scope, selection: Sequence[UserId], *,
        without_email_only: bool = False,
    ) -> int | None: ...

    def rules_for_scope(self, scope: Scope, selection: Sequence[UserId]) -> ScopeRules | None:
        """The directory's rules for the scope's users, what they depend on counted here."""
        ...


class _Checkable(Protocol):
    def check(self) -> None: ...

    def dispose(self) -> None: ...


_D = TypeVar("_D", bound=_Checkable)


def checked(directory: _D) -> _D:
    """`directory`, once its `check` passed. A refused one (ConfigError) is disposed before the
    error goes on: a wrong setting leaves no pool or connection behind."""
    try:
        directory.check()
    except ConfigError:
        directory.dispose()
        raise
    return directory
