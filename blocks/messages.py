"""The task centre's messages: the parent message, its thread replies and the follow-up CSV.

Pure functions: a TaskSnapshot (and a few plain values) in, Slack text and Block Kit out. Every
piece of user-controlled text (names, usernames, error texts) is escaped for mrkdwn and capped,
so `<!channel>` in a name pings nobody and a very long name cannot break a Block Kit limit.
No password ever reaches these functions: they see counts, names and outcomes only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from blocks.ids import (
    ACTION_APPROVE,
    ACTION_CANCEL,
    ACTION_CONFIRM_SCHEDULED,
    ACTION_REJECT,
    ACTION_RETRY_FAILED,
    ACTION_SEND_LIST,
    ACTION_UNDO,
)
from blocks.kit import Block, context, mrkdwn, plain, section
from blocks.text import (
    OUTCOME_LABELS,
    STATUS_EMOJI,
    done_words,
    ended_words,
    escape,
    locked_left_alone,
    mode_label,
    never_started_words,
    one_line,
    plural,
    progress_bar,
    requester_mention,
    schedule_date,
    scheduled_line,
    scope_summary,
    slack_date,
    span_words,
    starts_if_approved,
    starts_once_approved,
    status_label,
    tally_words,
    truncate,
    undo_button_text,
    undo_how,
    until_words,
    waits_for,
)
from core.csvsafe import to_csv
from core.models import ItemState, Mode, NoEmailChoice, TaskStatus
from core.progress import TaskSnapshot, duration_words, pace_words
from core.schedule import ON_TIME
from core.tally import preview_tally

#: Longest piece of user text (a name, an error) shown in a message.
NAME_LIMIT = 80
ERROR_LIMIT = 500
#: The follow-up CSV's columns; never a password.
FOLLOW_UP_HEADER = ("username", "full_name", "email", "outcome", "attempts", "reason")
#: Outcomes in the order the summary lists them.
SUMMARY_ORDER = (
    ItemState.RESET,
    ItemState.NOTIFIED,
    ItemState.NO_EMAIL,
    ItemState.HANDED_OUT,
    ItemState.SKIPPED,
    ItemState.LOCKED,
    ItemState.NOTIFY_FAILED,
    ItemState.REFUSED,
    ItemState.CANCELLED,
    ItemState.RESTORED,
    ItemState.CHANGED_SINCE,
)
QUARTER_WORDS = {1: "A quarter done", 2: "Halfway", 3: "Three quarters done"}
#: Why the bot could not post where the task was asked for, as Slack's error codes say.
FALLBACK_REASONS = {
    "not_in_channel": "I'm not a member of that channel",
    "channel_not_found": "I can't see that conversation",
    "is_archived": "that channel is archived",
    "restricted_action": "that channel doesn't let me post",
}


@dataclass(frozen=True)
class SlackMessage:
    """What chat.postMessage / chat.update take: notification text plus blocks."""

    text: str
    blocks: list[Block] = field(default_factory=list)

    def as_kwargs(self) -> dict[str, Any]:
        return {"text": self.text, "blocks": self.blocks}


@dataclass(frozen=True)
class FollowUp:
    """One user staff must contact by hand (a row of the CSV). Holds no password."""

    username: str
    full_name: str
    email: str | None
    outcome: ItemState
    attempts: int
    last_error: str | None


# ---- small pieces ---------------------------------------------------------------------------


def safe(text: str | None, limit: int = NAME_LIMIT) -> str:
    """User-controlled text made inert for mrkdwn, on one line, capped at `limit` characters."""
    return escape(truncate(one_line(text or ""), limit))


def task_title(task: TaskSnapshot) -> str:
    if task.undo_of is not None:
        return f"Undo #{task.id} of password reset #{task.undo_of}"
    return f"Password reset #{task.id}"


def who_asked(task: TaskSnapshot) -> str:
    """A mention for a Slack user id, else the (escaped, capped) name the CLI recorded."""
    return requester_mention(task.requester, truncate(task.requester_name, NAME_LIMIT))


def progress_line(task: TaskSnapshot) -> str:
    if task.held:
        return held_note(task)
    if task.status is TaskStatus.SCHEDULED and task.start_at is not None:
        # No "(in 2 min)": the parent is not re-rendered as time passes; Slack shows the date.
        return scheduled_line(task.start_at, relative=False)
    tally = task.tally
    if task.ended_unstarted:
        return f"{status_label(task.status)} before its start: {never_started_words(tally)}."
    if not task.planned and not task.total:
        return "Working out who is in scope…"
    counted = done_words(tally)
    if not task.planned:
        counted += " so far (still listing users)"
    line = f"`{progress_bar(tally.fraction)}` {round(tally.fraction * 100)}% · {counted}"
    if task.status.is_final:
        line += ended_words(tally)
    pace = pace_words(task.pace)
    return f"{line} · {pace}" if pace else line


def outcome_line(task: TaskSnapshot) -> str:
    parts = [
        f"{OUTCOME_LABELS[state]}: {task.counts.get(state, 0):,}"
        for state in SUMMARY_ORDER
        if task.counts.get(state, 0)
    ]
    waiting = task.counts.get(ItemState.RETRY_WAIT, 0)
    if waiting and not task.status.is_final:
        parts.append(f"{OUTCOME_LABELS[ItemState.RETRY_WAIT]}: {waiting:,}")
    return " · ".join(parts)


def in_minutes(seconds: int) -> str:
    if seconds < 60:
        return "in a moment" if seconds <= 5 else f"in {seconds} seconds"
    minutes = math.ceil(seconds / 60)
    return f"in {plural(minutes, 'minute')}"


def fallback_note(channel: str, reason: str | None) -> str:
    """Why this task reports in a DM instead of where it was asked for."""
    why = FALLBACK_REASONS.get(reason or "", "I couldn't post there")
    place = f"<#{escape(channel)}>" if channel[:1] in ("C", "G") else "that conversation"
    return (
        f":information_source: I couldn't post in {place} ({why}), so I'm reporting this reset "
        "to you here. Invite me to the channel to keep the next one there."
    )


# ---- the parent message -------------------------------------------------------------------------


def parent_message(
    task: TaskSnapshot,
    *,
    selected: int = 0,
    fallback_from: str | None = None,
    fallback_reason: str | None = None,
) -> SlackMessage:
    """The task's message in the channel, updated in place as the work advances."""
    status = f"{STATUS_EMOJI[task.status]} *{status_label(task.status)}*"
    if task.cancel_requested and not task.status.is_final:
        status += " · cancel requested: users not yet reset are left alone"
    details = [
        f"{status}",
        f"*Requested by* {who_asked(task)}",
        f"*Who* {escape(scope_summary(task.scope, selected or task.selected))}",
        f"*How* {mode_label(task.mode) if task.undo_of is None else undo_how(task.undo_of)}",
    ]
    if task.undo_of is None and (task.mode == Mode.GENERATED or task.require_change):
        change = "required" if task.require_change else "not required"
        details.append(f"*New password at next login* {change}")
    if task.retry_of:
        details.append(f"*Retry of* reset #{task.retry_of}")
    details.extend(approval_details(task))
    blocks: list[Block] = [
        {"type": "header", "text": plain(task_title(task), 150)},
        section("\n".join(details)),
        section(approval_note(task) if task.status in NOT_STARTED else progress_line(task)),
    ]
    outcomes = outcome_line(task)
    if outcomes:
        blocks.append(context(outcomes))
    if task.error:
        blocks.append(section(f":warning: {safe(task.error, ERROR_LIMIT)}"))
    if task.paused:
        blocks.append(section(paused_note(task)))
    if fallback_from:
        blocks.append(context(fallback_note(fallback_from, fallback_reason)))
    buttons = parent_buttons(task)
    if buttons:
        blocks.append({"type": "actions", "block_id": f"task_{task.id}", "elements": buttons})
    text = f"{task_title(task)}: {status_label(task.status)}"
    if task.total:
        text += f", {done_words(task.tally)}"
    return SlackMessage(text, blocks)


