"""Property-based tests of payload reading: whatever JSON arrives, the parsers refuse it cleanly
(a named problem or field errors), and what they accept Bolt can take without crashing.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from slack_bolt.request import BoltRequest

from bot.payloads import (
    channel_from_metadata,
    channel_id,
    payload_problem,
    pending_id,
    read_reset_form,
    task_id,
    user_id_of,
)
from core.errors import InputError
from core.models import Scope
from core.tasks import MAX_SELECTION, RequestInvalid

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                max_size=4),
    max_leaves=20,
)
KEYS = ["type", "user", "team", "view", "actions", "event", "channel", "container",
        "callback_id", "action_id", "value", "state", "private_metadata", "command",
        "user_id", "trigger_id", "authorizations", "enterprise", "message", "block_id"]
TYPES = ["view_submission", "view_closed", "block_actions", "block_suggestion",
         "event_callback", "shortcut", 7, None]


def slackish() -> st.SearchStrategy[Any]:
    """Objects shaped roughly like Slack payloads, with wrong types sprinkled in."""
    return st.fixed_dictionaries(
        {"type": st.sampled_from(TYPES)},
        optional={key: json_values for key in KEYS if key != "type"}
        | {"view": st.fixed_dictionaries({}, optional={
            "callback_id": st.sampled_from(["bulk_reset", "bulk_reset_confirm"]) | json_values,
            "state": json_values, "private_metadata": json_values}),
           "actions": st.lists(st.dictionaries(st.sampled_from(["action_id", "value"]),
                                               json_values), max_size=2)},
    )


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(json_values, slackish()))
def test_what_the_shape_check_accepts_bolt_can_read(body: Any) -> None:
    problem = payload_problem(body)
    if problem is not None:
        assert isinstance(problem, str) and problem
        return
    request = BoltRequest(body=json.dumps(body), headers={"content-type": "application/json"})
    assert isinstance(request.body, dict)
    # What Bolt's listener matchers index without checking.
    kind = body.get("type")
    if kind in ("view_submission", "view_closed"):
        assert isinstance(request.body["view"]["callback_id"], str)
    if kind == "block_actions":
        assert isinstance(request.body["actions"][0]["action_id"], str)
    if kind == "block_suggestion":
        assert isinstance(request.body["action_id"], str)
    if kind == "event_callback":
        assert isinstance(request.body["event"]["type"], str)


def state_values() -> st.SearchStrategy[Any]:
    option = st.fixed_dictionaries({}, optional={"value": json_values})
    return st.fixed_dictionaries({}, optional={
        "scope": st.fixed_dictionaries({}, optional={"scope": st.fixed_dictionaries(
            {}, optional={"selected_option": option | json_values})}) | json_values,
        "users": st.fixed_dictionaries({}, optional={"users": st.fixed_dictionaries(
            {}, optional={"selected_options": st.lists(option | json_values, max_size=5)
                          | json_values})}),
        "password": st.fixed_dictionaries({}, optional={"password": st.fixed_dictionaries(
            {}, optional={"value": json_values})}),
        "require_change": json_values,
        "users_file": st.fixed_dictionaries({}, optional={"users_file": st.fixed_dictionaries(
            {}, optional={"files": st.lists(
                st.fixed_dictionaries({}, optional={
                    "id": st.sampled_from(["F0123ABC", "F", "../x"]) | json_values,
                    "size": st.integers() | json_values, "name": json_values,
                }) | json_values, max_size=2) | json_values})}),
    })


@settings(max_examples=300)
@given(st.fixed_dictionaries({}, optional={
    "state": st.fixed_dictionaries({}, optional={"values": state_values() | json_values})
    | json_values}))
def test_any_view_state_becomes_a_request_or_field_errors(view: dict[str, Any]) -> None:
    try:
        form = read_reset_form(view)
    except RequestInvalid as invalid:
        assert invalid.problems
        assert set(invalid.problems) <= {"scope", "users", "password", "users_file"}
        assert all(reasons for reasons in invalid.problems.values())
        return
    assert isinstance(form.scope, Scope)
    assert len(form.selection) <= MAX_SELECTION
    assert all(isinstance(i, int) and i >= 0 for i in form.selection)
    assert form.default_password is None or 0 < len(form.default_password) <= 128
    assert isinstance(form.require_change, bool)
    if form.file is not None:
        assert form.file.id == "F0123ABC" and form.scope.needs_selection and not form.selection


@given(json_values)
def test_ids_from_payloads_are_slack_ids_or_nothing(value: Any) -> None:
    for found in (channel_id(value), channel_from_metadata(value),
                  user_id_of({"user": value}), user_id_of({"user_id": value})):
        assert found is None or (found.isalnum() and found.isupper())
    assert pending_id(value) is None or isinstance(value, str)
    try:
        assert task_id(value) >= 0
    except InputError as refused:
        assert refused.field == "task"


def test_the_channel_travels_only_as_a_slack_channel_id() -> None:
    assert channel_from_metadata(json.dumps({"channel": "C0TASKS"})) == "C0TASKS"
    assert channel_from_metadata(json.dumps({"channel": "D0DM"})) == "D0DM"
    assert channel_from_metadata(json.dumps({"channel": "<!channel>"})) is None
    assert channel_from_metadata(json.dumps(["C0TASKS"])) is None
    assert channel_from_metadata("{") is None
