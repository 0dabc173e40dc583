"""The task centre in Slack: a parent message updated in place, and a thread of replies.

The engine calls a `SlackReporter` (throttled: at most once per progress step, once per retry
round, once at the end). The reporter never talks to Slack itself: it enqueues a small delivery
job with a long retry backoff, so a Slack outage delays messages and never the resets. A
delivery renders the task as the database has it *now*, so a late one still tells the truth,
and the bookkeeping columns on the task make every message idempotent: a retried delivery never
posts a second parent, summary or CSV.

Slack traffic per task is bounded by the engine's step count, not by the number of users.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Any, cast

from redis.exceptions import RedisError
from rq import Queue, Retry
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
    ServerErrorRetryHandler,
)
from slack_sdk.http_retry.builtin_interval_calculators import (
    FixedValueRetryIntervalCalculator,
)
from slack_sdk.http_retry.handler import RetryHandler
from slack_sdk.http_retry.request import HttpRequest
from slack_sdk.http_retry.response import HttpResponse
from slack_sdk.http_retry.state import RetryState
from sqlalchemy import CursorResult, or_, select, update

from blocks import messages
from core.errors import ConfigError, QueueUnavailable
from core.models import (
    FOLLOW_UP_STATES,
    ItemState,
    ResetItem,
    ResetTask,
    TaskStatus,
    utcnow,
)
from core.progress import TaskSnapshot, snapshot
from core.settings import Settings
from jobs.queueing import FAILURE_TTL, delivery_job_id, delivery_of_job, job_ids_in_redis
from jobs.running import JobContext, running_context

logger = logging.getLogger(__name__)

DELIVER = "jobs.slack_reporter.deliver"
#: Seconds between a failed delivery's attempts: about three hours in all, to ride out an
#: outage; the last value repeats.
RETRY_INTERVALS: tuple[int, ...] = (5, 15, 30, 60, 120, 300, 600, 900, 900, 900, 900, 900,
                                    1800, 1800, 1800)
#: A worker waits in-process for a 429 only this long; a longer Retry-After goes back to the
#: queue as a scheduled retry, so the worker goes on resetting meanwhile.
MAX_INLINE_RETRY_AFTER = 5
INLINE_RETRY_PAUSE = 0.5
#: After this, a parent-post claim is taken to belong to a dead worker and may be taken over.
PARENT_CLAIM_TTL = timedelta(minutes=2)
WEB_TIMEOUT = 15
#: The reaper re-sends a lost end at most this often per task, for this long after it ended.
RESEND_EVERY_SECONDS = 300
RESEND_WITHIN = timedelta(days=1)
#: Slack's answers meaning the bot cannot post where the task was asked for.
CHANNEL_UNREACHABLE = frozenset(
    {"not_in_channel", "channel_not_found", "is_archived", "restricted_action"}
)
#: Answers a retry cannot fix: logged once, the delivery dropped.
HOPELESS = frozenset(
    {
        "invalid_auth", "not_authed", "account_inactive", "token_revoked", "token_expired",
        "missing_scope", "invalid_blocks", "invalid_arguments", "msg_too_long", "no_text",
        "too_many_attachments",
    }
)
#: Answers meaning the follow-up list cannot go where it must (a requester who left, a scope
#: the app lacks, a report channel gone): retrying for hours would not help. The summary says
#: so, without the list; `resetbot tasks show ID --csv` has it.
PRIVATE_LIST_REFUSED = frozenset(
    {
        "user_not_found", "user_disabled", "cannot_dm_bot", "missing_scope",
        "channel_not_found", "not_in_channel", "is_archived", "restricted_action",
        "not_allowed_token_type", "invalid_users", "user_not_visible",
    }
)
_SLACK_USER = re.compile(r"^[UW][A-Z0-9]+$")
#: Statuses of a task whose parent message is posted although it has not started.
NEVER_STARTED = frozenset(
    {TaskStatus.AWAITING_APPROVAL, TaskStatus.REJECTED, TaskStatus.EXPIRED, TaskStatus.SCHEDULED}
)
#: Statuses of a task whose parent message is posted (announced) before it starts; one whose
#: announcement Redis lost is announced again by the reaper.
ANNOUNCED_BEFORE_START = (TaskStatus.AWAITING_APPROVAL, TaskStatus.SCHEDULED)


class Event(StrEnum):
    STARTED = "started"
    PROGRESS = "progress"
    WAITING = "waiting"
    RETRIES = "retries"
    PAUSED = "paused"
    RESUMED = "resumed"
    FINISHED = "finished"
    #: The parent message of a task that has not started is posted or brought up to date: it
    #: awaits approval, or waits for its start time, or was just approved, rejected or
    #: cancelled (the edges' `announce`). A task that ended so is told as any end.
    ANNOUNCE = "announce"
    #: A scheduled task: the reminder before its start, and its start (or hold) at its time.
    REMINDER = "reminder"
    REACHED = "reached"


class NotReady(Exception):
    """Another delivery is posting the parent message, or the end is not committed yet:
    RQ tries again later."""


class ChannelMoved(Exception):
    """The task's reports moved to a DM with the requester: start the delivery over there."""