def parent_buttons(task: TaskSnapshot) -> list[Block]:
    """Approve and Reject while it awaits approval; Cancel while it waits for its start time
    or runs; Retry failed notifications once it has ended with failed mails.

    A scheduled task held because its counts changed also offers to start it anyway.
    """
    if task.status is TaskStatus.AWAITING_APPROVAL:
        return [approve_button(task.id), reject_button(task.id), send_list_button(str(task.id))]
    if not task.status.is_final:
        if task.cancel_requested:
            return []
        if task.held:
            return [confirm_scheduled_button(task), cancel_button(task.id)]
        return [cancel_button(task.id)]
    buttons = []
    if task.counts.get(ItemState.NOTIFY_FAILED, 0):
        buttons.append(retry_failed_button(task.id, task.counts[ItemState.NOTIFY_FAILED]))
    if task.undo_until is not None:
        buttons.append(undo_button(task.id, task.undo_until))
    return buttons


def undo_button(task_id: int, until: datetime) -> Block:
    """Opens the Undo confirmation, with the counts taken at the click (core/undo.py)."""
    return {"type": "button", "action_id": ACTION_UNDO, "value": str(task_id),
            "text": plain(undo_button_text(until), 75)}


# ---- four-eyes approval ----------------------------------------------------------------------

