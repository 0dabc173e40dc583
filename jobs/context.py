"""Everything a job needs, built once per worker process and handed to each job.

Jobs take only JSON-serialisable ids as arguments; the worker sets the current context around
every job, so the engine, the password hasher and the SMTP settings stay warm between jobs.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import socket
import uuid
from dataclasses import dataclass, field

from redis import Redis
from rq import Queue
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from core.db import make_engine, make_sessionmaker
from core.directory.factory import open_directory
from core.directory.protocol import Directory
from core.directory.sql import SqlDirectory
from core.passwords import PasswordHasher
from core.settings import Settings
from jobs.mail_templates import MailTemplates
from jobs.mailer import SmtpFactory, connect_smtp
from jobs.queueing import make_queue
from jobs.reporting import NullReporter, Reporter
from jobs.running import running_context
from jobs.running import use_context as use_context  # where the worker and tests import it


def _lease_owner() -> str:
    """Who holds a lease: readable in the database, unique per worker process."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass
class ProgressPace:
    """When this worker last checked a task's progress, how long until its next clock-driven
    check, and how many users it settled since: kept across its jobs (a job is one chunk of
    100 users, a fraction of a second), so that the checks of a big task's COUNT, which walks
    all its settled items, stay a small share of the worker's time (see jobs.progress)."""

    checked_at: float
    every: float
    unchecked: int = 0
    cost: float = 0.0  # how long the last check took


@dataclass
class WorkerContext:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    directory: Directory
    hasher: PasswordHasher
    redis: Redis
    queue: Queue
    reporter: Reporter
    #: The password mail's words, read and checked once per worker (at its start).
    templates: MailTemplates
    #: Opens an authenticated SMTP connection; the seam for another transport.
    smtp_factory: SmtpFactory = connect_smtp
    #: Written into `ResetItem.leased_by` for the items this process claims.
    owner: str = field(default_factory=_lease_owner)
    owns_engine: bool = False
    #: This worker's progress checks per task, kept across its jobs (see jobs.progress).
    progress_paces: dict[int, ProgressPace] = field(default_factory=dict)
    #: Seconds this worker took to hash, and to settle, one user of its last batch: they size
    #: its claims, kept across its jobs (see jobs.chunks.batch_size); 0 until measured.
    hash_seconds_per_user: float = 0.0
    settle_seconds_per_user: float = 0.0

    @classmethod
    def build(
        cls,
        settings: Settings,
        redis: Redis,
        *,
        reporter: Reporter | None = None,
        engine: Engine | None = None,
        smtp_factory: SmtpFactory | None = None,
        hasher: PasswordHasher | None = None,
    ) -> WorkerContext:
        owns_engine = engine is None
        engine = engine if engine is not None else make_engine(settings.database_url)
        try:
            directory = open_directory(settings, engine)
        except BaseException:
            if owns_engine:
                engine.dispose()
            raise
        context = cls(
            settings=settings,
            engine=engine,
            sessions=make_sessionmaker(engine),
            directory=directory,
            # The hash the directory's system reads (Koha: bcrypt $2a$), unless a test gives one;
            # a directory that hashes for itself (LDAP) is handed passwords, never hashes.
            hasher=hasher if hasher is not None else _hasher_of(directory, settings),
            redis=redis,
            queue=make_queue(settings, redis),
            reporter=NullReporter(),
            templates=MailTemplates.load(settings),
            smtp_factory=smtp_factory if smtp_factory is not None else connect_smtp,
            owns_engine=owns_engine,
        )
        context.reporter = reporter if reporter is not None else _default_reporter(context)
        return context

    def close(self) -> None:
        self.directory.dispose()
        if self.owns_engine:
            self.engine.dispose()


def _hasher_of(directory: Directory, settings: Settings) -> PasswordHasher:
    if isinstance(directory, SqlDirectory):
        return directory.hasher
    return PasswordHasher.from_settings(settings)


def _default_reporter(context: WorkerContext) -> Reporter:
    """The Slack thread when a bot token is configured, else nothing."""
    if not context.settings.slack_bot_token:
        return NullReporter()
    if importlib.util.find_spec("jobs.slack_reporter") is None:
        return NullReporter()
    # Imported only here: D's module needs slack_sdk, which a worker without Slack never loads.
    slack_reporter = importlib.import_module("jobs.slack_reporter")
    reporter: Reporter = slack_reporter.SlackReporter(context)
    return reporter


def current_context() -> WorkerContext:
    """The context of the job running now; set by the worker (or `use_context` in tests)."""
    context = running_context()
    if not isinstance(context, WorkerContext):
        raise RuntimeError(f"the running context is a {type(context).__name__}, "
                           "not a WorkerContext")
    return context
