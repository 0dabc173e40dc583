"""Active Directory's rules (the `active-directory` profile's family), proven on Samba AD 4.17.

- The id: `objectGUID` (16 bytes, little-endian fields) kept as its usual text form
  (`ba367c83-1540-4f84-aa13-396e1396bc8f`); a user is found again by an escaped-bytes filter.
- The password: `unicodePwd` replaced with the password in double quotes, UTF-16LE, over TLS
  (AD refuses it otherwise), and never while ldap3's own protocol log is on (it writes request
  values, unicodePwd included, in clear). It is an administrator's reset (the "Reset Password"
  control access right): no old password, and AD does not check history on it (Samba 4.17 does
  not support the policy-hints control that would ask it to).
- Must change: `pwdLastSet=0`; not required: `pwdLastSet=-1` (now: the new password runs its
  normal life). Unlock: `lockoutTime=0`. These two, and the password, are all that is written.
- Locked on purpose: a disabled account (`userAccountControl` bit 2, ACCOUNTDISABLE). A reset
  never enables it; it is counted, and left out of generated-password tasks.
- Staff: members of DIRECTORY_STAFF_GROUP, nested groups included, found by the in-chain
  matching rule `(memberOf:1.2.840.113556.1.4.1941:=GROUP)` (the server walks the chain).
- The password rules: the domain's `minPwdLength` and `pwdProperties` (bit 1: complexity),
  read from the domain object (the root DSE's `defaultNamingContext`) at check time. The
  complexity rule is Microsoft's documented one ("Password must meet complexity requirements"):
  three of five kinds of character, and (for a given user) neither the account name nor any
  3+ character part of the display name in it. Samba 4.17 is more lenient (it counts any
  non-ASCII character as a kind and does not check names on a reset), so a password this
  check lets through is one Samba and Windows take.
- A refusal: AD answers `constraintViolation` with `0000052D` (its ERROR_PASSWORD_RESTRICTION)
  for every policy refusal; Windows says no more, Samba names the rule. `refusal_reason` turns
  both into a readable reason that never holds the password.
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ldap3 import BASE, MODIFY_REPLACE, SUBTREE, Connection
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.log import PROTOCOL, log_enabled

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
    flat_changes,
    normal_dn,
    result_name,
)
from core.directory.protocol import PasswordRules
from core.errors import ConfigError

#: LDAP_MATCHING_RULE_IN_CHAIN: membership through any depth of nested groups.
IN_CHAIN_RULE = "1.2.840.113556.1.4.1941"
#: userAccountControl's ACCOUNTDISABLE bit.
ACCOUNT_DISABLED = 0x2
#: pwdProperties' DOMAIN_PASSWORD_COMPLEX bit.
PASSWORD_COMPLEX = 0x1
#: The "Reset Password" control access right (User-Force-Change-Password).
RESET_PASSWORD_RIGHT = "00299570-246d-11d0-a768-00aa006e0529"  # noqa: S105 - a GUID
#: AD's ERROR_PASSWORD_RESTRICTION, in the diagnostic of a constraintViolation.
PASSWORD_RESTRICTION = "0000052D"  # noqa: S105 - an error code
CONSTRAINT_VIOLATION = 19
MUST_CHANGE_NOW = "0"
#: "Now": the password set is not to be changed at the next sign-in.
NOT_REQUIRED = "-1"

#: Microsoft's non-alphanumeric kind (currency symbols and spaces are not in it).
SPECIAL_CHARACTERS = frozenset("~!@#$%^&*_-+=`|\\(){}[]:;\"'<>,.?/")
#: Where a display name is cut into the parts a password may not contain.
DISPLAY_NAME_DELIMITERS = frozenset(",.-_ #\t")
#: Shorter names and parts are not checked.
NAME_PART_MINIMUM = 3
COMPLEXITY_KINDS = 3

#: The `data` code of a refused simple bind (`80090308: LdapErr: … data 773, …`).
BIND_REFUSALS = {
    "525": "no such user",
    "52e": "wrong password",
    "530": "not permitted to sign in at this time",
    "531": "not permitted to sign in at this workstation",
    "532": "password expired",
    "533": "account disabled",
    "701": "account expired",
    "773": "right password, but it must be changed first",
    "775": "account locked out",
}
_BIND_DATA = re.compile(r"\bdata ([0-9a-fA-F]+)\b")


# --- ids ---------------------------------------------------------------------------------------


def guid_text(raw: bytes | bytearray) -> str:
    """objectGUID's 16 bytes as the text AD tools show (and resetbot keeps)."""
    return str(uuid.UUID(bytes_le=bytes(raw)))