#: Statuses of a task that never started because it was (not yet) approved: no progress to show.
NOT_STARTED = frozenset({TaskStatus.AWAITING_APPROVAL, TaskStatus.REJECTED, TaskStatus.EXPIRED})


def approval_details(task: TaskSnapshot) -> list[str]:
    """The counts approvers are shown, and who approved or rejected it."""
    approval = task.approval
    if approval is None:
        return []
    lines = []
    if approval.preview is not None and task.status in NOT_STARTED:
        counts = approval.preview
        tally = preview_tally(counts, Mode(task.mode), NoEmailChoice(task.no_email),
                              skip_locked=task.skip_locked)
        left_alone = f" · left alone {tally.left_alone:,}" if tally.left_alone else ""
        if task.undo_of is not None:
            lines.append(
                f"*Users to put back* {counts.users:,} at most (anyone who changed their "
                f"password since is left alone) · told to ignore the mail {counts.emailable:,}"
            )
        else:
            lines.append(
                f"*Users to reset* {tally.changed:,} · with e-mail {counts.emailable:,} · "
                f"without e-mail {counts.without_email:,}{left_alone} · staff {counts.staff:,}"
            )
    if approval.approved_by:
        lines.append(f"*Approved by* {requester_mention(approval.approved_by)}")
    if approval.rejected_by:
        lines.append(f"*Rejected by* {requester_mention(approval.rejected_by)}")
    return lines


def expired_at_start(task: TaskSnapshot) -> bool:
    """A scheduled reset's request that expired because its start time came first (its
    deadline was its start time; one asked again at its start had RESET_APPROVAL_TTL)."""
    approval = task.approval
    return (task.start_at is not None and approval is not None
            and approval.expires_at is not None and approval.expires_at == task.start_at)


def asked_again_at_start(task: TaskSnapshot) -> bool:
    """A scheduled reset asked for approval again at its start (its request then waits
    RESET_APPROVAL_TTL from its start; a first request never waits beyond the start)."""
    approval = task.approval
    return (task.start_at is not None and approval is not None
            and approval.expires_at is not None and approval.expires_at > task.start_at)


def approval_note(task: TaskSnapshot) -> str:
    """What a task that has not started because of approval says instead of its progress."""
    if task.status in (TaskStatus.REJECTED, TaskStatus.EXPIRED):
        return f"{STATUS_EMOJI[task.status]} {approval_end_words(task)}"
    approval = task.approval
    note = (":raised_hand: *Another admin must approve this reset* before anything changes; "
            "whoever asked for it cannot.")
    if approval is not None and approval.expires_at is not None:
        note += f" The request expires {slack_date(approval.expires_at)}."
    if task.start_at is not None:
        note += "\n" + (starts_once_approved(task.start_at) if asked_again_at_start(task)
                        else starts_if_approved(task.start_at, relative=False))
    if approval is not None and approval.recounted:
        note += "\n:warning: The directory changed since the request: these are the new counts."
    if approval is not None and approval.preview is None:
        note += "\nThe users were not counted: *Approve* counts them first."
    return note


def approval_end_words(task: TaskSnapshot) -> str:
    """Why a task that was never approved changed nothing (no emoji: callers put their own)."""
    approval = task.approval
    if task.status is TaskStatus.REJECTED:
        by = requester_mention(approval.rejected_by) if approval and approval.rejected_by else ""
        return f"Rejected{f' by {by}' if by else ''}: nothing was changed."
    when = "before its start time" if expired_at_start(task) else "in time"
    return f"Nobody approved it {when}: the request expired and nothing was changed."


