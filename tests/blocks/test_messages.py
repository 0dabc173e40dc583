"""The task centre's messages: what they say, their buttons, their limits, and hostile text."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from blocks import messages
from blocks.text import outage_failure_words, waits_for
from core.models import ItemState, Mode, Scope, TaskStatus
from core.outage import directory_reason
from core.progress import TaskSnapshot
from tests.support.slack_standin import block_kit_problems


def snap(**overrides: Any) -> TaskSnapshot:
    counts = dict.fromkeys(ItemState, 0)
    counts.update(overrides.pop("counts", {}))
    base = TaskSnapshot(
        id=12, status=TaskStatus.RUNNING, scope=Scope.ALL.value, mode=Mode.GENERATED.value,
        require_change=True, requester="U0STAFF", requester_name="Stella Staff", total=100,
        planned=True, counts=counts, created_at=datetime(2026, 1, 1, tzinfo=UTC),
        started_at=None, finished_at=None, slack_channel="C0DESK", slack_thread_ts=None,
        retry_of=None, cancel_requested=False, error=None,
    )
    return replace(base, **overrides)


def buttons(message: messages.SlackMessage) -> list[dict[str, Any]]:
    return [e for b in message.blocks if b["type"] == "actions" for e in b["elements"]]


def everything(message: messages.SlackMessage) -> str:
    return message.text + json.dumps(message.blocks, ensure_ascii=False)


def test_running_parent_shows_progress_and_a_cancel_button() -> None:
    task = snap(counts={ItemState.NOTIFIED: 40, ItemState.NO_EMAIL: 5, ItemState.PENDING: 55})
    message = messages.parent_message(task)
    assert block_kit_problems(message.blocks) == []
    shown = everything(message)
    assert "Password reset #12" in shown
    assert "<@U0STAFF>" in shown
    assert "Everyone" in shown
    assert "45%" in shown and "45 of 100 users done" in shown
    assert "▓" in shown
    assert [(b["action_id"], b["value"]) for b in buttons(message)] == [("cancel_task", "12")]
    assert message.text == "Password reset #12: Running, 45 of 100 users done"


def test_running_parent_shows_rate_and_time_left() -> None:
    from datetime import timedelta

    started = datetime(2026, 1, 1, 9, 0, tzinfo=UTC)
    task = snap(total=10_000, counts={ItemState.RESET: 3_400, ItemState.PENDING: 6_600},
                mode=Mode.DEFAULT.value, started_at=started,
                read_at=started + timedelta(seconds=85))
    shown = everything(messages.parent_message(task))
    assert "3,400 of 10,000 users done · 40 users/s · about 3 min left" in shown
    # Two seconds in, there is no estimate yet; once ended, the rate over the whole run.
    early = replace(task, counts={**task.counts, ItemState.RESET: 80, ItemState.PENDING: 9_920},
                    read_at=started + timedelta(seconds=2))
    assert "users/s" not in everything(messages.parent_message(early))
    ended = replace(task, status=TaskStatus.COMPLETED,
                    counts={**task.counts, ItemState.RESET: 10_000, ItemState.PENDING: 0},
                    finished_at=started + timedelta(seconds=200))
    assert "10,000 of 10,000 users done · 50 users/s" in everything(
        messages.parent_message(ended))
    assert "left" not in everything(messages.parent_message(ended))


def test_waiting_says_for_which_task_and_roughly_how_long() -> None:
    from datetime import timedelta

    started = datetime(2026, 1, 1, 9, 0, tzinfo=UTC)
    blocking = snap(id=7, total=1_000, counts={ItemState.RESET: 100},
                    started_at=started, read_at=started + timedelta(seconds=20))
    text = messages.waiting_reply(snap(), 7, blocking).text
    assert "reset #7 is still running and resets some of the same users" in text
    assert "Reset #12 starts as soon as it ends, in about 3 min at its current pace." in text
    assert messages.waiting_reply(snap(), 7, None).text.endswith("starts as soon as it ends.")


def test_finished_parent_offers_retry_only_with_failed_mails() -> None:
    failed = snap(status=TaskStatus.COMPLETED_WITH_ERRORS,
                  counts={ItemState.NOTIFIED: 97, ItemState.NOTIFY_FAILED: 3})
    assert [(b["action_id"], b["value"]) for b in buttons(messages.parent_message(failed))] == [
        ("retry_failed", "12")]
    clean = snap(status=TaskStatus.COMPLETED, counts={ItemState.NOTIFIED: 100})
    assert buttons(messages.parent_message(clean)) == []
    assert all(b["type"] != "actions" for b in messages.parent_message(clean).blocks)


def test_cancel_requested_hides_the_cancel_button() -> None:
    task = snap(cancel_requested=True)
    message = messages.parent_message(task)
    assert buttons(message) == []
    assert "cancel requested" in everything(message)


def test_scope_with_a_selection_counts_the_picked_users() -> None:
    task = snap(scope=Scope.ALL_EXCEPT_SELECTED.value)
    assert "Everyone except 3 picked users" in everything(
        messages.parent_message(task, selected=3))


def test_unplanned_task_says_it_is_listing_users() -> None:
    task = snap(status=TaskStatus.QUEUED, total=0, planned=False)
    assert "Working out who is in scope" in everything(messages.parent_message(task))


def test_retries_are_one_line_for_the_whole_round() -> None:
    reply = messages.retries_reply(snap(), users=250, attempt=2, max_attempts=4,
                                   delay_seconds=300)
    assert "250 notifications failed, retrying in 5 minutes (attempt 2 of 4)" in reply.text
    assert block_kit_problems(reply.blocks) == []
    assert "in 45 seconds" in messages.retries_reply(snap(), 1, 1, 4, 45).text
    assert "1 notification failed" in messages.retries_reply(snap(), 1, 1, 4, 45).text


def test_waiting_and_milestone_and_started() -> None:
    assert "reset #7 is still running" in messages.waiting_reply(snap(), 7).text
    half = snap(counts={ItemState.NOTIFIED: 50})
    assert messages.milestone_reply(half, 2).text == "Halfway: 50 of 100 users done."
    assert "for 100 users" in messages.started_reply(snap()).text
    assert "nobody is e-mailed" in messages.started_reply(snap(mode=Mode.DEFAULT.value)).text


def test_summary_counts_each_outcome() -> None:
    task = snap(status=TaskStatus.COMPLETED_WITH_ERRORS, counts={
        ItemState.NOTIFIED: 90, ItemState.NO_EMAIL: 7, ItemState.NOTIFY_FAILED: 3})
    summary = messages.summary_reply(task, messages.BELOW)
    assert block_kit_problems(summary.blocks) == []
    fields = [f["text"] for b in summary.blocks if "fields" in b for f in b["fields"]]
    assert fields == ["*E-mailed*\n90", "*No e-mail*\n7", "*Mail failed*\n3"]
    assert summary.text == (
        "Reset #12 completed with errors: e-mailed 90, no e-mail 7, mail failed 3")
    shown = everything(summary)
    assert "7 users had no e-mail address" in shown
    assert "3 mails never got through" in shown
    assert "CSV below" in shown


def test_the_summary_says_where_the_list_went_and_who_must_hear_a_default_password() -> None:
    emailed = snap(status=TaskStatus.COMPLETED, counts={ItemState.NOTIFIED: 9,
                                                       ItemState.NO_EMAIL: 1})
    by_default = snap(status=TaskStatus.COMPLETED, mode=Mode.DEFAULT.value,
                      counts={ItemState.RESET: 1})

    to_dm = everything(messages.summary_reply(emailed, messages.in_direct_message("U0STAFF")))
    nowhere = everything(messages.summary_reply(emailed))
    told = everything(messages.summary_reply(by_default))

    assert "in the CSV sent to <@U0STAFF> in a direct message (it holds no passwords)" in to_dm
    assert "`resetbot tasks show 12 --csv`" in nowhere
    assert "1 user now has the default password and nobody was e-mailed: tell each of them " \
        "the password yourself." in told
    assert "resetbot tasks show" not in told  # nobody to follow up by list: all were reset


def test_summary_of_a_cancelled_task_reports_who_was_reset() -> None:
    task = snap(status=TaskStatus.CANCELLED, mode=Mode.DEFAULT.value,
                counts={ItemState.RESET: 30, ItemState.CANCELLED: 70})
    shown = everything(messages.summary_reply(task))
    assert "*Reset*\\n30" in shown and "*Cancelled*\\n70" in shown
    assert "70 users not reached, left alone; those already reset keep their new password" in shown
    assert "Reset #12 cancelled* · 100 users: 30 passwords reset · 70 not reached." in shown


def test_hostile_names_and_errors_ping_nobody_and_stay_in_limits() -> None:
    evil = "<!channel> <@U999> &amp; *bold*\r\nInjected: line " + "x" * 5000
    task = snap(requester="cli:root", requester_name=evil, error=evil,
                status=TaskStatus.FAILED)
    summary = messages.summary_reply(task)
    for message in (messages.parent_message(task), summary, messages.task_error_reply(task)):
        shown = everything(message)
        assert "<!channel>" not in shown and "<@U999>" not in shown
        if message is not summary:
            assert "&lt;!channel&gt;" in shown
        assert "\r" not in shown
        assert block_kit_problems(message.blocks) == []
        assert len(shown) < 6000


def test_fallback_note_says_where_and_why() -> None:
    message = messages.parent_message(snap(slack_channel="D0REQ"), fallback_from="C0DESK",
                                      fallback_reason="not_in_channel")
    assert "I couldn't post in <#C0DESK> (I'm not a member of that channel)" in everything(
        message)
    note = messages.fallback_note("D0OTHER", "channel_not_found")
    assert "that conversation" in note


def test_follow_up_csv_has_the_columns_and_is_spreadsheet_safe() -> None:
    rows = [
        messages.FollowUp("dave", "Dave Dewey", None, ItemState.NO_EMAIL, 0, None),
        messages.FollowUp("=HYPERLINK(\"x\")", "+Evil\nName", "e@example.org",
                          ItemState.NOTIFY_FAILED, 4, "550 mailbox unavailable"),
    ]
    content = messages.follow_up_csv(rows)
    parsed = list(csv.reader(io.StringIO(content)))
    assert parsed[0] == ["username", "full_name", "email", "outcome", "attempts", "reason"]
    assert parsed[1][:5] == ["dave", "Dave Dewey", "", "no e-mail", "0"]
    assert parsed[1][5].startswith("No e-mail address on file: reset and told nobody")
    assert parsed[2] == ["'=HYPERLINK(\"x\")", "'+Evil Name", "e@example.org", "mail failed", "4",
                         "Mail failed: 550 mailbox unavailable"]
    assert "password" not in content.lower()


@settings(max_examples=60, deadline=None)
@given(name=st.text(max_size=400), error=st.one_of(st.none(), st.text(max_size=4000)),
       total=st.integers(0, 10**6), done=st.integers(0, 10**6))
def test_any_text_any_size_gives_valid_messages(
    name: str, error: str | None, total: int, done: int
) -> None:
    task = snap(requester="cli:x", requester_name=name, error=error, total=total,
                counts={ItemState.NOTIFIED: min(done, total)},
                status=TaskStatus.COMPLETED_WITH_ERRORS)
    for message in (messages.parent_message(task), messages.summary_reply(task)):
        assert block_kit_problems(message.blocks) == []
        for block in message.blocks:
            texts = [block.get("text", {}).get("text", "")] + [
                e.get("text", "") for e in block.get("elements", []) if e.get("type") == "mrkdwn"]
            for text in texts:
                # Only our own markup may open an angle bracket: mentions and channel links.
                assert "<!" not in text


def test_a_pause_names_what_it_waits_for_the_mail_server_or_the_directory() -> None:
    """A directory that stops answering is not a mail outage: every line of a pause and of its
    end names the directory, and a task that waited too long says which one stayed down."""
    since = datetime(2026, 1, 1, 9, tzinfo=UTC)
    mail = snap(paused_since=since, paused_until=since,
                pause_reason="Could not reach the mail server mail.example.org:587 (refused).")
    ldap = snap(paused_since=since, paused_until=since,
                pause_reason="The directory ldaps://ldap.example.org/dc=example,dc=org cannot "
                             "be reached: timed out (resetbot tries again)")
    for task, waited, other in ((mail, "the mail server", "the directory"),
                                (ldap, "the directory", "the mail server")):
        for shown in (everything(messages.paused_reply(task)), messages.paused_note(task),
                      everything(messages.parent_message(task))):
            assert f"until {waited} answers" in shown and other not in shown
        resumed = replace(task, paused_since=None, paused_until=None)  # the reason stays
        assert messages.resumed_reply(resumed).text == (
            f":arrow_forward: Resumed: {waited} answers again.")
    assert outage_failure_words(ldap.pause_reason or "", 2 * 3600 + 5 * 60) == (
        "The directory could not be used for 2 h 5 min: " + (ldap.pause_reason or ""))
    assert outage_failure_words(mail.pause_reason or "", 59).startswith(
        "The mail server could not be used for 0 min: Could not reach")
    # A directory whose own words do not begin with it is still told apart.
    assert directory_reason("connection refused") == (
        "The directory cannot be used: connection refused")
    assert waits_for(directory_reason("connection refused")) == "the directory"
