"""Property-based tests (hypothesis): the password policy, Slack payload reading, CSV in and out.

What others already cover is not repeated: B's tests/core/test_userio.py has properties of valid
imports (exact rows, a bad row found at its line, duplicates, round trips); C's
tests/bot/test_slack_app_payloads.py has payload properties on Slack-like shapes. These add:
- policy: never raises on any text, every violated rule is named, no control character passes,
  generated passwords always pass whatever the policy settings, and what passes hashes and
  verifies;
- payloads: on payloads nested the way Bolt recurses (events in events, first authorizations),
  what the shape check accepts, Bolt's request context and its unhandled-request logger read
  without raising;
- CSV: any bytes given to the importer are either rows or a refusal listing problems by line;
  any text written by the exporter reads back cell for cell, with no cell a spreadsheet would
  run.
"""

from __future__ import annotations

import csv
import io
import json
import unicodedata
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from slack_bolt.context import BoltContext
from slack_bolt.logger.messages import warning_unhandled_request
from slack_bolt.request import BoltRequest
from slack_bolt.request.internals import build_context

from bot.payloads import payload_problem, read_reset_form
from core.csvsafe import to_csv
from core.errors import InputError
from core.passwords import (
    BCRYPT_MAX_BYTES,
    PasswordHasher,
    character_classes,
    generate_password,
    policy_violations,
)
from core.settings import PasswordPolicy
from core.userio import HEADER, ImportRefused, decode, parse_users_csv

FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n")

# ---- the password policy -------------------------------------------------------------------------

policies = st.builds(
    lambda min_length, classes, forbid_username, forbid_common, extra: PasswordPolicy(
        min_length=min_length, min_classes=classes, forbid_username=forbid_username,
        forbid_common=forbid_common, generated_length=min(64, max(8, min_length + extra)),
    ),
    st.integers(4, 40), st.integers(0, 4), st.booleans(), st.booleans(), st.integers(0, 24),
)


def is_control(ch: str) -> bool:
    return unicodedata.category(ch) in ("Cc", "Cs") or ch in "\u2028\u2029"


#: Any text, unpaired surrogates included (what undecodable bytes on stdin turn into).
any_text = st.text(st.characters(exclude_categories=()), max_size=120)


@settings(max_examples=400)
@given(password=any_text, policy=policies, username=st.none() | st.text(max_size=20),
       scheme=st.sampled_from(["bcrypt", "pbkdf2_sha256", "argon2"]))
def test_the_policy_names_every_broken_rule_and_never_raises(
    password: str, policy: PasswordPolicy, username: str | None, scheme: str
) -> None:
    reasons = policy_violations(password, policy, username=username, schemes=(scheme,))

    assert all(isinstance(reason, str) and reason.endswith(".") for reason in reasons)
    assert len(reasons) == len(set(reasons))
    said = " ".join(reasons)
    assert (len(password) < policy.min_length) == ("characters long" in said)
    assert (character_classes(password) < policy.min_classes) == ("mix at least" in said)
    too_long = (scheme == "bcrypt"
                and len(password.encode("utf-8", "surrogatepass")) > BCRYPT_MAX_BYTES)
    assert too_long == ("bytes long" in said)
    if policy.forbid_username and username and username.lower() in password.lower():
        assert "username" in said
    if any(is_control(ch) for ch in password):
        assert "control characters" in said
    if password != password.strip():
        assert "start or end with a space" in said


@given(policy=policies, username=st.none() | st.text(min_size=1, max_size=12))
def test_generated_passwords_pass_any_policy_and_avoid_look_alikes(
    policy: PasswordPolicy, username: str | None
) -> None:
    password = generate_password(policy, username)

    assert policy_violations(password, policy, username=username) == []
    assert len(password) == max(policy.generated_length, policy.min_length)
    assert not set(password) & set("0Oo1lI|5S2Z8B")
    assert password.isascii() and password.isprintable()


@settings(max_examples=60, deadline=None)
@given(password=st.text(st.characters(exclude_categories=("Cc", "Cs", "Zl", "Zp")),
                        min_size=8, max_size=40).map(lambda text: "Qz7#" + text + "k"))
def test_what_the_policy_accepts_hashes_and_verifies(password: str) -> None:
    assume(policy_violations(password, PasswordPolicy(), schemes=("pbkdf2_sha256",)) == [])
    hasher = PasswordHasher(("pbkdf2_sha256",), rounds=1000)

    stored = hasher.hash(password)

    assert password not in stored
    assert hasher.verify(password, stored)
    assert not hasher.verify(password + "x", stored)


@pytest.mark.parametrize("password", ["Harbour-Lantern\x1b58", "Harbour-Lantern\x7f58",
                                      "Harbour-Lantern\x8558", "Harbour-Lantern\u202858",
                                      "Harbour-Lantern\x0b58", "Harbour-Lantern\udc8058"])
