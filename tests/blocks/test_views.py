"""The Block Kit the app sends, as pure functions: ids, limits, wording, escaping, no secrets.

Views are checked with the Slack stand-in's own Block Kit validator (the same rules the stand-in
applies to views.open/update/publish).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from blocks.text import (
    escape,
    help_text,
    progress_bar,
    task_status_text,
    thread_link,
    user_option_label,
)
from blocks.views import (
    confirm_button_text,
    home_view,
    notice_modal,
    preview_modal,
    reset_modal,
    user_options,
)
from core.directory import DirectoryUser, Preview
from core.models import ItemState, Mode, Scope, TaskStatus
from core.progress import TaskSnapshot
from core.tally import Tally
from tests.support.slack_standin import SlackError, _check_view


def valid(view: dict[str, Any], kind: str) -> None:
    try:
        _check_view(view, (kind,))
    except SlackError as refused:
        pytest.fail(f"Slack would refuse this view: {refused.messages}")


def snapshot(**changes: Any) -> TaskSnapshot:
    fields: dict[str, Any] = {
        "id": 12, "status": TaskStatus.RUNNING, "scope": "all", "mode": "generated",
        "require_change": True, "requester": "UADMIN", "requester_name": "admin",
        "total": 10, "planned": True,
        "counts": {**dict.fromkeys(ItemState, 0), ItemState.NOTIFIED: 4, ItemState.PENDING: 6},
        "created_at": datetime(2026, 1, 2, 3, 4, tzinfo=UTC), "started_at": None,
        "finished_at": None, "slack_channel": "C0TASKS", "slack_thread_ts": "1700000000.000100",
        "retry_of": None, "cancel_requested": False, "error": None,
    }
    fields.update(changes)
    return TaskSnapshot(**fields)


# ---- the modal ------------------------------------------------------------------------------


def test_the_reset_modal_keeps_its_interface_ids() -> None:
    view = reset_modal("C0TASKS")
    valid(view, "modal")
    assert view["callback_id"] == "bulk_reset"
    assert json.loads(view["private_metadata"]) == {"channel": "C0TASKS"}
    blocks = view["blocks"]
    assert [(b["block_id"], b["element"]["action_id"], b["element"]["type"]) for b in blocks] == [
        ("scope", "scope", "radio_buttons"),
        ("users", "users", "multi_external_select"),
        ("users_file", "users_file", "file_input"),
        ("password", "password", "plain_text_input"),
        ("require_change", "require_change", "checkboxes"),
        ("no_email", "no_email", "radio_buttons"),
        ("no_email_password", "no_email_password", "plain_text_input"),
        ("skip_locked", "skip_locked", "checkboxes"),
        ("start_at", "start_at", "datetimepicker"),
    ]
    assert [o["value"] for o in blocks[0]["element"]["options"]] == [s.value for s in Scope]
    assert all(o.get("description") for o in blocks[0]["element"]["options"])
    assert [b.get("optional", False) for b in blocks] == [False, True, True, True, True, False,
                                                          True, True, True]
    assert [o["value"] for o in blocks[5]["element"]["options"]] == ["reset", "skip", "set"]
    assert blocks[5]["element"]["initial_option"]["value"] == "reset"
    assert "Slack cannot hide what you type here" in blocks[6]["hint"]["text"]
    assert blocks[4]["element"]["initial_options"] == blocks[4]["element"]["options"]
    assert blocks[4]["element"]["options"][0]["value"] == "yes"


def test_the_password_hint_says_what_blank_and_filled_do_and_that_it_shows() -> None:
    blocks = {block["block_id"]: block for block in reset_modal()["blocks"]}
    hint = blocks["password"]["hint"]["text"]
    assert "Leave blank to e-mail each user a new random password" in hint
    assert "set this password for all of them and send no e-mail" in hint
    assert "Slack shows what you type" in hint


def test_a_modal_without_a_channel_has_empty_metadata() -> None:
    assert reset_modal(None)["private_metadata"] == ""


# ---- options ----------------------------------------------------------------------------------


def user(id: int = 1, username: str = "carol", full_name: str = "Carol Cataloguer",
         email: str | None = "c@example.org", role: str | None = None) -> DirectoryUser:
    return DirectoryUser(id, username, full_name, email, role)


@pytest.mark.parametrize("person,label", [
    (user(), "Carol Cataloguer (carol)"),
    (user(role="librarian"), "Carol Cataloguer (carol) · staff"),
    (user(role=""), "Carol Cataloguer (carol)"),
    (user(full_name=""), "carol"),
    (user(full_name="", role="admin"), "carol · staff"),
    (user(full_name="Ann\r\nBcc: x@evil"), "Ann Bcc: x@evil (carol)"),
])
def test_option_labels(person: DirectoryUser, label: str) -> None:
    assert user_option_label(person) == label


def test_long_option_labels_keep_the_username_and_staff_mark_within_75() -> None:
    label = user_option_label(user(full_name="Bartholomew " * 20, role="admin"))
    assert len(label) == 75
    assert label.endswith("… (carol) · staff")
    huge_username = user_option_label(user(full_name="X", username="u" * 200, role="r"))
    assert len(huge_username) <= 75


def test_options_are_capped_at_100_with_ids_as_values() -> None:
    options = user_options([user(id=i, username=f"u{i}") for i in range(1, 151)])
    assert len(options) == 100
    assert options[0] == {"text": {"type": "plain_text", "text": "Carol Cataloguer (u1)",
                                   "emoji": True}, "value": "1"}


# ---- preview ------------------------------------------------------------------------------------


PREVIEW = Preview(users=7, emailable=5, without_email=2, staff=2)


def test_the_preview_counts_and_holds_only_the_pending_id() -> None:
    view = preview_modal("pending-id-abc", PREVIEW, scope=Scope.ALL, selected=0,
                         mode=Mode.GENERATED, require_change=True)
    valid(view, "modal")
    assert view["callback_id"] == "bulk_reset_confirm"
    assert view["private_metadata"] == "pending-id-abc"
    text = json.dumps(view)
    for shown in ("*Users to reset*\\n7", "*E-mailed a new password*\\n5",
                  "*Without e-mail*\\n2", "*Staff included*\\n2", "e-mailed",
                  "2 staff accounts included", "Required"):
        assert shown in text
    assert view["submit"]["text"] == "Reset 7 & e-mail"


def test_a_default_password_preview_says_nobody_is_emailed() -> None:
    view = preview_modal("p", PREVIEW, scope=Scope.SELECTED_ONLY, selected=7, mode=Mode.DEFAULT,
                         require_change=False)
    valid(view, "modal")
    text = json.dumps(view)
    assert "*E-mailed a new password*\\n0" in text
    assert "nobody is e-mailed" in text and "Not required" in text
    assert "Only 7 picked users" in text
    assert view["submit"]["text"] == "Set for 7 users"


def test_the_preview_says_how_many_addresses_cannot_be_used_and_why() -> None:
    """Issue 17: the values counted as no e-mail that were there but are not addresses, by
    reason; only where passwords are e-mailed."""
    unusable = Preview(users=7, emailable=4, without_email=3, staff=0,
                       unusable={"blank": 2, "no_at": 1})
    said = ("3 addresses cannot be used and count as no e-mail: 2 only spaces, 1 no @ (such "
            "as n/a or none).")
    mailed = preview_modal("p", unusable, scope=Scope.ALL, selected=0, mode=Mode.GENERATED,
                           require_change=True)
    valid(mailed, "modal")
    assert said in json.dumps(mailed)
    default = preview_modal("p", unusable, scope=Scope.ALL, selected=0, mode=Mode.DEFAULT,
                            require_change=True)
    assert "cannot be used" not in json.dumps(default)


@pytest.mark.parametrize("mode", list(Mode))
@pytest.mark.parametrize("users", [1, 7, 100_000, 9_999_999])
def test_the_confirm_button_fits_slacks_24_characters(mode: Mode, users: int) -> None:
    assert len(confirm_button_text(mode, Tally(users=users, changed=users))) <= 24
    assert confirm_button_text(Mode.DEFAULT, Tally(users=1, changed=1)) == "Set for 1 user"


def test_a_notice_is_a_closable_modal_without_inputs() -> None:
    view = notice_modal("Start again", "This request was already confirmed as task #3.")
    valid(view, "modal")
    assert "submit" not in view and view["close"]["text"] == "Close"


# ---- App Home and status text -------------------------------------------------------------------


def test_the_home_lists_tasks_with_links_and_the_new_reset_button() -> None:
    view = home_view([snapshot(), snapshot(id=11, status=TaskStatus.COMPLETED,
                                           slack_thread_ts=None)], allowed=True)
    valid(view, "home")
    assert view["blocks"][1]["accessory"]["action_id"] == "open_reset_modal"
    text = json.dumps(view, ensure_ascii=False)
    assert "#12 Running" in text and "#11 Completed" in text
    assert "`▓▓▓▓░░░░░░` 4 of 10 users" in text
    assert "<@UADMIN>" in text
    links = [b["accessory"]["url"] for b in view["blocks"] if "url" in b.get("accessory", {})]
    assert links == ["https://slack.com/archives/C0TASKS/p1700000000000100"]


def test_the_home_stays_within_slacks_block_limit_with_many_tasks() -> None:
    view = home_view([snapshot(id=i) for i in range(1, 200)], allowed=True)
    valid(view, "home")
    assert len(view["blocks"]) <= 100


def test_a_non_admin_home_has_no_tasks_and_no_button() -> None:
    view = home_view([snapshot()], allowed=False)
    valid(view, "home")
    text = json.dumps(view)
    assert "not on the list" in text and "#12" not in text and "open_reset_modal" not in text


def test_user_text_in_mrkdwn_cannot_ping_or_break_layout() -> None:
    assert escape("<!channel> & <@U1>") == "&lt;!channel&gt; &amp; &lt;@U1&gt;"
    text = task_status_text(snapshot(requester="cli:<!channel>", requester_name="",
                                     error="boom <!here>\nline"))
    assert "<!channel>" not in text and "<!here>" not in text
    assert "&lt;!here&gt;" in text and "boom &lt;!here&gt; line" in text
    home = json.dumps(home_view([snapshot(requester="cli:x", requester_name="<!everyone>")],
                                allowed=True))
    assert "<!everyone>" not in home


def test_help_names_every_subcommand() -> None:
    text = help_text()
    assert "`/reset-passwords`" in text and "`/reset-passwords status`" in text
    assert "`/reset-passwords help`" in text


def test_progress_bars_and_links() -> None:
    assert progress_bar(0) == "░" * 10
    assert progress_bar(0.45) == "▓" * 4 + "░" * 6
    assert progress_bar(2) == "▓" * 10
    assert thread_link("C1", "123.000400") == "https://slack.com/archives/C1/p123000400"
    assert thread_link(None, "1.2") is None and thread_link("C1", None) is None
