"""Issue 20 over signed HTTP with the Slack stand-in: the preview's counts with `skip`, App Home's
Approve and Reject, and "Send me the list" (the exact list, privately, equal to the task's items).
"""

from __future__ import annotations

import csv
import io
import time
from typing import Any

import pytest
from sqlalchemy import select

from blocks.ids import ACTION_SEND_LIST, SEND_LIST_OF_PREVIEW
from core.models import AuditEntry, ResetItem, ResetTask, TaskStatus
from tests.scenarios.test_approval import (
    MIN_USERS,
    SECOND,
    THIRD,
    AppFactory,
    action_ids,
    audit_of,
    confirm_reset,
    deliver,
    parent,
    the_task,
    worker_context,
)
from tests.scenarios.test_approval import (
    make_app as make_app,
)
from tests.support.engine import run_until_final
from tests.support.signing import (
    ADMIN,
    OUTSIDER,
    TEAM,
    RunningApp,
    form_state,
    submitted_view,
)
from tests.support.slack_standin import SlackStandIn
from tests.support.slack_standin import slack_standin as slack_standin
from tests.support.smtp import smtp_server as smtp_server

Json = dict[str, Any]


def rows_of(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def preview_of(app: RunningApp, values: Json, user: str = ADMIN) -> Json:
    opened = app.open_modal(user=user)
    answer = app.slack.submit(submitted_view(opened, values), user=user)
    assert answer.status == 200, answer.body
    view: Json = answer.json()["view"]
    # Slack stores the view it shows and sends it back with its id on a click.
    return dict(view, id="V0PREVIEW", type="modal")


def click_in_view(app: RunningApp, view: Json, action_id: str, value: str,
                  user: str = ADMIN) -> None:
    """A button inside a modal or App Home, as Slack sends its block_actions."""
    answer = app.slack.payload({
        "type": "block_actions", "user": {"id": user, "username": user.lower(),
                                          "name": user.lower(), "team_id": TEAM["id"]},
        "team": TEAM, "api_app_id": "ARESETBOT", "trigger_id": app.slack.new_trigger(),
        "container": {"type": "view", "view_id": view.get("id", "V0HOME")},
        "view": {**view, "id": view.get("id", "V0HOME"), "callback_id":
                 view.get("callback_id", ""), "private_metadata":
                 view.get("private_metadata", "")},
        "actions": [{"type": "button", "action_id": action_id, "block_id": "b",
                     "value": value, "action_ts": str(time.time())}],
    })
    assert answer.status == 200, answer.body


def list_file(standin: SlackStandIn, user: str, count: int = 1) -> list[dict[str, str]]:
    dm = standin.dm_channel(user)
    assert standin.wait_for(lambda: len(standin.files(dm)) >= count), standin.count_by_method()
    return rows_of(standin.files(dm)[count - 1].text)


# ---- the preview with `skip` -------------------------------------------------------------------


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_skip_previews_and_summarises_the_passwords_it_resets_not_the_users_left_alone(
    make_app: AppFactory, slack_standin: SlackStandIn,
) -> None:
    app = make_app(reset_approval_min_users=None)
    # alice has an address; dave and frank have none and are left alone.
    view = preview_of(app, form_state("selected_only", (1, 4, 6), no_email="skip"))
    shown = str(view["blocks"])
    assert "1 password will be reset; 2 users without e-mail are left alone." in shown
    assert "3 passwords will be reset" not in shown
    assert view["submit"]["text"] == "Reset 1 & e-mail"

    assert app.slack.submit(view).json() == {"response_action": "clear"}
    task = the_task(app)
    context = worker_context(app)
    try:
        final = run_until_final(context, task.id)
    finally:
        context.close()
    assert final.tally.changed == 1 and final.tally.left_alone == 2
    deliver(app)  # the end's delivery, queued behind the work
    done = parent(slack_standin)
    [told] = [m for m in slack_standin.thread(done.channel, done.ts)
              if m.text.startswith(f"Reset #{task.id} ")]
    assert "3 users: 1 password reset · 2 left alone (no e-mail)." in str(told.blocks)


# ---- App Home: Approve and Reject --------------------------------------------------------------


def home_of(app: RunningApp, standin: SlackStandIn, user: str) -> Json:
    before = standin.count("views.publish")
    app.slack.event({"type": "app_home_opened", "user": user, "tab": "home"})
    standin.wait_for_call("views.publish", count=before + 1)
    home = standin.home_view(user)
    assert home is not None
    return home


def home_buttons(home: Json) -> list[tuple[str, str]]:
    return [(element["action_id"], element.get("value", "")) for block in home["blocks"]
            if block["type"] == "actions" for element in block["elements"]]


@pytest.mark.every_database
def test_an_approver_approves_from_app_home_and_the_tab_is_redrawn(
    make_app: AppFactory, slack_standin: SlackStandIn,
) -> None:
    app = make_app()
    confirm_reset(app, form_state("all"))
    task = the_task(app)
    home = home_of(app, slack_standin, SECOND)
    assert home_buttons(home) == [("approve_task", str(task.id)), ("reject_task", str(task.id)),
                                  ("send_list", str(task.id))]
    assert "*Users to reset* 7 · with e-mail 5 · without e-mail 2 · staff 2" in str(home)

    # Who exactly? The approver asks for the list from App Home: it comes by DM.
    click_in_view(app, home, ACTION_SEND_LIST, str(task.id), user=SECOND)
    assert len(list_file(slack_standin, SECOND)) == 7
    assert slack_standin.files_in_public_channels() == []

    published = slack_standin.count("views.publish")
    click_in_view(app, home, "approve_task", str(task.id), user=SECOND)

    # The same handler, checks and audit as the thread's button.
    assert slack_standin.wait_for(lambda: the_task(app).status == TaskStatus.QUEUED)
    assert the_task(app).approved_by == SECOND
    [entry] = audit_of(app, "approve")
    assert (entry.actor, entry.task_id) == (SECOND, task.id)
    notice = slack_standin.wait_for_call("views.open", count=2)  # the form, then this notice
    assert f"You approved reset #{task.id}" in str(notice.params["view"])
    slack_standin.wait_for_call("views.publish", count=published + 1)
    redrawn = slack_standin.home_view(SECOND)
    assert redrawn is not None and ("approve_task", str(task.id)) not in home_buttons(redrawn)
    assert slack_standin.ephemerals() == []  # App Home has no channel to answer in


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_app_home_refuses_the_requester_and_outsiders_like_the_thread(
    make_app: AppFactory, slack_standin: SlackStandIn,
) -> None:
    app = make_app()
    confirm_reset(app, form_state("all"))
    task = the_task(app)
    home = home_of(app, slack_standin, ADMIN)
    assert ("approve_task", str(task.id)) in home_buttons(home)

    click_in_view(app, home, "approve_task", str(task.id), user=ADMIN)
    click_in_view(app, home, "approve_task", str(task.id), user=OUTSIDER)

    assert slack_standin.wait_for(lambda: len(audit_of(app, "refused")) >= 2)
    refused = {(e.actor, e.detail.get("reason")) for e in audit_of(app, "refused")}
    assert (ADMIN, "own task") in refused
    assert any(actor == OUTSIDER for actor, _ in refused)
    assert the_task(app).status == TaskStatus.AWAITING_APPROVAL

    # The requester may withdraw it from App Home: a rejection, audited, the tab redrawn.
    published = slack_standin.count("views.publish")
    click_in_view(app, home, "reject_task", str(task.id), user=ADMIN)
    assert slack_standin.wait_for(lambda: the_task(app).status == TaskStatus.REJECTED)
    slack_standin.wait_for_call("views.publish", count=published + 1)
    assert [e.actor for e in audit_of(app, "reject")] == [ADMIN]


# ---- Send me the list --------------------------------------------------------------------------

SCOPES = [
    ("all", ()),
    ("all_except_selected", (2, 5)),
    ("all_without_role", ()),
    ("selected_only", (1, 3, 4)),
]


def task_items(app: RunningApp, task_id: int) -> list[tuple[str, str]]:
    with app.sessions() as session:
        return [(item.username, item.state) for item in session.scalars(
            select(ResetItem).where(ResetItem.task_id == task_id).order_by(ResetItem.user_id))]


OUTCOME_OF_WHAT_HAPPENS = {
    "new random password, e-mailed": "notified",
    "new random password nobody is told: they use “forgot password”": "no_email",
    "left alone: password unchanged": "skipped",
    "gets the default password; you tell them": "reset",
}


@pytest.mark.parametrize(("scope", "picked"), SCOPES)
def test_the_list_from_the_preview_is_what_the_confirm_resets(
    make_app: AppFactory, slack_standin: SlackStandIn, scope: str, picked: tuple[int, ...],
) -> None:
    app = make_app(reset_approval_min_users=None)
    view = preview_of(app, form_state(scope, picked, no_email="skip"))
    assert ("send_list", SEND_LIST_OF_PREVIEW) in [
        (b["accessory"]["action_id"], b["accessory"]["value"]) for b in view["blocks"]
        if "accessory" in b]
    click_in_view(app, view, ACTION_SEND_LIST, SEND_LIST_OF_PREVIEW)
    listed = list_file(slack_standin, ADMIN)
    # Privately: in the DM, never in a channel anyone else reads.
    assert slack_standin.files_in_public_channels() == []
    assert set(listed[0]) == {"username", "full_name", "email", "staff", "locked",
                              "what_happens"}
    assert all(row["email"] for row in listed)  # "no usable address" rather than blank
    assert {row["email"] for row in listed if row["username"] in ("dave", "frank")} <= {
        "no usable address"}

    # The preview's counts and its button are the list's: one tally.
    changed = sum(row["what_happens"] != "left alone: password unchanged" for row in listed)
    assert view["submit"]["text"] == f"Reset {changed:,} & e-mail"
    assert app.slack.submit(view).json() == {"response_action": "clear"}
    task = the_task(app)
    context = worker_context(app)
    try:
        run_until_final(context, task.id)
    finally:
        context.close()
    assert [(row["username"], OUTCOME_OF_WHAT_HAPPENS[row["what_happens"]])
            for row in listed] == task_items(app, task.id)
    with app.sessions() as session:
        [sent] = session.scalars(select(AuditEntry).where(AuditEntry.action == "send_list"))
    assert (sent.actor, sent.detail["users"]) == (ADMIN, len(listed))


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_an_approver_gets_the_list_of_a_waiting_request_and_others_do_not(
    make_app: AppFactory, slack_standin: SlackStandIn,
) -> None:
    app = make_app(reset_approvers=frozenset({SECOND}))
    confirm_reset(app, form_state("all"))
    task = the_task(app)
    deliver(app)
    request = parent(slack_standin)
    assert "send_list" in action_ids(request)

    app.slack.click("send_list", str(task.id), user=SECOND, message_ts=request.ts)
    listed = list_file(slack_standin, SECOND)
    assert len(listed) == 7 >= MIN_USERS
    assert [row["staff"] for row in listed].count("yes") == 2

    # An admin who may not approve: refused, audited, no file.
    app.slack.click("send_list", str(task.id), user=THIRD, message_ts=request.ts)
    assert slack_standin.wait_for(lambda: any(
        e.actor == THIRD for e in audit_of(app, "refused")))
    assert slack_standin.files(slack_standin.dm_channel(THIRD)) == []
    with app.sessions() as session:
        status = session.scalar(select(ResetTask.status).where(ResetTask.id == task.id))
    assert status == TaskStatus.AWAITING_APPROVAL


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_only_the_requester_gets_the_list_of_their_preview(
    make_app: AppFactory, slack_standin: SlackStandIn,
) -> None:
    app = make_app(reset_approval_min_users=None)
    view = preview_of(app, form_state("all"))
    click_in_view(app, view, ACTION_SEND_LIST, SEND_LIST_OF_PREVIEW, user=SECOND)
    assert slack_standin.wait_for(lambda: any(
        e.detail.get("reason") == "not their preview" for e in audit_of(app, "refused")))
    assert slack_standin.files() == []