def test_a_password_nobody_can_type_is_refused(password: str) -> None:
    reasons = policy_violations(password, PasswordPolicy(), schemes=("bcrypt",))
    assert any("control characters" in reason for reason in reasons), reasons


# ---- Slack payloads as Bolt reads them -----------------------------------------------------------

KEYS = ["type", "user", "team", "enterprise", "channel", "view", "event", "message",
        "previous_message", "item", "assistant_thread", "authorizations", "response_urls",
        "actions", "container", "callback_id", "action_id", "value", "id", "team_id",
        "user_id", "channel_id", "is_enterprise_install", "is_ext_shared_channel", "subtype",
        "state", "command", "function_data", "thread_ts"]
leaves = (st.none() | st.booleans() | st.integers() | st.text(max_size=8)
          | st.sampled_from(["view_submission", "block_actions", "block_suggestion",
                             "event_callback", "app_home_opened", "U0ADMIN", "C0DESK"]))
nested = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS), inner,
                                                                max_size=6),
    max_leaves=40,
)


@settings(max_examples=250, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.dictionaries(st.sampled_from(KEYS), nested, max_size=8))
# Several response_urls: building the request, Bolt logs through a context that has no logger.
@example(body={"response_urls": [{}, {}]})
def test_what_the_shape_check_accepts_bolt_reads_at_every_depth(body: dict[str, Any]) -> None:
    if payload_problem(body) is not None:
        return
    request = BoltRequest(body=json.dumps(body), headers={"content-type": "application/json"})
    build_context(BoltContext(), request.body)  # ids at every depth Bolt looks
    warning_unhandled_request(request)  # what Bolt logs when no listener matches


@settings(max_examples=300)
@given(view=st.dictionaries(st.sampled_from(["state", "values", "callback_id"]), nested))
def test_reading_the_form_refuses_cleanly_whatever_the_state(view: dict[str, Any]) -> None:
    try:
        form = read_reset_form(view)
    except InputError as refused:
        assert str(refused)
        return
    assert all(isinstance(i, int) and 0 < i < 2**31 for i in form.selection) or not form.selection


# ---- CSV in and out ------------------------------------------------------------------------------

LIMITS: dict[str, int | None] = {name: 255 for name in HEADER}
csv_like = st.one_of(
    st.binary(max_size=400),
    st.text(max_size=400).map(lambda text: text.encode("utf-8")),
    st.lists(st.lists(st.text(max_size=20), min_size=0, max_size=6), max_size=6).map(
        lambda rows: to_csv(HEADER, rows).encode("utf-8")),
    st.text(max_size=200).map(lambda text: ("username,full_name,email,role\n" + text)
                              .encode("utf-8")),
    st.text(max_size=200).map(lambda text: ("username,full_name,email,role\n" + text)
                              .encode("utf-16")),
    st.text(alphabet="abcé€\n,\"=+-@\t", max_size=200).map(
        lambda text: ("username,full_name,email,role\n" + text).encode("cp1252", "replace")),
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(data=csv_like)
@example(data="username,full_name,email,role\r\ud7fc,,,".encode())  # unassigned: kept as typed
def test_any_bytes_are_rows_or_a_refusal_that_says_where(data: bytes) -> None:
    try:
        rows = parse_users_csv(decode(data), LIMITS)
    except ImportRefused as refused:
        assert refused.problems
        assert all(problem.line >= 0 and str(problem) for problem in refused.problems)
        return
    for row in rows:
        for value in (row.username, row.full_name, row.email or "", row.role or ""):
            assert not value.startswith(FORMULA_START)
            assert value == value.strip() and not any(map(_forbidden_in_a_cell, value))
        assert row.username


def _forbidden_in_a_cell(ch: str) -> bool:
    """What the importer promises to refuse: control characters, line and paragraph separators,
    bidirectional overrides and isolates. Anything else (unassigned code points, ZWNJ in a
    Persian name) is a name as typed."""
    return (unicodedata.category(ch) == "Cc" or ch in "\u2028\u2029"
            or "\u202a" <= ch <= "\u202e" or "\u2066" <= ch <= "\u2069")


@settings(max_examples=300)
@given(rows=st.lists(st.lists(st.one_of(st.none(), st.integers(), st.text(max_size=30)),
                              min_size=4, max_size=4), max_size=8))
def test_written_csv_reads_back_cell_for_cell_and_runs_nothing(rows: list[list[Any]]) -> None:
    text = to_csv(HEADER, rows)

    parsed = list(csv.reader(io.StringIO(text, newline="")))

    assert parsed[0] == list(HEADER)
    assert len(parsed) == len(rows) + 1  # a line break in a cell never makes a new row
    for written, read in zip(rows, parsed[1:], strict=True):
        for value, cell in zip(written, read, strict=True):
            original = "" if value is None else str(value)
            assert cell in (original, "'" + original)
            assert not cell.startswith(FORMULA_START)
