"""OpenLDAP (tests/support/openldap.py) and Active Directory (tests/support/samba_ad.py) behind one
face, so that an end-to-end test is written once and run on both.

Each server has its own seed; a `Cast` says who plays which part in it (two patrons with an
address, the users without one, staff, the account locked on purpose, ...). The proof stays each
server's own sign-in, told in one vocabulary:

    "ok"           the password binds (OpenLDAP 0; AD: bound)
    "must change"  the right password, to be changed now (OpenLDAP 0 + changeAfterReset; AD 773)
    "refused"      a wrong password (OpenLDAP 49; AD 52e)
    "locked"       locked out (OpenLDAP 49 + accountLocked; AD 775)
    "disabled"     a disabled account (AD 533)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

from core.settings import Settings
from tests.support.openldap import OpenLdap
from tests.support.samba_ad import SEED_USERS, SambaDomain, seed_user


@dataclass(frozen=True)
class Cast:
    """Who is who in a server's seed."""

    #: Two patrons with an address, in scope, whose old passwords sign in.
    first: str
    second: str
    #: A patron no other step of a test touches, whose old password signs in.
    spare: str
    no_mail: frozenset[str]
    staff: frozenset[str]
    locked_on_purpose: str
    #: Every user under the base (in scope).
    everyone: frozenset[str]
    #: Users whose old password does not sign in as seeded (locked out, disabled).
    cannot_sign_in: frozenset[str]
    #: Patrons with an address that a generated-password task resets (the directory stops
    #: answering after half of them).
    outage: tuple[str, ...]
    #: How `resetbot directory check` words the server's own password rules.
    password_rules: str

    @property
    def patrons(self) -> frozenset[str]:
        return self.everyone - self.staff


class LiveServer(Protocol):
    kind: str
    cast: Cast

    def settings(self, settings: Settings) -> Settings: ...

    def signs_in(self, name: str, password: str) -> str: ...

    def old(self, name: str) -> str: ...

    def picker_label(self, name: str) -> str: ...

    def stop(self) -> None: ...

    def start(self) -> None: ...

    def remove(self, name: str) -> None: ...


OPENLDAP_CAST = Cast(
    first="ann", second="bob", spare="p01",
    no_mail=frozenset({"nomail", "blank"}), staff=frozenset({"sam", "sue"}),
    locked_on_purpose="frozen",
    everyone=frozenset(),  # the template's users: OpenLdapServer fills it in
    cannot_sign_in=frozenset({"frozen", "tripped"}),
    outage=("p05", "p06", "p07", "p08", "p09"),
    password_rules="Password rules:   at least 8 characters",
)

ACTIVE_DIRECTORY_CAST = Cast(
    first="ann", second="ben", spare="cy",
    no_mail=frozenset({"cy", "dee"}), staff=frozenset({"dana", "sam"}),
    locked_on_purpose="dis",
    everyone=frozenset(user.username for user in SEED_USERS if user.in_scope),
    cannot_sign_in=frozenset({"dis", "lou"}),
    # pat is left out: her fine-grained policy refuses a generated password.
    outage=("ann", "ben", "lou"),
    password_rules="Password rules:   at least 7 characters, three kinds of characters",
)


class OpenLdapServer:
    kind = "openldap"

    def __init__(self, slapd: OpenLdap) -> None:
        self.slapd = slapd
        everyone = frozenset(user.uid for user in slapd.template.users)
        self.cast = replace(OPENLDAP_CAST, everyone=everyone)

    def settings(self, settings: Settings) -> Settings:
        return self.slapd.settings(settings)

    def signs_in(self, name: str, password: str) -> str:
        said = {(0, None): "ok", (0, "changeAfterReset"): "must change", (49, None): "refused",
                (49, "accountLocked"): "locked"}
        answer = self.slapd.binds(name, password)
        return said.get(answer, repr(answer))

    def old(self, name: str) -> str:
        return self.slapd.old(name)

    def picker_label(self, name: str) -> str:
        return f"{self.slapd.seeded(name).name} ({name})"

    def stop(self) -> None:
        self.slapd.stop()

    def start(self) -> None:
        self.slapd.start()

    def remove(self, name: str) -> None:
        with self.slapd.admin() as admin:
            admin.delete(self.slapd.user_dn(name))


class ActiveDirectoryServer:
    kind = "active-directory"
    cast = ACTIVE_DIRECTORY_CAST

    def __init__(self, domain: SambaDomain) -> None:
        self.domain = domain

    def settings(self, settings: Settings) -> Settings:
        return self.domain.settings(settings)

    def signs_in(self, name: str, password: str) -> str:
        said = {"ok": "ok", "773": "must change", "52e": "refused", "775": "locked",
                "533": "disabled"}
        answer = self.domain.signs_in(name, password)
        return said.get(answer, answer)

    def old(self, name: str) -> str:
        return seed_user(name).password

    def picker_label(self, name: str) -> str:
        user = seed_user(name)
        shown = user.display_name or user.dn.split(",", 1)[0].removeprefix("CN=")
        return f"{shown} ({name})"

    def stop(self) -> None:
        self.domain.stop()

    def start(self) -> None:
        self.domain.start()

    def remove(self, name: str) -> None:
        admin = self.domain.admin()
        try:
            admin.delete(seed_user(name).dn)
        finally:
            admin.unbind()