def guid_filter(user_id: str, attribute: str = "objectGUID") -> str:
    """An equality filter for a kept GUID: its bytes escaped (RFC 4515). ValueError for text
    that is no GUID."""
    escaped = "".join(f"\\{byte:02x}" for byte in uuid.UUID(user_id).bytes_le)
    return f"({attribute}={escaped})"


# --- writing -----------------------------------------------------------------------------------


def unicode_pwd(password: str) -> bytes:
    """The value AD takes for `unicodePwd`: the password in double quotes, UTF-16LE."""
    return f'"{password}"'.encode("utf-16-le")


def password_changes(password: str) -> Changes:
    return {"unicodePwd": [(MODIFY_REPLACE, [unicode_pwd(password)])]}


def after_set_changes(must_change: bool) -> Changes:
    """What follows a set: must change or not, and the lockout cleared. Never
    userAccountControl: a disabled account stays disabled."""
    return {
        "pwdLastSet": [(MODIFY_REPLACE, [MUST_CHANGE_NOW if must_change else NOT_REQUIRED])],
        "lockoutTime": [(MODIFY_REPLACE, ["0"])],
    }


def set_unicode_pwd(
    connection: Connection, dn: str, password: str, changes: Changes | None = None
) -> Refusal | None:
    """Replace the user's password (and make `changes` in the same modify: one write); None
    when the server took it, else its Refusal (the caller raises for what is not the user's
    policy: see server.POLICY_REFUSALS)."""
    if not (connection.server.ssl or connection.tls_started):
        # AD would refuse too (unwillingToPerform): never let a password leave without TLS.
        raise ConfigError("DIRECTORY_URL: a password is never sent without TLS")
    if log_enabled(PROTOCOL):
        # ldap3's protocol log writes each request with its values: unicodePwd in clear.
        raise ConfigError("ldap3's own log is at PROTOCOL detail or more and would write the "
                          "password: lower it (ldap3.utils.log.set_library_log_detail_level)")
    try:
        connection.modify(dn, {**password_changes(password), **(changes or {})})
    finally:
        # ldap3 keeps the last request, values included, on the connection.
        connection.request = None
    return refusal(connection.result, password)


def refusal(result: dict[str, Any] | None, password: str = "") -> Refusal | None:
    """None for success; otherwise the result code and a readable reason without the password."""
    result = result or {}
    code = int(result.get("result", -1))
    if code == 0:
        return None
    message = str(result.get("message") or "")
    return Refusal(code, refusal_reason(code, message, str(result.get("description") or ""),
                                        password))


def refusal_reason(code: int, message: str, description: str = "", password: str = "") -> str:
    """A server refusal in words: AD's `constraintViolation … 0000052D` becomes "the domain's
    password policy refused it" with the rule when the server names it (Samba does)."""
    if password:
        # Masked in the server's text before any of it is trimmed, capitalised or cut: each
        # would leave a part of the password the mask no longer matches.
        message = message.replace(password, "***")
    if code == CONSTRAINT_VIOLATION and PASSWORD_RESTRICTION in message.upper():
        detail = _policy_detail(message)
        reason = ("The directory refused the password: "
                  + (detail or "it does not meet the domain's password policy (length, "
                               "complexity, history or minimum age; a fine-grained policy "
                               "may apply to this user)."))
    else:
        first_line = message.strip().splitlines()[0] if message.strip() else ""
        reason = f"The directory refused the password ({description or code}: {first_line})"
    return reason[:300]