def approve_button(task_id: int) -> Block:
    return {
        "type": "button",
        "action_id": ACTION_APPROVE,
        "value": str(task_id),
        "style": "primary",
        "text": plain("Approve", 75),
        "confirm": {
            "title": plain(f"Approve reset #{task_id}?", 100),
            "text": mrkdwn("The passwords of the users counted above are reset as soon as "
                           "you approve.", 300),
            "confirm": plain("Approve", 30),
            "deny": plain("Not yet", 30),
        },
    }


def send_list_button(value: str) -> Block:
    """"Send me the list": the CSV of the users a reset would reset, to the clicker by DM."""
    return {"type": "button", "action_id": ACTION_SEND_LIST, "value": value,
            "text": plain("Send me the list", 75)}


def reject_button(task_id: int) -> Block:
    return {
        "type": "button",
        "action_id": ACTION_REJECT,
        "value": str(task_id),
        "style": "danger",
        "text": plain("Reject", 75),
    }


def approval_end_reply(task: TaskSnapshot) -> SlackMessage:
    """The thread's last word on a reset that was never approved."""
    words = (approval_end_words(task) if task.status in (TaskStatus.REJECTED, TaskStatus.EXPIRED)
             else approval_note(task))
    text = f"{STATUS_EMOJI[task.status]} *Reset #{task.id}*: {words}"
    return SlackMessage(text, [section(text)])


def cancel_button(task_id: int) -> Block:
    return {
        "type": "button",
        "action_id": ACTION_CANCEL,
        "value": str(task_id),
        "style": "danger",
        "text": plain("Cancel", 75),
        "confirm": {
            "title": plain(f"Stop reset #{task_id}?", 100),
            "text": mrkdwn(
                "Users not yet reset are left alone. Those already reset keep their new "
                "password and are listed in the summary.", 300
            ),
            "confirm": plain("Stop it", 30),
            "deny": plain("Keep going", 30),
        },
    }


def confirm_scheduled_button(task: TaskSnapshot) -> Block:
    users = task.recheck_users or 0
    return {
        "type": "button",
        "action_id": ACTION_CONFIRM_SCHEDULED,
        "value": str(task.id),
        "style": "primary",
        "text": plain("Start now", 75),
        "confirm": {
            "title": plain(f"Start reset #{task.id}?", 100),
            "text": mrkdwn(f"The passwords of {plural(users, 'user')} (the count taken now) "
                           "will be reset.", 300),
            "confirm": plain("Start it", 30),
            "deny": plain("Not now", 30),
        },
    }


def retry_failed_button(task_id: int, failed: int) -> Block:
    return {
        "type": "button",
        "action_id": ACTION_RETRY_FAILED,
        "value": str(task_id),
        "style": "primary",
        "text": plain("Retry failed notifications", 75),
        "confirm": {
            "title": plain("Retry the failed mails?", 100),
            "text": mrkdwn(
                f"{plural(failed, 'user')} whose mail never arrived get a new random password, "
                "e-mailed, in a new reset.", 300
            ),
            "confirm": plain("Retry", 30),
            "deny": plain("Not now", 30),
        },
    }


# ---- thread replies ----------------------------------------------------------------------------


def started_reply(task: TaskSnapshot) -> SlackMessage:
    if task.undo_of is not None:
        what = undo_how(task.undo_of).lower()
    elif task.mode == Mode.DEFAULT:
        what = "setting the default password; nobody is e-mailed"
    else:
        what = "setting a new random password for each user and e-mailing it"
    if task.total:
        text = f":arrow_forward: Started: {what}, for {plural(task.total, 'user')}."
    else:
        text = f":arrow_forward: Started: {what}. Progress shows in the message above."
    return SlackMessage(text, [section(text)])


def held_note(task: TaskSnapshot) -> str:
    """What the parent says while a scheduled task waits for a new confirmation."""
    return (f":raised_hand: *Waiting for a new confirmation*: {counts_compared(task)} "
            "*Start now* resets them; *Cancel* leaves everyone alone.")


def counts_compared(task: TaskSnapshot) -> str:
    """"The count taken now is 150 users (118 when it was scheduled)."."""
    now = task.recheck_users if task.recheck_users is not None else 0
    then = "" if task.preview_users is None else f" ({task.preview_users:,} when it was scheduled)"
    return f"The count taken now is {plural(now, 'user')}{then}."


