"""Settings at the edge: a bad value is one line naming the variable, exit 2, no traceback."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from bot.cli import EXIT_CONFIG, main
from core.settings import Settings

KEY = "4384154792593121a7a2067034090bd95ba9990bd9951c8b1bb60ac7332ddf88"


@pytest.fixture(autouse=True)
def in_empty_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No stray resetbot.db or .env from the checkout; nothing to find but what a test writes."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SMTP_PORT", "not-a-port"),
        ("SMTP_PORT", "70000"),
        ("PASSWORD_SCHEMES", "rot13"),
        ("MAIL_RETRY_DELAYS", "60,soon"),
        ("SMTP_SECURITY", "tls-please"),
        ("PASSWORD_MIN_LENGTH", "2"),
        ("USERS_TABLE", "users; drop"),
        ("USERS_COLUMNS", "email=mail address"),
        ("RESET_CHUNK_SIZE", "0"),
        ("DATABASE_URL", "not a url"),
        ("DATABASE_URL", "nosuchdb://host/db"),
    ],
)
def test_invalid_settings_are_one_line_naming_the_variable(
    capsys: pytest.CaptureFixture[str], variable: str, value: str
) -> None:
    assert main(["tasks"], environ={variable: value}) == EXIT_CONFIG
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith("resetbot: ") and variable in line


def test_an_invalid_redis_url_is_a_configuration_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    environ = {"REDIS_URL": "http://127.0.0.1:6379", "RESET_SECRET_KEY": KEY}
    assert main(["worker", "--burst"], environ=environ) == EXIT_CONFIG
    assert _one_error_line(capsys.readouterr().err).startswith("resetbot: REDIS_URL:")


def test_serve_without_slack_credentials_says_which_is_missing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["serve", "--port", "0"], environ={"RESET_SECRET_KEY": KEY}) == EXIT_CONFIG
    assert "SLACK_BOT_TOKEN" in _one_error_line(capsys.readouterr().err)


def test_a_broken_env_file_names_its_line(
    capsys: pytest.CaptureFixture[str], in_empty_directory: Path
) -> None:
    (in_empty_directory / ".env").write_text("SMTP_HOST=mail.example.org\nthis line is wrong\n")
    assert main(["tasks"]) == EXIT_CONFIG
    assert ".env:2: expected NAME=value" in _one_error_line(capsys.readouterr().err)


def test_the_console_script_reports_a_bad_setting_without_a_traceback(
    in_empty_directory: Path,
) -> None:
    script = Path(sys.executable).parent / "resetbot"
    result = subprocess.run(
        [str(script), "reset", "--scope", "all", "--dry-run"],
        env={"PATH": str(script.parent), "SMTP_PORT": "twenty-five"},
        capture_output=True, text=True, timeout=60, check=False, cwd=in_empty_directory,
    )
    assert result.returncode == EXIT_CONFIG
    assert _one_error_line(result.stderr) == (
        "resetbot: SMTP_PORT: 'twenty-five' is not a whole number (1\N{EN DASH}65535)"
    )
    assert result.stdout == ""


def test_the_console_script_has_help_for_every_command() -> None:
    script = Path(sys.executable).parent / "resetbot"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True,
                            timeout=60, check=True)
    for command in ("db", "users", "worker", "reset", "tasks", "audit", "serve", "demo"):
        assert command in result.stdout


def test_settings_environment_round_trips() -> None:
    base = Settings.from_env({}, env_file=None)
    variants = [
        base,
        replace(base, database_url="postgresql+psycopg://u@db/resetbot",
                redis_url="redis://r:6379/2", smtp_username="u", smtp_password="p",
                smtp_security="starttls", smtp_port=587, password_rounds=10,
                password_schemes=("argon2", "bcrypt"), mail_retry_delays=(1, 2),
                reset_secret_key=KEY, reset_admins=frozenset({"U1", "U2"}),
                reset_admin_group="S1", slack_bot_token="xoxb-1", chunk_size=7),
    ]
    for settings in variants:
        assert Settings.from_env(settings.to_env(), env_file=None) == settings
