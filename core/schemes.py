"""The password hashes resetbot accepts in PASSWORD_SCHEMES, and the least cost of each.

Only slow, salted hashes made for passwords are accepted, anywhere in the list: resetbot writes
every new hash with the first scheme and never needs to read an old one, so a legacy scheme
(md5_crypt, des_crypt, lmhash, plaintext, ldap_salted_sha1, ...) would buy nothing and could be
moved to the front by mistake. A directory whose column holds LDAP-style values keeps working
through the `ldap_` forms of the same hashes (`{CRYPT}$2b$...`, `{PBKDF2-SHA256}...`).

The minimums follow OWASP's Password Storage Cheat Sheet. passlib itself is imported only to
check a cost, so reading the default settings stays cheap.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class SchemeCost:
    #: The least PASSWORD_ROUNDS (passlib's `rounds` for the scheme) accepted without
    #: PASSWORD_ALLOW_WEAK_ROUNDS.
    minimum: int
    #: Why that minimum, for the code's reader.
    basis: str


SAFE_MINIMUMS: Mapping[str, SchemeCost] = {
    "bcrypt": SchemeCost(10, "OWASP: a work factor of 10 or more"),
    "bcrypt_sha256": SchemeCost(10, "bcrypt's, on a SHA-256 of the password"),
    # passlib's argon2 is argon2id with 64 MiB of memory; OWASP's least setting with 46 MiB
    # asks a time cost of 1, so any time cost passes at passlib's memory cost.
    "argon2": SchemeCost(1, "OWASP: argon2id, 46 MiB or more, t >= 1 (passlib: 64 MiB)"),
    "scrypt": SchemeCost(17, "OWASP: N = 2^17, r = 8, p = 1 (passlib's rounds are log2 N)"),
    "pbkdf2_sha256": SchemeCost(600_000, "OWASP: 600,000 iterations of HMAC-SHA-256"),
    "pbkdf2_sha512": SchemeCost(210_000, "OWASP: 210,000 iterations of HMAC-SHA-512"),
    # Not in OWASP's list: one sha512_crypt round is one SHA-512, an HMAC iteration two, so
    # twice PBKDF2-HMAC-SHA-512's minimum (glibc's default, 5,000, is far too cheap).
    "sha512_crypt": SchemeCost(420_000, "2 x OWASP's PBKDF2-HMAC-SHA-512"),
}

#: The same hashes with the prefix an LDAP-style directory column holds.
LDAP_FORMS: Mapping[str, str] = {
    "ldap_bcrypt": "bcrypt",
    "ldap_sha512_crypt": "sha512_crypt",
    "ldap_pbkdf2_sha256": "pbkdf2_sha256",
    "ldap_pbkdf2_sha512": "pbkdf2_sha512",
}

ACCEPTED = (*SAFE_MINIMUMS, *LDAP_FORMS)


def is_accepted(scheme: str) -> bool:
    return scheme in SAFE_MINIMUMS or scheme in LDAP_FORMS


def safe_minimum(scheme: str) -> int:
    """The least cost accepted for an accepted scheme (an ldap_ form: its hash's)."""
    return SAFE_MINIMUMS[LDAP_FORMS.get(scheme, scheme)].minimum


def minimums_text() -> str:
    """'bcrypt 10, argon2 1, ...' for help and the README."""
    return ", ".join(f"{name} {cost.minimum}" for name, cost in SAFE_MINIMUMS.items())


def rounds_problem(scheme: str, rounds: int | None, *, allow_weak: bool) -> str | None:
    """Why `rounds` (None: passlib's default) is refused as the cost of `scheme`, or None.

    The text starts after the variable's name, e.g. "9 is below bcrypt's safe minimum ...".
    """
    from passlib.registry import get_crypt_handler

    handler = get_crypt_handler(scheme)
    lowest = int(handler.min_rounds) if allow_weak else max(
        safe_minimum(scheme), int(handler.min_rounds)
    )
    highest = int(handler.max_rounds)
    expected = f"{lowest}\N{EN DASH}{highest}"
    if rounds is None:
        default = int(handler.default_rounds)
        if default < lowest:
            return (
                f"unset, and passlib's default cost for {scheme} ({default}) is below its safe "
                f"minimum: set it ({expected})"
            )
        return None
    if rounds > highest:
        return f"{rounds} is too high for {scheme} ({expected})"
    if rounds < lowest:
        if allow_weak:
            return f"{rounds} is too low for {scheme} ({expected})"
        return (
            f"{rounds} is below the safe minimum for {scheme} ({expected}); "
            "PASSWORD_ALLOW_WEAK_ROUNDS=true allows less, for tests and demos only"
        )
    return None
