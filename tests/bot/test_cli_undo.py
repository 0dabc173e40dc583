"""Undo from the terminal: `resetbot tasks undo ID`, on SQLite, PostgreSQL and MariaDB.

Run in-process (`bot.cli.main`) with real burst workers, Redis and SMTP: each user who kept the
task's password signs in with their previous one again, a user who changed it is left alone,
the mailed ones are told, a second Undo is refused, and nothing stays sealed afterwards.
"""

from __future__ import annotations

import io
from dataclasses import replace
from typing import Any

import pytest
from redis import Redis
from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from bot.terminal import login_name
from core.directory import Directory
from core.models import ItemState, ResetItem, TaskStatus, UndoSnapshot
from core.passwords import PasswordHasher
from core.settings import Settings
from tests.bot.test_cli_approval import plan_jobs
from tests.bot.test_cli_tasks import audit_entries, tasks, work
from tests.support.cli import FakeTerminal
from tests.support.cli import cli_settings as cli_settings
from tests.support.cli import run as run
from tests.support.engine import build_context
from tests.support.engine import work as engine_work
from tests.support.smtp import SmtpServer
from tests.support.smtp import smtp_server as smtp_server

pytestmark = pytest.mark.every_database


def old_password(username: str) -> str:
    return f"Before-{username}-7q!"


@pytest.fixture
def known_passwords(
    sample_users: Any, sessions: sessionmaker[Session], directory: Directory,
    cli_settings: Settings,
) -> PasswordHasher:
    """Every sample user signs in with `old_password(username)` before any reset."""
    hasher = PasswordHasher.from_settings(cli_settings)
    table = directory.table
    with sessions() as session:
        for user_id, username, *_ in sample_users:
            session.execute(update(table).where(table.c.id == user_id).values(
                password_hash=hasher.hash(old_password(username)), must_change_password=False,
            ))
        session.commit()
    return hasher


def hashes(sessions: sessionmaker[Session], directory: Directory) -> dict[str, tuple[str, bool]]:
    c = directory.table.c
    with sessions() as session:
        return {row[0]: (row[1], bool(row[2])) for row in session.execute(
            select(c.username, c.password_hash, c.must_change_password))}


def snapshots(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.count()).select_from(UndoSnapshot)) or 0)


def test_undo_puts_back_the_previous_passwords_of_those_who_kept_the_new_one(
    run: Any, sessions: sessionmaker[Session], directory: Directory, redis_conn: Redis,
    smtp_server: SmtpServer, known_passwords: PasswordHasher,
) -> None:
    hasher = known_passwords
    before = hashes(sessions, directory)
    assert run("reset", "--scope", "all", "--yes", "--detach").code == 0
    work(run)
    [reset] = tasks(sessions)
    assert reset.status == TaskStatus.COMPLETED
    assert snapshots(sessions) == 7, "one sealed snapshot per user written"
    with sessions() as session:
        sealed = session.scalars(select(UndoSnapshot.previous_sealed)).all()
    assert all("old-hash" not in value and "$" not in value for value in sealed)
    # bob changes his password after the reset: the Undo must leave him alone.
    table = directory.table
    with sessions() as session:
        session.execute(update(table).where(table.c.username == "bob")
                        .values(password_hash=hasher.hash("Bob-chose-this-1")))
        session.commit()
    mailed_before = len(smtp_server.messages)

    asked = run("tasks", "undo", "1", "--detach", stdin=FakeTerminal("no\n"))
    assert asked.code != 0 and len(tasks(sessions)) == 1, "no 'yes', no Undo"
    assert "6 users still have the password it set" in asked.out
    assert "1 user changed their password since: left alone" in asked.out
    assert "of them 4 were e-mailed" in asked.out  # alice, carol, erin, grace (not bob)

    undone = run("tasks", "undo", "1", "--detach", stdin=FakeTerminal("yes\n"))
    assert undone.code == 0, undone.err
    assert "Task #2 queued: it undoes task #1." in undone.out
    work(run)

    original, undo = tasks(sessions)
    assert (undo.undo_of, original.undone_by, undo.status) == (1, 2, TaskStatus.COMPLETED)
    with sessions() as session:
        states = dict(session.execute(
            select(ResetItem.username, ResetItem.state).where(ResetItem.task_id == 2)).all())
    assert states.pop("bob") == ItemState.CHANGED_SINCE
    assert set(states.values()) == {ItemState.RESTORED}
    after = hashes(sessions, directory)
    for username, (stored, must_change) in after.items():
        if username == "bob":
            assert hasher.verify("Bob-chose-this-1", stored)
            continue
        assert hasher.verify(old_password(username), stored), username
        assert (stored, must_change) == before[username]
    told = smtp_server.messages[mailed_before:]
    assert sorted(mail.to for mail in told) == [
        "alice@example.org", "carol@example.org", "erin@example.org", "grace@example.org"]
    assert all("previous password works again" in mail.text for mail in told)
    assert all("Before-" not in mail.text for mail in told)
    shown = run("tasks", "show", "2").out
    assert "Undo of task #1: previous passwords put back where unchanged" in shown
    assert "undone: previous password back" in shown and "changed since: left alone" in shown
    [entry] = audit_entries(sessions, "undo")
    assert (entry.actor, entry.task_id, entry.detail["undo_of"]) == (
        f"cli:{login_name()}", 2, 1)
    assert (entry.detail["unchanged"], entry.detail["changed"]) == (6, 1)

    again = run("tasks", "undo", "1", "--yes")
    assert again.code == 1 and "already undone by task #2" in again.err
    assert len(tasks(sessions)) == 2
    assert [e.detail["step"] for e in audit_entries(sessions, "refused")] == ["undo"]
    # The Undo has ended: the next reaper pass (a burst worker runs one first) erases it all.
    work(run)
    assert snapshots(sessions) == 0


