"""Every sentence the Slack app says: help, status, refusals, labels. Pure functions, no I/O."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from core.controls import blank_unsafe
from core.directory import DirectoryUser
from core.directory.protocol import User
from core.models import ItemState, Mode, NoEmailChoice, Scope, TaskStatus
from core.outage import Outage, outage_of
from core.progress import TaskSnapshot, pace_words
from core.tally import Tally

COMMAND = "/reset-passwords"
#: Slack's limit for an option's text in a select menu.
OPTION_TEXT_LIMIT = 75
PROGRESS_WIDTH = 10
STAFF_MARK = " · staff"
_SLACK_USER_ID = re.compile(r"^[UW][A-Z0-9]{2,30}$")

SCOPE_LABELS: dict[Scope, str] = {
    Scope.ALL: "Everyone",
    Scope.ALL_EXCEPT_SELECTED: "Everyone except the users picked below",
    Scope.ALL_WITHOUT_ROLE: "Patrons only (staff are left alone)",
    Scope.SELECTED_ONLY: "Only the users picked below",
}
SCOPE_HELP: dict[Scope, str] = {
    Scope.ALL: "Every account in the directory, staff included.",
    Scope.ALL_EXCEPT_SELECTED: "Every account but the ones you pick: use it to spare a few.",
    Scope.ALL_WITHOUT_ROLE: "Every account without a role; anyone with a role keeps theirs.",
    Scope.SELECTED_ONLY: "Just the accounts you pick.",
}
STATUS_LABELS: dict[TaskStatus, str] = {
    TaskStatus.SCHEDULED: "Scheduled",
    TaskStatus.QUEUED: "Queued",
    TaskStatus.RUNNING: "Running",
    TaskStatus.COMPLETED: "Completed",
    TaskStatus.COMPLETED_WITH_ERRORS: "Completed with errors",
    TaskStatus.CANCELLED: "Cancelled",
    TaskStatus.FAILED: "Failed",
    TaskStatus.AWAITING_APPROVAL: "Awaiting approval",
    TaskStatus.REJECTED: "Rejected",
    TaskStatus.EXPIRED: "Expired",
}
STATUS_EMOJI: dict[TaskStatus, str] = {
    TaskStatus.SCHEDULED: ":alarm_clock:",
    TaskStatus.QUEUED: ":hourglass_flowing_sand:",
    TaskStatus.RUNNING: ":arrows_counterclockwise:",
    TaskStatus.COMPLETED: ":white_check_mark:",
    TaskStatus.COMPLETED_WITH_ERRORS: ":warning:",
    TaskStatus.CANCELLED: ":no_entry_sign:",
    TaskStatus.FAILED: ":x:",
    TaskStatus.AWAITING_APPROVAL: ":raised_hand:",
    TaskStatus.REJECTED: ":no_entry:",
    TaskStatus.EXPIRED: ":hourglass:",
}
OUTCOME_LABELS: dict[ItemState, str] = {
    ItemState.PENDING: "waiting",
    ItemState.CLAIMED: "in progress",
    ItemState.RETRY_WAIT: "mail retry due",
    ItemState.RESET: "reset",
    ItemState.NOTIFIED: "e-mailed",
    ItemState.NO_EMAIL: "no e-mail",
    ItemState.NOTIFY_FAILED: "mail failed",
    ItemState.CANCELLED: "cancelled",
    ItemState.SKIPPED: "not reset (no e-mail)",
    ItemState.HANDED_OUT: "your password (no e-mail)",
    ItemState.REFUSED: "refused by the directory",
    ItemState.LOCKED: "locked on purpose: left alone",
    ItemState.RESTORED: "previous password back",
    ItemState.CHANGED_SINCE: "changed since: left alone",
}
#: The reset form's choices for users without an e-mail address, and what each one means.
NO_EMAIL_LABELS: dict[NoEmailChoice, str] = {
    NoEmailChoice.RESET: "Reset them too",
    NoEmailChoice.SKIP: "Leave them alone",
    NoEmailChoice.SET: "Give them a password I type below",
}
NO_EMAIL_HELP: dict[NoEmailChoice, str] = {
    NoEmailChoice.RESET: "Nobody is told the new password: they use “forgot password”.",
    NoEmailChoice.SKIP: "Their password does not change; they are listed for you.",
    NoEmailChoice.SET: "You tell each of them; they must change it at next sign-in.",
}
NO_EMAIL_FIELD_HINT = (
    "Only with a blank default password, for “Give them a password I type”. Slack cannot hide "
    "what you type here: anyone looking at your screen can read it. resetbot never shows it "
    "again and keeps it sealed until the reset ends."
)


def no_email_preview(choice: NoEmailChoice, users: int) -> str:
    """What the preview says will happen to the users without an e-mail address."""
    if not users:
        return "0"
    return {
        NoEmailChoice.RESET: f"{users:,}: reset; nobody can tell them the new password, so "
                             "they use “forgot password” on the portal, or staff help them",
        NoEmailChoice.SKIP: f"{users:,}: left alone, their password does not change",
        NoEmailChoice.SET: f"{users:,}: get the password you typed; you tell each of them",
    }[choice]

#: Why an address in the directory is not used (core.addresses' reasons), as the preview says it.
ADDRESS_PROBLEM_WORDS = {
    "blank": "only spaces",
    "no_at": "no @ (such as n/a or none)",
    "spaces_or_controls": "spaces or control characters inside",
    "not_ascii": "not plain ASCII",
    "not_an_address": "not an address",
}


def unusable_addresses(unusable: Mapping[str, int]) -> str:
    """The addresses that are there but cannot be mailed, and why; "" when there are none."""
    counted = [(count, ADDRESS_PROBLEM_WORDS.get(reason, reason))
               for reason, count in unusable.items() if count]
    if not counted:
        return ""
    total = sum(count for count, _ in counted)
    reasons = ", ".join(f"{count:,} {words}" for count, words in counted)
    return (f"{plural(total, 'address', 'addresses')} cannot be used and count as no e-mail: "
            f"{reasons}")


def locked_left_alone(users: int) -> str:
    """The summary's line for accounts locked on purpose that a task left out."""
    return (f"{plural(users, 'account')} locked on purpose (by staff) "
            f"{'was' if users == 1 else 'were'} left alone: a new password would not open "
            f"{'it' if users == 1 else 'them'}.")