def _policy_detail(message: str) -> str | None:
    # Samba: "0000052D: Constraint violation - check_password_restrictions: the password is
    # too short. It should be equal or longer than 7 characters!"
    marker = "check_password_restrictions:"
    if marker not in message:
        return None
    detail = message.split(marker, 1)[1].strip().splitlines()[0].strip().rstrip("!")
    if not detail:
        return None
    detail = detail[0].upper() + detail[1:]
    return detail if detail.endswith(".") else detail + "."


def bind_refusal(message: str) -> str | None:
    """The `data` code of a refused simple bind in words ("773": must change), None without."""
    found = _BIND_DATA.search(message)
    if found is None:
        return None
    code = found.group(1).lower()
    return BIND_REFUSALS.get(code, f"refused (data {code})")


# --- reading -----------------------------------------------------------------------------------


def is_disabled(attributes: Attributes) -> bool:
    text = first_text(attributes, "userAccountControl")
    try:
        flags = int(text) if text is not None else 0
    except ValueError:
        return False
    return bool(flags & ACCOUNT_DISABLED)


def is_locked_out(attributes: Attributes) -> bool:
    """Whether the server locked the account after failed sign-ins (a reset unlocks it)."""
    text = first_text(attributes, "lockoutTime")
    return text is not None and text not in ("0", "")


def staff_filter(group_dn: str) -> str:
    """Members of the group, through nested groups too."""
    return f"(memberOf:{IN_CHAIN_RULE}:={escape_filter_chars(group_dn)})"


def domain_dn(connection: Connection) -> str:
    """The domain's DN, from the root DSE (readable by any signed-in account)."""
    connection.search("", "(objectClass=*)", BASE, attributes=["defaultNamingContext"])
    for entry in connection.response or []:
        value = first_text(attributes_of(entry), "defaultNamingContext")
        if value:
            return value
    raise ConfigError("DIRECTORY_URL: the server names no domain (defaultNamingContext): is it "
                      "Active Directory?")


@dataclass(frozen=True)
class AdPasswordRules(PasswordRules):
    """The domain's rules; complexity checked as Microsoft documents it, not as kinds alone."""

    def violations(self, password: str) -> list[str]:
        return self.violations_for(password)

    def violations_for(
        self, password: str, account_name: str | None = None, display_name: str | None = None
    ) -> list[str]:
        """Every reason the domain would refuse `password` (for this user, when named)."""
        reasons: list[str] = []
        if self.min_length is not None and ad_length(password) < self.min_length:
            reasons.append(
                f"The directory refuses passwords shorter than {self.min_length} characters "
                f"({self.source})."
            )
        if self.complexity:
            reasons.extend(
                f"{reason} ({self.source})."
                for reason in complexity_violations(password, account_name, display_name)
            )
        return reasons


def read_password_rules(connection: Connection) -> AdPasswordRules:
    """The domain's minPwdLength and complexity, read now (any signed-in account may)."""
    dn = domain_dn(connection)
    connection.search(dn, "(objectClass=*)", BASE, attributes=["minPwdLength", "pwdProperties"])
    attributes = next((attributes_of(entry) for entry in connection.response or []
                       if entry.get("type") == "searchResEntry"), {})
    length = _number(first_text(attributes, "minPwdLength"))
    properties = _number(first_text(attributes, "pwdProperties")) or 0
    return AdPasswordRules(
        source=f"the domain policy of {dn}",
        min_length=length or None,
        complexity=bool(properties & PASSWORD_COMPLEX),
    )


# --- Microsoft's complexity rule ---------------------------------------------------------------


def ad_length(password: str) -> int:
    """AD counts UTF-16 code units."""
    return len(password.encode("utf-16-le")) // 2


def character_kinds(password: str) -> set[str]:
    """Which of Microsoft's five kinds the password holds: uppercase, lowercase, digits (0-9),
    the listed non-alphanumeric characters, and letters that are neither upper nor lower case
    (most Asian scripts)."""
    kinds: set[str] = set()
    for ch in password:
        if ch in SPECIAL_CHARACTERS:
            kinds.add("special")
        elif "0" <= ch <= "9":
            kinds.add("digit")
        elif ch.isupper():
            kinds.add("upper")
        elif ch.islower():
            kinds.add("lower")
        elif unicodedata.category(ch).startswith("L"):
            kinds.add("other letter")
        # anything else (spaces, currency, other symbols) is of no kind
    return kinds