class Undeliverable(Exception):
    """Neither the channel nor a DM with the requester takes our messages."""


# ---- the reporter the engine calls -------------------------------------------------------------


class SlackReporter:
    """Turns the engine's reports into delivery jobs; tasks without a Slack channel are skipped.

    `retry_intervals` is the delivery jobs' backoff (tests make it short).
    """

    def __init__(
        self, context: JobContext, *, retry_intervals: Sequence[int] = RETRY_INTERVALS
    ) -> None:
        self.context = context
        self.retry_intervals = tuple(retry_intervals)

    def task_started(self, task_id: int) -> None:
        # Told ahead of the task's work, so a long task shows at once, except a task of one
        # claim batch: told behind it, so its mails go before these Slack calls (a lone worker
        # would otherwise make a one-user reset wait on them), and it is soon told anyway.
        self._send(task_id, Event.STARTED, front=not self._one_batch(task_id))

    def task_progress(self, task_id: int, step: int, steps: int) -> None:
        self._send(task_id, Event.PROGRESS, step, steps)

    def task_waiting(self, task_id: int, blocking_task_id: int) -> None:
        self._send(task_id, Event.WAITING, blocking_task_id)

    def retries_scheduled(
        self, task_id: int, users: int, attempt: int, delay_seconds: int
    ) -> None:
        self._send(task_id, Event.RETRIES, users, attempt, delay_seconds)

    def task_paused(self, task_id: int) -> None:
        self._send(task_id, Event.PAUSED)

    def task_resumed(self, task_id: int) -> None:
        self._send(task_id, Event.RESUMED)

    def task_finished(self, task_id: int) -> None:
        self._send(task_id, Event.FINISHED)

    def schedule_reminder(self, task_id: int) -> None:
        self._send(task_id, Event.REMINDER)

    def schedule_reached(self, task_id: int, late_seconds: int) -> None:
        self._send(task_id, Event.REACHED, late_seconds)

    def _send(self, task_id: int, event: Event, *args: int, front: bool | None = None) -> None:
        if not self._reports_to_slack(task_id):
            return
        enqueue_delivery(self.context.queue, task_id, event, *args,
                         retry_intervals=self.retry_intervals, front=front)

    def _one_batch(self, task_id: int) -> bool:
        with self.context.sessions() as session:
            row = session.execute(
                select(ResetTask.planned, ResetTask.total).where(ResetTask.id == task_id)
            ).one_or_none()
        return row is not None and row.planned and row.total <= self.context.settings.claim_batch

    def _reports_to_slack(self, task_id: int) -> bool:
        with self.context.sessions() as session:
            channel = session.scalar(
                select(ResetTask.slack_channel).where(ResetTask.id == task_id)
            )
        return bool(channel) and bool(self.context.settings.slack_bot_token)


def enqueue_delivery(
    queue: Queue,
    task_id: int,
    event: Event,
    *args: int,
    retry_intervals: Sequence[int] = RETRY_INTERVALS,
    front: bool | None = None,
) -> None:
    """Queue one delivery (JSON arguments only) with a backoff long enough for an outage.

    `front`: ahead of the queued reset work (default: every event but the end).
    """
    queue.enqueue(
        DELIVER,
        task_id,
        event.value,
        *args,
        job_id=delivery_job_id(queue, task_id, event.value),
        result_ttl=0,
        failure_ttl=FAILURE_TTL,
        # Ahead of the task's own chunk jobs, or progress would be told only at the end; the
        # end goes behind whatever the task's last job reported just before it.
        at_front=event is not Event.FINISHED if front is None else front,
        retry=Retry(max=len(retry_intervals), interval=list(retry_intervals)),
    )


