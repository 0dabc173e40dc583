"""An address holding a control character is no usable address (core.addresses) and nothing is
mailed: not to the address as it is, nor to what it would be with the control characters taken
out. The addresses
here hold no space, so the refusal cannot come from a whitespace check alone.
"""

from __future__ import annotations

from typing import Any

import pytest
from redis import Redis
from sqlalchemy import Engine, update
from sqlalchemy.orm import Session, sessionmaker

from core.directory import Directory
from core.models import ItemState, Scope, TaskStatus
from core.settings import Settings
from tests.support.engine import build_context, items_by_user, run_until_final, submit
from tests.support.smtp import SmtpServer
from tests.support.smtp import smtp_server as smtp_server

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@sqlite_only
@pytest.mark.parametrize("address", [
    "ali\r\nce@example.org",  # CR LF
    "ali\rce@example.org",
    "ali\nce@example.org",
    "ali\x00ce@example.org",  # NUL: not whitespace
    "ali\x1bce@example.org",  # ESC: not whitespace
    "ali\x7fce@example.org",  # DEL: not whitespace
    "ali\u202ece@example.org",  # RIGHT-TO-LEFT OVERRIDE: not whitespace, not a C0 control
    "alice@example.org\r\n",  # a trailing line break
])
def test_an_address_with_a_control_character_is_no_address_and_nothing_is_sent(
    settings: Settings, redis_conn: Redis, engine: Engine, sessions: sessionmaker[Session],
    directory: Directory, sample_users: list[Any], smtp_server: SmtpServer, address: str,
) -> None:
    assert " " not in address
    with engine.begin() as connection:
        connection.execute(update(directory.table).where(directory.table.c.id == 1)
                           .values(email=address))
    context = build_context(smtp_server.settings(settings), redis_conn, engine)
    task_id = submit(context, Scope.SELECTED_ONLY, (1, 7))

    final = run_until_final(context, task_id)

    # Not an address resetbot can mail (core.addresses): no e-mail, as a blank would be. The
    # user is reset and left to staff, and the mail server never sees the value.
    assert final.status == TaskStatus.COMPLETED
    refused = items_by_user(sessions, task_id)[1]
    assert refused.state == ItemState.NO_EMAIL and refused.email is None
    assert refused.attempts == 0 and refused.next_attempt_at is None  # never tried: no retry
    # Only grace's mail went out: nothing to alice, with or without the control characters.
    assert [mail.to for mail in smtp_server.messages] == ["grace@example.org"]
    assert smtp_server.to("alice@example.org") == []
