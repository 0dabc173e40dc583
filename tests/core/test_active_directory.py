"""Active Directory's rules without a server: encodings, ids, Microsoft's complexity rule, and
refusals in words. tests/core/test_active_directory_samba.py proves them on Samba AD."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.directory.ldap.active_directory import (
    ActiveDirectoryRules,
    AdPasswordRules,
    after_set_changes,
    bind_refusal,
    character_kinds,
    complexity_violations,
    display_name_parts,
    guid_filter,
    guid_text,
    is_disabled,
    is_locked_out,
    refusal,
    refusal_reason,
    staff_filter,
    unicode_pwd,
)
from core.directory.ldap.profile import load_ldap_profile

SAMBA_TOO_SHORT = ("0000052D: Constraint violation - check_password_restrictions: the password "
                   "is too short. It should be equal or longer than 7 characters!")
WINDOWS_REFUSAL = ("0000052D: Constraint violation - check_password_restrictions: "
                   "AtrErr: DSID-03191083, #1:")
WINDOWS_BARE = ("0000052D: AtrErr: DSID-03191083, #1:\n\t0: 00000000: DSID-03191083, problem "
                "1005 (CONSTRAINT_ATT_TYPE), data 0, Att 9005a (unicodePwd)\n")


def test_unicode_pwd_is_the_quoted_password_in_utf16le() -> None:
    assert unicode_pwd("Pä55!") == b'"\x00P\x00\xe4\x005\x005\x00!\x00"\x00'


def test_guid_text_is_the_form_ad_tools_show_and_its_filter_finds_the_same_bytes() -> None:
    raw = b"\x83|6\xba@\x15\x84O\xaa\x139n\x13\x96\xbc\x8f"
    text = guid_text(raw)
    assert text == "ba367c83-1540-4f84-aa13-396e1396bc8f"
    assert guid_filter(text) == (
        r"(objectGUID=\83\7c\36\ba\40\15\84\4f\aa\13\39\6e\13\96\bc\8f)"
    )
    rules = ActiveDirectoryRules(load_ldap_profile("active-directory"))
    assert rules.id_text(raw) == text
    assert rules.id_filter(text) == guid_filter(text)


def test_guid_filter_refuses_text_that_is_no_guid() -> None:
    with pytest.raises(ValueError):
        guid_filter("*)(objectClass=*")


@given(st.uuids())
def test_guid_round_trip(value: uuid.UUID) -> None:
    assert guid_text(value.bytes_le) == str(value)


def test_after_a_set_must_change_is_pwdlastset_0_else_minus_1_and_the_lockout_cleared() -> None:
    assert after_set_changes(True) == {
        "pwdLastSet": [("MODIFY_REPLACE", ["0"])], "lockoutTime": [("MODIFY_REPLACE", ["0"])],
    }
    assert after_set_changes(False)["pwdLastSet"] == [("MODIFY_REPLACE", ["-1"])]
    assert "userAccountControl" not in after_set_changes(False)


def test_disabled_is_bit_2_of_user_account_control_and_locked_out_is_a_lockout_time() -> None:
    assert is_disabled({"useraccountcontrol": [b"514"]})
    assert not is_disabled({"useraccountcontrol": [b"512"]})
    assert not is_disabled({})
    assert is_locked_out({"lockouttime": [b"134411173177561770"]})
    assert not is_locked_out({"lockouttime": [b"0"]})
    assert not is_locked_out({})


def test_staff_filter_uses_the_in_chain_rule_with_the_dn_escaped() -> None:
    assert staff_filter("CN=Staff (all),OU=Groups,DC=x") == (
        r"(memberOf:1.2.840.113556.1.4.1941:=CN=Staff \28all\29,OU=Groups,DC=x)"
    )


# --- Microsoft's complexity rule ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("password", "kinds"),
    [
        ("abcdefg1", {"lower", "digit"}),
        ("abc defg1", {"lower", "digit"}),  # a space is of no kind
        ("abcdef€1", {"lower", "digit"}),  # nor a currency symbol
        ("Abcdefg1", {"upper", "lower", "digit"}),
        ("abcdefg!1", {"lower", "digit", "special"}),
        ("ÄÖÜäöü1x", {"upper", "lower", "digit"}),
        ("ab1日本語文字", {"lower", "digit", "other letter"}),
        ("abc日本語文字", {"lower", "other letter"}),
        ("\u0661\u0662\u0663abcD", {"lower", "upper"}),  # Arabic-Indic digits are not 0-9
    ],
)
def test_character_kinds_are_microsofts_five(password: str, kinds: set[str]) -> None:
    assert character_kinds(password) == kinds


def test_display_name_parts_are_cut_at_the_documented_delimiters() -> None:
    assert display_name_parts("Erin M. Hagens") == ["Erin", "Hagens"]
    assert display_name_parts("van der Berg-Smith,\tJo_Ann#Lee") == [
        "van", "der", "Berg", "Smith", "Ann", "Lee",
    ]


def test_complexity_refuses_the_account_name_and_display_name_parts_ignoring_case() -> None:
    assert complexity_violations("Xx-ANN-xx1", "ann", "Ann Reader") == [
        "The directory refuses a password that contains the user's account name",
        "The directory refuses a password that contains a part of the user's display name",
    ]
    assert complexity_violations("Xx-reader-1", "ann", "Ann Reader") == [
        "The directory refuses a password that contains a part of the user's display name",
    ]
    # Names shorter than three characters are not checked.
    assert complexity_violations("Xx-cy-99", "cy", "Cy No") == []


def test_rules_list_every_reason_with_where_they_come_from() -> None:
    rules = AdPasswordRules(source="the domain policy of DC=x", min_length=7, complexity=True)
    assert rules.violations("abc") == [
        "The directory refuses passwords shorter than 7 characters (the domain policy of DC=x).",
        "The directory asks for three of: uppercase letters, lowercase letters, digits, the "
        "characters ~!@#$%^&*_-+=`|\\(){}[]:;\"'<>,.?/, letters of scripts without case "
        "(the domain policy of DC=x).",
    ]
    assert rules.violations("Abcdefg1") == []
    assert rules.violations_for("Abcdefg1-ann", "ann", None) != []
    assert AdPasswordRules(source="s", min_length=7, complexity=False).violations("abcdefg") == []


def test_length_counts_utf16_units_as_ad_does() -> None:
    rules = AdPasswordRules(source="s", min_length=4)
    assert rules.violations("a𝄞b") == []  # 3 characters, 4 UTF-16 units


# --- refusals in words -------------------------------------------------------------------------


def test_sambas_0000052d_names_the_rule() -> None:
    assert refusal_reason(19, SAMBA_TOO_SHORT) == (
        "The directory refused the password: The password is too short. It should be equal or "
        "longer than 7 characters."
    )


def test_windows_0000052d_becomes_the_domain_policy_in_words() -> None:
    for message in (WINDOWS_BARE, WINDOWS_REFUSAL.replace("check_password_restrictions: ", "")):
        assert refusal_reason(19, message) == (
            "The directory refused the password: it does not meet the domain's password policy "
            "(length, complexity, history or minimum age; a fine-grained policy may apply to "
            "this user)."
        )


def test_other_refusals_keep_the_servers_first_line() -> None:
    found = refusal({"result": 50, "description": "insufficientAccessRights",
                     "message": "00002098: Object CN=x has no write property access\n"})
    assert found is not None
    assert found.code == 50
    assert found.reason == ("The directory refused the password (insufficientAccessRights: "
                            "00002098: Object CN=x has no write property access)")
    assert refusal({"result": 0}) is None


#: What a refusal says around the server's text (and the mask): a password that is a piece of
#: it ("*", "the") is in every reason, told or not.
REFUSAL_WORDING = (refusal_reason(19, "0000052D: check_password_restrictions: !") + "***"
                   + refusal_reason(53, "00000057: ") + refusal_reason(19, "0000052D:"))


def _as_the_reason_may_shape_it(password: str) -> set[str]:
    trimmed = password.strip()
    return {password, trimmed, trimmed[:1].upper() + trimmed[1:]}


@given(st.text(min_size=1, max_size=40).filter(
    lambda text: text.strip() != ""
    and not any(shape in REFUSAL_WORDING for shape in _as_the_reason_may_shape_it(text))))
def test_a_refusal_never_holds_the_password(password: str) -> None:
    """Nor a part of it: the reason trims, capitalises and cuts the server's text."""
    message = f"0000052D: Constraint violation - check_password_restrictions: {password}!"
    for said in (refusal_reason(19, message, password=password),
                 refusal_reason(53, f"00000057: {password}", password=password)):
        for shape in _as_the_reason_may_shape_it(password):
            assert shape not in said
    # Where the reason is cut (300 characters) through the password, none of it is left.
    said_before = len("The directory refused the password (53: 00000057: ")
    cut_through = f"00000057: {'x' * (298 - said_before)}{password}"
    if len(password.splitlines()) == 1 and cut_through.count(password) == 1:
        assert refusal_reason(53, cut_through, password=password) == refusal_reason(
            53, cut_through.replace(password, "***"))


def test_bind_refusals_in_words() -> None:
    message = ("80090308: LdapErr: DSID-0C0903A9, comment: AcceptSecurityContext error, "
               "data 773, v1db1")
    assert bind_refusal(message) == "right password, but it must be changed first"
    assert bind_refusal(message.replace("773", "52e")) == "wrong password"
    assert bind_refusal("no data here") is None
