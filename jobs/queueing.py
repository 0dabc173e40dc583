"""The queue and how work is put on it: JSON arguments only, ids that say which task they serve.

Every job id is made and read here. A reset job's id carries its task id
(`<queue>__t<task>__<kind>__<random>`), so the reaper can tell from Redis alone whether a task
still has work queued, running or scheduled; a Slack delivery's id
(`<queue>__slack-<task>-<event>__<random>`) has another form, so the reaper counts only reset
work, and the Slack reporter can find a task's end delivery.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from datetime import timedelta

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue
from rq.serializers import JSONSerializer

from core.errors import QueueUnavailable
from core.settings import Settings

# A chunk may hash slowly (bcrypt) and wait on a slow mail server; leases, not job timeouts,
# are what recover a dead worker's work, so the timeout only stops a truly hung job.
JOB_TIMEOUT = 3600
#: How long a failed job (reset work or a Slack delivery) stays in RQ's failed registry.
FAILURE_TTL = 7 * 24 * 3600
#: Queued jobs name their function by these paths: they stay importable (see jobs/engine.py).
PLAN = "jobs.engine.plan_task"
RUN_CHUNK = "jobs.engine.run_chunk"
RETRY_MAILS = "jobs.engine.retry_mails"
_KINDS = {PLAN: "plan", RUN_CHUNK: "chunk", RETRY_MAILS: "retry"}
_TASK_IN_JOB_ID = re.compile(r"__t(\d+)__([a-z]+)__")
_DELIVERY_IN_JOB_ID = re.compile(r"__slack-(\d+)-([a-z]+)__")


def make_queue(settings: Settings, redis: Redis) -> Queue:
    return Queue(
        settings.reset_queue,
        connection=redis,
        serializer=JSONSerializer,
        default_timeout=JOB_TIMEOUT,
    )


def job_id(queue: Queue, function: str, task_id: int) -> str:
    return f"{_prefix(queue)}__t{task_id}__{_KINDS[function]}__{_unique()}"


def task_of_job(job_id_or_entry: str) -> tuple[int, str] | None:
    """(task id, kind) for one of our job ids (or a registry entry that contains one)."""
    found = _TASK_IN_JOB_ID.search(job_id_or_entry)
    return (int(found.group(1)), found.group(2)) if found else None


def delivery_job_id(queue: Queue, task_id: int, event: str) -> str:
    """The id of a Slack delivery telling `event` of a task."""
    return f"{_prefix(queue)}__slack-{task_id}-{event}__{_unique()}"


def delivery_of_job(job_id_or_entry: str) -> tuple[int, str] | None:
    """(task id, event) for a Slack delivery's job id (or a registry entry that contains one)."""
    found = _DELIVERY_IN_JOB_ID.search(job_id_or_entry)
    return (int(found.group(1)), found.group(2)) if found else None


def job_ids_in_redis(redis: Redis, queue: Queue) -> list[str]:
    """The ids of every job queued, running or scheduled on the queue (registry entries).

    Read in one MULTI so a job moving between the queue and a registry is seen exactly once.
    """
    pipe = redis.pipeline(transaction=True)
    pipe.lrange(queue.key, 0, -1)
    pipe.lrange(queue.intermediate_queue_key, 0, -1)
    pipe.zrange(queue.started_job_registry.key, 0, -1)
    pipe.zrange(queue.scheduled_job_registry.key, 0, -1)
    return [
        entry.decode() if isinstance(entry, bytes) else str(entry)
        for entries in pipe.execute()
        for entry in entries
    ]


def _prefix(queue: Queue) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", queue.name)


def _unique() -> str:
    return uuid.uuid4().hex[:12]


def _enqueue(queue: Queue, function: str, task_id: int, *args: object, delay: float = 0) -> None:
    options: dict[str, object] = {
        "job_id": job_id(queue, function, task_id),
        "result_ttl": 0,  # jobs return nothing; the database holds every outcome
        "failure_ttl": FAILURE_TTL,
    }
    try:
        if delay > 0:
            queue.enqueue_in(timedelta(seconds=delay), function, task_id, *args, **options)
        else:
            queue.enqueue(function, task_id, *args, **options)
    except RedisError as error:
        # Callers hear of the queue, not of Redis: what they committed waits in the database.
        raise QueueUnavailable(f"Redis cannot be reached: {_first_line(error)}") from error


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def enqueue_task(queue: Queue, task_id: int) -> None:
    """Start (or resume) a task: its planning job reads everything else from the database."""
    _enqueue(queue, PLAN, task_id)


def enqueue_chunk(queue: Queue, task_id: int, chunk: int) -> None:
    _enqueue(queue, RUN_CHUNK, task_id, chunk)


def enqueue_retry(
    queue: Queue, task_id: int, item_ids: Sequence[int], delay_seconds: float
) -> None:
    """One job per chunk and round, carrying only item ids: the mail is rebuilt from the DB."""
    _enqueue(queue, RETRY_MAILS, task_id, list(item_ids), delay=delay_seconds)
