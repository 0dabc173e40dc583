"""Block Kit views of the Slack app: the reset modal, its preview, notices, App Home, options.

Their ids (callback, block and action ids) live in `blocks.ids`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from blocks.ids import (
    ACTION_OPEN_MODAL,
    ACTION_OPEN_THREAD,
    CALLBACK_CONFIRM,
    CALLBACK_NOTICE,
    CALLBACK_RESET,
    CALLBACK_UNDO,
    NO_EMAIL,
    NO_EMAIL_PASSWORD,
    PASSWORD,
    REQUIRE_CHANGE,
    REQUIRE_CHANGE_YES,
    SCOPE,
    SEND_LIST_OF_PREVIEW,
    SKIP_LOCKED,
    SKIP_LOCKED_YES,
    START_AT,
    USERS,
    USERS_FILE,
)
from blocks.kit import Block, context, mrkdwn, plain, section
from blocks.messages import (
    approval_details,
    approval_note,
    approve_button,
    reject_button,
    send_list_button,
)
from blocks.text import (
    AWAITING_APPROVAL_TITLE,
    DEFAULT_FIELD_HINT,
    FILE_REFUSED_TITLE,
    NO_EMAIL_FIELD_HINT,
    NO_EMAIL_HELP,
    NO_EMAIL_LABELS,
    NOT_ALLOWED,
    NOT_ALLOWED_TITLE,
    NOT_PREVIEWED_TITLE,
    READING_FILE_TITLE,
    RESET_SAVED_TITLE,
    SCOPE_HELP,
    SCOPE_LABELS,
    SKIP_LOCKED_HINT,
    SKIP_LOCKED_LABEL,
    START_AGAIN_TITLE,
    STATUS_EMOJI,
    UNDO_BUTTON,
    UNDO_TITLE,
    UNKNOWN_FORM,
    UNKNOWN_REQUEST,
    USERS_FILE_HINT,
    USERS_FILE_LABEL,
    awaiting_approval,
    done_words,
    ended_words,
    escape,
    file_refused,
    file_summary,
    locked_preview,
    mode_label,
    never_started_words,
    no_email_preview,
    not_previewed,
    one_line,
    plural,
    preview_words,
    progress_bar,
    queue_unavailable,
    reading_file,
    requester_mention,
    scheduled_line,
    scope_summary,
    slack_date,
    starts_if_approved,
    status_label,
    thread_link,
    truncate,
    undo_counts_text,
    unmatched_lines,
    unusable_addresses,
    user_option_label,
)
from core.directory import DirectoryUser, Preview
from core.directory.protocol import User
from core.models import Mode, NoEmailChoice, Scope, TaskStatus
from core.progress import TaskSnapshot
from core.schedule import MAX_AHEAD
from core.tally import Tally, preview_tally

View = dict[str, Any]

#: The longest default password the modal accepts; policy reasons come on top.
PASSWORD_MAX_LENGTH = 128
MIN_QUERY_LENGTH = 3
HOME_TASKS = 15
#: Requests awaiting approval App Home lists with their buttons (a view holds 100 blocks).
HOME_APPROVALS = 20
MAX_OPTIONS = 100
#: Slack's limit for a section's text.
SECTION_TEXT_LIMIT = 3000
#: The file_input's accepted extensions (its content is checked again when read).
USERS_FILE_TYPES = ["csv", "txt"]


# ---- the reset modal ------------------------------------------------------------------------


def reset_modal(channel: str | None = None) -> View:
    """The form `/reset-passwords` opens. The channel travels along so the task reports there."""
    scope_options = [
        {"text": plain(SCOPE_LABELS[scope], 75), "value": scope.value,
         "description": plain(SCOPE_HELP[scope], 75)}
        for scope in Scope
    ]
    initial_scope = scope_options[list(Scope).index(Scope.SELECTED_ONLY)]
    require_change = {"text": plain("Require a new password at next login", 75),
                      "value": REQUIRE_CHANGE_YES}
    skip_locked = {"text": plain(SKIP_LOCKED_LABEL, 75), "value": SKIP_LOCKED_YES}
    no_email_options = [
        {"text": plain(NO_EMAIL_LABELS[choice], 75), "value": choice.value,
         "description": plain(NO_EMAIL_HELP[choice], 75)}
        for choice in NoEmailChoice
    ]
    return {
        "type": "modal",
        "callback_id": CALLBACK_RESET,
        "private_metadata": json.dumps({"channel": channel}) if channel else "",
        "title": plain("Reset passwords", 24),
        "submit": plain("Preview", 24),
        "close": plain("Cancel", 24),
        "blocks": [
            {
                "type": "input",
                "block_id": SCOPE,
                "label": plain("Who"),
                "element": {"type": "radio_buttons", "action_id": SCOPE,
                            "options": scope_options, "initial_option": initial_scope},
            },
            {
                "type": "input",
                "block_id": USERS,
                "optional": True,
                "label": plain("Users"),
                "hint": plain("Needed for “Only the users picked” and “Everyone except”. "
                              "Search by name, username or e-mail."),
                "element": {"type": "multi_external_select", "action_id": USERS,
                            "placeholder": plain("Type at least 3 letters", 150),
                            "min_query_length": MIN_QUERY_LENGTH},
            },
            {
                "type": "input",
                "block_id": USERS_FILE,
                "optional": True,
                "label": plain(USERS_FILE_LABEL),
                "hint": plain(USERS_FILE_HINT),
                "element": {"type": "file_input", "action_id": USERS_FILE,
                            "filetypes": USERS_FILE_TYPES, "max_files": 1},
            },
            {
                "type": "input",
                "block_id": PASSWORD,
                "optional": True,
                "label": plain("Default password (optional)"),
                "hint": plain(DEFAULT_FIELD_HINT),
                "element": {"type": "plain_text_input", "action_id": PASSWORD,
                            "max_length": PASSWORD_MAX_LENGTH,
                            "placeholder": plain("Blank: e-mail each user a new password", 150)},
            },
            {
                "type": "input",
                "block_id": REQUIRE_CHANGE,
                "optional": True,
                "label": plain("At next login"),
                "element": {"type": "checkboxes", "action_id": REQUIRE_CHANGE,
                            "options": [require_change], "initial_options": [require_change]},
            },
            {
                "type": "input",
                "block_id": NO_EMAIL,
                "label": plain("Users without an e-mail address"),
                "hint": plain("Only with a blank default password: nobody can e-mail them."),
                "element": {"type": "radio_buttons", "action_id": NO_EMAIL,
                            "options": no_email_options, "initial_option": no_email_options[0]},
            },
            {
                "type": "input",
                "block_id": NO_EMAIL_PASSWORD,
                "optional": True,
                "label": plain("Password for users without e-mail (optional)"),
                "hint": plain(NO_EMAIL_FIELD_HINT),
                "element": {"type": "plain_text_input", "action_id": NO_EMAIL_PASSWORD,
                            "max_length": PASSWORD_MAX_LENGTH},
            },
            {
                "type": "input",
                "block_id": SKIP_LOCKED,
                "optional": True,
                "label": plain("Locked accounts"),
                "hint": plain(SKIP_LOCKED_HINT),
                "element": {"type": "checkboxes", "action_id": SKIP_LOCKED,
                            "options": [skip_locked], "initial_options": [skip_locked]},
            },
            {
                "type": "input",
                "block_id": START_AT,
                "optional": True,
                "label": plain("Start at (optional)"),
                "hint": plain(f"Empty: start as soon as you confirm. At most {MAX_AHEAD.days} "
                              "days ahead, in your own time zone."),
                "element": {"type": "datetimepicker", "action_id": START_AT},
            },
        ],
    }


# ---- preview and notices ----------------------------------------------------------------------


def confirm_button_text(mode: Mode, tally: Tally) -> str:
    """What the submit button will do (the passwords it changes), within Slack's 24 characters."""
    if mode is Mode.DEFAULT:
        return f"Set for {plural(tally.changed, 'user')}"
    return f"Reset {tally.changed:,} & e-mail"