def reminder_reply(task: TaskSnapshot, now: datetime) -> SlackMessage:
    """An hour (RESET_SCHEDULE_REMINDER) before a scheduled reset starts."""
    assert task.start_at is not None
    text = (f":alarm_clock: Reminder: reset #{task.id} starts {until_words(task.start_at, now)} "
            f"({schedule_date(task.start_at)}). *Cancel* above stops it; nothing has changed "
            "yet.")
    return SlackMessage(text, [section(text)])


def start_reached_reply(task: TaskSnapshot, late_seconds: int) -> SlackMessage:
    """Its time came: started (on time, or how late) with the final count, or held."""
    when = ("on time" if late_seconds < ON_TIME.total_seconds()
            else f"{span_words(late_seconds)} late (no worker was running at its time)")
    if task.status is TaskStatus.AWAITING_APPROVAL:
        text = (f":raised_hand: Reset #{task.id} did not start ({when}): {counts_compared(task)} "
                "That many need another admin's approval, which it does not have for them: "
                "*Approve* above (not by whoever asked for it) resets them, *Reject* leaves "
                "everyone alone.")
    elif task.held:
        text = (f":raised_hand: Reset #{task.id} did not start ({when}): {counts_compared(task)} "
                "That differs by more than 10 %, so it waits for you: *Start now* above "
                "resets them, *Cancel* leaves everyone alone.")
    else:
        text = f":alarm_clock: Scheduled reset #{task.id} started {when}. {counts_compared(task)}"
    return SlackMessage(text, [section(text)])


def paused_note(task: TaskSnapshot) -> str:
    """What the parent message says while a mail outage holds the task."""
    retry = f" Trying again {slack_date(task.paused_until)}." if task.paused_until else ""
    since = f" since {slack_date(task.paused_since)}" if task.paused_since else ""
    return (f":double_vertical_bar: *Paused{since}*: {safe(task.pause_reason or '', 300)} "
            f"Nobody else's password changes until {waits_for(task.pause_reason)} answers.{retry}")


def paused_reply(task: TaskSnapshot) -> SlackMessage:
    text = (
        f":double_vertical_bar: Paused: {safe(task.pause_reason or '', 300)} Nobody else's "
        f"password changes until {waits_for(task.pause_reason)} answers; resetbot keeps trying "
        "and goes on by itself. *Cancel* above still works."
    )
    return SlackMessage(text, [section(text)])


def resumed_reply(task: TaskSnapshot) -> SlackMessage:
    text = f":arrow_forward: Resumed: {waits_for(task.pause_reason)} answers again."
    return SlackMessage(text, [section(text)])


def waiting_reply(
    task: TaskSnapshot, blocking_task_id: int, blocking: TaskSnapshot | None = None
) -> SlackMessage:
    """Which running reset this one waits for, and roughly how long (from that one's pace)."""
    text = (
        f":hourglass_flowing_sand: Waiting: reset #{blocking_task_id} is still running and "
        f"resets some of the same users. Reset #{task.id} starts as soon as it ends"
    )
    left = blocking.pace.seconds_left if blocking is not None else None
    if left is not None:
        text += f", in {duration_words(left)} at its current pace."
    else:
        text += "."
    return SlackMessage(text, [section(text)])


def milestone_reply(task: TaskSnapshot, quarter: int) -> SlackMessage:
    words = QUARTER_WORDS.get(quarter, "Progress")
    text = f"{words}: {done_words(task.tally)}."
    return SlackMessage(text, [section(text)])


def retries_reply(
    task: TaskSnapshot, users: int, attempt: int, max_attempts: int, delay_seconds: int
) -> SlackMessage:
    """One line for a whole retry round, however many users it holds."""
    failed = plural(users, "notification")
    text = (
        f":e-mail: {failed} failed, retrying {in_minutes(delay_seconds)} "
        f"(attempt {attempt} of {max_attempts}). Their new password is only sent once the "
        "mail goes through."
    )
    return SlackMessage(text, [section(text)])


def task_error_reply(task: TaskSnapshot) -> SlackMessage:
    """A problem with the whole task (say, the mail server refusing our login): said once."""
    problem = safe(task.error, ERROR_LIMIT)
    text = f":warning: Problem with reset #{task.id}: {problem}"
    return SlackMessage(text, [section(text)])


