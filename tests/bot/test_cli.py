"""`resetbot` run in-process (`bot.cli.main`) on SQLite and PostgreSQL, real Redis and SMTP."""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis import Redis
from sqlalchemy import Engine, func, inspect, select, text
from sqlalchemy.orm import Session, sessionmaker

from core.directory import Directory
from core.migrate import head_revision
from core.models import AuditEntry, ResetTask
from core.passwords import PasswordHasher
from core.settings import Settings
from jobs.worker import GIL_SWITCH_SECONDS
from tests.support.cli import FakeTerminal
from tests.support.cli import cli_settings as cli_settings
from tests.support.cli import run as run
from tests.support.engine import build_context, run_until_final, user_rows
from tests.support.smtp import SmtpServer
from tests.support.smtp import smtp_server as smtp_server

STRONG_DEFAULT = "Quiet-Harbour-Lantern-42"
#: For tests about the command line itself: the database behind it adds nothing on PostgreSQL.
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)






def _users(engine: Engine, directory: Directory) -> list[tuple[Any, ...]]:
    c = directory.table.c
    with engine.connect() as connection:
        return [tuple(row) for row in connection.execute(
            select(c.id, c.username, c.full_name, c.email, c.role, c.password_hash,
                   c.must_change_password).order_by(c.id)
        )]


def _task_count(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.count()).select_from(ResetTask)) or 0)


def _queued_jobs(redis: Redis, queue_name: str) -> int:
    return int(redis.llen(f"rq:queue:{queue_name}"))


# -- db upgrade, users --------------------------------------------------------------------------


def test_db_upgrade_creates_the_schema_and_can_run_again(run: Any, cli_settings: Settings) -> None:
    first = run("db", "upgrade")
    assert first.code == 0, first.err
    assert f"is at revision {head_revision()}" in first.out
    assert run("db", "upgrade").code == 0
    from core.db import make_engine

    engine = make_engine(cli_settings.database_url)
    try:
        assert {"users", "reset_tasks", "reset_items", "audit_log"} <= set(
            inspect(engine).get_table_names()
        )
    finally:
        engine.dispose()


@sqlite_only
def test_commands_before_db_upgrade_say_what_to_do(run: Any) -> None:
    result = run("tasks")
    assert result.code == 1
    assert "run `resetbot db upgrade` first" in result.err
    assert "Traceback" not in result.err


def test_users_import_and_export_through_the_cli(
    run: Any, engine: Engine, directory: Directory, sample_users: Any, tmp_path: Path
) -> None:
    source = tmp_path / "users.csv"
    source.write_text(
        "username,full_name,email,role\nalice,Alice Renamed,alice@example.org,\n"
        "henry,Henry Hollerith,henry@example.org,archivist\n",
        encoding="utf-8",
    )
    imported = run("users", "import", str(source))
    assert imported.code == 0, imported.err
    assert "Imported 2 users: 1 new, 1 updated, 0 unchanged." in imported.out

    exported = run("users", "export")
    rows = list(csv.reader(io.StringIO(exported.out)))
    assert rows[0] == ["username", "full_name", "email", "role"]
    assert ["alice", "Alice Renamed", "alice@example.org", ""] in rows
    assert ["henry", "Henry Hollerith", "henry@example.org", "archivist"] in rows
    assert len(rows) == 1 + len(sample_users) + 1

    target = tmp_path / "out.csv"
    written = run("users", "export", str(target))
    assert written.code == 0 and f"Wrote {len(sample_users) + 1} users" in written.out
    assert target.read_bytes().startswith(b"\xef\xbb\xbfusername,full_name,email,role\r\n")
    before = _users(engine, directory)
    again = run("users", "import", str(target))
    assert "0 new, 0 updated, 8 unchanged" in again.out
    assert _users(engine, directory) == before