def preview_modal(
    pending_id: str,
    preview: Preview,
    *,
    scope: Scope,
    selected: int,
    mode: Mode,
    require_change: bool,
    no_email: NoEmailChoice = NoEmailChoice.RESET,
    start_at: datetime | None = None,
    file_report: dict[str, Any] | None = None,
    skip_locked: bool = False,
    no_undo: str | None = None,
) -> View:
    """What a confirm would do; private_metadata holds only the opaque id of the waiting request.

    `no_undo`: why this reset could not be undone (core.undo.preview_note), said before the
    confirm.

    `start_at`: a scheduled reset's start, said above everything else. `file_report`: what a
    file of users matched (core.userio.FileMatch.report), with its first unmatched lines.
    """
    tally = preview_tally(preview, mode, no_email, skip_locked=skip_locked)
    emailed = tally.mailed
    if mode is Mode.GENERATED:
        without_email = no_email_preview(no_email, preview.without_email)
    else:
        without_email = "Not applicable: nobody is e-mailed"
    fields = [
        mrkdwn(f"*Users to reset*\n{tally.changed:,}"),
        mrkdwn(f"*E-mailed a new password*\n{emailed:,}"),
        mrkdwn(f"*Without e-mail*\n{without_email}"),
        mrkdwn(f"*Staff included*\n{preview.staff:,}"),
        *([mrkdwn(f"*Locked on purpose*\n{locked_preview(preview.locked, skip_locked)}")]
          if preview.locked else []),
        mrkdwn(f"*Mode*\n{mode_label(mode)}"),
        mrkdwn(f"*New password at next login*\n{'Required' if require_change else 'Not required'}"),
    ]
    blocks: list[Block] = [] if start_at is None else [section(scheduled_line(start_at))]
    blocks += [
        section(f"*{scope_summary(scope, selected)}*: {preview_words(tally)}"),
        {"type": "section", "fields": fields},
    ]
    unusable = unusable_addresses(preview.unusable) if mode is Mode.GENERATED else ""
    if unusable:
        blocks.append(context(unusable + "."))
    blocks += [context(escape(note)) for note in preview.notes]
    if file_report is not None:
        blocks.append(section(file_summary(file_report)))
        if file_report["unmatched"]:
            blocks += [section(text) for text in packed(unmatched_lines(file_report))]
    if preview.staff:
        blocks.append(section(f":warning: {plural(preview.staff, 'staff account')} "
                              "included."))
    if mode is Mode.DEFAULT:
        blocks.append(section("Tell the users their new password yourself: resetbot never "
                              "shows or sends it."))
    if no_undo is not None:
        blocks.append(section(f":information_source: {no_undo}"))
    blocks.append({
        "type": "section",
        "block_id": "send_list",
        "text": mrkdwn("Who exactly? The list of everyone this reset would reset comes to you "
                       "in a direct message (a CSV, no passwords)."),
        "accessory": send_list_button(SEND_LIST_OF_PREVIEW),
    })
    if start_at is None:
        blocks.append(context("Nothing has changed yet. This preview waits 15 minutes for you "
                              "to confirm; progress then appears as a thread."))
    else:
        blocks.append(context("Nothing has changed yet. Once confirmed, the reset waits in a "
                              "thread with a Cancel button; the count is taken again when it "
                              "starts, and a change of more than 10 % waits for you."))
    return {
        "type": "modal",
        "callback_id": CALLBACK_CONFIRM,
        "private_metadata": pending_id,
        "title": plain("Confirm the reset", 24),
        "submit": plain(confirm_button_text(mode, tally), 24),
        "close": plain("Cancel", 24),
        "blocks": blocks,
    }


