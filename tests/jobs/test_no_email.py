"""Users without an e-mail address in an e-mailed reset: reset, left alone, or handed a password."""

from __future__ import annotations

import pytest
from redis import Redis
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from core.directory import Directory
from core.directory.sql import SqlDirectory
from core.models import ItemState, NoEmailChoice, ResetTask, Scope, TaskStatus
from core.passwords import PasswordHasher
from core.settings import Settings
from core.tasks import RequestInvalid, ResetRequest, create_task, validate_request
from jobs.queueing import enqueue_task
from tests.support.engine import build_context, items_by_user, run_until_final, user_rows
from tests.support.smtp import SmtpServer
from tests.support.smtp import smtp_server as smtp_server

# Claims, locks and DDL differ between databases: these run on MariaDB too.
pytestmark = pytest.mark.every_database

HANDOUT = "Front-Desk-Lantern-42"
NO_ADDRESS = {4, 6}  # dave (NULL) and frank (empty)
WITH_ADDRESS = {1: "alice@example.org", 2: "bob@example.org", 3: "carol@example.org",
                5: "erin@example.org", 7: "grace@example.org"}


def reset_all(
    settings: Settings, redis: Redis, engine: Engine, choice: NoEmailChoice,
    handout: str | None = None, *, require_change: bool = False,
) -> tuple[int, TaskStatus]:
    context = build_context(settings, redis, engine)
    with context.sessions.begin() as session:
        task_id = create_task(session, settings, ResetRequest(
            requester="cli:tester", scope=Scope.ALL, require_change=require_change,
            no_email=choice, no_email_password=handout,
        )).id
    enqueue_task(context.queue, task_id)
    final = run_until_final(context, task_id)
    context.close()
    return task_id, final.status


@pytest.mark.parametrize("choice", list(NoEmailChoice))
def test_each_choice_does_what_it_says_and_everyone_with_an_address_is_mailed(
    settings: Settings, redis_conn: Redis, engine: Engine, sessions: sessionmaker[Session],
    directory: Directory, sample_users: list[object], smtp_server: SmtpServer,
    choice: NoEmailChoice,
) -> None:
    configured = smtp_server.settings(settings)
    handout = HANDOUT if choice is NoEmailChoice.SET else None

    task_id, status = reset_all(configured, redis_conn, engine, choice, handout)

    assert status is TaskStatus.COMPLETED
    hasher = PasswordHasher.from_settings(configured)
    rows, items = user_rows(sessions, directory), items_by_user(sessions, task_id)
    for user_id, address in WITH_ADDRESS.items():
        [mail] = smtp_server.to(address)
        assert hasher.verify(mail.password, rows[user_id].password_hash or "")
        assert items[user_id].state == ItemState.NOTIFIED
        assert rows[user_id].must_change_password is False  # as the task asked
    expected = {NoEmailChoice.RESET: ItemState.NO_EMAIL, NoEmailChoice.SKIP: ItemState.SKIPPED,
                NoEmailChoice.SET: ItemState.HANDED_OUT}[choice]
    for user_id in NO_ADDRESS:
        assert items[user_id].state == expected
        stored = rows[user_id].password_hash or ""
        if choice is NoEmailChoice.SKIP:
            assert stored == "old-hash"
        elif choice is NoEmailChoice.SET:
            assert hasher.verify(HANDOUT, stored)
            assert rows[user_id].must_change_password is True  # whatever the task said
        else:
            assert stored != "old-hash" and not hasher.verify(HANDOUT, stored)
    with sessions() as session:
        task = session.get(ResetTask, task_id)
        assert task is not None and task.no_email_password_sealed is None  # erased at the end
    assert len(smtp_server.messages) == len(WITH_ADDRESS)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    ("choice", "handout", "default", "said"),
    [
        (NoEmailChoice.SET, None, None, "Type the password to give the users without an e-mail"),
        (NoEmailChoice.SET, "short", None, "It must be at least 12 characters long."),
        (NoEmailChoice.RESET, HANDOUT, None, "This password is only for"),
        # `set` is chosen already: the message names the default password, not "choose that".
        (NoEmailChoice.SET, HANDOUT, "Quiet-Harbour-Lantern-42",
         "With a default password nobody is e-mailed, so everyone gets that one: clear this "
         "password, or clear the default password."),
    ],
)
def test_a_choice_that_cannot_work_is_refused_on_its_field(
    settings: Settings, sessions: sessionmaker[Session], directory: Directory,
    sample_users: list[object], choice: NoEmailChoice, handout: str | None,
    default: str | None, said: str,
) -> None:
    request = ResetRequest(requester="cli:tester", scope=Scope.ALL, no_email=choice,
                           no_email_password=handout, default_password=default)

    with pytest.raises(RequestInvalid) as refused:
        validate_request(settings, SqlDirectory(directory), request)

    assert list(refused.value.problems) == ["no_email_password"]
    assert any(said in reason for reason in refused.value.problems["no_email_password"])
