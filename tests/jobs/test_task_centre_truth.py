"""The task centre tells the truth (issue 20): the summary never waits on the private list, and
every count shown anywhere comes from one Tally over the items.

Real tasks on the real database and Redis, Slack deliveries through slack_sdk to the stand-in.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import insert, update

from blocks import messages
from blocks.text import done_words, ended_words, tally_words, task_status_text
from blocks.views import home_view, preview_modal
from core import tasks
from core.approval import ApprovalState, preview_of
from core.directory.users import Preview
from core.models import (
    ItemState,
    Mode,
    NoEmailChoice,
    ResetItem,
    ResetTask,
    Scope,
    TaskStatus,
    utcnow,
)
from core.progress import TaskSnapshot, snapshot
from core.tally import Tally, preview_tally
from core.tasks import ResetRequest
from jobs import slack_reporter
from jobs.context import WorkerContext
from jobs.finishing import finish_if_done
from tests.jobs.test_slack_reporter import (
    CHANNEL,
    REQUESTER,
    parents,
    start_task,
    summary_replies,
    task_row,
    work,
)
from tests.jobs.test_slack_reporter import (
    context as context,
)
from tests.jobs.test_slack_reporter import (
    slack_settings as slack_settings,
)
from tests.support.cli import RunCli
from tests.support.cli import cli_settings as cli_settings
from tests.support.cli import run as run
from tests.support.slack_standin import SlackStandIn
from tests.support.smtp import SmtpServer
from tests.support.smtp import smtp_server as smtp_server


def csv_usernames(text: str) -> list[str]:
    return [row["username"] for row in csv.DictReader(io.StringIO(text))]


# ---- the summary never waits on the direct message -------------------------------------------


@pytest.mark.parametrize(
    ("method", "error"),
    [
        ("conversations.open", "user_not_found"),  # the requester left the workspace
        ("conversations.open", "user_disabled"),  # their account is deactivated
        ("conversations.open", "missing_scope"),  # installed without im:write
        ("files.completeUploadExternal", "channel_not_found"),
    ],
)
def test_a_list_that_cannot_go_privately_is_said_so_and_the_summary_is_posted(
    context: WorkerContext, slack_standin: SlackStandIn, smtp_server: SmtpServer,
    sample_users: list[Any], run: RunCli, method: str, error: str,
) -> None:
    if error == "user_not_found":
        slack_standin.remove_user(REQUESTER)
    elif error == "user_disabled":
        slack_standin.deactivate_user(REQUESTER)
    elif error == "missing_scope":
        slack_standin.revoke_scope("im:write")
    else:
        slack_standin.fail_next(method, error, times=50)  # for good: Slack keeps saying it
    task_id = start_task(context)
    work(context)

    [parent] = parents(slack_standin, CHANNEL)
    thread = slack_standin.thread(CHANNEL, parent.ts)
    [summary] = summary_replies(thread, task_id)
    if method == "conversations.open":  # known before the summary: it says so itself
        assert "could not be sent to you privately" in str(summary.blocks)
    assert thread.index(summary) < len(thread) - 1
    [said] = [m for m in thread if "could not be sent privately" in m.text]
    # Said without the list's content: no username, no address of those to contact.
    assert "dave" not in said.text and "frank" not in said.text
    assert f"resetbot tasks show {task_id} --csv" in said.text
    assert slack_standin.files_in_public_channels() == []
    assert [f for f in slack_standin.files() if f.channel is not None] == []
    # A permanent refusal is not retried for hours: one try, the end fully told.
    assert slack_standin.count(method) == 1
    row = task_row(context.sessions, task_id)
    assert row.summary_posted and row.slack_csv_posted
    # The list stays with the task.
    shown = run("tasks", "show", str(task_id), "--csv")
    assert shown.code == 0, shown.err
    assert csv_usernames(shown.out) == ["dave", "frank"]


def test_a_list_slack_cannot_take_for_now_follows_its_summary(
    context: WorkerContext, slack_standin: SlackStandIn, smtp_server: SmtpServer,
    sample_users: list[Any], monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The in-process retry still happens, without its half-second pause.
    monkeypatch.setattr(slack_reporter, "INLINE_RETRY_PAUSE", 0.01)
    slack_standin.server_error_next("conversations.open", times=2)  # the in-process retry too
    task_id = start_task(context)
    work(context)

    [parent] = parents(slack_standin, CHANNEL)
    thread = slack_standin.thread(CHANNEL, parent.ts)
    [summary] = summary_replies(thread, task_id)
    assert "follows in a direct message" in str(summary.blocks)
    # The delivery tried again and sent the list; the summary was not posted twice.
    [upload] = slack_standin.files(slack_standin.dm_channel(REQUESTER))
    assert csv_usernames(upload.text) == ["dave", "frank"]
    assert not [m for m in thread if "could not be sent privately" in m.text]


# ---- one count everywhere --------------------------------------------------------------------


def make_task(context: WorkerContext, mode: Mode = Mode.GENERATED, **values: Any) -> int:
    request = ResetRequest(
        requester=REQUESTER, requester_name="Stella Staff", scope=Scope.ALL, selection=(),
        default_password="Correct-Horse-Battery-9" if mode is Mode.DEFAULT else None,
        slack_channel=CHANNEL,
    )
    with context.sessions.begin() as session:
        task_id = tasks.create_task(session, context.settings, request).id
        if values:
            session.execute(update(ResetTask).where(ResetTask.id == task_id).values(**values))
    return task_id


def with_items(context: WorkerContext, task_id: int, states: list[ItemState]) -> None:
    now = utcnow()
    rows = [
        {"task_id": task_id, "user_id": 1000 + i, "chunk": 0, "username": f"user{i:04}",
         "full_name": f"User {i}", "email": None if state in (
             ItemState.NO_EMAIL, ItemState.SKIPPED) else f"user{i}@example.org",
         "is_staff": False, "state": state.value, "attempts": 1, "updated_at": now}
        for i, state in enumerate(states)
    ]
    with context.sessions.begin() as session:
        session.execute(insert(ResetItem), rows)
        session.execute(update(ResetTask).where(ResetTask.id == task_id).values(
            total=len(states), planned=True, status=TaskStatus.RUNNING, started_at=now))


def mix(**counts: int) -> list[ItemState]:
    return [state for name, count in counts.items() for state in [ItemState(name)] * count]


def all_reset(context: WorkerContext) -> int:
    task_id = make_task(context, Mode.DEFAULT)
    with_items(context, task_id, mix(reset=12))
    return task_id


def mailed_and_no_email(context: WorkerContext) -> int:
    task_id = make_task(context)
    with_items(context, task_id, mix(notified=9, no_email=3))
    return task_id


def skip(context: WorkerContext) -> int:
    task_id = make_task(context, no_email="skip", preview={
        "users": 3, "emailable": 1, "without_email": 2, "staff": 0})
    with_items(context, task_id, mix(notified=1, skipped=2))
    return task_id


def locked_left_out(context: WorkerContext) -> int:
    """Koha's `login_attempts = -1`: accounts staff locked, which the task leaves out."""
    task_id = make_task(context, skip_locked=True, preview={
        "users": 10, "emailable": 10, "without_email": 0, "staff": 0, "locked": 3})
    with_items(context, task_id, mix(notified=7, locked=3))
    return task_id