def packed(lines: Sequence[str], limit: int = SECTION_TEXT_LIMIT) -> list[str]:
    """Lines joined into as few texts as fit a section each (a long line is cut)."""
    texts: list[str] = []
    for line in lines:
        line = truncate(line, limit)
        if texts and len(texts[-1]) + 1 + len(line) <= limit:
            texts[-1] += "\n" + line
        else:
            texts.append(line)
    return texts


def notice_modal(title: str, text: str) -> View:
    """A modal that only says something (a refusal, an expired request): one button to close."""
    return {
        "type": "modal",
        "callback_id": CALLBACK_NOTICE,
        "title": plain(title, 24),
        "close": plain("Close", 24),
        "blocks": [section(text)],
    }


def undo_modal(task_id: int, channel: str | None, unchanged: int, changed: int, mailed: int,
               until: datetime) -> View:
    """Undo's confirmation: what it would do, counted at the click; Undo submits it."""
    return {
        "type": "modal",
        "callback_id": CALLBACK_UNDO,
        "private_metadata": f"{task_id} {channel or ''}".strip(),
        "title": plain(UNDO_TITLE, 24),
        "submit": plain(UNDO_BUTTON, 24),
        "close": plain("Cancel", 24),
        "blocks": [section(undo_counts_text(task_id, unchanged, changed, mailed, until))],
    }


