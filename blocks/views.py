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
    NO_EMAIL,
    NO_EMAIL_PASSWORD,
    PASSWORD,
    REQUIRE_CHANGE,
    REQUIRE_CHANGE_YES,
    SCOPE,
    START_AT,
    USERS,
)
from blocks.kit import Block, context, mrkdwn, plain, section
from blocks.text import (
    AWAITING_APPROVAL_TITLE,
    DEFAULT_FIELD_HINT,
    NO_EMAIL_FIELD_HINT,
    NO_EMAIL_HELP,
    NO_EMAIL_LABELS,
    NOT_ALLOWED,
    NOT_ALLOWED_TITLE,
    RESET_SAVED_TITLE,
    SCOPE_HELP,
    SCOPE_LABELS,
    START_AGAIN_TITLE,
    STATUS_EMOJI,
    UNKNOWN_FORM,
    UNKNOWN_REQUEST,
    awaiting_approval,
    escape,
    locked_on_purpose_note,
    mode_label,
    no_email_preview,
    one_line,
    plural,
    progress_bar,
    queue_unavailable,
    requester_mention,
    scheduled_line,
    scope_label,
    scope_summary,
    slack_date,
    starts_if_approved,
    status_label,
    thread_link,
    truncate,
    user_option_label,
)
from core.directory import DirectoryUser, Preview
from core.directory.protocol import User
from core.models import Mode, NoEmailChoice, Scope, TaskStatus
from core.progress import TaskSnapshot
from core.schedule import MAX_AHEAD

View = dict[str, Any]

#: The longest default password the modal accepts; policy reasons come on top.
PASSWORD_MAX_LENGTH = 128
MIN_QUERY_LENGTH = 3
HOME_TASKS = 15
MAX_OPTIONS = 100


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


def confirm_button_text(mode: Mode, users: int) -> str:
    """What the submit button will do, within Slack's 24 characters."""
    if mode is Mode.DEFAULT:
        return f"Set for {plural(users, 'user')}"
    return f"Reset {users:,} & e-mail"


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
) -> View:
    """What a confirm would do; private_metadata holds only the opaque id of the waiting request.

    `start_at`: a scheduled reset's start, said above everything else.
    """
    emailed = preview.emailable if mode is Mode.GENERATED else 0
    if mode is Mode.GENERATED:
        without_email = no_email_preview(no_email, preview.without_email)
    else:
        without_email = "Not applicable: nobody is e-mailed"
    fields = [
        mrkdwn(f"*Users to reset*\n{preview.users:,}"),
        mrkdwn(f"*E-mailed a new password*\n{emailed:,}"),
        mrkdwn(f"*Without e-mail*\n{without_email}"),
        mrkdwn(f"*Staff included*\n{preview.staff:,}"),
        mrkdwn(f"*Mode*\n{mode_label(mode)}"),
        mrkdwn(f"*New password at next login*\n{'Required' if require_change else 'Not required'}"),
    ]
    blocks: list[Block] = [] if start_at is None else [section(scheduled_line(start_at))]
    blocks += [
        section(f"*{scope_summary(scope, selected)}*: {plural(preview.users, 'password')} "
                "will be reset."),
        {"type": "section", "fields": fields},
    ]
    if preview.staff:
        blocks.append(section(f":warning: {plural(preview.staff, 'staff account')} "
                              "included."))
    if preview.locked_on_purpose:
        blocks.append(section(locked_on_purpose_note(preview.locked_on_purpose, mode)))
    if mode is Mode.DEFAULT:
        blocks.append(section("Tell the users their new password yourself: resetbot never "
                              "shows or sends it."))
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
        "submit": plain(confirm_button_text(mode, preview.users), 24),
        "close": plain("Cancel", 24),
        "blocks": blocks,
    }


def notice_modal(title: str, text: str) -> View:
    """A modal that only says something (a refusal, an expired request): one button to close."""
    return {
        "type": "modal",
        "callback_id": CALLBACK_NOTICE,
        "title": plain(title, 24),
        "close": plain("Close", 24),
        "blocks": [section(text)],
    }


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
    if not tasks:
        blocks.append(section("No resets yet."))
    for task in tasks[:HOME_TASKS]:
        blocks.append(_home_task(task))
    return {"type": "home", "blocks": blocks}


def _not_started(task: TaskSnapshot) -> str:
    """A task with no progress yet: waiting for a worker, or for a second admin."""
    preview = task.approval.preview if task.approval is not None else None
    users = f" ({plural(preview.users, 'user')})" if preview is not None else ""
    if task.status is TaskStatus.AWAITING_APPROVAL:
        return f"awaiting another admin's approval{users}: approve or reject it in its thread"
    if task.status in (TaskStatus.REJECTED, TaskStatus.EXPIRED):
        return f"never approved{users}: nothing was changed"
    return "not started yet"


def _mode_word(mode: str) -> str:
    return "default password" if mode == Mode.DEFAULT else "e-mailed"


def _home_task(task: TaskSnapshot) -> Block:
    counted = (f"`{progress_bar(task.fraction)}` {task.done:,} of {plural(task.total, 'user')}"
               if task.planned or task.total else _not_started(task))
    text = (
        f"{STATUS_EMOJI[task.status]} *#{task.id} {status_label(task.status)}* · "
        f"{scope_label(task.scope)} · {_mode_word(task.mode)}\n"
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
