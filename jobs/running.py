"""The context of the job running now: set by the worker around each job, read by the job.

It lives apart from `jobs.context` (which builds the context, with the Slack reporter when a bot
token is configured) so that a job module the context builds on, such as `jobs.slack_reporter`,
reads the running context without importing `jobs.context` back: no import circle.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol, TypeVar

from redis import Redis
from rq import Queue
from sqlalchemy.orm import Session, sessionmaker

from core.directory.protocol import Directory
from core.settings import Settings
from jobs.reporting import Reporter


class JobContext(Protocol):
    """What every job finds in its context (`jobs.context.WorkerContext` is the one there is)."""

    settings: Settings
    sessions: sessionmaker[Session]
    redis: Redis
    queue: Queue
    reporter: Reporter
    #: The library's users (the thread offers Undo only where they can be put back).
    directory: Directory


ContextT = TypeVar("ContextT", bound=JobContext)

_current: contextvars.ContextVar[JobContext] = contextvars.ContextVar("resetbot_worker_context")


def running_context() -> JobContext:
    """The context of the job running now; set by the worker (or `use_context` in tests)."""
    try:
        return _current.get()
    except LookupError:
        raise RuntimeError(
            "no resetbot WorkerContext is set: run jobs in a ResetWorker or inside use_context()"
        ) from None


@contextmanager
def use_context(context: ContextT) -> Iterator[ContextT]:
    token = _current.set(context)
    try:
        yield context
    finally:
        _current.reset(token)
