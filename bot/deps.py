"""What every listener needs, built once per app: no module-level state anywhere in `bot/`.

One global middleware (`provide`) puts the app's `AppDeps` into each request's Bolt context;
a listener takes `context` and reads them with `deps_of(context)`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import Any, ParamSpec

from slack_bolt import BoltContext
from sqlalchemy.orm import Session, sessionmaker

from bot.auth import Admins, Approvers, Refusal
from core import audit
from core.directory.protocol import CountsElsewhere, Directory
from core.search_copy import SearchCopy
from core.settings import Settings

log = logging.getLogger("resetbot.slack")

NOT_AN_ADMIN = "not an admin"
#: Where `provide` puts the AppDeps in Bolt's per-request context.
CONTEXT_KEY = "resetbot_deps"
P = ParamSpec("P")


@dataclass(frozen=True)
class AppDeps:
    settings: Settings
    sessions: sessionmaker[Session]
    directory: Directory
    admins: Admins
    #: Puts a committed task on the job queue (jobs.queueing.enqueue_task bound to the queue).
    enqueue: Callable[[int], None]
    #: Runs what follows an ack (Web API calls), so the ack itself leaves at once.
    background: Executor
    #: Who may approve a reset awaiting approval (None: any admin).
    approvers: Approvers | None = None
    #: Has a worker post or update the parent message of a task that has not started (it
    #: awaits approval or its start time, or was just decided or cancelled):
    #: jobs.slack_reporter.announce bound to the queue. A lost one is posted by the reaper.
    announce: Callable[[int], None] = field(default=lambda task_id: None)
    #: The picker's in-memory copy of a directory resetbot does not own (None: it searches
    #: the directory table itself).
    search_copy: SearchCopy | None = None
    #: Where a preview is counted when it can be (the search copy of a SQL table), else by
    #: the directory itself.
    counts: CountsElsewhere | None = None

    def freshen_search(self) -> None:
        """The picker's form is opening: have an old search copy read again in the
        background, so the first keystrokes already search fresh data. Never waits."""
        if self.search_copy is not None:
            self.search_copy.refresh_if_stale()

    def approval_refusal(self, user: str) -> Refusal | None:
        """Why `user` may not approve or reject other admins' resets (None: they may)."""
        return (self.approvers or self.admins).refusal(user)

    def later(self, work: Callable[P, object], *args: P.args, **kwargs: P.kwargs) -> None:
        """Run `work` after the ack, in the background; a failure is logged, not lost."""
        self.background.submit(work, *args, **kwargs).add_done_callback(_log_failure)

    def refuse(self, actor: str | None, step: str, reason: str = NOT_AN_ADMIN,
               **detail: Any) -> None:
        """Record a refusal in the audit trail (its own transaction) and the log."""
        who = actor or "unknown"
        with self.sessions() as session:
            audit.record(session, who, "refused", step=step, reason=reason, **detail)
            session.commit()
        log.warning("refused %s for %s: %s", step, who, reason)


def provide(deps: AppDeps) -> Callable[[BoltContext, Callable[[], None]], None]:
    """A global Bolt middleware that hands `deps` to every listener through its context."""

    def put_deps_in_context(context: BoltContext, next: Callable[[], None]) -> None:
        context[CONTEXT_KEY] = deps
        next()

    return put_deps_in_context


def deps_of(context: BoltContext) -> AppDeps:
    """The AppDeps `provide` put into this request's context."""
    deps = context.get(CONTEXT_KEY)
    if not isinstance(deps, AppDeps):
        raise LookupError("no AppDeps in the Bolt context: build the app with bot.app.create_app")
    return deps


def _log_failure(done: Future[object]) -> None:
    error = done.exception()
    if error is not None:
        log.error("work after an ack failed", exc_info=error)
