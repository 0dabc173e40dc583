"""The one rule for a usable e-mail address (core.addresses), by example and by property."""

from __future__ import annotations

from email.headerregistry import Address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from blocks.text import unusable_addresses
from core.addresses import (
    ADDRESS_PROBLEMS,
    PLAIN_ADDRESS,
    address_problem,
    parse_address,
    usable_address,
)
from core.directory.protocol import User


@pytest.mark.parametrize(("value", "problem"), [
    (None, "missing"),
    ("", "missing"),
    ("   ", "blank"),
    ("\t \u00a0", "blank"),
    ("n/a", "no_at"),
    ("none", "no_at"),
    ("-", "no_at"),
    ("ada lovelace@example.org", "spaces_or_controls"),
    ("ada@example.org\r\nBcc: x@evil.example", "spaces_or_controls"),
    ("\t@example.org", "spaces_or_controls"),
    ("zoë@example.org", "not_ascii"),
    ("@example.org", "not_an_address"),
    ("ada@", "not_an_address"),
    ("ada@@example.org", "not_an_address"),
    ("Ada <ada@example.org>", "spaces_or_controls"),
    ("<ada@example.org>", "not_an_address"),
    ("ada@example.org", None),
    ("  ada@example.org ", None),
    ("first.last+tag@sub.example.org", None),
])
def test_each_value_is_usable_or_has_one_reason(value: str | None, problem: str | None) -> None:
    assert address_problem(value) == problem
    assert (usable_address(value) is None) == (problem is not None)


@given(st.text())
def test_anything_is_either_a_clean_mailable_address_or_has_a_known_reason(value: str) -> None:
    problem, usable = address_problem(value), usable_address(value)
    if usable is None:
        assert problem in ADDRESS_PROBLEMS
        if not value.strip():
            assert problem in ("missing", "blank")
        elif "@" not in value:
            assert problem == "no_at"
    else:
        assert problem is None
        assert usable == value.strip() and usable.isascii()
        assert not any(ch.isspace() for ch in usable)
        assert Address(addr_spec=usable).addr_spec == usable
        assert usable_address(usable) == usable


@given(st.emails())
def test_every_plain_ascii_address_is_usable(address: str) -> None:
    if address.isascii():
        assert usable_address(f" {address}  ") == address


def test_the_preview_says_how_many_addresses_cannot_be_used_and_why() -> None:
    assert unusable_addresses({}) == ""
    assert unusable_addresses({"blank": 2, "no_at": 1}) == (
        "3 addresses cannot be used and count as no e-mail: 2 only spaces, "
        "1 no @ (such as n/a or none)"
    )


@given(st.from_regex(PLAIN_ADDRESS, fullmatch=True))
def test_the_fast_path_takes_only_what_address_reads_back_unchanged(address: str) -> None:
    assert Address(addr_spec=address).addr_spec == address
    assert usable_address(address) == address
    assert parse_address(address).addr_spec == address


@pytest.mark.parametrize(("email", "has"), [
    ("ada@example.org", True), (" ada@example.org ", True), (None, False), ("", False),
    ("   ", False), ("n/a", False), ("none", False), ("a@@b", False),
])
def test_a_directory_user_has_an_address_by_the_one_rule(email: str | None, has: bool) -> None:
    """The protocol's User (any directory: a table, LDAP) has an e-mail exactly when the
    rule above finds a usable address in it, so a directory cannot count it otherwise."""
    user = User(id="1", username="ada", full_name="Ada", email=email, role=None)
    assert user.has_email is has