def locked_preview(users: int, skipped: bool) -> str:
    """What the preview says of the accounts locked on purpose in the scope."""
    if not users:
        return "0"
    if skipped:
        return f"{users:,}: left out, their password does not change"
    return f"{users:,}: reset too; they stay locked"


SKIP_LOCKED_LABEL = "Leave out accounts locked on purpose"
SKIP_LOCKED_HINT = ("Accounts staff locked in the library system cannot sign in whatever "
                    "their password: changing it only sends a mail nobody can use.")


DEFAULT_FIELD_HINT = (
    "Leave blank to e-mail each user a new random password. Fill in to set this password "
    "for all of them and send no e-mail. Slack shows what you type here: it cannot be hidden."
)
NOT_ALLOWED = (
    "Sorry, you are not allowed to reset passwords. Ask whoever runs resetbot to add you to "
    "RESET_ADMINS or to the admin user group."
)
ADMIN_GROUP_UNREADABLE = (
    "Sorry, resetbot cannot check the admin user group right now: Slack has not said who is in "
    "it for a few minutes, so its members cannot reset passwords until Slack answers again. "
    "People listed in RESET_ADMINS still can."
)
NOBODY_ALLOWED_WARNING = (
    "Neither RESET_ADMINS nor RESET_ADMIN_GROUP is set: nobody may reset passwords from Slack."
)


