"""A directory on an LDAP server (OpenLDAP or Active Directory), as core/directory/protocol.py
describes: one bound TLS connection per worker, paged searches, passwords handed to the server.

How it reads:
- every search is paged (RFC 2696, `page_size` entries a page), so a server's size limit on
  the service account never cuts a scope short;
- a scope is the profile's object filter under the base DN, with the selection's ids as an OR
  of equality filters; `all_without_role` leaves out the staff group's members, whose DNs are
  read once per scope read (ServerRules.staff_dns);
- LDAP has no COUNT: a preview reads the scope's entries page by page and counts them as they
  come, so it holds one page (`page_size` entries) whatever the directory's size;
- `scope_batch` streams in the server's own order (stable while a task is planned: OpenLDAP's
  and AD's paged results come in the order the entries were stored): a walk reads the scope
  page by page on a connection of its own, and a planner asking for the batch after the last
  one it was given goes on with the same walk (one page in memory). Asked for a batch after
  any other user (a planner resumed by another worker), the walk starts again and passes over
  the users up to that one;
- the picker's copy (`picker_rows`) is read the same way, on a connection of its own, so a
  slow reload in the app never holds the connection the preview uses.

How it writes (`set_passwords`): per user, the server's own password operation (ServerRules:
Password Modify or unicodePwd) and the must-change and unlock modifications, in as few writes
as the server allows (each costs it a synced transaction): AD takes them in the password's own
modify (one write a user); OpenLDAP's Password Modify carries nothing else, so they follow in a
modify of their own, sent only when there is something ppolicy did not already do (must-change
required, or a lock on purpose to write back). The writes are pipelined on the worker's one
connection (pipeline.py, wire.py): up to DIRECTORY_LDAP_WINDOW requests in flight, each user's
own follow-up sent only once the server has taken that user's password, the answers matched by
message id in whatever order they come (one sync round trip a request was most of the time a
set took: measured 3.3 ms a Password Modify synchronously, 0.9 ms with 8 or 16 in flight). A
policy refusal (constraintViolation, unwillingToPerform) is that user's "refused" outcome with
the server's words, and the batch goes on; any other result stops new users from being sent,
the writes in flight are answered, and DirectoryUnavailable carries the outcomes; a connection
that breaks raises it at once with the outcomes answered so far (nothing names a password):
the users whose writes were in flight are not among them, so the engine sets them again, with
a new password, when the task resumes.

Made from Settings by core/directory/factory.py (an `ldaps://` or `ldap://` DIRECTORY_URL).
"""

from __future__ import annotations

import threading
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ldap3 import BASE, SUBTREE, Connection
from ldap3.core.exceptions import LDAPException
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.log import PROTOCOL, log_enabled

from core.addresses import address_problem, usable_address
from core.directory.ldap import wire
from core.directory.ldap.active_directory import ActiveDirectoryRules
from core.directory.ldap.config import LdapConfig
from core.directory.ldap.connection import close_quietly, connect, unavailable
from core.directory.ldap.openldap import OpenLdapRules
from core.directory.ldap.pipeline import Pipeline
from core.directory.ldap.profile import LdapProfile
from core.directory.ldap.server import (
    INSUFFICIENT_ACCESS,
    NO_SUCH_OBJECT,
    POLICY_REFUSALS,
    Attributes,
    Changes,
    ServerRules,
    attributes_of,
    check_family,
    first_text,
    flat_changes,
    normal_dn,
    result_name,
)
from core.directory.protocol import (
    Counts,
    DirectoryUnavailable,
    PasswordRules,
    PasswordSet,
    PickerRow,
    RulesWhenAsked,
    ScopeRules,
    SetOutcome,
    SetResult,
    User,
    UserId,
)
from core.errors import ConfigError, InputError
from core.models import Scope

PAGED_RESULTS = "1.2.840.113556.1.4.319"
DEFAULT_PAGE_SIZE = 500
#: Ids per OR filter (a filter of thousands of terms is slow on some servers).
IDS_PER_FILTER = 200
#: The role a staff group member is shown with.
STAFF_ROLE = "staff"