def decision_notice(answer: str) -> View:
    """What a button on App Home did (there is no channel to say it in)."""
    return notice_modal("Password resets", answer)


def reading_file_modal(name: str) -> View:
    """What the form turns into while a file is read and matched (the preview follows)."""
    return notice_modal(READING_FILE_TITLE, reading_file(name))


def file_refused_modal(reason: str) -> View:
    return notice_modal(FILE_REFUSED_TITLE, file_refused(reason))


def not_previewed_modal(problems: dict[str, list[str]]) -> View:
    """A request from a file with problems found after the form was answered: said at once."""
    return notice_modal(NOT_PREVIEWED_TITLE, not_previewed(problems))


def not_allowed_modal() -> View:
    return notice_modal(NOT_ALLOWED_TITLE, NOT_ALLOWED)


def start_again_modal(reason: str = UNKNOWN_REQUEST) -> View:
    """The preview can no longer be confirmed (expired, already used, not yours)."""
    return notice_modal(START_AGAIN_TITLE, reason)


def reset_saved_modal(task_id: int) -> View:
    """Confirmed and committed, but not queued: a worker picks the task up later."""
    return notice_modal(RESET_SAVED_TITLE, queue_unavailable(task_id))


def awaiting_approval_modal(task_id: int) -> View:
    """Confirmed: the reset now waits for a second admin's approval."""
    return notice_modal(AWAITING_APPROVAL_TITLE, awaiting_approval(task_id))


def unknown_form_modal() -> View:
    return notice_modal(START_AGAIN_TITLE, UNKNOWN_FORM)


# ---- options ------------------------------------------------------------------------------------


def user_options(users: Sequence[User | DirectoryUser]) -> list[dict[str, Any]]:
    """Options for the user picker: value is the directory id, at most Slack's 100."""
    return [
        {"text": plain(user_option_label(user), 75), "value": str(user.id)}
        for user in users[:MAX_OPTIONS]
    ]


# ---- App Home -----------------------------------------------------------------------------------