def resend_lost_ends(context: JobContext) -> int:
    """Re-report the end of tasks whose end delivery Redis lost; returns how many.

    Deliveries live only in Redis; if it restarts empty (or a delivery gave up after hours of
    outage) before a task's summary or CSV was posted, nothing else would ever say it. The
    reaper calls this: a task the database says has ended, whose thread has not, and that has
    no end delivery queued, scheduled or running gets a new one (at most every few minutes).
    """
    reporter = context.reporter
    if not isinstance(reporter, SlackReporter):
        return 0
    with context.sessions() as session:
        untold = list(session.scalars(
            select(ResetTask.id).where(
                ResetTask.status.in_([s.value for s in TaskStatus if s.is_final]),
                ResetTask.slack_channel.is_not(None),
                or_(ResetTask.summary_posted.is_(False), ResetTask.slack_csv_posted.is_(False)),
                ResetTask.finished_at >= utcnow() - RESEND_WITHIN,
            )
        ))
    if not untold:
        return 0
    waiting = tasks_with_end_delivery(context)
    resent = _resend(context, reporter, [t for t in untold if t not in waiting], Event.FINISHED,
                     throttle="slack-resend")
    if resent:
        logger.warning("re-sent the end of %s task(s) to Slack: their delivery was lost", resent)
    return resent


def announce(queue: Queue, task_id: int) -> None:
    """Have a worker post or update the parent message of a task that has not started (it
    awaits approval or its start time, or was just decided or cancelled): the edges'
    `announce`, and the reaper's when that delivery was lost."""
    try:
        enqueue_delivery(queue, task_id, Event.ANNOUNCE)
    except RedisError as error:
        raise QueueUnavailable(f"Redis cannot be reached: {type(error).__name__}") from error


def resend_lost_announcements(context: JobContext) -> int:
    """Post the parent message of tasks waiting before their start (awaiting approval, or
    scheduled) whose first delivery Redis lost.

    Without it the approvers would never see the buttons, nor the channel the scheduled reset
    and its Cancel. A waiting task with a channel and no parent yet, and no delivery of its own
    in Redis, gets one (at most every few minutes per task); returns how many.
    """
    reporter = context.reporter
    if not isinstance(reporter, SlackReporter):
        return 0
    with context.sessions() as session:
        unposted = list(session.scalars(
            select(ResetTask.id).where(
                ResetTask.status.in_(ANNOUNCED_BEFORE_START),
                ResetTask.slack_channel.is_not(None),
                ResetTask.slack_thread_ts.is_(None),
            )
        ))
    if not unposted:
        return 0
    delivering = {
        delivery[0]
        for entry in job_ids_in_redis(context.redis, context.queue)
        if (delivery := delivery_of_job(entry)) is not None
    }
    resent = _resend(context, reporter, [t for t in unposted if t not in delivering],
                     Event.ANNOUNCE, throttle="slack-announce")
    if resent:
        logger.warning("re-sent the parent message of %s waiting task(s) to Slack: their "
                       "delivery was lost", resent)
    return resent


def _resend(
    context: JobContext, reporter: SlackReporter, task_ids: list[int], event: Event, *,
    throttle: str,
) -> int:
    """Queue `event` again for each task, at most once per RESEND_EVERY_SECONDS per task (every
    worker's reaper runs this); returns how many were queued."""
    resent = 0
    for task_id in task_ids:
        key = f"{context.queue.name}:{throttle}:{task_id}"
        if not context.redis.set(key, 1, nx=True, ex=RESEND_EVERY_SECONDS):
            continue
        enqueue_delivery(context.queue, task_id, event, retry_intervals=reporter.retry_intervals)
        resent += 1
    return resent


def tasks_with_end_delivery(context: JobContext) -> set[int]:
    """Tasks with an end delivery queued, running or scheduled in Redis."""
    found: set[int] = set()
    for entry in job_ids_in_redis(context.redis, context.queue):
        delivery = delivery_of_job(entry)
        if delivery is not None and delivery[1] == Event.FINISHED.value:
            found.add(delivery[0])
    return found


# ---- the delivery job ---------------------------------------------------------------------------


def deliver(task_id: int, event: str, *args: int) -> None:
    """RQ job: bring the task's Slack thread up to date for one reported event.

    Raises (so RQ retries later) when Slack is unreachable, rate-limits for long, or another
    delivery is still posting the parent message.
    """
    context = running_context()
    Delivery(context, web_client(context.settings), task_id).run(Event(event), args)