class UserSearch(Protocol):
    """Where the picker's matches come from, when not from the server itself."""

    def search(self, term: str, limit: int) -> list[User]: ...


@dataclass(frozen=True)
class _Entry:
    dn: str
    attributes: dict[str, list[bytes]]


@dataclass
class _Walk:
    """A scope being streamed to a planner: its own connection, the users still to come (read
    a page at a time), and the last user handed out (where the next batch follows)."""

    key: tuple[Scope, tuple[UserId, ...]]
    connection: Connection
    users: Iterator[User]
    last: UserId | None = None

    def close(self) -> None:
        close_quietly(self.connection)


class LdapDirectory:
    """The users of an LDAP directory under its profile, over one connection (thread-safe)."""

    owns_users = False

    def __init__(self, config: LdapConfig, *, page_size: int = DEFAULT_PAGE_SIZE) -> None:
        self.config = config
        self.profile = config.profile
        self.rules: ServerRules = rules_for(config.profile)
        self.page_size = page_size
        #: Pages read so far (every search is paged): what a test or the bench can look at.
        self.pages_read = 0
        self._connection: Connection | None = None
        self._lock = threading.RLock()
        self._walk: _Walk | None = None
        #: The picker's search copy (core/directory/picker.py), when the app keeps one.
        self.search_source: UserSearch | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> LdapDirectory:
        return cls(LdapConfig.from_env(env))

    def __repr__(self) -> str:
        return f"LdapDirectory({self.config.url.shown}, profile={self.profile.name!r})"

    # -- the connection ------------------------------------------------------------------------

    def _bound(self) -> Connection:
        if self._connection is None or self._connection.closed:
            self._connection = connect(self.config)
        return self._connection

    def dispose(self) -> None:
        with self._lock:
            if self._connection is not None:
                close_quietly(self._connection)
            self._connection = None
            self._end_walk()

    def _broken(
        self, error: BaseException, done: Sequence[SetOutcome] = ()
    ) -> DirectoryUnavailable:
        """Forget the connection (the next call opens another) and say so, retryably."""
        if self._connection is not None:
            close_quietly(self._connection)
        self._connection = None
        raised = unavailable(self.config, error)
        return DirectoryUnavailable(str(raised), done)

    def check(self) -> None:
        """Sign in, read the base entry, the staff group and the password rules: ConfigError
        naming the setting when one of them cannot be (reads only)."""
        with self._lock:
            connection = self._bound()
            try:
                connection.search(self.config.base_dn, "(objectClass=*)", BASE, attributes=[])
            except (LDAPException, OSError) as error:
                raise self._broken(error) from None
            if connection.result.get("result") != 0:
                raise ConfigError(
                    f"DIRECTORY_URL: the base DN {self.config.base_dn!r} cannot be read by the "
                    f"service account ({_said(connection.result)})"
                )
            self._staff()
            self.password_rules()

    # -- searching -----------------------------------------------------------------------------

    def _attributes(self) -> list[str]:
        return list(dict.fromkeys([*self.profile.attributes(), *self.rules.extra_attributes()]))

    def _search(self, search_filter: str, attributes: list[str] | None = None) -> list[_Entry]:
        """Every entry under the base DN matching the filter, read page by page (for searches
        whose answer is small: a batch's ids, names, addresses)."""
        return list(self._stream(search_filter, attributes))

    def _stream(
        self, search_filter: str, attributes: list[str] | None = None
    ) -> Iterator[_Entry]:
        """The entries matching the filter as they come, one page held at a time, on the
        directory's connection (held for the whole read: consume it at once)."""
        with self._lock:
            try:
                yield from self._paged(self._bound(), search_filter, attributes)
            except (LDAPException, OSError) as error:
                raise self._broken(error) from None

    def _paged(
        self, connection: Connection, search_filter: str, attributes: list[str] | None = None
    ) -> Iterator[_Entry]:
        """RFC 2696: `page_size` entries a request, the server's cookie sent back for the next
        page, until it sends none. Raises ldap3's errors as they come."""
        wanted = self._attributes() if attributes is None else attributes
        cookie: bytes | None = None
        while True:
            connection.search(
                self.config.base_dn, search_filter, SUBTREE, attributes=wanted,
                paged_size=self.page_size, paged_cookie=cookie,
            )
            self._require_success(connection.result)
            page = [
                _Entry(str(entry["dn"]), attributes_of(entry))
                for entry in connection.response or []
                if entry.get("type") == "searchResEntry"
            ]
            self.pages_read += 1
            cookie = _next_cookie(connection.result)
            connection.response = None  # the page is ours now: ldap3 need not keep it
            yield from page
            if not cookie:
                return

    def _require_success(self, result: Mapping[str, Any] | None) -> None:
        result = result or {}
        code = result.get("result")
        if code == 0:
            return
        if code in (NO_SUCH_OBJECT, INSUFFICIENT_ACCESS):
            raise ConfigError(
                f"DIRECTORY_URL: the service account cannot search {self.config.base_dn!r} "
                f"({_said(result)})"
            )
        raise DirectoryUnavailable(
            f"the directory {self.config.url.shown} did not answer a search ({_said(result)}; "
            "resetbot tries again)"
        )

    def _users_filter(self, extra: str = "") -> str:
        return f"(&{self.profile.object_filter}{extra})" if extra else self.profile.object_filter

    def _ids_filter(self, ids: Sequence[UserId]) -> str:
        return "(|" + "".join(self.rules.id_filter(user_id) for user_id in ids) + ")"

    def _staff(self) -> frozenset[str]:
        with self._lock:
            try:
                return self.rules.staff_dns(self._bound(), self.config)
            except (LDAPException, OSError) as error:
                raise self._broken(error) from None

    def _user(self, entry: _Entry, staff: frozenset[str]) -> User:
        attributes = entry.attributes
        raw_id = (attributes.get(self.profile.id.lower()) or [b""])[0]
        email = first_text(attributes, self.profile.email) if self.profile.email else None
        return User(
            id=self.rules.id_text(raw_id),
            username=_first_of(attributes, self.profile.username),
            full_name=" ".join(_first_of(attributes, self.profile.name_attributes).split()),
            email=usable_address(email),  # the one rule: `n/a` or a blank is no address
            role=STAFF_ROLE if normal_dn(entry.dn) in staff else None,
            locked_on_purpose=self.rules.is_locked_on_purpose(attributes),
            address_problem=None if email is None else address_problem(email),
        )

    def _read_users(self, search_filter: str) -> list[User]:
        staff = self._staff()
        return [self._user(entry, staff) for entry in self._search(search_filter)]

    def _scope_filter(self, scope: Scope, selection: Sequence[UserId]) -> str:
        """The server's filter for a whole-directory scope; a long selection to leave out is
        left out here instead (`_left_out`), not in a filter of thousands of terms."""
        if scope is Scope.ALL_EXCEPT_SELECTED and len(set(selection)) <= IDS_PER_FILTER:
            return self._users_filter(f"(!{self._ids_filter(sorted(set(selection)))})")
        return self.profile.object_filter

    def _in_scope(
        self, scope: Scope, selection: Sequence[UserId], entries: Iterable[_Entry],
        staff: frozenset[str],
    ) -> Iterator[User]:
        """The users of a whole-directory scope among the entries read with `_scope_filter`."""
        left_out = (frozenset(selection) if scope is Scope.ALL_EXCEPT_SELECTED
                    and len(set(selection)) > IDS_PER_FILTER else frozenset())
        for entry in entries:
            user = self._user(entry, staff)
            if user.id in left_out or (scope is Scope.ALL_WITHOUT_ROLE and user.is_staff):
                continue
            yield user

    def _scope_stream(self, scope: Scope, selection: Sequence[UserId]) -> Iterator[User]:
        """Every user of the scope, page by page on the directory's connection, in the server's
        order (a selected-only scope: in id order, a page of ids at a time)."""
        if scope.needs_selection and not selection:
            raise InputError("Pick at least one user for this scope.", field="users")
        if scope is Scope.SELECTED_ONLY:
            wanted = sorted(set(selection))
            for start in range(0, len(wanted), IDS_PER_FILTER):
                yield from self.users_by_id(wanted[start : start + IDS_PER_FILTER])
            return
        staff = self._staff()
        yield from self._in_scope(scope, selection,
                                  self._stream(self._scope_filter(scope, selection)), staff)

    def _by_ids(
        self, ids: Sequence[UserId], attributes: list[str] | None = None
    ) -> list[_Entry]:
        wanted = sorted(set(ids))
        found: list[_Entry] = []
        for start in range(0, len(wanted), IDS_PER_FILTER):
            found += self._search(self._users_filter(self._ids_filter(
                wanted[start : start + IDS_PER_FILTER]
            )), attributes)
        return found

    # -- reading -------------------------------------------------------------------------------

    def users_by_id(self, ids: Sequence[UserId]) -> list[User]:
        if not ids:
            return []
        staff = self._staff()
        return sorted((self._user(entry, staff) for entry in self._by_ids(ids)),
                      key=lambda user: user.id)

    def missing_ids(self, ids: Sequence[UserId]) -> list[UserId]:
        found = {user.id for user in self.users_by_id(ids)}
        return sorted(set(ids) - found)

    def by_username(self, usernames: Sequence[str]) -> list[User]:
        wanted = set(usernames)
        return [user for user in self._named(sorted(wanted)) if user.username in wanted]

    def usernames_ignoring_case(
        self, names: Sequence[str]
    ) -> dict[str, list[tuple[str, UserId]]]:
        lowered = {name.lower() for name in names}
        found: dict[str, list[tuple[str, UserId]]] = {}
        for user in self._named(sorted(lowered)):
            if user.username.lower() in lowered:
                found.setdefault(user.username.lower(), []).append((user.username, user.id))
        return found

    def emails_ignoring_case(
        self, emails: Sequence[str]
    ) -> dict[str, list[tuple[str, UserId]]]:
        """Lower-cased address -> (username, id) of its users (`mail` ignores case on the
        server; Python decides)."""
        attribute = self.profile.email
        wanted = sorted({email.lower() for email in emails})
        found: dict[str, list[tuple[str, UserId]]] = {}
        if not attribute or not wanted:
            return found
        for start in range(0, len(wanted), IDS_PER_FILTER):
            terms = "".join(f"({attribute}={escape_filter_chars(email)})"
                            for email in wanted[start : start + IDS_PER_FILTER])
            for user in self._read_users(self._users_filter(f"(|{terms})")):
                key = (user.email or "").lower()
                if key in wanted:
                    found.setdefault(key, []).append((user.username, user.id))
        return found

    def _named(self, names: Sequence[str]) -> list[User]:
        """Users any of whose username attributes is one of `names` (the server's matching
        rule decides case: uid and sAMAccountName ignore it)."""
        users: list[User] = []
        for start in range(0, len(names), IDS_PER_FILTER):
            terms = "".join(
                f"({attribute}={escape_filter_chars(name)})"
                for name in names[start : start + IDS_PER_FILTER]
                for attribute in self.profile.username
            )
            if terms:
                users += self._read_users(self._users_filter(f"(|{terms})"))
        return users

    def patrons_among(self, ids: Sequence[UserId]) -> int:
        return sum(1 for user in self.users_by_id(ids) if not user.is_staff)

    # -- scopes --------------------------------------------------------------------------------

    def scope_users(self, scope: Scope, selection: Sequence[UserId]) -> list[User]:
        """Every user of the scope, in id order (all in memory: for tests and small scopes;
        the engine streams with `preview` and `scope_batch`)."""
        return sorted(self._scope_stream(scope, selection), key=lambda user: user.id)

    def preview(self, scope: Scope, selection: Sequence[UserId]) -> Counts:
        """The scope counted as its pages come (one page in memory)."""
        users = emailable = staff = locked = 0
        unusable: Counter[str] = Counter()
        for user in self._scope_stream(scope, selection):
            users += 1
            emailable += user.has_email
            staff += user.is_staff
            locked += user.locked_on_purpose
            if user.address_problem:
                unusable[user.address_problem] += 1
        return Counts(users=users, emailable=emailable, without_email=users - emailable,
                      staff=staff, locked=locked, unusable=dict(unusable))

    def scope_batch(
        self, scope: Scope, selection: Sequence[UserId], after: UserId | None, limit: int
    ) -> list[User]:
        """The next `limit` users after `after` in the server's order. A selected-only scope
        is the selection's users in id order (the planner gives a page of ids at a time)."""
        if scope is Scope.SELECTED_ONLY:
            return self._selected_batch(selection, after, limit)
        key = (scope, tuple(selection))
        with self._lock:
            walk = self._walk
            if walk is None or walk.key != key or after is None or walk.last != after:
                walk = self._start_walk(key, after)
            return self._next_batch(walk, limit)

    def _selected_batch(
        self, selection: Sequence[UserId], after: UserId | None, limit: int
    ) -> list[User]:
        if not selection:
            raise InputError("Pick at least one user for this scope.", field="users")
        wanted = sorted(set(selection))
        start = 0 if after is None else bisect_right(wanted, after)
        return self.users_by_id(wanted[start : start + limit])

    def _start_walk(self, key: tuple[Scope, tuple[UserId, ...]], after: UserId | None) -> _Walk:
        """A new walk of the scope on a connection of its own; passed over up to `after`
        when a planner resumes where another one stopped."""
        self._end_walk()
        scope, selection = key
        try:
            connection = connect(self.config)
        except (LDAPException, OSError) as error:
            raise unavailable(self.config, error) from None
        staff = self._staff()
        entries = self._paged(connection, self._scope_filter(scope, selection))
        walk = _Walk(key, connection, self._in_scope(scope, selection, entries, staff))
        self._walk = walk
        if after is not None:
            self._pass_over(walk, after)
        return walk

    def _pass_over(self, walk: _Walk, after: UserId) -> None:
        while (user := self._step(walk)) is not None:
            if user.id == after:
                walk.last = after
                return
        raise InputError(
            "The directory changed while the task was being planned: the user planning was to "
            "go on after is no longer in the scope. Start the task again (users already reset "
            "are not reset twice within it)."
        )

    def _step(self, walk: _Walk) -> User | None:
        """The walk's next user, None at its end (then the walk and its connection go). One
        user at a time, never a generator around the walk's: closing that would end the walk."""
        try:
            return next(walk.users)
        except StopIteration:
            self._end_walk()
            return None
        except (LDAPException, OSError) as error:
            self._end_walk()
            raise unavailable(self.config, error) from None
        except (DirectoryUnavailable, ConfigError):
            self._end_walk()
            raise

    def _next_batch(self, walk: _Walk, limit: int) -> list[User]:
        batch: list[User] = []
        while len(batch) < limit and (user := self._step(walk)) is not None:
            batch.append(user)
        if batch:
            walk.last = batch[-1].id
        return batch

    def _end_walk(self) -> None:
        if self._walk is not None:
            self._walk.close()
            self._walk = None

    def usernames_in_password(
        self, password: str, scope: Scope, selection: Sequence[UserId], *,
        without_email_only: bool = False,
    ) -> int:
        lowered = password.lower()
        return sum(
            1 for user in self._scope_stream(scope, selection)
            if user.username and user.username.lower() in lowered
            and not (without_email_only and usable_address(user.email))
        )

    # -- the picker ----------------------------------------------------------------------------

    def use_search(self, source: UserSearch | None) -> None:
        """Answer the picker from `source` (the app's search copy) instead of the server."""
        self.search_source = source

    def search(self, term: str, limit: int) -> list[User]:
        """A substring search on the server (the picker normally searches its copy instead)."""
        if self.search_source is not None:
            return self.search_source.search(term, limit)
        needle = escape_filter_chars(term.strip()[:100])
        attributes = [*self.profile.username, *self.profile.name_attributes]
        if self.profile.email:
            attributes.append(self.profile.email)
        terms = "".join(f"({attribute}=*{needle}*)" for attribute in attributes)
        users = self._read_users(self._users_filter(f"(|{terms})") if needle
                                 else self.profile.object_filter)
        return sorted(users, key=lambda user: (user.username, user.id))[:limit]

    def picker_rows(self) -> Iterator[PickerRow]:
        """Every user, page by page on a connection of its own (the search copy reads slowly,
        taking turns with searches: it must not hold the connection the preview uses)."""
        staff = self._staff()
        try:
            connection = connect(self.config)
        except (LDAPException, OSError) as error:
            raise unavailable(self.config, error) from None
        try:
            for entry in self._paged(connection, self.profile.object_filter):
                user = self._user(entry, staff)
                yield PickerRow(user.id, user.username, user.full_name, None, user.email,
                                user.is_staff)
        except (LDAPException, OSError) as error:
            raise unavailable(self.config, error) from None
        finally:
            close_quietly(connection)

    # -- writing -------------------------------------------------------------------------------

    def set_passwords(self, batch: Sequence[PasswordSet]) -> list[SetOutcome]:
        if log_enabled(PROTOCOL):
            # Measured: ldap3's protocol log writes a Password Modify request's value, the new
            # password in it, as it is (it hides only bind passwords and userPassword values).
            raise ConfigError(
                "ldap3's own log is at PROTOCOL detail or more and would write the new "
                "passwords: lower it (ldap3.utils.log.set_library_log_detail_level)"
            )
        # Only what the write needs: the DN, the id, and what the rules read (a lock on purpose).
        needed = list(dict.fromkeys([self.profile.id, *self.rules.extra_attributes()]))
        entries = {self._id_of(entry): entry for entry in self._by_ids(
            [item.user_id for item in batch], needed
        )}
        outcomes: list[SetOutcome | None] = [None] * len(batch)
        writes: list[_Write] = []
        for index, item in enumerate(batch):
            entry = entries.get(item.user_id)
            if entry is None:
                outcomes[index] = SetOutcome(item.user_id, SetResult.NOT_FOUND)
                continue
            changes = self.rules.after_set(entry.attributes, item.must_change)
            joined = self.rules.joins_after_set and bool(changes)
            writes.append(_Write(index, item, entry.dn, changes if joined else None,
                                 None if joined or not changes else changes))
        with self._lock:
            self._pipelined(writes, outcomes)
        return [outcome for outcome in outcomes if outcome is not None]

    def _pipelined(self, writes: Sequence[_Write], outcomes: list[SetOutcome | None]) -> None:
        """Every write's password, then its follow-up, with at most `config.window` requests
        in flight (each user has one at a time: the follow-up is sent once the password is
        taken). Fills `outcomes` as the answers come, in whatever order the server sends them.

        A result that is not the user's (the server busy, no access) stops new users from
        being sent; the requests in flight are still answered and recorded, then
        DirectoryUnavailable names what was done. A connection that breaks raises it at once:
        the users whose requests were in flight are not in `done` (their password may or may
        not have changed), so the engine sets them again with a new password when it resumes.
        """
        if not writes:
            return
        todo = iter(writes)
        waiting: dict[int, _Write] = {}
        failure: str | None = None
        try:
            connection = self._bound()
            _require_tls(connection)
            pipe = Pipeline(connection)
            while True:
                while failure is None and len(waiting) < self.config.window:
                    write = next(todo, None)
                    if write is None:
                        break
                    waiting[pipe.queue(self.rules.password_request(
                        write.dn, write.item.password, write.joined))] = write
                if not waiting:
                    break
                answer = pipe.answer()
                write = waiting.pop(answer.message_id)
                if write.password_taken:  # the follow-up's answer
                    outcomes[write.index] = SetOutcome(write.item.user_id, SetResult.SET)
                    if answer.code != 0:
                        failure = failure or (
                            f"the directory {self.config.url.shown} took a new password but "
                            f"not its must-change and unlock attributes "
                            f"({_answer_words(answer)}); resetbot tries again")
                    continue
                refusal = self.rules.refusal_of(answer.code, answer.diagnostic,
                                                write.item.password)
                if refusal is None:
                    if write.follow_up:
                        write.password_taken = True
                        waiting[pipe.queue(wire.modify_request(
                            write.dn, flat_changes(write.follow_up)))] = write
                    else:
                        outcomes[write.index] = SetOutcome(write.item.user_id, SetResult.SET)
                elif refusal.code in POLICY_REFUSALS:
                    outcomes[write.index] = SetOutcome(
                        write.item.user_id, SetResult.REFUSED,
                        _clean(refusal.reason, write.item.password))
                elif refusal.code == NO_SUCH_OBJECT:
                    outcomes[write.index] = SetOutcome(write.item.user_id, SetResult.NOT_FOUND)
                else:
                    failure = failure or (
                        f"the directory {self.config.url.shown} did not set a password (result "
                        f"{refusal.code}: {_clean(refusal.reason, write.item.password)}; "
                        "resetbot tries again)")
            pipe.finish()
        except (LDAPException, OSError, wire.WireError) as error:
            raise self._broken(error, _done(outcomes)) from None
        if failure is not None:
            raise DirectoryUnavailable(failure, _done(outcomes))

    def _id_of(self, entry: _Entry) -> UserId:
        return self.rules.id_text((entry.attributes.get(self.profile.id.lower()) or [b""])[0])

    def password_rules(self) -> PasswordRules:
        with self._lock:
            try:
                return self.rules.password_rules(self._bound(), self.config)
            except (LDAPException, OSError) as error:
                raise self._broken(error) from None

    def ping(self) -> None:
        """Signs in (again, if it must) and reads one entry: the password policy's."""
        self.password_rules()

    def rules_for_scope(self, scope: Scope, selection: Sequence[UserId]) -> ScopeRules:
        """The server's rules are everyone's: read when a password is first checked."""
        return RulesWhenAsked(self.password_rules)

    def generated_minimum(self) -> int:
        """The server's minimum length; 0 while it does not answer (its first password set
        then pauses the task, and it refuses a short password per user with its reason)."""
        try:
            return self.password_rules().min_length or 0
        except DirectoryUnavailable:
            return 0

    #: The server hashes for itself: no hash of resetbot's bounds a password.
    hash_schemes: tuple[str, ...] = ()

    def survey(self) -> Counts:
        return self.preview(Scope.ALL, ())


