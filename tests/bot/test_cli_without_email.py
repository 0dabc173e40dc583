"""`resetbot reset --without-email reset|skip|set`: the terminal's way to the same choice."""

from __future__ import annotations

import io

import pytest
from redis import Redis
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from bot.cli import EXIT_OK, EXIT_USAGE, main
from core.directory import Directory
from core.models import ResetTask
from core.passwords import PasswordHasher
from core.settings import Settings
from tests.support.engine import build_context, run_until_final, user_rows
from tests.support.smtp import SmtpServer
from tests.support.smtp import smtp_server as smtp_server

HANDOUT = "Front-Desk-Lantern-42"
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def resetbot(
    settings: Settings, argv: list[str], stdin: str, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[int, str, str]:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = main(argv, environ=settings.to_env())
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@sqlite_only
@pytest.mark.parametrize("choice", ["set", "skip"])
def test_users_without_e_mail_get_the_typed_password_or_are_left_alone(
    settings: Settings, redis_conn: Redis, engine: Engine, sessions: sessionmaker[Session],
    directory: Directory, sample_users: list[object], smtp_server: SmtpServer,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, choice: str,
) -> None:
    configured = smtp_server.settings(settings)
    code, out, err = resetbot(
        configured, ["reset", "--scope", "all", "--without-email", choice, "--yes", "--detach"],
        f"{HANDOUT}\n" if choice == "set" else "", capsys, monkeypatch)

    assert code == EXIT_OK, err
    expected = {"set": "get the password you typed: tell each of them",
                "skip": "left alone: their password does not change"}[choice]
    assert f"Without e-mail:               2   ({expected})" in out
    with sessions() as session:
        task_id = session.scalars(select(ResetTask.id)).one()
    context = build_context(configured, redis_conn, engine)
    run_until_final(context, task_id)
    context.close()
    rows = user_rows(sessions, directory)
    hasher = PasswordHasher.from_settings(configured)
    for user_id in (4, 6):  # dave and frank have no address
        stored = rows[user_id].password_hash or ""
        if choice == "set":
            assert hasher.verify(HANDOUT, stored)
            assert rows[user_id].must_change_password is True
        else:
            assert stored == "old-hash"
    assert len(smtp_server.messages) == 5
    assert HANDOUT not in out + err


@sqlite_only
def test_the_choice_is_refused_with_a_default_password_and_a_weak_handout_changes_nothing(
    settings: Settings, sessions: sessionmaker[Session], sample_users: list[object],
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    both, _out, said = resetbot(
        settings, ["reset", "--scope", "all", "--default-password-stdin", "--without-email",
                   "skip", "--yes"], "Quiet-Harbour-Lantern-42\n", capsys, monkeypatch)
    weak, _out, refused = resetbot(
        settings, ["reset", "--scope", "all", "--without-email", "set", "--yes"], "short\n",
        capsys, monkeypatch)

    assert both == EXIT_USAGE
    assert "--without-email is for resets that e-mail each user" in said
    assert weak != EXIT_OK
    assert "at least 12 characters" in refused
    with sessions() as session:
        assert session.scalars(select(ResetTask.id)).all() == []