#: Where the follow-up CSV is when it is posted in the task's own (direct-message) thread.
BELOW = "below"
#: The list's private destination could not be reached for now: it is sent once Slack answers.
ON_ITS_WAY = "on its way"
#: The list cannot be sent privately in Slack (the thread says why, in a reply of its own).
NOT_DELIVERED = "not delivered"


def in_channel(channel: str) -> str:
    return f"sent to <#{channel}>"


def in_direct_message(user: str) -> str:
    return f"sent to <@{user}> in a direct message"


def summary_reply(task: TaskSnapshot, follow_up_where: str | None = None) -> SlackMessage:
    """The end of the task: final status and the count of each outcome.

    `follow_up_where` says where the CSV of users to contact by hand went (BELOW, or
    `in_channel` / `in_direct_message`); None when it could go nowhere in Slack.
    """
    if task.status in NOT_STARTED:
        return approval_end_reply(task)
    heading = f"{STATUS_EMOJI[task.status]} *Reset #{task.id} {status_label(task.status).lower()}*"
    tally = task.tally
    if task.ended_unstarted:
        lines = [f"{heading} before its start: {never_started_words(tally)}."]
    else:
        lines = [f"{heading} · {plural(tally.users, 'user')}: {tally_words(tally)}."]
    fields = [
        mrkdwn(f"*{OUTCOME_LABELS[state].capitalize()}*\n{task.counts.get(state, 0):,}")
        for state in SUMMARY_ORDER
        if task.counts.get(state, 0) or state in _expected_outcomes(task)
    ]
    notes = _summary_notes(task, follow_up_where)
    blocks: list[Block] = [section("\n".join(lines))]
    if fields:
        blocks.append({"type": "section", "fields": fields[:10]})
    if notes:
        blocks.append(section("\n".join(notes)))
    counts = ", ".join(
        f"{OUTCOME_LABELS[state]} {task.counts.get(state, 0):,}" for state in SUMMARY_ORDER
        if task.counts.get(state, 0)
    )
    text = f"Reset #{task.id} {status_label(task.status).lower()}"
    if counts:
        text += f": {counts}"
    return SlackMessage(text, blocks)


def _expected_outcomes(task: TaskSnapshot) -> tuple[ItemState, ...]:
    if task.mode == Mode.DEFAULT:
        return (ItemState.RESET,)
    if task.mode == Mode.UNDO:
        return (ItemState.RESTORED,)
    return (ItemState.NOTIFIED, ItemState.NO_EMAIL, ItemState.NOTIFY_FAILED)


def _summary_notes(task: TaskSnapshot, follow_up_where: str | None) -> list[str]:
    notes = []
    tally = task.tally
    if task.ended_unstarted:
        pass  # the heading says it: nobody was reached
    elif task.status is TaskStatus.CANCELLED or tally.not_reached:
        kept = "; those already reset keep their new password" if tally.changed else ""
        why = "Cancelled: " if task.status is TaskStatus.CANCELLED else ""
        notes.append(
            f":no_entry_sign: {why}{plural(tally.not_reached, 'user')} not reached, "
            f"left alone{kept}."
        )
    no_email = task.counts.get(ItemState.NO_EMAIL, 0)
    if no_email:
        notes.append(
            f":bust_in_silhouette: {plural(no_email, 'user')} had no e-mail address: their "
            "password was changed but nobody could tell them. Help them set a new one."
        )
    skipped = task.counts.get(ItemState.SKIPPED, 0)
    if skipped:
        notes.append(f":bust_in_silhouette: {plural(skipped, 'user')} without an e-mail address "
                     "were left alone: their password did not change.")
    locked = task.counts.get(ItemState.LOCKED, 0)
    if locked:
        notes.append(f":lock: {locked_left_alone(locked)}")
    handed_out = task.counts.get(ItemState.HANDED_OUT, 0)
    if handed_out:
        notes.append(f":key: {plural(handed_out, 'user')} without an e-mail address now "
                     f"{'has' if handed_out == 1 else 'have'} the password you typed: tell "
                     "each of them; they must change it at the next sign-in.")
    failed = task.counts.get(ItemState.NOTIFY_FAILED, 0)
    if failed:
        notes.append(
            f":e-mail: {plural(failed, 'mail')} never got through. *Retry failed "
            "notifications* above sends those users a fresh password."
        )
    refused = task.counts.get(ItemState.REFUSED, 0)
    if refused:
        notes.append(
            f":no_entry: The directory refused the new password of {plural(refused, 'user')} "
            "(its reason is in the list): their password did not change and nobody was mailed."
        )
    told_by_hand = task.counts.get(ItemState.RESET, 0)
    if task.mode == Mode.DEFAULT and told_by_hand:
        notes.append(
            f":speech_balloon: {plural(told_by_hand, 'user')} now "
            f"{'has' if told_by_hand == 1 else 'have'} the default password and nobody was "
            "e-mailed: tell each of them the password yourself."
        )
    if task.follow_up_count and follow_up_where is None:
        notes.append(f"The users to contact by hand: `resetbot tasks show {task.id} --csv`.")
    elif task.follow_up_count and follow_up_where == NOT_DELIVERED:
        notes.append(f"The list of users to contact by hand could not be sent to you "
                     f"privately: `resetbot tasks show {task.id} --csv` has it.")
    elif task.follow_up_count and follow_up_where == ON_ITS_WAY:
        notes.append("The list of users to contact by hand follows in a direct message as soon "
                     f"as Slack lets me (it holds no passwords); `resetbot tasks show {task.id} "
                     "--csv` has it too.")
    elif task.follow_up_count:
        notes.append(f"The users to contact by hand are in the CSV {follow_up_where} (it holds "
                     "no passwords).")
    if task.status is TaskStatus.FAILED:
        notes.append(":x: The reset stopped early: the problem is described above.")
    return notes