def test_a_bad_csv_is_refused_with_line_numbers_and_changes_nothing(
    run: Any, engine: Engine, directory: Directory, sample_users: Any, tmp_path: Path
) -> None:
    source = tmp_path / "bad.csv"
    source.write_bytes(
        b"username,full_name,email,role\n"
        b"alice,Alice Changed,alice@example.org,\n"
        b"zed,Zed,zed-at-example.org,\n"
        b"alice,Twice,a2@example.org,\n"
        b"mal,=HYPERLINK(\"http://x\"),mal@example.org,\n"
    )
    before = _users(engine, directory)
    result = run("users", "import", str(source))
    assert result.code == 1
    assert "Nothing was imported: 3 problems in the file." in result.err
    assert "line 3: email 'zed-at-example.org' is not a valid e-mail address" in result.err
    assert "line 4: username 'alice' is also on line 2" in result.err
    assert "line 5: full_name" in result.err and "formula" in result.err
    assert "Traceback" not in result.err
    assert _users(engine, directory) == before


@sqlite_only
def test_import_of_a_missing_file_is_one_clear_line(run: Any, engine: Engine) -> None:
    result = run("users", "import", "/nonexistent/users.csv")
    assert result.code == 1
    assert result.err.strip().splitlines() == [
        "resetbot: No such file or directory: /nonexistent/users.csv"
    ]


# -- reset: refusals change nothing ------------------------------------------------------------


def test_dry_run_shows_the_preview_and_changes_nothing(
    run: Any, engine: Engine, sessions: sessionmaker[Session], directory: Directory,
    sample_users: Any,
) -> None:
    before = _users(engine, directory)
    result = run("reset", "--scope", "all_without_role", "--dry-run")
    assert result.code == 0, result.err
    assert "Users to reset:               5" in result.out
    assert "E-mailed:                     3" in result.out
    assert "Without e-mail:               2" in result.out
    assert "Staff included:               0" in result.out
    assert "Dry run: nothing was changed." in result.out
    assert _users(engine, directory) == before
    assert _task_count(sessions) == 0


@sqlite_only
def test_selected_scope_preview_counts_staff(run: Any, sample_users: Any) -> None:
    result = run("reset", "--scope", "selected_only", "--user", "carol", "--user", "dave",
                 "--dry-run")
    assert result.code == 0, result.err
    assert "(the 2 selected users)" in result.out
    assert "Staff included:               1" in result.out
    assert "Without e-mail:               1" in result.out


@sqlite_only
def test_unknown_usernames_are_refused(
    run: Any, sessions: sessionmaker[Session], sample_users: Any
) -> None:
    result = run("reset", "--scope", "selected_only", "--user", "alice", "--user", "nobody",
                 "--user", "ghost", "--yes")
    assert result.code == 1
    assert "no such user in the directory: nobody, ghost" in result.err
    assert _task_count(sessions) == 0


def test_a_weak_default_password_gives_every_reason_and_is_never_echoed(
    run: Any, engine: Engine, sessions: sessionmaker[Session], directory: Directory,
    redis_conn: Redis, queue_name: str, sample_users: Any,
) -> None:
    before = _users(engine, directory)
    weak = "password1"
    result = run("reset", "--scope", "all", "--default-password-stdin", "--yes",
                 stdin=io.StringIO(weak + "\n"))
    assert result.code == 1
    assert "the request was refused (nothing was changed):" in result.err
    assert "password: It must be at least 12 characters long." in result.err
    assert "password: It must mix at least 3 of" in result.err
    assert "password: It is too common" in result.err
    assert weak not in result.out + result.err
    assert "Traceback" not in result.err
    assert _users(engine, directory) == before
    assert _task_count(sessions) == 0
    assert _queued_jobs(redis_conn, queue_name) == 0
    with sessions() as session:
        refusal = session.scalars(select(AuditEntry)).one()
    assert (refusal.action, refusal.detail["fields"]) == ("refused", ["password"])


@sqlite_only
def test_a_default_password_containing_a_username_is_refused(
    run: Any, sessions: sessionmaker[Session], sample_users: Any
) -> None:
    result = run("reset", "--scope", "all", "--default-password-stdin", "--yes",
                 stdin=io.StringIO("Grace-Harbour-Lantern-42\n"))
    assert result.code == 1
    assert "password: It contains the username of 1 of the users" in result.err
    assert "Grace-Harbour" not in result.err
    assert _task_count(sessions) == 0


@sqlite_only
def test_users_given_to_a_scope_without_selection_are_refused(
    run: Any, sessions: sessionmaker[Session], sample_users: Any
) -> None:
    result = run("reset", "--scope", "all", "--user", "bob", "--yes")
    assert result.code == 2
    assert "scope all takes no names" in result.err
    assert _task_count(sessions) == 0


