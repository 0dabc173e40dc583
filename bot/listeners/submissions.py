"""The modal's two submissions: the form (validate, preview) and the preview (confirm, enqueue).

Both do their work before acking, because the ack carries the answer (errors, the preview, or
closing the modal); both stay well within Slack's 3 seconds whatever the scope's size. A form
with a file of users is the exception: reading and matching up to 100,000 lines may take
longer, so its ack turns the form into "Reading the file…", and the preview (or what was wrong)
replaces that view after the ack (`views.update`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from slack_bolt import Ack, App, BoltContext
from slack_sdk import WebClient
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from blocks.ids import (
    CALLBACK_CONFIRM,
    CALLBACK_RESET,
    NO_EMAIL_PASSWORD,
    PASSWORD,
    SCOPE,
    START_AT,
    USERS,
    USERS_FILE,
)
from blocks.text import (
    CANNOT_KEEP_DEFAULT,
    DIRECTORY_UNREACHABLE,
    FILE_UNREADABLE_SHAPE,
    file_matches_nobody,
    truncate,
)
from blocks.views import (
    awaiting_approval_modal,
    file_refused_modal,
    not_previewed_modal,
    preview_modal,
    reading_file_modal,
    reset_saved_modal,
    start_again_modal,
    unknown_form_modal,
)
from bot.deps import AppDeps, deps_of
from bot.listeners.guard import admin_only, admitted_user
from bot.payloads import (
    FormInput,
    channel_from_metadata,
    pending_id,
    read_reset_form,
    user_name_of,
    view_id_of,
)
from bot.slack_files import download_file
from core import undo
from core.directory import Preview
from core.errors import ConfigError, ConflictError, InputError, QueueUnavailable
from core.models import TaskStatus, utcnow
from core.schedule import is_future
from core.tasks import (
    RequestInvalid,
    ResetRequest,
    consume_pending,
    create_pending,
    gate_new_task,
    validate_request,
)
from core.userio import entries_from_file, match_entries

log = logging.getLogger("resetbot.slack")

#: The input blocks of the reset modal; a problem about anything else is shown on `scope`.
FORM_BLOCKS = frozenset({SCOPE, USERS, USERS_FILE, PASSWORD, NO_EMAIL_PASSWORD, START_AT})
ERROR_TEXT_LIMIT = 2000


def register(app: App) -> None:
    app.view(CALLBACK_RESET, middleware=[admin_only("submit")])(submit_form)
    app.view(CALLBACK_CONFIRM, middleware=[admin_only("confirm")])(confirm)


def register_fallback(app: App) -> None:
    app.view(re.compile(".*"))(unknown_view)


def submit_form(ack: Ack, body: dict[str, Any], view: dict[str, Any],
                context: BoltContext) -> None:
    deps = deps_of(context)
    user = admitted_user(body)
    try:
        form = read_reset_form(view)
    except RequestInvalid as invalid:
        refuse_invalid(deps, user, invalid.problems)
        ack(response_action="errors", errors=field_errors(invalid.problems))
        return
    channel = channel_from_metadata(view.get("private_metadata"))
    if form.file is not None:
        view_id = view_id_of(view)
        client = context.client
        if view_id is None or client is None:
            ack(response_action="errors", errors={USERS_FILE: FILE_UNREADABLE_SHAPE})
            return
        ack(response_action="update", view=reading_file_modal(form.file.name))
        deps.later(preview_from_file, deps, client, form, user, user_name_of(body), channel,
                   view_id)
        return
    answer = preview_or_errors(deps, form, user, user_name_of(body), channel)
    ack(**answer)


def preview_from_file(
    deps: AppDeps, client: WebClient, form: FormInput, user: str, name: str,
    channel: str | None, view_id: str,
) -> None:
    """After the ack: read the form's file through the Web API, match it against the directory,
    and put the preview (or why there is none) in place of "Reading the file…"."""
    assert form.file is not None
    try:
        entries = entries_from_file(download_file(client, form.file.id))
        match = match_entries(deps.directory, entries)
    except InputError as refused:
        deps.refuse(user, "submit", reason="file refused", fields=[USERS_FILE])
        client.views_update(view_id=view_id, view=file_refused_modal(str(refused)))
        return
    log.info("file of users read: %d entries, %d users, %d unmatched, %d repeated",
             match.entries, len(match.ids), len(match.unmatched), match.repeated)
    if not match.ids:
        deps.refuse(user, "submit", reason="file names nobody", fields=[USERS_FILE])
        client.views_update(view_id=view_id, view=file_refused_modal(
            file_matches_nobody(match.entries)))
        return
    answer = preview_or_errors(deps, form, user, name, channel, selection=match.ids,
                               file_report=match.report())
    if answer["response_action"] == "update":
        client.views_update(view_id=view_id, view=answer["view"])
    else:
        problems = {block: [text] for block, text in answer["errors"].items()}
        client.views_update(view_id=view_id, view=not_previewed_modal(problems))


def confirm(ack: Ack, body: dict[str, Any], view: dict[str, Any], context: BoltContext) -> None:
    deps = deps_of(context)
    user = admitted_user(body)
    waiting = pending_id(view.get("private_metadata"))
    if waiting is None:
        deps.refuse(user, "confirm", reason="no pending request in the view")
        ack(response_action="update", view=start_again_modal())
        return
    try:
        task_id, status = confirm_pending(deps, waiting, user)
    except ConflictError as conflict:
        deps.refuse(user, "confirm", reason=str(conflict))
        ack(response_action="update", view=start_again_modal(str(conflict)))
        return
    if status is TaskStatus.AWAITING_APPROVAL:
        announce_waiting(deps, task_id)
        ack(response_action="update", view=awaiting_approval_modal(task_id))
        return
    if status is TaskStatus.SCHEDULED:
        # Its time is ahead: the thread says when; a worker's reaper starts it then.
        announce_waiting(deps, task_id)
        ack(response_action="clear")
        return
    try:
        deps.enqueue(task_id)
    except QueueUnavailable as error:
        # The task is committed; the reaper or the next worker start picks it up.
        log.error("could not enqueue task %s: %s", task_id, type(error).__name__)
        ack(response_action="update", view=reset_saved_modal(task_id))
        return
    ack(response_action="clear")


def unknown_view(ack: Ack, view: dict[str, Any]) -> None:
    log.warning("view submission with unknown callback_id %r",
                truncate(str(view.get("callback_id")), 60))
    ack(response_action="update", view=unknown_form_modal())


def preview_or_errors(
    deps: AppDeps, form: FormInput, user: str, name: str, channel: str | None,
    *, selection: tuple[str, ...] | None = None, file_report: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ack for a readable form: field errors, or the preview of a request parked for confirm.

    `selection` and `file_report`: the users a file named (instead of the picked ones), and what
    it matched and did not, kept with the request and shown in the preview.
    """
    request = form.request(user, name, channel, selection)
    with deps.sessions() as session:
        try:
            preview = directory_preview(deps, request)
            no_undo = undo_note(deps)
            pending = create_pending(session, deps.settings, request, preview, file_report)
            session.commit()
        except DirectoryUnreachable:
            session.rollback()
            return {"response_action": "errors", "errors": {SCOPE: DIRECTORY_UNREACHABLE}}
        except RequestInvalid as invalid:
            session.rollback()
            refuse_invalid(deps, user, invalid.problems)
            return {"response_action": "errors", "errors": field_errors(invalid.problems)}
        except InputError as invalid:
            session.rollback()
            problems = {invalid.field or SCOPE: [str(invalid)]}
            refuse_invalid(deps, user, problems)
            return {"response_action": "errors", "errors": field_errors(problems)}
        except ConfigError as error:
            # Only a default password needs sealing; say so on its field, details in the log.
            log.error("cannot keep a default password: %s", error)
            return {"response_action": "errors",
                    "errors": {PASSWORD: CANNOT_KEEP_DEFAULT}}
        view = preview_modal(
            pending.id, preview, scope=form.scope, selected=len(request.selection),
            mode=request.mode, require_change=form.require_change,
            no_email=request.no_email_choice, skip_locked=request.leaves_locked,
            # A time within the grace of "now" starts at once: the preview says no time.
            start_at=request.start_at if is_future(request.start_at, utcnow()) else None,
            file_report=file_report,
            no_undo=no_undo,
        )
    return {"response_action": "update", "view": view}


