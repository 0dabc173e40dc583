"""Buttons: Approve, Reject, Cancel, Start now, Retry failed and Undo on a task's parent
message (Undo's confirmation modal too), New reset on App Home.

Each is for admins only (a button payload can be replayed by anyone), does the database work,
acks, then tells the user what happened in an ephemeral line.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

from slack_bolt import Ack, App, BoltContext
from slack_sdk import WebClient

from blocks.ids import (
    ACTION_APPROVE,
    ACTION_CANCEL,
    ACTION_CONFIRM_SCHEDULED,
    ACTION_OPEN_MODAL,
    ACTION_OPEN_THREAD,
    ACTION_REJECT,
    ACTION_RETRY_FAILED,
    ACTION_UNDO,
    CALLBACK_UNDO,
)
from blocks.text import (
    UNDO_TITLE,
    approved_and_started,
    approved_and_waiting,
    cancel_requested,
    queue_unavailable,
    recount_to_approve,
    rejected_by_you,
    retry_awaits_approval,
    retry_started,
    scheduled_cancelled,
    start_confirmed,
    start_needs_approval,
    undo_awaits_approval,
    undo_started,
)
from blocks.views import decision_notice, notice_modal, undo_modal
from bot.deps import AppDeps, deps_of
from bot.listeners.guard import admin_only, admitted_user
from bot.listeners.home import from_home, publish_home
from bot.listeners.replies import open_modal, show_notice, tell_where_possible
from bot.listeners.submissions import announce_waiting
from bot.payloads import channel_id, channel_of, first_action, numeric_id, task_id, user_name_of
from core import approval, undo
from core.errors import ConflictError, InputError, QueueUnavailable
from core.models import TaskStatus
from core.tasks import confirm_held_start, create_retry_task, gate_new_task, request_cancel

log = logging.getLogger("resetbot.slack")


def register(app: App) -> None:
    app.action(ACTION_APPROVE, middleware=[admin_only(ACTION_APPROVE)])(approve)
    app.action(ACTION_REJECT, middleware=[admin_only(ACTION_REJECT)])(reject)
    app.action(ACTION_CANCEL, middleware=[admin_only(ACTION_CANCEL)])(cancel)
    app.action(ACTION_RETRY_FAILED, middleware=[admin_only(ACTION_RETRY_FAILED)])(retry)
    app.action(ACTION_CONFIRM_SCHEDULED,
               middleware=[admin_only(ACTION_CONFIRM_SCHEDULED)])(confirm_scheduled)
    app.action(ACTION_OPEN_MODAL, middleware=[admin_only(ACTION_OPEN_MODAL)])(open_from_home)
    app.action(ACTION_UNDO, middleware=[admin_only(ACTION_UNDO)])(undo_clicked)
    app.view(CALLBACK_UNDO, middleware=[admin_only(CALLBACK_UNDO)])(undo_confirmed)
    app.action(re.compile(f"^{ACTION_OPEN_THREAD}"))(open_thread)


def register_fallback(app: App) -> None:
    app.action(re.compile(".*"))(unknown_action)


def approve(ack: Ack, body: dict[str, Any], client: WebClient, context: BoltContext) -> None:
    _answer_button(deps_of(context), ack, body, client, _approve)


def reject(ack: Ack, body: dict[str, Any], client: WebClient, context: BoltContext) -> None:
    _answer_button(deps_of(context), ack, body, client, _reject)


def cancel(ack: Ack, body: dict[str, Any], client: WebClient, context: BoltContext) -> None:
    _answer_button(deps_of(context), ack, body, client, _cancel)


def retry(ack: Ack, body: dict[str, Any], client: WebClient, context: BoltContext) -> None:
    _answer_button(deps_of(context), ack, body, client, _retry)


def confirm_scheduled(ack: Ack, body: dict[str, Any], client: WebClient,
                      context: BoltContext) -> None:
    _answer_button(deps_of(context), ack, body, client, _confirm_scheduled)


def open_from_home(ack: Ack, body: dict[str, Any], client: WebClient,
                   context: BoltContext) -> None:
    user = admitted_user(body)
    ack()
    deps = deps_of(context)
    deps.freshen_search()
    # From App Home there is no channel: the task centre falls back to a DM.
    deps.later(open_modal, client, body.get("trigger_id"), None, user)


def undo_clicked(ack: Ack, body: dict[str, Any], client: WebClient,
                 context: BoltContext) -> None:
    """Undo: the counts, taken now, in a modal to confirm (or why it cannot be undone)."""
    user = admitted_user(body)
    deps = deps_of(context)
    try:
        wanted = task_id(first_action(body).get("value"))
    except InputError as refused:
        ack()
        deps.later(tell_where_possible, client, channel_of(body), user, str(refused))
        return
    ack()
    deps.later(_offer_undo, deps, client, body.get("trigger_id"), channel_of(body), user, wanted)


def _offer_undo(deps: AppDeps, client: WebClient, trigger_id: object, channel: str | None,
                user: str, wanted: int) -> None:
    with deps.sessions() as session:
        reason = undo.refusal(session, deps.settings, deps.directory, wanted)
        found = undo.counts(session, deps.settings, deps.directory, wanted) if reason is None \
            else None
    if found is None:
        deps.refuse(user, ACTION_UNDO, reason or "", task_id=wanted)
        tell_where_possible(client, channel, user, reason or "")
        return
    view = undo_modal(wanted, channel, found.unchanged, found.changed, found.mailed, found.until)
    if isinstance(trigger_id, str) and trigger_id:
        client.views_open(trigger_id=trigger_id, view=view)


def undo_confirmed(ack: Ack, body: dict[str, Any], view: dict[str, Any], client: WebClient,
                   context: BoltContext) -> None:
    """Undo confirmed: its own task, checked again (an admin, the window, once per task)."""
    deps = deps_of(context)
    user = admitted_user(body)
    wanted, channel = _undo_metadata(view.get("private_metadata"))
    try:
        with deps.sessions() as session:
            task, found = undo.create_undo_task(session, deps.settings, deps.directory, wanted,
                                                user, user_name_of(body))
            session.commit()
            new_id, status = task.id, TaskStatus(task.status)
    except (ConflictError, InputError) as refused:
        deps.refuse(user, CALLBACK_UNDO, str(refused), task_id=wanted)
        ack(response_action="update", view=notice_modal(UNDO_TITLE, str(refused)))
        return
    ack()
    announce_waiting(deps, wanted)  # its parent no longer offers Undo
    if status is TaskStatus.AWAITING_APPROVAL:
        announce_waiting(deps, new_id)  # its own thread, with Approve and Reject
        answer = undo_awaits_approval(new_id, wanted, found.unchanged)
    else:
        answer = _start(deps, new_id, undo_started(new_id, wanted, found.unchanged))
    deps.later(tell_where_possible, client, channel, user, answer)


def _undo_metadata(metadata: object) -> tuple[int, str | None]:
    """(task id, channel) from Undo's modal; InputError-free: a bad one names no task."""
    parts = metadata.split() if isinstance(metadata, str) else []
    wanted = numeric_id(parts[0]) if parts else None
    return (wanted if wanted is not None else 0), (channel_id(parts[1]) if len(parts) > 1
                                                    else None)