@sqlite_only
def test_a_selected_scope_without_users_is_refused(
    run: Any, sessions: sessionmaker[Session], sample_users: Any
) -> None:
    result = run("reset", "--scope", "all_except_selected", "--yes")
    assert result.code == 2
    assert "scope all_except_selected needs the users to leave alone" in result.err
    assert _task_count(sessions) == 0


@sqlite_only
def test_without_a_terminal_confirmation_needs_yes(
    run: Any, sessions: sessionmaker[Session], sample_users: Any
) -> None:
    result = run("reset", "--scope", "all")
    assert result.code == 2
    assert "stdin is not a terminal" in result.err and "--yes" in result.err
    assert _task_count(sessions) == 0


@sqlite_only
def test_answering_no_changes_nothing(
    run: Any, engine: Engine, sessions: sessionmaker[Session], directory: Directory,
    sample_users: Any,
) -> None:
    before = _users(engine, directory)
    result = run("reset", "--scope", "all", stdin=FakeTerminal("no\n"))
    assert result.code == 1
    assert "Users to reset:               7" in result.out
    assert "Nothing was changed." in result.out
    assert _users(engine, directory) == before
    assert _task_count(sessions) == 0


# -- reset end to end, then tasks and audit ---------------------------------------------------


@pytest.fixture
def finished_task(
    run: Any, cli_settings: Settings, engine: Engine, redis_conn: Redis, queue_name: str,
    sample_users: Any,
) -> Iterator[int]:
    """A generated-password reset of everyone without a role, confirmed on a 'terminal'."""
    result = run("reset", "--scope", "all_without_role", "--detach", stdin=FakeTerminal("yes\n"))
    assert result.code == 0, result.err
    assert "Task #1 queued." in result.out
    assert _queued_jobs(redis_conn, queue_name) == 1
    interval = sys.getswitchinterval()
    try:
        worked = run("worker", "--burst")  # `resetbot worker --burst`, in this process
        # A worker process hands the GIL back to its hashing thread quickly (jobs/worker.py).
        assert sys.getswitchinterval() == pytest.approx(GIL_SWITCH_SECONDS)
    finally:
        sys.setswitchinterval(interval)
    assert worked.code == 0, worked.err
    shown = json.loads(run("tasks", "show", "1", "--json").out)
    assert shown["status"] == "completed"
    yield 1


def test_reset_then_tasks_show_as_text_json_and_csv(
    run: Any, finished_task: int, smtp_server: SmtpServer, cli_settings: Settings,
    sessions: sessionmaker[Session], directory: Directory,
) -> None:
    listing = run("tasks")
    assert listing.code == 0
    assert "completed" in listing.out and "all_without_role" in listing.out

    shown = run("tasks", "show", "1")
    assert "Task #1: completed" in shown.out
    assert "alice" in shown.out and "e-mailed" in shown.out
    assert "no e-mail: tell them yourself" in shown.out

    document = json.loads(run("tasks", "show", "1", "--json").out)
    assert document["id"] == 1 and document["status"] == "completed"
    assert document["counts"]["notified"] == 3 and document["counts"]["no_email"] == 2
    users = {user["username"]: user for user in document["users"]}
    assert set(users) == {"alice", "bob", "dave", "frank", "grace"}  # no staff
    assert users["alice"]["outcome"] == "notified" and users["alice"]["attempts"] == 1
    assert users["dave"]["outcome"] == "no_email" and users["dave"]["attempts"] == 0

    follow_up = run("tasks", "show", "1", "--csv").out
    rows = list(csv.reader(io.StringIO(follow_up)))
    assert rows[0] == ["username", "full_name", "email", "outcome", "attempts", "reason"]
    assert [row[0] for row in rows[1:]] == ["dave", "frank"]

    passwords = [mail.password for mail in smtp_server.messages]
    assert len(passwords) == 3
    hasher = PasswordHasher.from_settings(cli_settings)
    hashes = {row.username: row.password_hash for row in user_rows(sessions, directory).values()}
    for mail in smtp_server.messages:
        username = mail.to.split("@")[0]
        assert hasher.verify(mail.password, hashes[username] or "")
    assert hashes["carol"] == hashes["erin"] == "old-hash"  # staff keep their passwords
    everything_shown = listing.out + shown.out + json.dumps(document) + follow_up
    assert not [password for password in passwords if password in everything_shown]