#: Why the list could not be sent privately, by Slack's error code.
LIST_REFUSED_REASONS = {
    "user_not_found": "the requester's Slack account is gone",
    "user_disabled": "the requester's Slack account is deactivated",
    "cannot_dm_bot": "the requester is a bot",
    "missing_scope": "the app lacks the permission to send it (`im:write`, `files:write`)",
    "not_in_channel": "I'm not a member of the report channel",
    "channel_not_found": "I can't see the conversation it was meant for",
    "is_archived": "the report channel is archived",
}


def list_not_delivered_reply(task: TaskSnapshot, code: str) -> SlackMessage:
    """The follow-up list could go nowhere private: said in the thread, without its content."""
    why = LIST_REFUSED_REASONS.get(code, f"Slack refused it ({escape(truncate(code, 60))})")
    text = (f":warning: The list of {plural(task.follow_up_count, 'user')} to contact by hand "
            f"could not be sent privately: {why}. It is kept with the reset: "
            f"`resetbot tasks show {task.id} --csv`.")
    return SlackMessage(text, [section(text)])


# ---- the follow-up CSV ----------------------------------------------------------------------


def follow_up_filename(task_id: int) -> str:
    return f"reset-{task_id}-follow-up.csv"


def follow_up_title(task: TaskSnapshot) -> str:
    return f"Reset #{task.id}: users to contact by hand"


def follow_up_comment(task: TaskSnapshot) -> str:
    return (
        f"{plural(task.follow_up_count, 'user')} to contact by hand: no e-mail address, or the "
        "mail never got through. No passwords are in this file."
    )


def follow_up_reason(row: FollowUp) -> str:
    """What staff must do for this user, in words (never a secret: only what to do)."""
    if row.outcome is ItemState.NO_EMAIL:
        return ("No e-mail address on file: reset and told nobody; they use the portal's "
                "“forgot” link, or staff help them")
    if row.outcome is ItemState.SKIPPED:
        return "No e-mail address on file: left alone, not reset"
    if row.outcome is ItemState.HANDED_OUT:
        return ("No e-mail address on file: tell them what you typed for them; they must "
                "change it at next sign-in")
    detail = one_line(row.last_error or "")
    if row.outcome is ItemState.REFUSED:
        return truncate(f"Refused by the directory: {detail}" if detail
                        else "Refused by the directory", 300)
    return truncate(f"Mail failed: {detail}" if detail else "Mail failed", 300)


def follow_up_csv(rows: Iterable[FollowUp]) -> str:
    """username, full name, email, outcome, attempts, reason: spreadsheet-safe, no password."""
    return to_csv(
        FOLLOW_UP_HEADER,
        (
            (
                one_line(row.username),
                one_line(row.full_name),
                one_line(row.email or ""),
                OUTCOME_LABELS[row.outcome],
                row.attempts,
                follow_up_reason(row),
            )
            for row in rows
        ),
    )
