"""OpenLDAP's rules (the `openldap` profile's family): Password Modify and the ppolicy overlay.

- The password: the RFC 3062 Password Modify extended operation, so the server hashes it by its
  own `olcPasswordHash` (and, with `ppolicy_hash_cleartext`, checks it against its policy
  first). resetbot never sees or writes `userPassword` itself.
- Must change: ppolicy's `pwdReset: TRUE`; not required: `pwdReset` removed (a replace with no
  value: no error when it is not there).
- Unlock: `pwdAccountLockedTime` removed (ppolicy also drops it, and `pwdFailureTime`, on a
  password change), except on a user locked on purpose: ppolicy's permanent lock
  `000001010000Z` is written back.
- Staff: the `member` and `uniqueMember` values of DIRECTORY_STAFF_GROUP (a groupOfNames or a
  groupOfUniqueNames), read once per scope read; no memberOf overlay needed.
- The password rules: the `pwdMinLength` of the `pwdPolicy` entries the service account can
  read under the base DN (enforced only where `pwdCheckQuality` is 1 or 2). The default policy
  is named in cn=config, which the service account cannot (and need not) read; where it reads
  several policies, the strictest is taken, so a password resetbot lets through the form is
  one every policy accepts.
"""

from __future__ import annotations

from typing import Any

from ldap3 import BASE, MODIFY_REPLACE, SUBTREE, Connection
from ldap3.utils.conv import escape_filter_chars

from core.directory.ldap.config import LdapConfig
from core.directory.ldap.profile import LdapProfile
from core.directory.ldap.server import (
    NO_SUCH_OBJECT,
    Attributes,
    Changes,
    Refusal,
    attributes_of,
    first_text,
    normal_dn,
)
from core.directory.protocol import PasswordRules
from core.errors import ConfigError

#: ppolicy's "locked until an administrator unlocks": the library's own lock, kept.
PERMANENT_LOCK = "000001010000Z"
MEMBER_ATTRIBUTES = ("member", "uniqueMember")


class OpenLdapRules:
    def __init__(self, profile: LdapProfile) -> None:
        self.profile = profile

    def id_text(self, raw: Any) -> str:
        return raw.decode("ascii") if isinstance(raw, bytes) else str(raw)

    def id_filter(self, user_id: str) -> str:
        return f"({self.profile.id}={escape_filter_chars(user_id)})"

    def extra_attributes(self) -> list[str]:
        return ["pwdAccountLockedTime"]

    def staff_dns(self, connection: Connection, config: LdapConfig) -> frozenset[str]:
        group = config.staff_group
        if group is None:
            return frozenset()
        connection.search(group, "(objectClass=*)", BASE, attributes=list(MEMBER_ATTRIBUTES))
        if connection.result.get("result") == NO_SUCH_OBJECT:
            raise ConfigError(f"DIRECTORY_STAFF_GROUP: there is no entry {group!r} (or the "
                              "service account cannot read it)")
        members: set[str] = set()
        for entry in connection.response or []:
            attributes = attributes_of(entry)
            for name in MEMBER_ATTRIBUTES:
                members.update(_member_dn(value) for value in attributes.get(name.lower(), []))
        return frozenset(members)

    def is_locked_on_purpose(self, attributes: Attributes) -> bool:
        return first_text(attributes, "pwdAccountLockedTime") == PERMANENT_LOCK

    def set_password(self, connection: Connection, dn: str, password: str) -> Refusal | None:
        connection.extend.standard.modify_password(user=dn, new_password=password)
        return _refusal(connection.result)

    def after_set(self, attributes: Attributes, must_change: bool) -> Changes:
        changes: Changes = {"pwdReset": [(MODIFY_REPLACE, ["TRUE"] if must_change else [])]}
        # ppolicy itself removes pwdAccountLockedTime when a password is changed, the
        # permanent lock included: a lock on purpose is written back at once (the new password,
        # which nobody has been told yet, is usable for that one round trip).
        locked = self.is_locked_on_purpose(attributes)
        changes["pwdAccountLockedTime"] = [(MODIFY_REPLACE, [PERMANENT_LOCK] if locked else [])]
        return changes

    def password_rules(self, connection: Connection, config: LdapConfig) -> PasswordRules:
        connection.search(
            config.base_dn, "(objectClass=pwdPolicy)", SUBTREE,
            attributes=["pwdMinLength", "pwdCheckQuality"],
        )
        strictest: tuple[int, str] | None = None
        for entry in connection.response or []:
            if entry.get("type") != "searchResEntry":
                continue
            attributes = attributes_of(entry)
            quality = _number(first_text(attributes, "pwdCheckQuality"))
            length = _number(first_text(attributes, "pwdMinLength"))
            if quality in (1, 2) and length and (strictest is None or length > strictest[0]):
                strictest = (length, str(entry["dn"]))
        if strictest is None:
            return PasswordRules(source="no password policy the service account can read")
        return PasswordRules(source=f"ppolicy {strictest[1]}", min_length=strictest[0])


def _refusal(result: dict[str, Any] | None) -> Refusal | None:
    """None when the server took it; a Refusal for its policy's no. Anything else (no access,
    the server busy) is for the caller to raise."""
    result = result or {}
    code = int(result.get("result", -1))
    if code == 0:
        return None
    reason = str(result.get("message") or result.get("description") or "refused")
    return Refusal(code, reason)


def _member_dn(value: bytes) -> str:
    """A member value as a DN: uniqueMember's optional `#'0101'B` unique id taken off."""
    text = value.decode("utf-8", "replace")
    if "#'" in text and text.endswith("'B"):
        text = text[: text.rindex("#'")]
    return normal_dn(text)


def _number(text: str | None) -> int | None:
    try:
        return None if text is None else int(text)
    except ValueError:
        return None
