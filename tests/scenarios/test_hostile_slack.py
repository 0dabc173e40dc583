"""Hostile Slack payloads through the app's real HTTP endpoint, correctly signed.

C's tests (tests/bot/test_slack_app_security.py) cover forged, stale and empty signatures, malformed
shapes, unknown ids, forged pending ids and replayed confirms. These add what an attacker holding
the signing secret (or a buggy client) can send beyond that: bodies nested deep enough to break
a JSON parser, NUL bytes and lone surrogates that databases and encoders refuse, 100 KB strings
in every field, 10,000 picked users, and arbitrary JSON from hypothesis. Every answer must be a
clear refusal or a normal answer (never a 500), and nothing may change: no task, no pending
request, no item, no user's hash, nothing on the queue.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from core.models import PendingRequest, ResetItem, ResetTask
from tests.support.signing import ADMIN, CHANNEL, TEAM, RunningApp, form_state
from tests.support.signing import slack_app as slack_app
from tests.support.slack_standin import slack_standin as slack_standin

BIG = 100_000  # characters in a "huge" string value
#: 404 is Bolt's "unhandled request": a payload no listener claims (a harmless, clear refusal).
#: 403: a payload that names no workspace, or another one (bot.workspace).
OK_STATUSES = {200, 400, 401, 403, 404, 413}
Json = dict[str, Any]


@dataclass(frozen=True)
class World:
    """What a hostile request must leave exactly as it was."""

    tasks: int
    pending: int
    items: int
    hashes: tuple[tuple[int, str | None], ...]
    queued: int


def world(app: RunningApp) -> World:
    c = app.directory.table.c
    with app.sessions() as session:
        def count(model: Any) -> int:
            return int(session.scalar(select(func.count()).select_from(model)) or 0)

        hashes = tuple(session.execute(select(c.id, c.password_hash).order_by(c.id)).all())
        return World(count(ResetTask), count(PendingRequest), count(ResetItem),
                     tuple((int(i), h) for i, h in hashes), app.queue.count)


def user(user_id: str = ADMIN, name: str = "admin") -> Json:
    return {"id": user_id, "username": name, "name": name, "team_id": TEAM["id"]}


def view_submission(callback_id: str, values: Json, *, metadata: str = "",
                    who: Json | None = None) -> Json:
    return {"type": "view_submission", "team": TEAM, "user": who or user(),
            "api_app_id": "ARESETBOT", "trigger_id": "1.2.3",
            "view": {"id": "V1", "type": "modal", "callback_id": callback_id,
                     "private_metadata": metadata, "state": {"values": values}}}


def click(action_id: str, value: str, *, who: Json | None = None) -> Json:
    return {"type": "block_actions", "team": TEAM, "user": who or user(),
            "api_app_id": "ARESETBOT", "trigger_id": "1.2.3",
            "channel": {"id": CHANNEL}, "container": {"type": "message", "channel_id": CHANNEL},
            "actions": [{"type": "button", "action_id": action_id, "block_id": "b",
                         "value": value}]}


def suggestion(value: str) -> Json:
    return {"type": "block_suggestion", "team": TEAM, "user": user(), "action_id": "users",
            "block_id": "users", "value": value,
            "view": {"id": "V1", "type": "modal", "callback_id": "bulk_reset"}}


def form_body(payload: str) -> bytes:
    return urlencode({"payload": payload}).encode()


def command(text: str, **fields: str) -> bytes:
    form = {"command": "/reset-passwords", "text": text, "user_id": ADMIN, "user_name": "admin",
            "channel_id": CHANNEL, "team_id": TEAM["id"], "trigger_id": "1.2.3", **fields}
    return urlencode(form).encode()


def selection_of(count: int) -> Json:
    values = form_state("selected_only")
    values["users"]["users"]["selected_options"] = [{"value": str(i)} for i in range(1, count + 1)]
    return values


# name: (body, content type)
HOSTILE: dict[str, Callable[[], tuple[bytes, str]]] = {
    "JSON nested 50,000 deep (interactivity)": lambda: (
        form_body("[" * 50_000 + "]" * 50_000), "application/x-www-form-urlencoded"),
    "JSON nested 50,000 deep (events)": lambda: (
        ("[" * 50_000 + "]" * 50_000).encode(), "application/json"),
    "JSON object nested 20,000 deep": lambda: (
        form_body('{"a":' * 20_000 + "1" + "}" * 20_000), "application/x-www-form-urlencoded"),
    "10,000 picked users": lambda: (
        form_body(json.dumps(view_submission("bulk_reset", selection_of(10_000)))),
        "application/x-www-form-urlencoded"),
    "100 KB scope value": lambda: (
        form_body(json.dumps(view_submission("bulk_reset", form_state("x" * BIG)))),
        "application/x-www-form-urlencoded"),
    "100 KB password": lambda: (
        form_body(json.dumps(view_submission("bulk_reset",
                                             form_state("all", password="Aa1!" * (BIG // 4))))),
        "application/x-www-form-urlencoded"),
    "100 KB callback id": lambda: (
        form_body(json.dumps(view_submission("c" * BIG, {}))),
        "application/x-www-form-urlencoded"),
    "100 KB private metadata on the confirm": lambda: (
        form_body(json.dumps(view_submission("bulk_reset_confirm", {}, metadata="m" * BIG))),
        "application/x-www-form-urlencoded"),
    "100 KB channel in the form's metadata": lambda: (
        form_body(json.dumps(view_submission("bulk_reset", form_state("nobody"),
                                             metadata=json.dumps({"channel": "C" * BIG})))),
        "application/x-www-form-urlencoded"),
    "100 KB user id and name": lambda: (
        form_body(json.dumps(view_submission("bulk_reset", form_state("all"),
                                             who=user("U" + "A" * BIG, "n" * BIG)))),
        "application/x-www-form-urlencoded"),
    "100 KB task id on Cancel": lambda: (
        form_body(json.dumps(click("cancel_task", "9" * BIG))),
        "application/x-www-form-urlencoded"),
    "100 KB task id on Retry failed": lambda: (
        form_body(json.dumps(click("retry_failed", "1" * BIG))),
        "application/x-www-form-urlencoded"),
    "Cancel naming task 99999999999 (beyond INTEGER)": lambda: (
        form_body(json.dumps(click("cancel_task", "99999999999"))),
        "application/x-www-form-urlencoded"),
    "Retry failed naming task 999999999999": lambda: (
        form_body(json.dumps(click("retry_failed", "999999999999"))),
        "application/x-www-form-urlencoded"),
    "picked user 99999999999 (beyond INTEGER)": lambda: (
        form_body(json.dumps(view_submission("bulk_reset",
                                             form_state("selected_only", (99999999999,))))),
        "application/x-www-form-urlencoded"),
    "status with a superscript digit": lambda: (command("status ²"),
                                                 "application/x-www-form-urlencoded"),
    "negative and float task ids": lambda: (
        form_body(json.dumps(click("cancel_task", "-1"))), "application/x-www-form-urlencoded"),
    "100 KB search term": lambda: (
        form_body(json.dumps(suggestion("a" * BIG))), "application/x-www-form-urlencoded"),
    "NUL bytes in a search term": lambda: (
        form_body(json.dumps(suggestion("al\x00ice"))), "application/x-www-form-urlencoded"),
    "lone surrogate in a search term": lambda: (
        form_body(json.dumps(suggestion("al\ud800ice"))), "application/x-www-form-urlencoded"),
    "100 KB command text": lambda: (command("x" * BIG), "application/x-www-form-urlencoded"),
    "status with a 100 KB id": lambda: (command("status " + "9" * BIG),
                                         "application/x-www-form-urlencoded"),
    "status with a NUL": lambda: (command("status 1\x00"), "application/x-www-form-urlencoded"),
    "status with a huge number": lambda: (command("status 99999999999"),
                                           "application/x-www-form-urlencoded"),
    "NUL in a password": lambda: (
        form_body(json.dumps(view_submission("bulk_reset",
                                             form_state("all", password="Aa1!-Harbour\x00x")))),
        "application/x-www-form-urlencoded"),
    "lone surrogate in a password": lambda: (
        form_body(json.dumps(view_submission(
            "bulk_reset", form_state("nobody", password="Aa1!-Harbour-\ud800")))),
        "application/x-www-form-urlencoded"),
    "app_home_opened for a 100 KB user": lambda: (
        json.dumps({"type": "event_callback", "team_id": TEAM["id"],
                    "event": {"type": "app_home_opened", "user": "U" + "A" * BIG,
                              "tab": "home"}}).encode(), "application/json"),
    "url_verification challenge": lambda: (
        json.dumps({"type": "url_verification", "challenge": "c" * BIG}).encode(),
        "application/json"),
}


@pytest.mark.parametrize("database_url", ["sqlite",
                                          pytest.param("postgres", marks=pytest.mark.postgres)],
                         indirect=True)
@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_values_are_refused_clearly_and_change_nothing(
    slack_app: RunningApp, sample_users: list[Any], case: str
) -> None:
    before = world(slack_app)
    body, content_type = HOSTILE[case]()

    answer = slack_app.slack.post(body, content_type=content_type)

    assert answer.status in OK_STATUSES, (answer.status, answer.body[:300])
    assert answer.elapsed < 3, "Slack gives up after 3 seconds"
    if answer.status != 200:
        assert answer.json()["error"]  # a reason, not a traceback
    assert b"Traceback" not in answer.body
    assert world(slack_app) == before


# ---- arbitrary JSON (hypothesis) -----------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)
slack_keys = st.sampled_from([
    "type", "user", "view", "actions", "state", "values", "callback_id", "private_metadata",
    "selected_option", "selected_options", "value", "action_id", "block_id", "scope", "users",
    "password", "require_change", "channel", "container", "trigger_id", "event", "team", "id",
    "enterprise", "authorizations", "is_enterprise_install", "is_ext_shared_channel", "team_id",
    "user_id", "channel_id", "message", "previous_message", "item", "thread_ts", "command",
    "text", "response_url", "response_urls", "tab", "submission", "hash", "view_id",
])
slack_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=30)
    | st.sampled_from(["view_submission", "view_closed", "block_actions", "block_suggestion",
                       "event_callback", "app_home_opened", "/reset-passwords", "bulk_reset",
                       "bulk_reset_confirm", "cancel_task", "retry_failed", "open_reset_modal",
                       "approve_task", "reject_task", "send_list", "preview",
                       "users", "all", "selected_only", "status", "help", ADMIN, CHANNEL, "1",
                       "7", "999999"]),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(slack_keys, children, max_size=6),
    max_leaves=30,
)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.one_of(json_values, slack_like))
# Several response URLs once made Bolt fail building the request.
@example(payload={"type": "view_submission", "response_urls": [{}, {}]})
def test_arbitrary_signed_json_never_gets_a_500_nor_changes_anything(
    slack_app: RunningApp, payload: Any
) -> None:
    before = world(slack_app)
    for body, content_type in (
        (form_body(json.dumps(payload)), "application/x-www-form-urlencoded"),
        (json.dumps(payload).encode(), "application/json"),
    ):
        answer = slack_app.slack.post(body, content_type=content_type)
        assert answer.status in OK_STATUSES, (answer.status, answer.body[:300], payload)
    assert world(slack_app) == before


# ---- a whole request by a real admin, with hostile text in their own fields ----------------------


@pytest.mark.parametrize("database_url", ["sqlite",
                                          pytest.param("postgres", marks=pytest.mark.postgres)],
                         indirect=True)
@pytest.mark.parametrize("name", ["Ad\x00min", "Ad\ud800min", "<!channel> *Boss* \r\nX-Bcc: a@b"])
def test_an_admin_with_a_hostile_display_name_gets_a_preview_or_a_clear_answer(
    slack_app: RunningApp, sample_users: list[Any], name: str
) -> None:
    before = world(slack_app)
    answer = slack_app.slack.post(form_body(json.dumps(
        view_submission("bulk_reset", form_state("selected_only", (1,)), who=user(ADMIN, name))
    )))
    assert answer.status in OK_STATUSES, (answer.status, answer.body[:300])
    if answer.status == 200:
        assert answer.json()["response_action"] in ("update", "errors")
    after = world(slack_app)
    assert (after.tasks, after.items, after.hashes, after.queued) == (
        before.tasks, before.items, before.hashes, before.queued)


