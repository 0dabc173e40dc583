"""What differs between LDAP servers, behind one small interface the LDAP directory calls.

A profile's rule kinds come in families: OpenLDAP's (Password Modify, pwdReset,
pwdAccountLockedTime, a group's member values, the ppolicy entries) in `openldap.py`, Active
Directory's (unicodePwd, pwdLastSet, lockoutTime, nested membership, the domain's rules) in
`active_directory.py`. `directory.rules_for(profile)` gives the family the profile's password method
names; `check_family` refuses (at load) a profile whose other kinds belong to another family.

Everything a rule reads or writes goes through the one connection the directory holds; a rule
never opens its own. `Attributes` is an entry's raw attributes (ldap3's `raw_attributes`: lists
of bytes), keyed by the attribute's name lower-cased (`attributes_of(entry)`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from ldap3 import Connection
from ldap3.core.results import RESULT_CODES

from core.directory.ldap.config import LdapConfig
from core.directory.ldap.profile import LdapProfile
from core.directory.protocol import PasswordRules
from core.errors import ConfigError

Attributes = Mapping[str, list[bytes]]
#: ldap3's modify changes: attribute -> [(MODIFY_REPLACE | MODIFY_DELETE, [values])].
Changes = dict[str, list[tuple[str, list[Any]]]]


@dataclass(frozen=True)
class Refusal:
    """The server said no to one user's password: its result code and its own words."""

    code: int
    reason: str


class ServerRules(Protocol):
    """One server family's rules, bound to a profile."""

    profile: LdapProfile

    def id_text(self, raw: Any) -> str:
        """The id resetbot keeps, from the id attribute's raw value (entryUUID's text,
        objectGUID's bytes)."""

    def id_filter(self, user_id: str) -> str:
        """An equality filter for one kept id, its value escaped (RFC 4515)."""

    def extra_attributes(self) -> list[str]:
        """Attributes the rules need read with each user, beyond the profile's."""

    def staff_dns(self, connection: Connection, config: LdapConfig) -> frozenset[str]:
        """The DNs of the staff (DIRECTORY_STAFF_GROUP's members), each as `normal_dn` gives it;
        empty without a staff group."""

    def is_locked_on_purpose(self, attributes: Attributes) -> bool:
        """Whether the library locked this user on purpose (kept locked, counted)."""

    #: Whether the server takes the follow-up modifications in the password's own request
    #: (AD: one modify), so that each user costs one write.
    joins_after_set: bool

    def set_password(
        self, connection: Connection, dn: str, password: str, changes: Changes | None = None
    ) -> Refusal | None:
        """Hand the server the new password (with `changes` in the same request, where
        `joins_after_set`); a Refusal when its policy says no. Raises ldap3's LDAPException (or
        OSError) when the connection breaks."""

    def password_request(self, dn: str, password: str, changes: Changes | None = None) -> bytes:
        """The request `set_password` sends, encoded (wire.py) for the pipelined writes."""

    def refusal_of(self, code: int, diagnostic: str, password: str) -> Refusal | None:
        """A password request's result as `set_password` reads it: None for success, else the
        Refusal with the server's words (never holding `password`)."""

    def after_set(self, attributes: Attributes, must_change: bool) -> Changes:
        """The modifications that follow a password set: must-change, unlock (never the lock
        on purpose). Empty when nothing is to change."""

    def password_rules(self, connection: Connection, config: LdapConfig) -> PasswordRules:
        """The server's own rules for a new password, read now."""


#: Result codes with which a server refuses one user's password by its policy (the user's
#: outcome is "refused by the directory"; the batch goes on).
POLICY_REFUSALS = frozenset({19, 53})  # constraintViolation, unwillingToPerform
NO_SUCH_OBJECT = 32
INSUFFICIENT_ACCESS = 50


def result_name(code: int) -> str:
    """An LDAP result code's name (RFC 4511: `constraintViolation`), or its number."""
    return str(RESULT_CODES.get(code, code))


def flat_changes(changes: Changes) -> list[tuple[str, str, list[Any]]]:
    """ldap3's changes as wire.modify_request takes them: (attribute, operation, values)."""
    return [(name, operation, values) for name, each in changes.items()
            for operation, values in each]


def attributes_of(entry: Mapping[str, Any]) -> dict[str, list[bytes]]:
    """An ldap3 search entry's raw attributes, keyed by lower-cased name."""
    raw = entry.get("raw_attributes") or {}
    return {str(name).lower(): list(values) for name, values in raw.items()}


def first_text(attributes: Attributes, name: str) -> str | None:
    """The first value of `name` as text (UTF-8), None when absent or empty."""
    values = attributes.get(name.lower()) or []
    if not values:
        return None
    value = values[0]
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return text or None


def normal_dn(dn: str) -> str:
    """A DN compared as text: lower-cased, spaces around ',' and '=' taken out (good enough for
    DNs a server wrote itself; neither escapes nor multi-valued RDNs are reordered)."""
    parts = [part.strip() for part in dn.split(",")]
    return ",".join("=".join(side.strip() for side in part.split("=", 1)) for part in parts).lower()


#: Which family each password method belongs to, and the kinds that go with it.
FAMILIES: dict[str, dict[str, str]] = {
    "password-modify": {"must_change": "pwd-reset", "unlock": "pwd-account-locked-time",
                        "locked_on_purpose": "ppolicy-permanent"},
    "unicode-pwd": {"must_change": "pwd-last-set", "unlock": "lockout-time",
                    "locked_on_purpose": "account-disabled"},
}


def check_family(profile: LdapProfile) -> None:
    """Refuse kinds from two server families (pwdReset with unicodePwd makes no sense)."""
    for key, kind in FAMILIES[profile.set_by].items():
        if getattr(profile, key) != kind:
            raise ConfigError(
                f"{profile.source}: ldap.{key}: {getattr(profile, key)!r} does not go with "
                f"password = {profile.set_by!r} (expected {kind!r})"
            )
