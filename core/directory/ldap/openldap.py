"""OpenLDAP's rules (the `openldap` profile's family): Password Modify and the ppolicy overlay.

- The password: the RFC 3062 Password Modify extended operation, so the server hashes it by its
  own `olcPasswordHash` (and, with `ppolicy_hash_cleartext`, checks it against its policy
  first). resetbot never sees or writes `userPassword` itself.
- Must change: ppolicy's `pwdReset: TRUE`, written after the password (its own modify: the
  Password Modify removes pwdReset); not required: nothing to write, the Password Modify
  removed it.
- Unlock: nothing to write: ppolicy drops `pwdAccountLockedTime` (and `pwdFailureTime`) on a
  password change, except that a user locked on purpose gets ppolicy's permanent lock
  `000001010000Z` written back. A user set without must-change and not locked on purpose
  costs the server one write; the others two.
- Staff: the `member` and `uniqueMember` values of DIRECTORY_STAFF_GROUP (a groupOfNames or a
  groupOfUniqueNames), read once per scope read; no memberOf overlay needed.
- The password rules: the `pwdMinLength` of the `pwdPolicy` entries the service account can
  read under the base DN (enforced only where `pwdCheckQuality` is 1 or 2). The default policy
  is named in cn=config, which the service account cannot (and need not) read; where it reads
  several policies, the strictest is taken, so a password resetbot lets through the form is
  one every policy accepts.

Using resetbot with OpenLDAP (docs/openldap.md says it for operators, and
tests/scenarios/test_readme_ldap.py runs it as written)
-----------------------------------------------------------------------------------------------

    DIRECTORY_URL=ldaps://ldap.example.org/dc=example,dc=org      # or ldap://… (StartTLS)
    DIRECTORY_TLS_CA_FILE=/etc/ssl/certs/example-ldap-ca.pem       # default: the system's CAs
    DIRECTORY_BIND_DN=cn=resetbot,ou=services,dc=example,dc=org
    DIRECTORY_BIND_PASSWORD_FILE=/etc/resetbot/ldap-bind-password  # or DIRECTORY_BIND_PASSWORD
    DIRECTORY_PROFILE=openldap
    DIRECTORY_STAFF_GROUP=cn=staff,ou=groups,dc=example,dc=org

- TLS, always: `ldaps://` (port 636) or `ldap://` (389), which resetbot upgrades with StartTLS
  before it sends anything else; a server that will not start TLS gets no bind. The server's
  certificate must verify against DIRECTORY_TLS_CA_FILE (or the system's CAs) and name the
  URL's host; there is no setting that turns this off.
- The bind password is never shown, logged or stored (not in an error, not in `repr`). resetbot
  sets no password while ldap3's own protocol log is on, as that log would write it.
- Staff: the `member` (groupOfNames) or `uniqueMember` (groupOfUniqueNames) values of
  DIRECTORY_STAFF_GROUP. `all_without_role` leaves them alone.
- The users: `(objectClass=inetOrgPerson)` under the base DN; id `entryUUID`, username `uid`,
  name `displayName` else `cn`, e-mail `mail`. Searches are paged (RFC 2696): a size limit on
  the service account does not cut a scope short.

What a reset writes, only on the users it resets: the password, by the Password Modify
operation (RFC 3062: the server hashes it as its `olcPasswordHash` says, and with
`ppolicy_hash_cleartext` checks it against its policy first); `pwdReset` (TRUE when a change is
required, removed when not); `pwdAccountLockedTime` removed, except the permanent lock
`000001010000Z`, which stays (locked on purpose: counted in the preview). ppolicy itself updates
`pwdChangedTime` and `pwdHistory`. A password the server's policy refuses (too short, in its
history) is that user's outcome "refused by the directory", with the server's words; the others
go on. Never written: any other attribute, any other entry, `userPassword` as a value (resetbot
never reads or hashes it), cn=config.

The service account's rules (what Password Modify and ppolicy need, and nothing else; each
ends `by * break` so your own rules still decide for everyone else). Put them first in the
database's olcAccess, with your base and service DN (`ldapmodify -Y EXTERNAL -H ldapi:///`;
folded as LDIF folds: a line that starts with a space goes on the one before):

    olcAccess: {0}to attrs=userPassword
      by dn.exact="cn=resetbot,ou=services,dc=example,dc=org" =w by * break
    olcAccess: {1}to dn.subtree="ou=people,dc=example,dc=org" attrs=pwdReset,pwdAccountLockedTime
      by dn.exact="cn=resetbot,ou=services,dc=example,dc=org" write by * break
    olcAccess: {2}to dn.base="dc=example,dc=org" attrs=entry
      by dn.exact="cn=resetbot,ou=services,dc=example,dc=org" search by * break
    olcAccess: {3}to dn.subtree="ou=people,dc=example,dc=org"
      attrs=entry,objectClass,entryUUID,uid,cn,displayName,mail
      by dn.exact="cn=resetbot,ou=services,dc=example,dc=org" read by * break
    olcAccess: {4}to dn.subtree="ou=groups,dc=example,dc=org"
      attrs=entry,objectClass,member,uniqueMember
      by dn.exact="cn=resetbot,ou=services,dc=example,dc=org" read by * break
    olcAccess: {5}to dn.subtree="ou=policies,dc=example,dc=org"
      attrs=entry,objectClass,pwdMinLength,pwdCheckQuality
      by dn.exact="cn=resetbot,ou=services,dc=example,dc=org" read by * break

`=w` on userPassword is write without read: the account can set a password, never see one.
The ppolicy overlay wants `olcPPolicyHashCleartext: TRUE` (so the policy sees the new password)
and, for must-change, `pwdMustChange: TRUE` in the policy. The policy entry the account reads
gives the form its minimum length (`pwdMinLength`, where `pwdCheckQuality` is 1 or 2).
"""

