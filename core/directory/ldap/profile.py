"""LDAP directory profiles: where the users are, what their attributes are called, and which of
the rule kinds resetbot knows sets the password, asks for a change, unlocks and reads staff.

`DIRECTORY_PROFILE=openldap` or `active-directory` (shipped in `profiles/` beside this module),
or the path of a TOML file whose `[ldap]` section holds these keys:

    [ldap]
    object_filter = "(objectClass=inetOrgPerson)"   # the users, under the base DN
    id = "entryUUID"                # the id resetbot keeps; id_syntax: "text" or "guid"
    id_syntax = "text"              # "guid": AD's binary objectGUID, kept as its text form
    username = "uid"                # or a list: the first one not empty
    name = ["displayName", "cn"]    # the first one not empty
    email = "mail"
    staff = "group-members"         # DIRECTORY_STAFF_GROUP's member/uniqueMember values;
                                    # "member-of-in-chain": AD's nested membership
    password = "password-modify"    # RFC 3062; "unicode-pwd": AD's quoted UTF-16LE replace
    must_change = "pwd-reset"       # ppolicy pwdReset; "pwd-last-set": AD's pwdLastSet 0/-1
    unlock = "pwd-account-locked-time"   # ppolicy; "lockout-time": AD's lockoutTime=0
    locked_on_purpose = "ppolicy-permanent"   # pwdAccountLockedTime 000001010000Z;
                                    # "account-disabled": AD's userAccountControl bit 2
    password_rules = "ppolicy"      # pwdMinLength; "ad-domain": minPwdLength, pwdProperties;
                                    # "none"

Each refusal is one line naming the file, the key and the reason, as for the SQL profiles
(core/directory/sql/profile.py).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

from core.errors import ConfigError

IdSyntax = Literal["text", "guid"]
StaffKind = Literal["group-members", "member-of-in-chain"]
PasswordMethod = Literal["password-modify", "unicode-pwd"]
MustChangeKind = Literal["pwd-reset", "pwd-last-set"]
UnlockKind = Literal["pwd-account-locked-time", "lockout-time"]
LockedKind = Literal["ppolicy-permanent", "account-disabled"]
RulesKind = Literal["ppolicy", "ad-domain", "none"]

ID_SYNTAXES: tuple[IdSyntax, ...] = ("text", "guid")
STAFF_KINDS: tuple[StaffKind, ...] = ("group-members", "member-of-in-chain")
PASSWORD_METHODS: tuple[PasswordMethod, ...] = ("password-modify", "unicode-pwd")
MUST_CHANGE_KINDS: tuple[MustChangeKind, ...] = ("pwd-reset", "pwd-last-set")
UNLOCK_KINDS: tuple[UnlockKind, ...] = ("pwd-account-locked-time", "lockout-time")
LOCKED_KINDS: tuple[LockedKind, ...] = ("ppolicy-permanent", "account-disabled")
RULES_KINDS: tuple[RulesKind, ...] = ("ppolicy", "ad-domain", "none")

#: An attribute description: a name (letters, digits, hyphens) or an OID, without options.
_ATTRIBUTE = re.compile(r"[A-Za-z][A-Za-z0-9-]*|\d+(?:\.\d+)+")
SHIPPED = ("openldap", "active-directory")

K = TypeVar("K", bound=str)


@dataclass(frozen=True)
class LdapProfile:
    name: str
    #: Where it was read from, for refusals: the file.
    source: str
    object_filter: str
    id: str
    id_syntax: IdSyntax
    #: The first one not empty is the username.
    username: tuple[str, ...]
    #: The first one not empty is the display name (displayName, else cn).
    name_attributes: tuple[str, ...]
    email: str | None
    staff: StaffKind
    #: How the password is set (the `password` key): Password Modify or unicodePwd.
    set_by: PasswordMethod
    must_change: MustChangeKind
    unlock: UnlockKind
    locked_on_purpose: LockedKind
    password_rules: RulesKind

    def attributes(self) -> list[str]:
        """Every attribute a user is read with (the locked-on-purpose one included)."""
        wanted = [self.id, *self.username, *self.name_attributes]
        if self.email:
            wanted.append(self.email)
        wanted.append(LOCK_ATTRIBUTES[self.locked_on_purpose])
        return list(dict.fromkeys(wanted))


#: The attribute each locked-on-purpose kind is read from.
LOCK_ATTRIBUTES: dict[LockedKind, str] = {
    "ppolicy-permanent": "pwdAccountLockedTime",
    "account-disabled": "userAccountControl",
}


def load_ldap_profile(name: str) -> LdapProfile:
    """The profile DIRECTORY_PROFILE names: a shipped one or a TOML file with `[ldap]`.

    Raises ConfigError naming the file, the key and the reason.
    """
    if name in SHIPPED:
        resource = resources.files("core.directory.ldap").joinpath(f"profiles/{name}.toml")
        return parse_ldap_profile(resource.read_text("utf-8"), name=name, source=f"{name}.toml")
    path = Path(name)
    if not path.is_file():
        raise ConfigError(f"DIRECTORY_PROFILE: {name!r} is neither an LDAP profile resetbot "
                          f"ships ({', '.join(SHIPPED)}) nor a file")
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot be read ({type(error).__name__})") from None
    return parse_ldap_profile(text, name=str(path), source=str(path))


def parse_ldap_profile(text: str, *, name: str, source: str) -> LdapProfile:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{source}: not a TOML file ({error})") from None
    section = data.get("ldap")
    if not isinstance(section, Mapping):
        raise ConfigError(f"{source}: ldap: expected an [ldap] section (a directory on an "
                          "LDAP server)")
    for key in data:
        if key not in ("ldap", "description"):
            raise ConfigError(f"{source}: {key}: unknown key (expected [ldap] and description)")
    return _Reader(section, source).profile(name)


class _Reader:
    """Reads the `[ldap]` keys, each refusal naming `source` and the key."""

    KNOWN = frozenset({"object_filter", "id", "id_syntax", "username", "name", "email", "staff",
                       "password", "must_change", "unlock", "locked_on_purpose",
                       "password_rules"})

    def __init__(self, data: Mapping[str, Any], source: str) -> None:
        self.data = data
        self.source = source

    def refuse(self, key: str, reason: str) -> ConfigError:
        return ConfigError(f"{self.source}: ldap.{key}: {reason}")

    def profile(self, name: str) -> LdapProfile:
        for key in self.data:
            if key not in self.KNOWN:
                raise self.refuse(key, "unknown key (expected one of "
                                  + ", ".join(sorted(self.KNOWN)) + ")")
        return LdapProfile(
            name=name,
            source=self.source,
            object_filter=self.object_filter(),
            id=self.attribute("id"),
            id_syntax=self.kind("id_syntax", ID_SYNTAXES, default="text"),
            username=self.attributes("username"),
            name_attributes=self.attributes("name"),
            email=self.attribute("email") if "email" in self.data else None,
            staff=self.kind("staff", STAFF_KINDS),
            set_by=self.kind("password", PASSWORD_METHODS),
            must_change=self.kind("must_change", MUST_CHANGE_KINDS),
            unlock=self.kind("unlock", UNLOCK_KINDS),
            locked_on_purpose=self.kind("locked_on_purpose", LOCKED_KINDS),
            password_rules=self.kind("password_rules", RULES_KINDS, default="none"),
        )

    def attribute(self, key: str) -> str:
        value = self.data.get(key)
        if not isinstance(value, str) or not _ATTRIBUTE.fullmatch(value):
            raise self.refuse(key, "expected an attribute name (letters, digits, -)")
        return value

    def attributes(self, key: str) -> tuple[str, ...]:
        value = self.data.get(key)
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list) or not values or not all(
            isinstance(item, str) and _ATTRIBUTE.fullmatch(item) for item in values
        ):
            raise self.refuse(key, "expected an attribute name or a list of them")
        return tuple(values)

    def kind(self, key: str, known: tuple[K, ...], default: K | None = None) -> K:
        value = self.data.get(key, default)
        if value not in known:
            shown = "missing" if value is None else f"unknown value {value!r}"
            raise self.refuse(key, f"{shown} (expected one of " + ", ".join(known) + ")")
        return cast(K, value)

    def object_filter(self) -> str:
        value = self.data.get("object_filter")
        if not isinstance(value, str) or not is_filter(value):
            raise self.refuse("object_filter", "expected an LDAP filter in parentheses, "
                              "such as (objectClass=inetOrgPerson)")
        return value


def is_filter(text: str) -> bool:
    """A parenthesised filter whose parentheses balance (values escape theirs as \\28, \\29)."""
    if not (text.startswith("(") and text.endswith(")")):
        return False
    depth = 0
    for index, char in enumerate(text):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth < 0 or (depth == 0 and index != len(text) - 1):
            return False
    return depth == 0