@sqlite_only
def test_audit_lists_the_confirm_and_the_end(run: Any, finished_task: int) -> None:
    trail = run("audit")
    assert trail.code == 0
    assert "confirm" in trail.out and "finish" in trail.out and "#1" in trail.out
    rows = list(csv.reader(io.StringIO(run("audit", "--csv").out)))
    assert rows[0] == ["at", "actor", "action", "task_id", "detail"]
    actions = [row[2] for row in rows[1:]]
    assert "confirm" in actions and "finish" in actions
    assert all(row[1].startswith(("cli:", "worker", "system", "resetbot")) for row in rows[1:])
    assert run("audit", "--since", "2999-01-01").out.strip() == "No audit entries."
    assert len(list(csv.reader(io.StringIO(run("audit", "--since", "2000-01-01", "--csv").out)))
               ) == len(rows)


@sqlite_only
def test_tasks_show_of_an_unknown_task(run: Any, engine: Engine) -> None:
    result = run("tasks", "show", "42")
    assert result.code == 1 and "there is no task #42" in result.err


def test_a_default_password_reset_mails_nobody_and_stores_only_hashes(
    run: Any, cli_settings: Settings, engine: Engine, sessions: sessionmaker[Session],
    directory: Directory, redis_conn: Redis, queue_name: str, smtp_server: SmtpServer,
    sample_users: Any,
) -> None:
    result = run("reset", "--scope", "selected_only", "--user", "alice", "--user", "carol",
                 "--default-password-stdin", "--no-require-change", "--yes", "--detach",
                 stdin=io.StringIO(STRONG_DEFAULT + "\n"))
    assert result.code == 0, result.err
    assert STRONG_DEFAULT not in result.out + result.err
    assert "one default password for everyone; nobody is e-mailed" in result.out
    # While queued, Redis holds ids only and the database only the sealed password.
    for key in redis_conn.scan_iter(match=f"*{queue_name}*"):
        assert STRONG_DEFAULT.encode() not in redis_conn.dump(key)
    context = build_context(cli_settings, redis_conn, engine)
    assert run_until_final(context, 1).status == "completed"
    assert smtp_server.messages == []
    rows = {row.username: row for row in user_rows(sessions, directory).values()}
    hasher = PasswordHasher.from_settings(cli_settings)
    assert hasher.verify(STRONG_DEFAULT, rows["alice"].password_hash or "")
    assert hasher.verify(STRONG_DEFAULT, rows["carol"].password_hash or "")
    assert rows["alice"].must_change_password is False
    assert rows["bob"].password_hash == "old-hash"
    with engine.connect() as connection:
        for table in inspect(engine).get_table_names():
            dumped = repr(connection.execute(text(f"SELECT * FROM {table}")).all())
            assert STRONG_DEFAULT not in dumped, table
    document = json.loads(run("tasks", "show", "1", "--json").out)
    assert document["counts"]["reset"] == 2 and document["mode"] == "default"


# -- services that cannot be reached ------------------------------------------------------


@sqlite_only
def test_an_unreachable_redis_is_one_clear_line(
    run: Any, sessions: sessionmaker[Session], sample_users: Any
) -> None:
    result = run("reset", "--scope", "all", "--yes", "--detach",
                 REDIS_URL="redis://127.0.0.1:1/0")
    assert result.code == 1
    assert result.err.strip().splitlines()[-1].startswith("resetbot: Redis cannot be reached")
    assert _task_count(sessions) == 0, "no task may be created when the queue is unreachable"


def test_since_dates_and_times_are_read_as_utc() -> None:
    from datetime import UTC, datetime

    from bot.commands.audit import _since

    assert _since("2026-01-01") == datetime(2026, 1, 1, tzinfo=UTC)
    assert _since("2026-01-01T02:30+02:00") == datetime(2026, 1, 1, 0, 30, tzinfo=UTC)
    with pytest.raises(Exception, match="is not a date"):
        _since("yesterday")