class DirectoryUnreachable(Exception):
    """The directory's database did not answer the preview's reads (down, cut, timed out)."""


@contextmanager
def directory_reads() -> Iterator[None]:
    """The preview's reads of the directory's database: the driver's own errors (connection
    refused or reset, server gone, timeout) become DirectoryUnreachable, so the person gets a
    field error instead of Slack an HTTP 500."""
    try:
        yield
    except (DBAPIError, PoolTimeout) as error:
        log.error("the directory cannot be reached for a preview: %s", type(error).__name__)
        raise DirectoryUnreachable from None


def undo_note(deps: AppDeps) -> str | None:
    """Whether the preview must say the reset cannot be undone. On a library system's table
    that asks the directory's database once (may the user read what a reset replaces?): the
    preview's counts may have come from the app's copy, so this can be the first read that
    finds the database down."""
    with directory_reads():
        return undo.preview_note(deps.settings, deps.directory)


def directory_preview(deps: AppDeps, request: ResetRequest) -> Preview:
    """The request checked and counted against the directory; DirectoryUnreachable when its
    database cannot be used."""
    with directory_reads():
        return validate_request(deps.settings, deps.directory, request, deps.counts)


def refuse_invalid(deps: AppDeps, user: str, problems: dict[str, list[str]]) -> None:
    """An invalid request is a refusal too (as in the CLI): audited with the fields at fault,
    never their values (one of them may be a password)."""
    deps.refuse(user, "submit", reason="invalid request", fields=sorted(problems))


def confirm_pending(deps: AppDeps, waiting: str, user: str) -> tuple[int, TaskStatus]:
    """Consume the pending request (once, atomically) into a committed task, through the gate
    (`core.tasks.gate_new_task`): queued (to enqueue), scheduled or awaiting approval (to
    announce)."""
    with deps.sessions() as session:
        try:
            task = consume_pending(session, waiting, user)
            status = gate_new_task(session, deps.settings, task)
            session.commit()
        except ConflictError:
            session.rollback()
            raise
        return task.id, status


def announce_waiting(deps: AppDeps, task_id: int) -> None:
    """Have a worker post (or update) the parent message of a task that has not started:
    Approve and Reject while it awaits approval, "Scheduled for …" and Cancel while it waits
    for its time, who decided once it was approved, rejected or cancelled.

    The database already says where the task stands; a post Redis could not take is made by a
    worker's reaper instead.
    """
    try:
        deps.announce(task_id)
    except QueueUnavailable as error:
        log.error("could not tell Slack where task %s stands: %s", task_id,
                  type(error).__name__)


def field_errors(problems: dict[str, list[str]]) -> dict[str, str]:
    """Slack's `errors`: one text per input block, every reason in it."""
    errors: dict[str, list[str]] = {}
    for field, reasons in problems.items():
        block = field if field in FORM_BLOCKS else SCOPE
        errors.setdefault(block, []).extend(reasons)
    return {block: truncate(" ".join(reasons), ERROR_TEXT_LIMIT)
            for block, reasons in errors.items()}
