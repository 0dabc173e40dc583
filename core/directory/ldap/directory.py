"""A directory on an LDAP server (OpenLDAP or Active Directory), as core/directory/protocol.py
describes: one bound TLS connection per worker, paged searches, passwords handed to the server.

How it reads:
- every search is paged (RFC 2696, `page_size` entries a page), so a server's size limit on
  the service account never cuts a scope short;
- a scope is the profile's object filter under the base DN, with the selection's ids as an OR
  of equality filters; `all_without_role` leaves out the staff group's members, whose DNs are
  read once per scope read (ServerRules.staff_dns);
- LDAP has no COUNT: a preview reads the scope's entries (their named attributes only) and
  counts them here;
- `scope_batch` streams in id order: the scope's users are read once (paged) into a sorted list
  kept while a planner walks it, so each batch is a slice, not a new search.

How it writes (`set_passwords`): per user, the server's own password operation (ServerRules:
Password Modify or unicodePwd), then the must-change and unlock modifications. A policy refusal
(constraintViolation, unwillingToPerform) is that user's "refused" outcome with the server's
words, and the batch goes on; a connection that breaks raises DirectoryUnavailable carrying the
outcomes so far (nothing names a password).

Made from Settings by core/directory/factory.py (an `ldaps://` or `ldap://` DIRECTORY_URL).
"""

from __future__ import annotations

import threading
from bisect import bisect_right
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ldap3 import BASE, SUBTREE, Connection
from ldap3.core.exceptions import LDAPException
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.log import PROTOCOL, log_enabled