def display_name_parts(display_name: str) -> list[str]:
    """The display name cut at commas, periods, hyphens, underscores, spaces, # and tabs;
    parts shorter than three characters are not checked."""
    parts: list[str] = []
    current: list[str] = []
    for ch in display_name:
        if ch in DISPLAY_NAME_DELIMITERS:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return [part for part in parts if len(part) >= NAME_PART_MINIMUM]


def complexity_violations(
    password: str, account_name: str | None = None, display_name: str | None = None
) -> list[str]:
    """Microsoft's complexity rule, reasons worded for the person typing (no password in them)."""
    reasons: list[str] = []
    if len(character_kinds(password)) < COMPLEXITY_KINDS:
        reasons.append(
            "The directory asks for three of: uppercase letters, lowercase letters, digits, "
            "the characters ~!@#$%^&*_-+=`|\\(){}[]:;\"'<>,.?/, letters of scripts without case"
        )
    folded = password.casefold()
    if (account_name and len(account_name) >= NAME_PART_MINIMUM
            and account_name.casefold() in folded):
        reasons.append("The directory refuses a password that contains the user's account name")
    if display_name and _contains_any(folded, display_name_parts(display_name)):
        reasons.append("The directory refuses a password that contains a part of the user's "
                       "display name")
    return reasons


def _contains_any(folded_password: str, parts: Iterable[str]) -> bool:
    return any(part.casefold() in folded_password for part in parts)


def _number(text: str | None) -> int | None:
    try:
        return None if text is None else int(text)
    except ValueError:
        return None


# --- the rules the LDAP directory calls (server.ServerRules) -----------------------------------


class ActiveDirectoryRules:
    #: unicodePwd, pwdLastSet and lockoutTime go in one modify (AD applies them together).
    joins_after_set = True

    def __init__(self, profile: LdapProfile) -> None:
        self.profile = profile

    def id_text(self, raw: Any) -> str:
        return guid_text(raw) if isinstance(raw, bytes | bytearray) else str(uuid.UUID(str(raw)))

    def id_filter(self, user_id: str) -> str:
        return guid_filter(user_id, self.profile.id)

    def extra_attributes(self) -> list[str]:
        return ["userAccountControl", "lockoutTime"]

    def staff_dns(self, connection: Connection, config: LdapConfig) -> frozenset[str]:
        group = config.staff_group
        if group is None:
            return frozenset()
        connection.search(group, "(objectClass=group)", BASE, attributes=["objectClass"])
        found = [entry for entry in connection.response or []
                 if entry.get("type") == "searchResEntry"]
        if connection.result.get("result") == NO_SUCH_OBJECT or not found:
            raise ConfigError(f"DIRECTORY_STAFF_GROUP: there is no group {group!r} (or the "
                              "service account cannot read it)")
        entries = connection.extend.standard.paged_search(
            config.base_dn,
            f"(&{self.profile.object_filter}{staff_filter(group)})",
            SUBTREE,
            attributes=["objectGUID"],
            paged_size=1000,
            generator=True,
        )
        return frozenset(normal_dn(str(entry["dn"])) for entry in entries
                         if entry.get("type") == "searchResEntry")

    def is_locked_on_purpose(self, attributes: Attributes) -> bool:
        return is_disabled(attributes)

    def set_password(
        self, connection: Connection, dn: str, password: str, changes: Changes | None = None
    ) -> Refusal | None:
        return set_unicode_pwd(connection, dn, password, changes)

    def password_request(self, dn: str, password: str, changes: Changes | None = None) -> bytes:
        return wire.modify_request(dn, flat_changes({**password_changes(password),
                                                     **(changes or {})}))

    def refusal_of(self, code: int, diagnostic: str, password: str) -> Refusal | None:
        if code == 0:
            return None
        return Refusal(code, refusal_reason(code, diagnostic, result_name(code), password))

    def after_set(self, attributes: Attributes, must_change: bool) -> Changes:
        return after_set_changes(must_change)

    def password_rules(self, connection: Connection, config: LdapConfig) -> PasswordRules:
        return read_password_rules(connection)