def escape(text: str) -> str:
    """Make user text inert in mrkdwn: `<!channel>` in a name must not ping anybody."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def one_line(text: str) -> str:
    """Control characters (CR, LF, tabs, bidi overrides...) collapsed to spaces so a name cannot
    break the layout or render as something else."""
    return blank_unsafe(text).strip()


def truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(0, limit - 1)] + "…"


def plural(count: int, singular: str, many: str | None = None) -> str:
    word = singular if count == 1 else (many or singular + "s")
    return f"{count:,} {word}"


# ---- counts: every edge says them in these words, from one Tally (core/tally.py) -----------------


def done_words(tally: Tally) -> str:
    """"50 of 150 users done": users not reached (cancelled first) are not done."""
    return f"{tally.done:,} of {plural(tally.users, 'user')} done"


def tally_words(tally: Tally) -> str:
    """"1 password reset · 2 left alone (no e-mail) · 100 not reached": what a task did."""
    parts = [f"{plural(tally.changed, 'password')} reset"]
    if tally.left_alone:
        parts.append(f"{tally.left_alone:,} left alone (no e-mail)")
    if tally.not_reached:
        parts.append(f"{tally.not_reached:,} not reached")
    return " · ".join(parts)


def ended_words(tally: Tally) -> str:
    """What an ended task's progress line adds: who was left alone or not reached, if anyone
    (a task that reset everyone is told by its "done")."""
    return f" · {tally_words(tally)}" if tally.left_alone or tally.not_reached else ""


def preview_words(tally: Tally) -> str:
    """"1 password will be reset; 2 users without e-mail are left alone."."""
    words = f"{plural(tally.changed, 'password')} will be reset"
    if tally.left_alone:
        are = "is" if tally.left_alone == 1 else "are"
        words += f"; {plural(tally.left_alone, 'user')} without e-mail {are} left alone"
    return words + "."


def never_started_words(tally: Tally) -> str:
    """A task that ended before its start: nobody's password changed."""
    return f"nobody's password changed ({plural(tally.users, 'user')} in scope)"


def scope_summary(scope: str, selected: int) -> str:
    """The scope as a short phrase with the number of picked users where it matters."""
    try:
        parsed = Scope(scope)
    except ValueError:
        return scope
    if parsed is Scope.ALL_EXCEPT_SELECTED:
        return f"Everyone except {plural(selected, 'picked user')}"
    if parsed is Scope.SELECTED_ONLY:
        return f"Only {plural(selected, 'picked user')}"
    return SCOPE_LABELS[parsed]


def mode_label(mode: str) -> str:
    if mode == Mode.DEFAULT:
        return "One default password for all; nobody is e-mailed"
    if mode == Mode.UNDO:
        return "Undo: each user's previous password put back"
    return "A new random password for each user, e-mailed"


def status_label(status: TaskStatus) -> str:
    return STATUS_LABELS[status]


def progress_bar(fraction: float, width: int = PROGRESS_WIDTH) -> str:
    filled = round(max(0.0, min(1.0, fraction)) * width)
    return "▓" * filled + "░" * (width - filled)


def requester_mention(requester: str, name: str = "") -> str:
    """`<@U123>` for a Slack user (shown as their name, no ping in these texts), else escaped."""
    if _SLACK_USER_ID.match(requester):
        return f"<@{requester}>"
    return escape(one_line(name or requester))


def slack_date(moment: datetime) -> str:
    """A date Slack shows in each reader's own time zone, with a UTC fallback."""
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    fallback = aware.strftime("%Y-%m-%d %H:%M UTC")
    return f"<!date^{int(aware.timestamp())}^{{date_short_pretty}} {{time}}|{fallback}>"


def schedule_date(moment: datetime) -> str:
    """A start time as each reader's Slack shows it ("Fri 9 Jan 06:00" in the fallback, UTC)."""
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    fallback = f"{aware:%a} {aware.day} {aware:%b %H:%M} UTC"
    return f"<!date^{int(aware.timestamp())}^{{date_short_pretty}} {{time}}|{fallback}>"