def cancelled_before_start(context: WorkerContext) -> int:
    task_id = make_task(context, status=TaskStatus.SCHEDULED,
                        start_at=utcnow() + timedelta(hours=2), preview={
                            "users": 145, "emailable": 140, "without_email": 5, "staff": 3})
    with context.sessions.begin() as session:
        tasks.request_cancel(session, task_id, REQUESTER)
    return task_id


def cancelled_midway(context: WorkerContext) -> int:
    task_id = make_task(context)
    with_items(context, task_id, mix(notified=50, pending=100))
    with context.sessions.begin() as session:
        tasks.request_cancel(session, task_id, REQUESTER)
    return task_id


def failed_notifications(context: WorkerContext) -> int:
    task_id = make_task(context)
    with_items(context, task_id, mix(notified=6, notify_failed=4))
    return task_id


MIXES = {
    "all reset": (all_reset, Tally(users=12, changed=12, done=12)),
    "mailed and no e-mail": (mailed_and_no_email, Tally(users=12, changed=12, done=12, mailed=9)),
    "skip": (skip, Tally(users=3, changed=1, left_alone=2, done=3, mailed=1)),
    "locked left out": (locked_left_out, Tally(users=10, changed=7, left_alone=3, done=10,
                                               mailed=7)),
    "cancelled before start": (cancelled_before_start, Tally(users=145, changed=0,
                                                             not_reached=145)),
    "cancelled midway": (cancelled_midway, Tally(users=150, changed=50, not_reached=100,
                                                 done=50, mailed=50)),
    "failed notifications": (failed_notifications, Tally(users=10, changed=10, done=10,
                                                         mailed=6, mail_failed=4)),
}