def open_thread(ack: Ack) -> None:
    # A link button: Slack opens the URL itself, but still wants its click acknowledged.
    ack()


def unknown_action(ack: Ack, body: dict[str, Any]) -> None:
    log.warning("button with unknown action_id %r",
                str(first_action(body).get("action_id"))[:60])
    ack()


ButtonWork = Callable[[AppDeps, str, dict[str, Any]], str]


def _answer_button(
    deps: AppDeps, ack: Ack, body: dict[str, Any], client: WebClient, work: ButtonWork
) -> None:
    """Do the work, ack, then tell the admin the outcome in an ephemeral line."""
    user = admitted_user(body)
    try:
        answer = work(deps, user, body)
    except (InputError, ConflictError) as refused:
        answer = str(refused)
    ack()
    if from_home(body):
        # App Home has no channel to answer in: a notice says it, and the tab is redrawn.
        deps.later(show_notice, client, body.get("trigger_id"), decision_notice(answer))
        deps.later(publish_home, deps, client, user)
        return
    deps.later(tell_where_possible, client, channel_of(body), user, answer)


def _cancel(deps: AppDeps, user: str, body: dict[str, Any]) -> str:
    wanted = task_id(first_action(body).get("value"))
    with deps.sessions() as session:
        task = request_cancel(session, wanted, user)
        session.commit()
        before_start = task.status == TaskStatus.CANCELLED
    if before_start:
        announce_waiting(deps, wanted)  # ended at once, before its time: the thread says so
        return scheduled_cancelled(wanted)
    return cancel_requested(wanted)