_clients: dict[tuple[str, str], WebClient] = {}
_clients_lock = threading.Lock()


def web_client(settings: Settings) -> WebClient:
    """This process's WebClient for the configured bot token and API URL, built on first use."""
    if not settings.slack_bot_token:
        raise ConfigError(
            "SLACK_BOT_TOKEN is not set: the worker cannot post progress to Slack "
            "(find it under OAuth & Permissions in your Slack app's settings)"
        )
    key = (settings.slack_bot_token, settings.slack_api_url)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = WebClient(
                token=settings.slack_bot_token,
                base_url=settings.slack_api_url,
                timeout=WEB_TIMEOUT,
                retry_handlers=retry_handlers(),
            )
            _clients[key] = client
        return client


def retry_handlers() -> list[RetryHandler]:
    """One short in-process retry; anything longer is the delivery job's scheduled retry.

    A worker stuck waiting on Slack is a worker not resetting passwords.
    """
    pause = FixedValueRetryIntervalCalculator(fixed_internal=INLINE_RETRY_PAUSE)
    return [
        ShortRateLimitRetryHandler(max_retry_count=1),
        ServerErrorRetryHandler(max_retry_count=1, interval_calculator=pause),
        ConnectionErrorRetryHandler(max_retry_count=1, interval_calculator=pause),
    ]