from core.addresses import usable_address
from core.directory.ldap.active_directory import ActiveDirectoryRules
from core.directory.ldap.config import LdapConfig
from core.directory.ldap.connection import close_quietly, connect, unavailable
from core.directory.ldap.openldap import OpenLdapRules
from core.directory.ldap.profile import LdapProfile
from core.directory.ldap.server import (
    INSUFFICIENT_ACCESS,
    NO_SUCH_OBJECT,
    POLICY_REFUSALS,
    Attributes,
    ServerRules,
    attributes_of,
    check_family,
    first_text,
    normal_dn,
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


class LdapDirectory:
    """The users of an LDAP directory under its profile, over one connection (thread-safe)."""

    owns_users = False

    def __init__(self, config: LdapConfig, *, page_size: int = DEFAULT_PAGE_SIZE) -> None:
        self.config = config
        self.profile = config.profile
        self.rules: ServerRules = rules_for(config.profile)
        self.page_size = page_size
        self._connection: Connection | None = None
        self._lock = threading.RLock()
        self._walk: tuple[tuple[Scope, tuple[UserId, ...]], list[User]] | None = None
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
            self._walk = None

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
        """Every entry under the base DN matching the filter, read page by page."""
        wanted = self._attributes() if attributes is None else attributes
        entries: list[_Entry] = []
        cookie: bytes | None = None
        with self._lock:
            try:
                connection = self._bound()
                while True:
                    connection.search(
                        self.config.base_dn, search_filter, SUBTREE, attributes=wanted,
                        paged_size=self.page_size, paged_cookie=cookie,
                    )
                    self._require_success(connection.result)
                    entries.extend(
                        _Entry(str(entry["dn"]), attributes_of(entry))
                        for entry in connection.response or []
                        if entry.get("type") == "searchResEntry"
                    )
                    cookie = _next_cookie(connection.result)
                    if not cookie:
                        return entries
            except (LDAPException, OSError) as error:
                raise self._broken(error) from None

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
        )

    def _read_users(self, search_filter: str) -> list[User]:
        staff = self._staff()
        return [self._user(entry, staff) for entry in self._search(search_filter)]

    def _by_ids(self, ids: Sequence[UserId]) -> list[_Entry]:
        wanted = sorted(set(ids))
        found: list[_Entry] = []
        for start in range(0, len(wanted), IDS_PER_FILTER):
            found += self._search(self._users_filter(self._ids_filter(
                wanted[start : start + IDS_PER_FILTER]
            )))
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
        """Every user of the scope, in id order."""
        if scope.needs_selection and not selection:
            raise InputError("Pick at least one user for this scope.", field="users")
        if scope is Scope.SELECTED_ONLY:
            return self.users_by_id(selection)
        search_filter = self.profile.object_filter
        if scope is Scope.ALL_EXCEPT_SELECTED:
            search_filter = self._users_filter(f"(!{self._ids_filter(sorted(set(selection)))})")
        users = self._read_users(search_filter)
        if scope is Scope.ALL_WITHOUT_ROLE:
            users = [user for user in users if not user.is_staff]
        return sorted(users, key=lambda user: user.id)

    def preview(self, scope: Scope, selection: Sequence[UserId]) -> Counts:
        users = self.scope_users(scope, selection)
        emailable = sum(1 for user in users if user.has_email)
        return Counts(
            users=len(users),
            emailable=emailable,
            without_email=len(users) - emailable,
            staff=sum(1 for user in users if user.is_staff),
            locked=sum(1 for user in users if user.locked_on_purpose),
        )

    def scope_batch(
        self, scope: Scope, selection: Sequence[UserId], after: UserId | None, limit: int
    ) -> list[User]:
        key = (scope, tuple(selection))
        with self._lock:
            if after is None or self._walk is None or self._walk[0] != key:
                self._walk = (key, self.scope_users(scope, selection))
            users = self._walk[1]
        start = 0
        if after is not None:
            start = _first_after(users, after)
        return users[start : start + limit]

    def usernames_in_password(
        self, password: str, scope: Scope, selection: Sequence[UserId], *,
        without_email_only: bool = False,
    ) -> int:
        lowered = password.lower()
        return sum(
            1 for user in self.scope_users(scope, selection)
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
        for user in self._read_users(self.profile.object_filter):
            yield PickerRow(user.id, user.username, user.full_name, None, user.email,
                            user.is_staff)

    # -- writing -------------------------------------------------------------------------------

    def set_passwords(self, batch: Sequence[PasswordSet]) -> list[SetOutcome]:
        if log_enabled(PROTOCOL):
            # Measured: ldap3's protocol log writes a Password Modify request's value, the new
            # password in it, as it is (it hides only bind passwords and userPassword values).
            raise ConfigError(
                "ldap3's own log is at PROTOCOL detail or more and would write the new "
                "passwords: lower it (ldap3.utils.log.set_library_log_detail_level)"
            )
        entries = {self._id_of(entry): entry for entry in self._by_ids(
            [item.user_id for item in batch]
        )}
        done: list[SetOutcome] = []
        with self._lock:
            for item in batch:
                entry = entries.get(item.user_id)
                if entry is None:
                    done.append(SetOutcome(item.user_id, SetResult.NOT_FOUND))
                    continue
                done.append(self._set_one(entry, item, done))
        return done

    def _set_one(self, entry: _Entry, item: PasswordSet, done: list[SetOutcome]) -> SetOutcome:
        try:
            connection = self._bound()
            refusal = self.rules.set_password(connection, entry.dn, item.password)
            if refusal is not None:
                if refusal.code in POLICY_REFUSALS:
                    return SetOutcome(item.user_id, SetResult.REFUSED,
                                      _clean(refusal.reason, item.password))
                if refusal.code == NO_SUCH_OBJECT:
                    return SetOutcome(item.user_id, SetResult.NOT_FOUND)
                raise DirectoryUnavailable(
                    f"the directory {self.config.url.shown} did not set a password (result "
                    f"{refusal.code}: {_clean(refusal.reason, item.password)}; resetbot tries "
                    "again)", done,
                )
            changes = self.rules.after_set(entry.attributes, item.must_change)
            if changes:
                connection.modify(entry.dn, changes)
                if connection.result.get("result") != 0:
                    raise DirectoryUnavailable(
                        f"the directory {self.config.url.shown} took a new password but not "
                        f"its must-change and unlock attributes ({_said(connection.result)}); "
                        "resetbot tries again", [*done, SetOutcome(item.user_id, SetResult.SET)],
                    )
        except (LDAPException, OSError) as error:
            raise self._broken(error, done) from None
        return SetOutcome(item.user_id, SetResult.SET)

    def _id_of(self, entry: _Entry) -> UserId:
        return self.rules.id_text((entry.attributes.get(self.profile.id.lower()) or [b""])[0])

    def password_rules(self) -> PasswordRules:
        with self._lock:
            try:
                return self.rules.password_rules(self._bound(), self.config)
            except (LDAPException, OSError) as error:
                raise self._broken(error) from None

    def rules_for_scope(self, scope: Scope, selection: Sequence[UserId]) -> ScopeRules:
        """The server's rules are everyone's: read when a password is first checked."""
        return RulesWhenAsked(self.password_rules)

    #: The server hashes for itself: no hash of resetbot's bounds a password.
    hash_schemes: tuple[str, ...] = ()

    def survey(self) -> Counts:
        return self.preview(Scope.ALL, ())


def _first_of(attributes: Attributes, names: Sequence[str]) -> str:
    for name in names:
        value = first_text(attributes, name)
        if value and value.strip():
            return value.strip()
    return ""


def _first_after(users: list[User], after: UserId) -> int:
    return bisect_right([user.id for user in users], after)


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