from __future__ import annotations

from typing import Any

from ldap3 import BASE, MODIFY_REPLACE, SUBTREE, Connection
from ldap3.utils.conv import escape_filter_chars

from core.directory.ldap import wire
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
    result_name,
)
from core.directory.protocol import PasswordRules
from core.errors import ConfigError

#: ppolicy's "locked until an administrator unlocks": the library's own lock, kept.
PERMANENT_LOCK = "000001010000Z"
MEMBER_ATTRIBUTES = ("member", "uniqueMember")


class OpenLdapRules:
    #: Password Modify carries no other change: the follow-up is a modify of its own. (Measured
    #: on slapd 2.5 with pwdMustChange: ppolicy does not set pwdReset on the service account's
    #: Password Modify, so the follow-up is needed whenever a change is required. ppolicy sets
    #: it only for its "password administrator", an account with `manage` on userPassword,
    #: whose sets it also exempts from its quality and history checks: not resetbot's.)
    joins_after_set = False

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

    def set_password(
        self, connection: Connection, dn: str, password: str, changes: Changes | None = None
    ) -> Refusal | None:
        if changes:
            raise ValueError("Password Modify carries no other modification")
        connection.extend.standard.modify_password(user=dn, new_password=password)
        return _refusal(connection.result)

    def password_request(self, dn: str, password: str, changes: Changes | None = None) -> bytes:
        if changes:
            raise ValueError("Password Modify carries no other modification")
        return wire.password_modify_request(dn, password)

    def refusal_of(self, code: int, diagnostic: str, password: str) -> Refusal | None:
        if code == 0:
            return None
        return Refusal(code, diagnostic or result_name(code))

    def after_set(self, attributes: Attributes, must_change: bool) -> Changes:
        """Only what the Password Modify left otherwise. ppolicy, on a password change by an
        account that is not its password administrator (the service account's `=w` on
        userPassword is no `manage`), removes pwdReset and pwdAccountLockedTime itself
        (ppolicy.c, `zapReset` and the lock's delete; the tests read both back): so a set
        without must-change on a user not locked on purpose needs no second write."""
        changes: Changes = {}
        if must_change:
            changes["pwdReset"] = [(MODIFY_REPLACE, ["TRUE"])]
        # ppolicy's removal takes the permanent lock too: a lock on purpose is written back at
        # once (the new password, which nobody has been told yet, is usable for that one
        # round trip).
        if self.is_locked_on_purpose(attributes):
            changes["pwdAccountLockedTime"] = [(MODIFY_REPLACE, [PERMANENT_LOCK])]
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
