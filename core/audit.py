"""The audit trail: who did what, when, with counts; never a password."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.models import AuditEntry


def record(
    session: Session,
    actor: str,
    action: str,
    task_id: int | None = None,
    **detail: Any,
) -> AuditEntry:
    """Add an audit entry to the session; the caller's commit makes it durable with the change."""
    entry = AuditEntry(actor=actor, action=action, task_id=task_id, detail=detail)
    session.add(entry)
    return entry


def entries(session: Session, since: datetime | None = None) -> list[AuditEntry]:
    query = select(AuditEntry).order_by(AuditEntry.at, AuditEntry.id)
    if since is not None:
        query = query.where(AuditEntry.at >= since)
    return list(session.scalars(query))
