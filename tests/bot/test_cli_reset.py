"""`resetbot reset` following a task to its end, with a real `resetbot worker` process."""

from __future__ import annotations

import io
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis import Redis
from sqlalchemy.orm import Session, sessionmaker

from bot.cli import EXIT_WITH_ERRORS, main
from core.directory import Directory
from core.passwords import PasswordHasher
from core.settings import Settings
from tests.support.engine import user_rows
from tests.support.smtp import SmtpServer
from tests.support.smtp import smtp_server as smtp_server

# Claims, locks and DDL differ between databases: these run on MariaDB too.
pytestmark = pytest.mark.every_database


@pytest.fixture
def cli_settings(settings: Settings, smtp_server: SmtpServer) -> Settings:
    return smtp_server.settings(settings)


@pytest.fixture
def worker_process(
    cli_settings: Settings, redis_conn: Redis, engine: Any, tmp_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m bot.cli worker` in its own process, as `resetbot worker` runs on a host."""
    log = (tmp_path / "worker.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "bot.cli", "worker"],
        env={"PATH": str(Path(sys.executable).parent), **cli_settings.to_env()},
        cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
    )
    yield process
    process.send_signal(signal.SIGTERM)  # RQ's warm shutdown
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    log.close()


def test_reset_follows_the_task_to_the_end_with_a_real_worker(
    cli_settings: Settings, worker_process: subprocess.Popen[bytes], smtp_server: SmtpServer,
    sessions: sessionmaker[Session], directory: Directory, sample_users: Any,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    smtp_server.refuse("grace@example.org", code=550, times=1)  # permanent: not retried
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    code = main(["reset", "--scope", "all_without_role", "--yes"],
                environ=cli_settings.to_env())
    out = capsys.readouterr().out
    assert worker_process.poll() is None, "the worker must still be running"
    assert code == EXIT_WITH_ERRORS, out
    assert "Task #1 queued." in out
    # The bar as rich leaves it off a terminal: drawn once, in its final state.
    assert re.search(r"^Task #1 \S+ 5 of 5 users 100% [\d.,]+ users/s ", out, re.MULTILINE), out
    assert "Task #1 completed with errors" in out and "completed_with_errors" not in out
    assert "e-mailed                                  2" in out
    assert "no e-mail: tell them yourself             2" in out
    assert "mail failed: tell them yourself           1" in out
    assert "Users to contact by hand: 3" in out
    assert "resetbot tasks show 1 --csv" in out
    rows = {row.username: row for row in user_rows(sessions, directory).values()}
    hasher = PasswordHasher.from_settings(cli_settings)
    for username in ("alice", "bob"):
        mailed = smtp_server.last_password(f"{username}@example.org")
        assert hasher.verify(mailed, rows[username].password_hash or "")
        assert mailed not in out
    assert rows["carol"].password_hash == rows["erin"].password_hash == "old-hash"
    assert rows["dave"].password_hash != "old-hash" and rows["dave"].must_change_password


def test_tasks_retry_follows_the_retry_to_the_end_with_a_real_worker(
    cli_settings: Settings, worker_process: subprocess.Popen[bytes], smtp_server: SmtpServer,
    sample_users: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    smtp_server.refuse("grace@example.org", code=550, times=1)
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    environ = cli_settings.to_env()
    assert main(["reset", "--scope", "selected_only", "--user", "alice,grace", "--yes"],
                environ=environ) == EXIT_WITH_ERRORS
    capsys.readouterr()
    code = main(["tasks", "retry", "1"], environ=environ)
    out = capsys.readouterr().out
    assert code == 0, out
    assert ("Task #2 queued: new passwords by e-mail for the 1 user whose mail failed in "
            "task #1.") in out
    assert re.search(r"^Task #2 completed in [\d.]+ s: 1 user\.$", out, re.MULTILINE), out
    assert len(smtp_server.to("grace@example.org")) == 1