def test_undo_after_a_cancel_puts_back_only_the_users_reset_before_it(
    run: Any, sessions: sessionmaker[Session], directory: Directory, redis_conn: Redis,
    engine: Engine, smtp_server: SmtpServer, cli_settings: Settings,
    known_passwords: PasswordHasher,
) -> None:
    hasher = known_passwords
    assert run("reset", "--scope", "all", "--yes", "--detach").code == 0
    # Planned in chunks of two; only the first chunk (alice, bob) is reset before the cancel.
    # A job for each chunk of two (RESET_CHUNK_SWEEP=0), so the cancel falls between them.
    context = build_context(replace(cli_settings, chunk_size=2, chunk_sweep=0), redis_conn,
                            engine)
    try:
        engine_work(context, max_jobs=2)
    finally:
        context.close()
    assert run("tasks", "cancel", "1").code == 0
    work(run)
    [cancelled] = tasks(sessions)
    assert cancelled.status == TaskStatus.CANCELLED
    assert snapshots(sessions) == 2
    table = directory.table
    with sessions() as session:
        session.execute(update(table).where(table.c.username == "bob")
                        .values(password_hash=hasher.hash("Bob-chose-this-1")))
        session.commit()

    undone = run("tasks", "undo", "1", "--yes", "--detach")
    assert undone.code == 0, undone.err
    assert "1 user still have the password it set" in undone.out
    work(run)
    _, undo = tasks(sessions)
    assert undo.status == TaskStatus.COMPLETED and undo.total == 2
    after = hashes(sessions, directory)
    assert hasher.verify("Bob-chose-this-1", after["bob"][0])
    for username in ("alice", "carol", "dave", "erin", "frank", "grace"):
        assert hasher.verify(old_password(username), after[username][0]), username
    assert [mail.to for mail in smtp_server.messages if "works again" in mail.text] == [
        "alice@example.org"]


@pytest.mark.slow
def test_undo_is_refused_after_its_window_and_nothing_stays_sealed(
    run: Any, sessions: sessionmaker[Session], directory: Directory, redis_conn: Redis,
    smtp_server: SmtpServer, known_passwords: PasswordHasher,
) -> None:
    assert run("reset", "--scope", "all", "--yes", "--detach").code == 0
    work(run)
    assert snapshots(sessions) == 7
    # A window of 0 has closed for every ended task: the reaper erases, the command refuses.
    work_closed = run("worker", "--burst", RESET_UNDO_WINDOW="0")
    assert work_closed.code == 0, work_closed.err
    assert snapshots(sessions) == 0
    late = run("tasks", "undo", "1", "--yes", RESET_UNDO_WINDOW="0")
    assert late.code == 1 and "Undo is off" in late.err
    gone = run("tasks", "undo", "1", "--yes")
    assert gone.code == 1 and "changed no password that could be put back" in gone.err
    assert len(tasks(sessions)) == 1
    stdin_not_a_terminal = run("tasks", "undo", "1", stdin=io.StringIO(""))
    assert stdin_not_a_terminal.code == 2 and "add --yes" in stdin_not_a_terminal.err


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_an_undo_waits_for_approval_as_a_reset_would_and_a_rejected_one_can_be_asked_again(
    run: Any, sessions: sessionmaker[Session], directory: Directory, redis_conn: Redis,
    smtp_server: SmtpServer, known_passwords: PasswordHasher, monkeypatch: pytest.MonkeyPatch,
    cli_settings: Settings,
) -> None:
    """RESET_APPROVAL_MIN_USERS judges an Undo like any reset (`core.tasks.approval_needed`):
    it waits for another admin and changes nothing before; rejected, its task may be undone
    again; approved, it runs. It is listed with the mode `undo`."""
    approval = {"RESET_ADMINS": "UADMIN,USECOND", "RESET_APPROVAL_MIN_USERS": "5"}
    assert run("reset", "--scope", "all", "--yes", "--detach").code == 0
    work(run)
    after_reset = hashes(sessions, directory)

    asked = run("tasks", "undo", "1", "--yes", **approval)
    assert asked.code == 0, asked.err
    assert "Task #2 awaits approval by another admin: nothing changes before that." in asked.out
    assert plan_jobs(cli_settings, redis_conn) == [], "nothing queued for a worker"
    assert hashes(sessions, directory) == after_reset
    assert [(t.id, t.mode, t.status) for t in tasks(sessions)] == [
        (1, "generated", TaskStatus.COMPLETED), (2, "undo", TaskStatus.AWAITING_APPROVAL)]
    [listed] = [line for line in run("tasks", **approval).out.splitlines()
                if line.split()[:1] == ["2"]]
    assert listed.split()[1:4] == ["awaiting", "approval", "all"] and " undo " in listed

    assert run("tasks", "reject", "2", "--as", "USECOND", **approval).code == 0
    assert tasks(sessions)[0].undone_by is None, "a rejected Undo no longer holds its task"
    assert run("tasks", "undo", "1", "--yes", **approval).code == 0
    monkeypatch.setenv("LOGNAME", "second-operator")  # not whoever asked for the Undo
    approved = run("tasks", "approve", "3", "--as", "USECOND", **approval)
    assert approved.code == 0, approved.err
    work(run)
    original, rejected, undo = tasks(sessions)
    assert (rejected.status, undo.status, original.undone_by) == (
        TaskStatus.REJECTED, TaskStatus.COMPLETED, 3)
    for username, (stored, _) in hashes(sessions, directory).items():
        assert known_passwords.verify(old_password(username), stored), username