def _start(deps: AppDeps, wanted: int, started: str) -> str:
    """Queue task `wanted`'s plan and answer `started`, or say why it could not be queued yet
    (the task is saved in the database either way)."""
    try:
        deps.enqueue(wanted)
    except QueueUnavailable as error:
        log.error("could not enqueue task %s: %s", wanted, type(error).__name__)
        return queue_unavailable(wanted)
    return started


def _unless_requester_or_approver(
    deps: AppDeps, user: str, wanted: int, step: str
) -> str | None:
    """None when `user` asked for task `wanted` or may approve resets; else the refusal to
    show them, audited."""
    with deps.sessions() as session:
        requester = approval.requester_of(session, wanted)
    refusal = deps.approval_refusal(user) if user != requester else None
    if refusal is None:
        return None
    deps.refuse(user, step, refusal.reason, task_id=wanted)
    return refusal.message


def _confirm_scheduled(deps: AppDeps, user: str, body: dict[str, Any]) -> str:
    """A scheduled task held at its start (its counts changed) starts with the new counts:
    confirmed again by whoever asked for it, or by someone who may approve resets."""
    wanted = task_id(first_action(body).get("value"))
    refused = _unless_requester_or_approver(deps, user, wanted, ACTION_CONFIRM_SCHEDULED)
    if refused is not None:
        return refused
    with deps.sessions() as session:
        try:
            task = confirm_held_start(session, deps.settings, deps.directory, wanted, user)
            session.commit()
        except ConflictError as conflict:
            session.rollback()
            deps.refuse(user, ACTION_CONFIRM_SCHEDULED, "not held", task_id=wanted)
            return str(conflict)
        to_approve = task.status == TaskStatus.AWAITING_APPROVAL
        users = task.recheck_users or 0
    if to_approve:
        announce_waiting(deps, wanted)  # Approve and Reject, with the new counts
        return start_needs_approval(wanted, users)
    return _start(deps, wanted, start_confirmed(wanted))


def _retry(deps: AppDeps, user: str, body: dict[str, Any]) -> str:
    """A new task for the users whose mail failed, through the gate like any new task: many
    users wait for another admin's approval."""
    original = task_id(first_action(body).get("value"))
    with deps.sessions() as session:
        task = create_retry_task(session, original, user, user_name_of(body))
        status = gate_new_task(session, deps.settings, task)
        session.commit()
        new_id, users = task.id, len(task.selection)
    if status is TaskStatus.AWAITING_APPROVAL:
        announce_waiting(deps, new_id)  # its own thread, with Approve and Reject
        return retry_awaits_approval(new_id, original, users)
    return _start(deps, new_id, retry_started(new_id, original, users))


def _approve(deps: AppDeps, user: str, body: dict[str, Any]) -> str:
    """Approve as `user`: an allowed approver, never the requester; counts checked again."""
    wanted = task_id(first_action(body).get("value"))
    refusal = deps.approval_refusal(user)
    if refusal is not None:
        deps.refuse(user, ACTION_APPROVE, refusal.reason, task_id=wanted)
        return refusal.message
    with deps.sessions() as session:
        try:
            outcome = approval.approve(session, deps.directory, wanted, user)
            session.commit()
        except approval.Refusal as refused:
            # The requester's own, or decided meanwhile (another approver's click won).
            session.rollback()
            deps.refuse(user, ACTION_APPROVE, refused.reason, task_id=wanted)
            return str(refused)
    announce_waiting(deps, wanted)  # the parent shows who approved, and when it starts
    if isinstance(outcome, approval.Recounted):
        now = outcome.now
        return recount_to_approve(wanted, outcome.before.users if outcome.before else None,
                                  now.users, now.emailable, now.without_email, now.staff)
    if outcome.status is not TaskStatus.QUEUED:
        # Scheduled: its start time is ahead, and the reaper starts it then.
        return approved_and_waiting(wanted, outcome.status)
    return _start(deps, wanted, approved_and_started(wanted))


def _reject(deps: AppDeps, user: str, body: dict[str, Any]) -> str:
    """Reject as an allowed approver, or withdraw as the requester: nothing changes."""
    wanted = task_id(first_action(body).get("value"))
    refused = _unless_requester_or_approver(deps, user, wanted, ACTION_REJECT)
    if refused is not None:
        return refused
    with deps.sessions() as session:
        try:
            approval.reject(session, wanted, user)
            session.commit()
        except approval.Refusal as decided:
            session.rollback()
            deps.refuse(user, ACTION_REJECT, decided.reason, task_id=wanted)
            return str(decided)
    announce_waiting(deps, wanted)
    return rejected_by_you(wanted)
