"""What every listener needs, built once per app: no module-level state anywhere in `bot/`."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from bot.auth import Admins
from core import audit
from core.directory import Directory
from core.settings import Settings

log = logging.getLogger("resetbot.slack")

NOT_AN_ADMIN = "not an admin"


@dataclass(frozen=True)
class AppDeps:
    settings: Settings
    sessions: sessionmaker[Session]
    directory: Directory
    admins: Admins
    #: Puts a committed task on the job queue (jobs.queueing.enqueue_task bound to the queue).
    enqueue: Callable[[int], None]

    def refuse(self, actor: str | None, step: str, reason: str = NOT_AN_ADMIN,
               **detail: Any) -> None:
        """Record a refusal in the audit trail (its own transaction) and the log."""
        who = actor or "unknown"
        with self.sessions() as session:
            audit.record(session, who, "refused", step=step, reason=reason, **detail)
            session.commit()
        log.warning("refused %s for %s: %s", step, who, reason)
