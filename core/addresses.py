"""The one rule for "has a usable e-mail address", used everywhere a user's address matters.

The preview counts by it, the planner writes only usable addresses into items, the worker mails
only those, and the summary and the follow-up CSV follow the items. A value that is not an
address resetbot can mail is the same as no address at all: with `--without-email skip` such a
user is left alone, with `set` they get the typed password.

An address is usable when, after taking off white space at its ends, it is one plain-ASCII
`local@domain` as `email.headerregistry.Address` reads it, the same string back (no display
name, comment or quoting around it), with no white space or control character anywhere. Every
other value has a reason (see `ADDRESS_PROBLEMS`): it is missing (NULL or empty), blank (only
white space), has no `@` (`n/a`, `none`, `-`), holds a space or control character, is not
plain ASCII, or is otherwise not an address (`@example.org`, `a@`, `a@@b`).
"""

from __future__ import annotations

import re
from email.errors import HeaderParseError
from email.headerregistry import Address
from typing import Literal

from core.controls import has_unsafe

AddressProblem = Literal["missing", "blank", "no_at", "spaces_or_controls", "not_ascii",
                         "not_an_address"]
#: Each reason an address is not used, in the order the preview lists them.
ADDRESS_PROBLEMS: tuple[AddressProblem, ...] = (
    "missing", "blank", "no_at", "spaces_or_controls", "not_ascii", "not_an_address",
)


#: RFC 5322's dot-atom on both sides of one `@`: what nearly every address is, and what
#: `Address` reads back unchanged. Checked first because it is fast (a preview reads 100,000
#: addresses; `Address` takes some 50 µs each); anything else is left to `Address`.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
PLAIN_ADDRESS = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*@{_ATEXT}(?:\.{_ATEXT})*")
#: The same, anchored, as SQL regular expressions read it (POSIX ERE, PCRE, Python): a database
#: counts these itself, and only the other values travel to resetbot to be judged.
PLAIN_ADDRESS_SQL = rf"^{_ATEXT}(\.{_ATEXT})*@{_ATEXT}(\.{_ATEXT})*$"


class UnusableAddress(ValueError):
    """The address cannot be mailed; `problem` says why."""

    def __init__(self, problem: AddressProblem) -> None:
        super().__init__(problem)
        self.problem: AddressProblem = problem


def _plain(value: str | None) -> str | None:
    """The address when it is a plain dot-atom one (the fast, common case), else None."""
    if value is None:
        return None
    address = value.strip()
    if PLAIN_ADDRESS.fullmatch(address) and not has_unsafe(value):
        return address
    return None


def parse_address(value: str | None) -> Address:
    """The mailable address in `value`; raises UnusableAddress saying why not."""
    plain = _plain(value)
    if plain is not None:
        local, _, domain = plain.partition("@")
        return Address(username=local, domain=domain)
    return _parse(value)


def _parse(value: str | None) -> Address:
    if value is None:
        raise UnusableAddress("missing")
    address = value.strip()
    if not address:
        raise UnusableAddress("blank" if value else "missing")
    if "@" not in address:
        raise UnusableAddress("no_at")
    # Control characters refuse the address wherever they are, even at the ends.
    if has_unsafe(value) or any(ch.isspace() for ch in address):
        raise UnusableAddress("spaces_or_controls")
    if not address.isascii():
        raise UnusableAddress("not_ascii")
    try:
        parsed = Address(addr_spec=address)
    except (ValueError, IndexError, HeaderParseError):
        raise UnusableAddress("not_an_address") from None
    if not parsed.username or not parsed.domain or parsed.addr_spec != address:
        raise UnusableAddress("not_an_address")
    return parsed


def address_problem(value: str | None) -> AddressProblem | None:
    """Why `value` is not a usable address; None when it is one."""
    if _plain(value) is not None:
        return None
    try:
        _parse(value)
    except UnusableAddress as unusable:
        return unusable.problem
    return None


def usable_address(value: str | None) -> str | None:
    """The address to mail (white space at the ends taken off), or None: no usable address."""
    plain = _plain(value)
    if plain is not None:
        return plain
    try:
        return _parse(value).addr_spec
    except UnusableAddress:
        return None