@dataclass(eq=False)
class _Write:
    """One user's password set in the pipeline: where it is in the batch, the request's
    parts, and whether the server has taken the password (its follow-up then in flight)."""

    index: int
    item: PasswordSet
    dn: str
    #: Changes sent with the password itself (AD), None otherwise.
    joined: Changes | None
    #: Changes sent in a modify of their own once the password is taken (OpenLDAP).
    follow_up: Changes | None
    password_taken: bool = False


def _done(outcomes: Sequence[SetOutcome | None]) -> list[SetOutcome]:
    return [outcome for outcome in outcomes if outcome is not None]


def _require_tls(connection: Connection) -> None:
    # ldap3's own connection refuses nothing: never let a password leave without TLS (the
    # connection is made with it: connection.py; this holds should that ever change).
    if not (connection.server.ssl or connection.tls_started):
        raise ConfigError("DIRECTORY_URL: a password is never sent without TLS")


def _answer_words(answer: wire.Answer) -> str:
    return f"result {answer.code}: {(answer.diagnostic or result_name(answer.code))[:300]}"


def _first_of(attributes: Attributes, names: Sequence[str]) -> str:
    for name in names:
        value = first_text(attributes, name)
        if value and value.strip():
            return value.strip()
    return ""


def _next_cookie(result: Mapping[str, Any] | None) -> bytes | None:
    controls = (result or {}).get("controls") or {}
    value = (controls.get(PAGED_RESULTS) or {}).get("value") or {}
    cookie = value.get("cookie")
    return bytes(cookie) if cookie else None


def _said(result: Mapping[str, Any] | None) -> str:
    result = result or {}
    words = result.get("message") or result.get("description") or "no reason given"
    return f"result {result.get('result')}: {str(words)[:300]}"


def _clean(text: str, password: str) -> str:
    """A server's reason, never holding the password (a server might quote it)."""
    return text[:300].replace(password, "***") if password else text[:300]


def rules_for(profile: LdapProfile) -> ServerRules:
    """The server family the profile's password method names (OpenLDAP or Active Directory)."""
    check_family(profile)
    if profile.set_by == "password-modify":
        return OpenLdapRules(profile)
    return ActiveDirectoryRules(profile)
