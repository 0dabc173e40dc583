"""`resetbot mail preview`, and templates checked when a worker starts."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import Engine, insert

from bot.cli import EXIT_CONFIG, EXIT_OK, EXIT_REFUSED, main
from bot.mail_preview import MASK
from core.directory import Directory
from core.settings import Settings

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def resetbot(
    settings: Settings, *argv: str, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    code = main(list(argv), environ=settings.to_env())
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_a_sample_users_mail_is_shown_with_the_password_masked(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _err = resetbot(Settings(), "mail", "preview", capsys=capsys)

    assert code == EXIT_OK
    assert "To: Ada Lovelace <ada@example.org>" in out
    assert "Subject: Your library password has been reset" in out
    assert f"New password: {MASK}" in out
    assert f"<code>{MASK}</code>" in out
    assert "----- text part -----" in out and "----- HTML part -----" in out


def test_another_language_is_shown_on_request(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _err = resetbot(Settings(), "mail", "preview", "--lang", "fr", capsys=capsys)

    assert code == EXIT_OK
    assert "Subject: Votre mot de passe pour la bibliothèque a été réinitialisé" in out
    assert f"Nouveau mot de passe : {MASK}" in out


@sqlite_only
def test_a_real_users_mail_comes_from_the_directory(
    settings: Settings, sample_users: list[object], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _err = resetbot(settings, "mail", "preview", "--user", "carol", capsys=capsys)
    missing, _out, err = resetbot(settings, "mail", "preview", "--user", "nobody",
                                  capsys=capsys)

    assert code == EXIT_OK
    assert "To: Carol Cataloguer <carol@example.org>" in out
    assert "Hello Carol Cataloguer," in out
    assert missing == EXIT_REFUSED
    assert "there is no user 'nobody' in the directory" in err


def test_a_broken_template_is_one_line_naming_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "reset.txt").write_text("Subject: Hi\n\nDear {nmae}: {password}\n")

    code, out, err = resetbot(replace(Settings(), mail_templates=str(tmp_path)),
                              "mail", "preview", capsys=capsys)

    assert code == EXIT_CONFIG
    assert out == ""
    assert err == f"resetbot: {tmp_path / 'reset.txt'}:3: unknown placeholder {{nmae}} (known: " \
        "{helpdesk}, {library_name}, {must_change}, {name}, {password}, {portal_url}, " \
        "{username})\n"


@pytest.mark.services
@sqlite_only
def test_a_worker_with_a_broken_template_stops_at_start(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "reset.txt").write_text("Subject: Hi\n\nNo password here.\n")
    monkeypatch.setattr("sys.stdin", io.StringIO(""))

    code, _out, err = resetbot(replace(settings, mail_templates=str(tmp_path)),
                               "worker", "--burst", capsys=capsys)

    assert code == EXIT_CONFIG
    assert err.strip().endswith("the body never says {password}: the mail would not tell the "
                                "user their new password")


@sqlite_only
def test_a_directory_name_with_control_characters_is_shown_escaped(
    settings: Settings, engine: Engine, directory: Directory, capsys: pytest.CaptureFixture[str]
) -> None:
    """A name that clears the screen or starts a new header line is printed as escapes on the
    `To:` line, as every other terminal line shows directory text (bot.terminal.shown)."""
    with engine.begin() as connection:
        connection.execute(insert(directory.table), [{
            "id": 1, "username": "mallory", "full_name": "Mal\x1b[2J\x1b[H\r\nBcc: x@evil.test",
            "email": "mallory@example.org", "role": None, "password_hash": "old-hash",
            "must_change_password": False,
        }])

    code, out, _err = resetbot(settings, "mail", "preview", "--user", "mallory", capsys=capsys)

    assert code == EXIT_OK
    to_line = next(line for line in out.splitlines() if line.startswith("To: "))
    assert to_line == "To: Mal\\x1b[2J\\x1b[H\\r\\nBcc: x@evil.test <mallory@example.org>"
    assert "\x1b" not in out and "\r" not in out
    assert not any(line.startswith("Bcc:") for line in out.splitlines())