def home_view(tasks: Sequence[TaskSnapshot], *, allowed: bool) -> View:
    blocks: list[Block] = [
        {"type": "header", "text": plain("Password resets", 150)},
    ]
    if not allowed:
        blocks.append(section("You are not on the list of people who may reset passwords. "
                              "Ask whoever runs resetbot to add you to RESET_ADMINS or to the "
                              "admin user group."))
        return {"type": "home", "blocks": blocks}
    blocks.append({
        "type": "section",
        "text": mrkdwn("Reset many library passwords at once: pick who, preview, confirm."),
        "accessory": {"type": "button", "action_id": ACTION_OPEN_MODAL, "style": "primary",
                      "text": plain("New reset", 75)},
    })
    blocks.append({"type": "divider"})
    awaiting = [task for task in tasks if task.status is TaskStatus.AWAITING_APPROVAL]
    if awaiting:
        blocks.append({"type": "header", "text": plain("Awaiting approval", 150)})
        for task in awaiting[:HOME_APPROVALS]:
            blocks.extend(_home_approval(task))
        blocks.append({"type": "divider"})
    if not tasks:
        blocks.append(section("No resets yet."))
    for task in tasks[:HOME_TASKS]:
        blocks.append(_home_task(task))
    return {"type": "home", "blocks": blocks}


def _home_approval(task: TaskSnapshot) -> list[Block]:
    """A request awaiting approval, with the thread's own Approve and Reject (same action ids,
    handlers and checks) and Send me the list."""
    details = [
        f"*Reset #{task.id}* · {scope_summary(task.scope, task.selected)} · "
        f"{_mode_word(task.mode)}",
        f"Requested by {requester_mention(task.requester, task.requester_name)} "
        f"{slack_date(task.created_at)}",
        *approval_details(task),
        approval_note(task),
    ]
    return [
        {"type": "section", "block_id": f"approval_{task.id}",
         "text": mrkdwn(truncate("\n".join(details), 3000))},
        {"type": "actions", "block_id": f"approval_actions_{task.id}",
         "elements": [approve_button(task.id), reject_button(task.id),
                      send_list_button(str(task.id))]},
    ]


def _not_started(task: TaskSnapshot) -> str:
    """A task with no progress yet: waiting for a worker, or for a second admin."""
    preview = task.approval.preview if task.approval is not None else None
    users = f" ({plural(preview.users, 'user')})" if preview is not None else ""
    if task.status is TaskStatus.AWAITING_APPROVAL:
        return f"awaiting another admin's approval{users}: approve or reject it above"
    if task.status in (TaskStatus.REJECTED, TaskStatus.EXPIRED):
        return f"never approved{users}: nothing was changed"
    return "not started yet"


def _mode_word(mode: str) -> str:
    words: dict[str, str] = {Mode.DEFAULT: "default password", Mode.UNDO: "undo"}
    return words.get(mode, "e-mailed")


def _home_counts(task: TaskSnapshot) -> str:
    tally = task.tally
    if task.ended_unstarted and tally.users:
        return never_started_words(tally)
    if not (task.planned or task.total):
        return _not_started(task)
    counted = f"`{progress_bar(tally.fraction)}` {done_words(tally)}"
    return counted + ended_words(tally) if task.status.is_final else counted


def _home_task(task: TaskSnapshot) -> Block:
    counted = _home_counts(task)
    text = (
        f"{STATUS_EMOJI[task.status]} *#{task.id} {status_label(task.status)}* · "
        f"{scope_summary(task.scope, task.selected)} · {_mode_word(task.mode)}\n"
        f"{counted}\n"
        f"Requested by {requester_mention(task.requester, task.requester_name)} "
        f"{slack_date(task.created_at)}"
    )
    if task.retry_of:
        text += f" · retry of #{task.retry_of}"
    if task.status is TaskStatus.SCHEDULED and task.start_at is not None:
        text += "\n" + scheduled_line(task.start_at)
    elif task.status is TaskStatus.AWAITING_APPROVAL and task.start_at is not None:
        text += "\n" + starts_if_approved(task.start_at)
    if task.error:
        text += f"\n{escape(truncate(one_line(task.error), 200))}"
    block: Block = {"type": "section", "text": mrkdwn(text)}
    link = thread_link(task.slack_channel, task.slack_thread_ts)
    if link:
        block["accessory"] = {"type": "button", "action_id": f"{ACTION_OPEN_THREAD}_{task.id}",
                              "text": plain("Open thread", 75), "url": link}
    return block