def ended(context: WorkerContext, task_id: int) -> TaskSnapshot:
    finish_if_done(context, task_id)
    with context.sessions() as session:
        task = snapshot(session, task_id)
    assert task is not None and task.status.is_final
    return task


@pytest.mark.parametrize("name", list(MIXES))
def test_every_edge_shows_the_counts_of_the_one_tally(
    context: WorkerContext, run: RunCli, name: str
) -> None:
    make, expected = MIXES[name]
    task = ended(context, make(context))
    tally = task.tally
    assert tally == expected

    parent = messages.parent_message(task)
    summary = messages.summary_reply(task)
    home = json.dumps(home_view([task], allowed=True), ensure_ascii=False)
    status = task_status_text(task)
    shown = run("tasks", "show", str(task.id))
    assert shown.code == 0, shown.err

    if task.ended_unstarted:
        nobody = f"nobody's password changed ({tally.users:,} users in scope)"
        for edge in (json.dumps(parent.blocks), json.dumps(summary.blocks), home, status):
            assert nobody in edge
        assert "100%" not in json.dumps(parent.blocks)
        assert "keep their new password" not in json.dumps(summary.blocks)
    else:
        done = done_words(tally)
        for edge in (parent.text, json.dumps(parent.blocks, ensure_ascii=False), home, status,
                     shown.out):
            assert done in edge, (edge, done)
        words = tally_words(tally)
        assert words in json.dumps(summary.blocks, ensure_ascii=False)
        assert done + ended_words(tally) in shown.out
        percent = round(tally.fraction * 100)
        assert f"{percent}% · {done}" in json.dumps(parent.blocks, ensure_ascii=False)

    # The list of users to contact by hand: the users the tally says need it, no more (an
    # account locked on purpose stays locked: nobody to tell).
    listed = run("tasks", "show", str(task.id), "--csv")
    assert len(csv_usernames(listed.out)) == (
        tally.left_alone - task.counts[ItemState.LOCKED] + tally.mail_failed
        + task.counts[ItemState.NO_EMAIL] + task.counts[ItemState.HANDED_OUT])

    # Before it ran: the preview, its button and what approvers were shown said the same.
    with context.sessions() as session:
        kept = preview_of(session.get(ResetTask, task.id).preview)  # type: ignore[union-attr]
    if kept is not None and not task.ended_unstarted:
        check_the_preview_said_it(task, kept, tally)