def span_words(seconds: float) -> str:
    """A span as people say it, to the minute: "3 days", "2 h 5 min", "45 min"."""
    minutes = int(seconds // 60)
    if minutes < 1:
        return "less than a minute"
    days, minutes = divmod(minutes, 24 * 60)
    hours, minutes = divmod(minutes, 60)
    if days >= 2:
        return f"{days + (1 if hours >= 12 else 0)} days"
    hours += days * 24
    if hours and minutes:
        return f"{hours} h {minutes} min"
    return f"{hours} h" if hours else f"{minutes} min"


def until_words(start_at: datetime, now: datetime) -> str:
    """"in 3 days", "in 2 h 5 min", or "now" once the time has come."""
    seconds = (start_at - now).total_seconds()
    return f"in {span_words(seconds)}" if seconds >= 60 else "now"


def _relative(start_at: datetime, now: datetime | None, relative: bool) -> str:
    """" (in 3 days)", or nothing on a message that stays up (it would go stale)."""
    if not relative:
        return ""
    return f" ({until_words(start_at, now if now is not None else datetime.now(UTC))})"


def scheduled_line(start_at: datetime, now: datetime | None = None, *,
                   relative: bool = True) -> str:
    """":alarm_clock: *Scheduled for Fri 9 Jan 06:00* (in 3 days)"; `relative=False` for a
    message left up for hours: the date alone, which Slack shows in each reader's zone."""
    return (f":alarm_clock: *Scheduled for {schedule_date(start_at)}*"
            f"{_relative(start_at, now, relative)}")


def starts_if_approved(start_at: datetime, now: datetime | None = None, *,
                       relative: bool = True) -> str:
    """A scheduled reset awaiting approval: approved in time, it starts then; else it expires.
    One whose start has passed (asked again at its start): approved, it starts at once."""
    if start_at <= (now if now is not None else datetime.now(UTC)):
        return starts_once_approved(start_at)
    return (f":alarm_clock: Starts *{schedule_date(start_at)}*"
            f"{_relative(start_at, now, relative)} if approved before then; otherwise the "
            "request expires.")


def starts_once_approved(start_at: datetime) -> str:
    """A scheduled reset asked for approval again at its start (its count needs it)."""
    return (f":alarm_clock: It was to start *{schedule_date(start_at)}*: approved, it starts "
            "at once.")


#: The picker's only option while the directory's search copy cannot be read (within Slack's
#: 75 characters for an option).
SEARCH_UNAVAILABLE_OPTION = "Search is not available, try again in a moment"


def user_option_label(user: User | DirectoryUser) -> str:
    """"Full Name (username)", staff marked, within Slack's 75 characters for an option."""
    username = truncate(one_line(user.username), 40)
    suffix = f" ({username})" + (STAFF_MARK if user.is_staff else "")
    name = one_line(user.full_name)
    if not name:
        return truncate(username + (STAFF_MARK if user.is_staff else ""), OPTION_TEXT_LIMIT)
    return truncate(name, OPTION_TEXT_LIMIT - len(suffix)) + suffix


def thread_link(channel: str | None, ts: str | None) -> str | None:
    """A permalink to a task's thread, built without an API call."""
    if not channel or not ts:
        return None
    return f"https://slack.com/archives/{channel}/p{ts.replace('.', '')}"


# ---- slash command answers ----------------------------------------------------------------------


def help_text() -> str:
    return (
        "*Reset library passwords in bulk*\n"
        f"• `{COMMAND}` opens a form: choose who, optionally one default password, then check "
        "the preview and confirm. Nothing changes before you confirm.\n"
        f"• `{COMMAND} status` lists recent resets; `{COMMAND} status 12` shows reset #12.\n"
        f"• `{COMMAND} help` shows this.\n"
        "Leave the password blank to e-mail every user a new random password; users without "
        "an e-mail address are listed for you to contact. Fill it in to set that password for "
        "all of them: nobody is e-mailed.\n"
        "Progress appears as a thread in the channel where you typed the command."
    )


def unknown_subcommand() -> str:
    # What was typed is not repeated: someone may have typed a password after the command.
    return "I don't know that subcommand.\n\n" + help_text()


def task_status_text(task: TaskSnapshot) -> str:
    """One task in a few lines: what, who, how far, outcomes."""
    lines = [
        f"{STATUS_EMOJI[task.status]} *Reset #{task.id}: {status_label(task.status)}*",
        f"{scope_summary(task.scope, task.selected)} · {mode_label(task.mode)} · requested by "
        f"{requester_mention(task.requester, task.requester_name)} {slack_date(task.created_at)}",
    ]
    tally = task.tally
    if task.ended_unstarted and tally.users:
        lines.append(f"Ended before its start: {never_started_words(tally)}.")
    elif task.planned or task.total:
        progress = f"`{progress_bar(tally.fraction)}` {done_words(tally)}"
        if task.status.is_final:
            progress += ended_words(tally)
        pace = pace_words(task.pace)
        lines.append(f"{progress} · {pace}" if pace else progress)
    elif task.status is TaskStatus.AWAITING_APPROVAL:
        lines.append("Awaiting approval by another admin: nothing has changed yet.")
        if task.start_at is not None:
            lines.append(starts_if_approved(task.start_at))
    elif task.status in (TaskStatus.REJECTED, TaskStatus.EXPIRED):
        lines.append("Not approved: nothing was changed.")
    elif task.status is TaskStatus.SCHEDULED and task.start_at is not None:
        lines.append(scheduled_line(task.start_at))
    else:
        lines.append("Not started yet: a worker picks it up shortly.")
    outcomes = outcome_summary(task.counts)
    if outcomes:
        lines.append(outcomes)
    if task.cancel_requested and not task.status.is_final:
        lines.append("Cancel requested: the users not yet reset are left alone.")
    if task.error:
        lines.append(f"Problem: {escape(one_line(task.error))}")
    link = thread_link(task.slack_channel, task.slack_thread_ts)
    if link:
        lines.append(f"<{link}|Open the thread>")
    return "\n".join(lines)


def outcome_summary(counts: dict[ItemState, int]) -> str:
    parts = [f"{OUTCOME_LABELS[state]} {count:,}" for state, count in counts.items() if count]
    return " · ".join(parts)


def recent_status_text(tasks: Sequence[TaskSnapshot]) -> str:
    if not tasks:
        return f"No resets yet. Type `{COMMAND}` to start one."
    return "\n\n".join(task_status_text(task) for task in tasks)


def no_such_task(task_id: str) -> str:
    return f"There is no reset #{escape(truncate(one_line(task_id), 20))}."


# ---- button feedback ----------------------------------------------------------------------------


def cancel_requested(task_id: int) -> str:
    return (
        f"Cancelling reset #{task_id}: users not yet reset are left alone; those already reset "
        "are reported in the thread."
    )


def retry_started(task_id: int, original_id: int, users: int) -> str:
    return (
        f"Started reset #{task_id}: new passwords for the {plural(users, 'user')} whose mail "
        f"failed in reset #{original_id}."
    )


def retry_awaits_approval(task_id: int, original_id: int, users: int) -> str:
    return (
        f"Reset #{task_id} (new passwords for the {plural(users, 'user')} whose mail failed in "
        f"reset #{original_id}) waits for another admin's approval: nothing changes before "
        "that. *Approve* and *Reject* are in its thread."
    )


def start_needs_approval(task_id: int, users: int) -> str:
    return (
        f"Reset #{task_id} did not start: the {plural(users, 'user')} counted now need another "
        "admin's approval, which it does not have for them. It waits for it: *Approve* and "
        "*Reject* are in its thread (whoever asked for it cannot approve)."
    )


def approved_and_started(task_id: int) -> str:
    return f"You approved reset #{task_id}: it starts now. Progress shows in its thread."


def approved_and_waiting(task_id: int, status: TaskStatus) -> str:
    return f"You approved reset #{task_id}; it is now {status_label(status).lower()}."


def rejected_by_you(task_id: int) -> str:
    return f"You rejected reset #{task_id}: nothing was changed."


def recount_to_approve(task_id: int, before: int | None, now: int, emailable: int,
                       without_email: int, staff: int) -> str:
    """The scope grew since the request: the approver sees the new counts and clicks again."""
    was = f"{before:,} when it was asked for" if before is not None else "not counted before"
    return (
        f":warning: The directory changed: reset #{task_id} would now reset "
        f"{plural(now, 'user')} ({was}): {emailable:,} with e-mail, {without_email:,} without, "
        f"{staff:,} staff. Click *Approve* again to approve these counts."
    )


AWAITING_APPROVAL_TITLE = "Awaiting approval"


def awaiting_approval(task_id: int) -> str:
    return (
        f"Reset #{task_id} is saved and waits for another admin's approval: nothing changes "
        "before that. Its message in the channel has *Approve* and *Reject*; you cannot approve "
        "your own reset."
    )


NOT_AN_APPROVER = (
    "You may not approve resets: approvers are listed in RESET_APPROVERS or the "
    "RESET_APPROVER_GROUP user group. Ask one of them."
)


def scheduled_cancelled(task_id: int) -> str:
    return (f"Reset #{task_id} is cancelled before its start: nothing was changed, and any "
            "password it kept is erased.")


def start_confirmed(task_id: int) -> str:
    return f"Reset #{task_id} starts now with the counts its thread shows."


def queue_unavailable(task_id: int) -> str:
    return (
        f"Reset #{task_id} is saved but the job queue could not be reached; it starts as soon "
        "as a worker sees it. Check Redis if it does not."
    )


def could_not_open_form() -> str:
    return "Slack did not let me open the form. Please type the command again."


# ---- the reset form's problems, shown on its fields ---------------------------------------------

CHOOSE_SCOPE = "Choose who to reset."
PICKED_UNREADABLE = "The picked users could not be read; pick again."
PASSWORD_UNREADABLE = "The password could not be read; type it again."  # noqa: S105 - a text
CANNOT_KEEP_DEFAULT = (
    "resetbot cannot keep a default password (RESET_SECRET_KEY is not set up). Leave it blank, "
    "or ask whoever runs resetbot."
)
DIRECTORY_UNREACHABLE = (
    "The user directory cannot be reached right now, so nothing was previewed or changed. "
    "Submit again in a moment; if it goes on, ask whoever runs resetbot."
)


def too_many_picked(limit: int) -> str:
    return f"Pick at most {limit:,} users; for more, use a broader scope."


def picked_not_in_directory(unreadable: int) -> str:
    return f"{unreadable:,} of the picked users are not directory users; pick them again."


START_AT_UNREADABLE = "The start time could not be read; choose it again."


def password_too_long(limit: int) -> str:
    return f"It must be at most {limit} characters long."


# ---- notices: what a modal says instead of the form or the preview ------------------------------

NOT_ALLOWED_TITLE = "Not allowed"
START_AGAIN_TITLE = "Start again"
RESET_SAVED_TITLE = "Reset saved"
UNKNOWN_REQUEST = "This request is unknown or has expired. Close this and start again."
UNKNOWN_FORM = f"resetbot does not know this form. Close it and type {COMMAND} again."
BUTTON_NAMES_NO_TASK = "That button does not name a reset."


# ---- Undo (core/undo.py) ---------------------------------------------------------------------

UNDO_TITLE = "Undo this reset?"
UNDO_BUTTON = "Undo"


def undo_how(original_id: int) -> str:
    """How an Undo task changes passwords (where a reset says its mode)."""
    return (f"Putting back the previous passwords of reset #{original_id} (those changed since "
            "are left alone)")


def undo_button_text(until: datetime) -> str:
    return f"Undo (until {until:%H:%M} UTC)"


def undo_counts_text(task_id: int, unchanged: int, changed: int, mailed: int,
                     until: datetime) -> str:
    """What an Undo of reset #`task_id` would do, counted now, before it is confirmed."""
    lines = [
        f"*Undo reset #{task_id}* (possible until {until:%Y-%m-%d %H:%M} UTC):",
        f"• {plural(unchanged, 'user')} still have the password it set: each gets their "
        "previous password back (and their must-change, expiry and lock as before).",
        f"• Of them, {mailed:,} were e-mailed their new password, and are told to ignore "
        "that mail.",
        f"• {plural(changed, 'user')} changed their password since: left alone.",
    ]
    return "\n".join(lines)


def undo_started(task_id: int, original_id: int, unchanged: int) -> str:
    return (f"Started task #{task_id}: it undoes reset #{original_id}, giving "
            f"{plural(unchanged, 'user')} their previous password back.")


def undo_awaits_approval(task_id: int, original_id: int, unchanged: int) -> str:
    return (f"Task #{task_id} (undoing reset #{original_id}: "
            f"{plural(unchanged, 'user')} would get their previous password back) waits for "
            "another admin's approval: nothing changes before that. *Approve* and *Reject* are "
            "in its thread.")


# ---- Send me the list ---------------------------------------------------------------------------

LIST_PREVIEW_GONE = ("This request can no longer be listed: it was confirmed, has started or "
                     "has expired.")
LIST_NOT_YOURS = "Only whoever asked for this preview can have its list."


def list_title(task_id: int | None) -> str:
    return f"Reset #{task_id}: who exactly" if task_id else "Your reset preview: who exactly"


def list_comment(users: int) -> str:
    return (f"Everyone this reset would reset ({plural(users, 'user')}) and what happens to "
            "each. No passwords are in this file; it is made from the same query as the reset.")


UNUSED_LINES_TITLE = "Lines of your file not used"


def unused_lines_comment(lines: int) -> str:
    return (f"The {plural(lines, 'line')} of your file that named nobody or several users, "
            "with their line numbers. Nobody on them will be reset.")


def list_sent(users: int) -> str:
    return f"The list of the {plural(users, 'user')} is in your direct messages with me."


# ---- users from a file (the form's file_input) ---------------------------------------------------

USERS_FILE_LABEL = "Or: a file of users"
USERS_FILE_HINT = (
    "For “Only the users picked” and “Everyone except”. CSV or plain text, up to 10 MB: one "
    "username, card number or e-mail address per line, or a CSV with a username, cardnumber or "
    "email column."
)
FILE_NEEDS_SELECTED_SCOPE = (
    "A file names users for “Only the users picked” or “Everyone except”: choose one of those, "
    "or remove the file."
)
FILE_OR_PICKED = "Pick users or give a file, not both: remove one of them."
FILE_UNREADABLE_SHAPE = "The file could not be read from Slack; attach it again."
FILE_UNREADABLE = (
    "Slack did not hand over the file ({reason}); attach it again (nothing was changed)."
)
FILE_NOT_FROM_SLACK = (
    "The file is not on this Slack workspace's own host, so resetbot did not fetch it "
    "(nothing was changed)."
)
READING_FILE_TITLE = "Reading the file"
FILE_REFUSED_TITLE = "File not used"
NOT_PREVIEWED_TITLE = "Nothing to confirm"
#: Unmatched lines shown in the preview; all of them are kept with the request.
SHOWN_UNMATCHED = 20


def file_too_large(size: int, limit: int, *, at_least: bool = False) -> str:
    more = "more than " if at_least else ""
    return (f"The file is {more}{size / 1_048_576:.1f} MB; at most {limit // 1_048_576} MB fit. "
            "Split it, or use a broader scope (nothing was changed).")


def file_matches_nobody(entries: int) -> str:
    return (f"None of the file's {plural(entries, 'entry', 'entries')} is a user in the "
            "directory (nothing was changed).")


def reading_file(name: str) -> str:
    return (f"Reading *{escape(one_line(name))}* and matching it against the directory… "
            "The preview appears here in a moment.")


def file_refused(reason: str) -> str:
    return f"{escape(reason)}\nClose this and start again with another file."


def not_previewed(problems: dict[str, list[str]]) -> str:
    lines = [escape(reason) for reasons in problems.values() for reason in reasons]
    return ("The request was not previewed (nothing was changed):\n• " + "\n• ".join(lines)
            + "\nClose this and start again.")


def file_summary(report: dict[str, Any]) -> str:
    """The preview's line about a file: what it named, what matched, what did not."""
    unmatched = report["unmatched"]
    ambiguous = sum(1 for item in unmatched if item["could_be"])
    parts = [f"*From the file:* {plural(report['entries'], 'entry', 'entries')}, "
             f"{plural(report['users'], 'user')} matched"]
    if len(unmatched) - ambiguous:
        parts.append(f"{len(unmatched) - ambiguous:,} not found")
    if ambiguous:
        parts.append(f"{ambiguous:,} matching several users")
    if report["repeated"]:
        parts.append(f"{report['repeated']:,} repeated (counted once)")
    return ", ".join(parts) + "."


def unmatched_lines(report: dict[str, Any]) -> list[str]:
    """The first unmatched lines, with line numbers, under a heading (then how many more): one
    string each, for the view to pack into sections. The full list stays with the request."""
    unmatched = report["unmatched"]
    lines = []
    for item in unmatched[:SHOWN_UNMATCHED]:
        value = escape(truncate(one_line(item["value"]), 60))
        if item["could_be"]:
            could_be = ", ".join(escape(truncate(one_line(name), 40))
                                 for name in item["could_be"][:3])
            lines.append(f"line {item['line']:,}: `{value}`: several users ({could_be})")
        else:
            lines.append(f"line {item['line']:,}: `{value}`: not in the directory")
    more = len(unmatched) - len(lines)
    return (["*Lines that name nobody, or several users (not used):*", *lines]
            + ([f"… and {more:,} more."] if more else []))


#: What a paused task waits for, by the outage that paused it (core/outage.py).
OUTAGE_WAITS_FOR = {Outage.MAIL: "the mail server", Outage.DIRECTORY: "the directory"}


def waits_for(pause_reason: str | None) -> str:
    """What a task paused for `pause_reason` waits for: "the mail server" or "the directory"."""
    return OUTAGE_WAITS_FOR[outage_of(pause_reason)]


def outage_failure_words(pause_reason: str, elapsed_seconds: float) -> str:
    """Why a task paused too long failed: what stayed down, for how long, and its words."""
    what = waits_for(pause_reason)
    return f"{what[:1].upper()}{what[1:]} could not be used for {_minutes(elapsed_seconds)}: " \
        f"{pause_reason}"


def _minutes(seconds: float) -> str:
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{max(minutes, 0)} min"
    return f"{minutes // 60} h {minutes % 60} min"