class ShortRateLimitRetryHandler(RateLimitErrorRetryHandler):
    """Slack's own 429 handler (it waits Retry-After), for waits short enough to sit out."""

    def _can_retry(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        if not super()._can_retry(state=state, request=request, response=response, error=error):
            return False
        assert response is not None
        return retry_after(response.headers) <= MAX_INLINE_RETRY_AFTER


def slack_error(error: SlackApiError) -> str:
    """Slack's error code in a refused call's answer."""
    return str(error.response.get("error", ""))


def retry_after(headers: dict[str, Any]) -> float:
    for name, value in headers.items():
        if name.lower() == "retry-after":
            raw = value[0] if isinstance(value, list) else value
            try:
                return float(raw)
            except (TypeError, ValueError):
                return float("inf")
    return 1.0


@dataclass(frozen=True)
class ThreadState:
    """A task as its Slack thread needs it: the snapshot and the thread's bookkeeping."""

    task: TaskSnapshot
    selected: int
    fallback_from: str | None
    fallback_reason: str | None
    started_posted: bool
    milestone: int
    error_posted: bool
    summary_posted: bool
    csv_posted: bool

    @property
    def channel(self) -> str | None:
        return self.task.slack_channel

    @property
    def thread_ts(self) -> str | None:
        return self.task.slack_thread_ts

    def parent(self) -> messages.SlackMessage:
        return messages.parent_message(
            self.task, selected=self.selected, fallback_from=self.fallback_from,
            fallback_reason=self.fallback_reason,
        )


@dataclass(frozen=True)
class FollowUpDestination:
    """Where a task's follow-up CSV is uploaded, and how the summary names that place."""

    channel: str
    thread_ts: str | None
    shown: str


class Delivery:
    """One delivery job's work for one task: every Slack call goes through here."""

    def __init__(self, context: JobContext, client: WebClient, task_id: int) -> None:
        self.context = context
        self.client = client
        self.task_id = task_id

    def run(self, event: Event, args: Sequence[int]) -> None:
        try:
            for _ in range(3):  # at most: channel, then its DM fallback
                try:
                    self._run_once(event, args)
                    return
                except ChannelMoved:
                    continue
            raise Undeliverable(f"task {self.task_id}: could not settle on a Slack channel")
        except SlackApiError as error:
            code = str(error.response.get("error", ""))
            if code in HOPELESS:
                # Retrying cannot help (a bad token, a message Slack refuses): say it once.
                logger.error("Slack refused a message for task %s: %s", self.task_id, code)
                return
            raise
        except Undeliverable as error:
            logger.warning("%s; the task goes on without Slack messages", error)

    def _run_once(self, event: Event, args: Sequence[int]) -> None:
        state = self.load()
        if state is None or not state.channel:
            return
        if event is not Event.FINISHED and state.summary_posted:
            return  # late: the thread has ended, and a reply now would follow its summary
        state, fresh = self.ensure_parent(state)
        if event is Event.FINISHED or (event is Event.ANNOUNCE and state.task.status.is_final):
            self.finish(state, fresh)
            return
        if not fresh and not state.task.status.is_final:
            self.update_parent(state)  # once ended, the end's own delivery renders it
        self.say_error_once(state)
        if event is Event.STARTED:
            # An approved or scheduled task's parent was posted before it began.
            self.say_started_once(state)
            return
        if event is Event.ANNOUNCE:
            return  # the parent message says it
        if event is Event.REMINDER:
            if state.task.status is TaskStatus.SCHEDULED and not state.task.held:
                self.reply(state, messages.reminder_reply(state.task, utcnow()))
        elif event is Event.REACHED:
            self.reply(state, messages.start_reached_reply(state.task, args[0]))
        elif event is Event.PROGRESS:
            self.say_milestone(state)
        elif event is Event.WAITING:
            with self.context.sessions() as session:
                blocking = snapshot(session, args[0])
            self.reply(state, messages.waiting_reply(state.task, args[0], blocking))
        elif event is Event.PAUSED:
            self.reply(state, messages.paused_reply(state.task))
        elif event is Event.RESUMED:
            self.reply(state, messages.resumed_reply(state.task))
        elif event is Event.RETRIES:
            users, attempt, delay = args[0], args[1], args[2]
            self.reply(state, messages.retries_reply(
                state.task, users, attempt, self.context.settings.max_mail_attempts, delay))

    # ---- reading and writing the task ----------------------------------------------------

    def load(self) -> ThreadState | None:
        with self.context.sessions() as session:
            task = snapshot(session, self.task_id)
            row = session.get(ResetTask, self.task_id)
            if task is None or row is None:
                return None
            return ThreadState(
                task=task,
                selected=len(row.selection or []),
                fallback_from=row.slack_fallback_from,
                fallback_reason=row.slack_fallback_reason,
                started_posted=row.slack_started_posted,
                milestone=row.slack_milestone,
                error_posted=row.slack_error_posted,
                summary_posted=row.summary_posted,
                csv_posted=row.slack_csv_posted,
            )

    def _set(self, *conditions: Any, **values: Any) -> bool:
        """Conditionally update this task; True if this delivery's update won."""
        with self.context.sessions.begin() as session:
            result = session.execute(
                update(ResetTask).where(ResetTask.id == self.task_id, *conditions).values(**values)
            )
            return cast("CursorResult[Any]", result).rowcount == 1

    def once(
        self, flag: Any, claimed: Any, released: Any, say: Callable[[], None]
    ) -> None:
        """Say something exactly once across deliveries: claim the flag, say it, or release."""
        if not self._set(flag == released, **{flag.key: claimed}):
            return
        try:
            say()
        except BaseException:
            self._set(**{flag.key: released})
            raise

    # ---- the parent message ----------------------------------------------------------------

    def ensure_parent(self, state: ThreadState) -> tuple[ThreadState, bool]:
        """Post the parent if nobody has (True: just posted, in its current form).

        Raises NotReady while another delivery is posting it: never a second parent.
        """
        if state.thread_ts:
            return state, False
        now = utcnow()
        claimed = self._set(
            ResetTask.slack_thread_ts.is_(None),
            ResetTask.slack_channel == state.channel,
            or_(ResetTask.slack_parent_claimed_at.is_(None),
                ResetTask.slack_parent_claimed_at < now - PARENT_CLAIM_TTL),
            slack_parent_claimed_at=now,
        )
        if not claimed:
            raise NotReady(f"task {self.task_id}: the parent message is being posted")
        try:
            posted = self.post(state, state.parent(), in_thread=False)
        except BaseException:
            self._set(slack_parent_claimed_at=None)
            raise
        self._set(slack_thread_ts=posted["ts"], slack_channel=posted["channel"])
        state = self.load() or state
        self.say_started_once(state)
        return state, True

    def say_started_once(self, state: ThreadState) -> None:
        """The "Started" reply, once, and only for a task that has started: not one awaiting
        approval or its start time (its parent comes first), nor one that ended before it
        started (rejected, expired, cancelled while scheduled or waiting)."""
        if state.started_posted or state.summary_posted or state.task.status in NEVER_STARTED:
            return
        if state.task.status.is_final and state.task.started_at is None:
            return
        self.once(ResetTask.slack_started_posted, True, False,
                  lambda: self.reply(state, messages.started_reply(state.task)))

    def update_parent(self, state: ThreadState) -> None:
        ts = state.thread_ts
        assert ts is not None, "update_parent runs after ensure_parent"
        self.call_in_channel(state, lambda channel: self.client.chat_update(
            channel=channel, ts=ts, **state.parent().as_kwargs()))

    # ---- replies -----------------------------------------------------------------------

    def reply(self, state: ThreadState, message: messages.SlackMessage) -> None:
        self.post(state, message, in_thread=True)

    def post(self, state: ThreadState, message: messages.SlackMessage, *, in_thread: bool) -> Any:
        thread_ts = state.thread_ts if in_thread else None
        return self.call_in_channel(state, lambda channel: self.client.chat_postMessage(
            channel=channel, thread_ts=thread_ts, unfurl_links=False, unfurl_media=False,
            **message.as_kwargs()))

    def say_milestone(self, state: ThreadState) -> None:
        """A reply at each quarter reached; late or repeated deliveries say each one once."""
        task = state.task
        quarter = int(task.fraction * 4) if task.planned and task.total else 0
        if not 1 <= quarter <= 3 or quarter <= state.milestone:
            return
        if self._set(ResetTask.slack_milestone < quarter, slack_milestone=quarter):
            try:
                self.reply(state, messages.milestone_reply(task, quarter))
            except BaseException:
                self._set(ResetTask.slack_milestone == quarter, slack_milestone=state.milestone)
                raise

    def say_error_once(self, state: ThreadState) -> None:
        if state.task.error and not state.error_posted:
            self.once(ResetTask.slack_error_posted, True, False,
                      lambda: self.reply(state, messages.task_error_reply(state.task)))

    # ---- the end ----------------------------------------------------------------------------

    def finish(self, state: ThreadState, fresh: bool) -> None:
        if not state.task.status.is_final:
            # Reported before the end was committed: show what is true, try again later.
            if not fresh:
                self.update_parent(state)
            raise NotReady(f"task {self.task_id} has not ended yet")
        if not fresh:
            self.update_parent(state)
        self.say_error_once(state)
        to_upload = bool(state.task.follow_up_count) and not state.csv_posted
        destination: FollowUpDestination | None = None
        delayed: SlackApiError | None = None
        refused: str | None = None
        if to_upload:
            # Where the list goes is worked out first, for the summary to say where; that
            # asking Slack fails never keeps the summary from the thread.
            try:
                destination = self.follow_up_destination(state)
            except SlackApiError as error:
                code = slack_error(error)
                if code in PRIVATE_LIST_REFUSED:
                    refused = code
                else:
                    delayed = error  # said after the summary: the delivery tries again later
        if not state.summary_posted:
            where: str | None
            if refused is not None:
                where = messages.NOT_DELIVERED
            elif delayed is not None:
                where = messages.ON_ITS_WAY
            else:
                where = destination.shown if destination else None
            self.once(ResetTask.summary_posted, True, False,
                      lambda: self.reply(state, messages.summary_reply(state.task, where)))
        if delayed is not None:
            raise delayed
        if destination is not None:
            try:
                self.once(ResetTask.slack_csv_posted, True, False,
                          lambda: self.upload_csv(state, destination))
            except SlackApiError as error:
                if slack_error(error) not in PRIVATE_LIST_REFUSED:
                    raise
                refused = slack_error(error)
        if refused is not None:
            self.say_list_refused_once(state, refused)
        elif not state.csv_posted and destination is None:
            self._set(slack_csv_posted=True)  # nothing to upload: the end is fully told

    def say_list_refused_once(self, state: ThreadState, code: str) -> None:
        """The list could not go anywhere private: the thread says so (never its content),
        once, and the task keeps it for `resetbot tasks show ID --csv`."""
        logger.error("task %s: the list of users to contact by hand could not be sent in "
                     "Slack (%s); resetbot tasks show %s --csv has it", self.task_id, code,
                     self.task_id)
        self.once(ResetTask.slack_csv_posted, True, False,
                  lambda: self.reply(state, messages.list_not_delivered_reply(state.task, code)))

    def follow_up_destination(self, state: ThreadState) -> FollowUpDestination | None:
        """Where the list of users to contact by hand may go: never a channel everyone reads.

        A thread already in a DM keeps it; else the private RESET_REPORT_CHANNEL, else a DM
        with the requester. None when there is nobody to send it to (the CLI lists it).
        """
        assert state.channel is not None
        if state.fallback_from is not None or state.channel.startswith("D"):
            return FollowUpDestination(state.channel, state.thread_ts, messages.BELOW)
        report = self.context.settings.reset_report_channel
        if report is not None and self._is_private(report):
            return FollowUpDestination(report, None, messages.in_channel(report))
        requester = state.task.requester
        if not _SLACK_USER.match(requester):
            return None
        opened = self.client.conversations_open(users=requester)
        return FollowUpDestination(str(opened["channel"]["id"]), None,
                                   messages.in_direct_message(requester))

    def _is_private(self, channel: str) -> bool:
        try:
            info = self.client.conversations_info(channel=channel)["channel"]
        except SlackApiError as error:
            # Without `groups:read` on it (or with a public channel) Slack says no: not private.
            logger.error("RESET_REPORT_CHANNEL %s cannot be checked (%s): lists go to their "
                         "requesters instead", channel, error.response.get("error"))
            return False
        if info.get("is_private") or info.get("is_im"):
            return True
        logger.error("RESET_REPORT_CHANNEL %s is public: lists of users to contact go to their "
                     "requesters instead", channel)
        return False

    def upload_csv(self, state: ThreadState, destination: FollowUpDestination) -> None:
        content = messages.follow_up_csv(self.follow_ups())
        self.client.files_upload_v2(
            channel=destination.channel,
            thread_ts=destination.thread_ts,
            filename=messages.follow_up_filename(self.task_id),
            title=messages.follow_up_title(state.task),
            initial_comment=messages.follow_up_comment(state.task),
            content=content,
        )

    def follow_ups(self) -> Iterator[messages.FollowUp]:
        """The users to contact by hand, streamed: a big task's list is never all in memory."""
        query = (
            select(ResetItem.username, ResetItem.full_name, ResetItem.email, ResetItem.state,
                   ResetItem.attempts, ResetItem.last_error)
            .where(ResetItem.task_id == self.task_id,
                   ResetItem.state.in_([s.value for s in FOLLOW_UP_STATES]))
            .order_by(ResetItem.username)
            .execution_options(yield_per=1000)
        )
        with self.context.sessions() as session:
            for row in session.execute(query):
                yield messages.FollowUp(
                    username=row.username, full_name=row.full_name, email=row.email,
                    outcome=ItemState(row.state), attempts=row.attempts,
                    last_error=row.last_error,
                )

    # ---- where messages go ----------------------------------------------------------------

    def call_in_channel(self, state: ThreadState, call: Callable[[str], Any]) -> Any:
        """Run a Slack call in the task's channel; if the bot cannot post there, move to a DM."""
        assert state.channel is not None
        try:
            return call(state.channel)
        except SlackApiError as error:
            code = str(error.response.get("error", ""))
            if code not in CHANNEL_UNREACHABLE:
                raise
            self.move_to_dm(state, code)
            raise ChannelMoved(code) from None

    def move_to_dm(self, state: ThreadState, reason: str) -> None:
        """From now on this task reports in a DM with its requester, saying why."""
        requester = state.task.requester
        if state.fallback_from is not None or not _SLACK_USER.match(requester):
            self._set(ResetTask.slack_channel == state.channel, slack_channel=None)
            raise Undeliverable(
                f"task {self.task_id}: cannot post in {state.channel} ({reason}) and no DM "
                "to fall back on"
            )
        try:
            opened = self.client.conversations_open(users=requester)
        except SlackApiError as error:
            code = str(error.response.get("error", ""))
            if code in ("user_not_found", "cannot_dm_bot", "user_disabled"):
                self._set(ResetTask.slack_channel == state.channel, slack_channel=None)
                raise Undeliverable(
                    f"task {self.task_id}: cannot post in {state.channel} ({reason}) nor DM "
                    f"its requester ({code})"
                ) from None
            raise
        dm = str(opened["channel"]["id"])
        self._set(
            ResetTask.slack_channel == state.channel,
            slack_channel=dm,
            slack_fallback_from=state.channel,
            slack_fallback_reason=reason,
            slack_thread_ts=None,
            slack_parent_claimed_at=None,
        )
        logger.info("task %s: cannot post in %s (%s); reporting to its requester in a DM",
                    self.task_id, state.channel, reason)