def check_the_preview_said_it(task: TaskSnapshot, kept: Preview, tally: Tally) -> None:
    mode, no_email = Mode(task.mode), NoEmailChoice(task.no_email)
    planned = preview_tally(kept, mode, no_email, skip_locked=task.skip_locked)
    assert (planned.users, planned.changed, planned.left_alone) == (
        tally.users, tally.changed, tally.left_alone)
    modal = preview_modal("P1", kept, scope=Scope(task.scope), selected=0, mode=mode,
                          require_change=task.require_change, no_email=no_email,
                          skip_locked=task.skip_locked)
    fields = [field["text"] for block in modal["blocks"] for field in block.get("fields", [])]
    assert f"*Users to reset*\n{tally.changed:,}" in fields
    assert modal["submit"]["text"] == (f"Reset {tally.changed:,} & e-mail"
                                       if mode is Mode.GENERATED
                                       else f"Set for {tally.changed:,} users")
    waiting = replace(task, status=TaskStatus.AWAITING_APPROVAL, approval=ApprovalState(
        preview=kept, expires_at=utcnow() + timedelta(hours=1), approved_by=None,
        rejected_by=None, decided_at=None))
    shown = "\n".join(messages.approval_details(waiting))
    left_alone = f" · left alone {tally.left_alone:,}" if tally.left_alone else ""
    assert f"*Users to reset* {tally.changed:,} · " in shown
    assert left_alone in shown
    assert f"*Users to reset* {tally.changed:,}" in json.dumps(
        home_view([waiting], allowed=True), ensure_ascii=False)


def test_a_cancelled_task_midway_shows_a_third_of_the_bar(context: WorkerContext) -> None:
    task = ended(context, cancelled_midway(context))
    blocks = json.dumps(messages.parent_message(task).blocks, ensure_ascii=False)
    assert "33% · 50 of 150 users done · 50 passwords reset · 100 not reached" in blocks
    assert "150 of 150" not in blocks
    summary = json.dumps(messages.summary_reply(task).blocks, ensure_ascii=False)
    assert "100 users not reached, left alone; those already reset keep their new password" \
        in summary


def test_the_rejection_says_its_emoji_once(context: WorkerContext) -> None:
    task_id = make_task(context, status=TaskStatus.REJECTED, rejected_by="USECOND",
                        approval_expires_at=utcnow() + timedelta(hours=1))
    with context.sessions() as session:
        task = snapshot(session, task_id)
    assert task is not None
    reply = messages.summary_reply(task)
    assert reply.text.count(":no_entry:") == 1
    assert "Rejected by <@USECOND>: nothing was changed." in reply.text


def test_a_scheduled_parent_shows_its_date_without_a_relative_time_that_goes_stale(
    context: WorkerContext,
) -> None:
    start = (utcnow() + timedelta(minutes=2)).replace(microsecond=0)
    task_id = make_task(context, status=TaskStatus.SCHEDULED, start_at=start)
    with context.sessions() as session:
        task = snapshot(session, task_id)
    assert task is not None
    blocks = json.dumps(messages.parent_message(task).blocks)
    assert f"<!date^{int(start.timestamp())}^{{date_short_pretty}} {{time}}|" in blocks
    assert "(in " not in blocks


def test_the_status_line_says_the_scopes_words(context: WorkerContext) -> None:
    task_id = make_task(context)
    with context.sessions.begin() as session:
        session.execute(update(ResetTask).where(ResetTask.id == task_id).values(
            scope=Scope.SELECTED_ONLY.value, selection=[1, 2, 3]))
    with context.sessions() as session:
        task = snapshot(session, task_id)
    assert task is not None
    assert "Only 3 picked users" in task_status_text(task)
    assert "picked below" not in task_status_text(task)
    assert "Only 3 picked users" in json.dumps(home_view([task], allowed=True))


def test_approvers_see_the_passwords_a_skip_request_resets_not_everyone_in_scope(
    context: WorkerContext,
) -> None:
    task_id = make_task(context, status=TaskStatus.AWAITING_APPROVAL, no_email="skip",
                        approval_expires_at=utcnow() + timedelta(hours=1), preview={
                            "users": 7, "emailable": 5, "without_email": 2, "staff": 2})
    with context.sessions() as session:
        task = snapshot(session, task_id)
    assert task is not None
    shown = json.dumps(messages.parent_message(task).blocks)
    assert "*Users to reset* 5 \\u00b7 with e-mail 5 \\u00b7 without e-mail 2 \\u00b7 left " \
           "alone 2 \\u00b7 staff 2" in shown
    assert "*Users to reset* 5" in json.dumps(home_view([task], allowed=True))
