"""`resetbot directory check`, `users import/export` on a foreign directory, and a directory that
cannot be used: one line and exit 2 from every command that opens it, `/healthz` apart."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from redis import Redis
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from bot.cli import EXIT_CONFIG, EXIT_OK, EXIT_REFUSED
from bot.wsgi import make_wsgi_app
from core.db import make_engine, make_sessionmaker
from core.directory import Directory
from core.directory.sql import SqlDirectory
from core.directory.sql.survey import hash_format
from core.migrate import upgrade
from core.settings import Settings
from tests.support.cli import RunCli
from tests.support.cli import run as run
from tests.support.databases import mariadb_database, postgres_database
from tests.support.koha import OLD_HASH, create_borrowers, dump, koha_profile_text, schema_objects
from tests.support.smtp import SmtpServer, free_port
from tests.support.smtp import smtp_server as smtp_server

SCRIPT = Path(sys.executable).parent / "resetbot"
PASSWORD = "hunter2-Secret"
state_on_sqlite = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
#: A hash of another format, and a password stored in clear: neither may ever be printed.
OTHER_HASH = "$2b$12$" + "R9h/cIPz0gi.URNNX3kh2O" + "PST9/PgBkqquzi.Ss7KIUgO2t0jWMUW"
CLEAR = "plain-text-secret"


@pytest.fixture
def cli_settings(settings: Settings, smtp_server: SmtpServer) -> Settings:
    """bcrypt at the profile's own cost: what a library runs (no PASSWORD_ROUNDS)."""
    return replace(smtp_server.settings(settings), password_schemes=("bcrypt",),
                   password_rounds=None, password_allow_weak_rounds=False)


@pytest.fixture(params=[
    pytest.param("mariadb", marks=pytest.mark.mariadb),
    pytest.param("postgres", marks=pytest.mark.postgres),
    "sqlite",
])
def koha(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Engine, str]]:
    """A Koha-shaped directory with mixed password formats, and its DIRECTORY_PROFILE."""
    profile_file = tmp_path / "library.toml"
    profile_file.write_text(koha_profile_text(), encoding="utf-8")
    with _database(request.param, tmp_path) as url:
        engine = make_engine(url)
        create_borrowers(engine)
        with engine.begin() as connection:
            for number, stored in ((2, OTHER_HASH), (3, ""), (4, None), (5, CLEAR)):
                connection.execute(text("UPDATE borrowers SET password = :p "
                                        "WHERE borrowernumber = :n"), {"p": stored, "n": number})
        yield engine, "koha" if request.param == "mariadb" else str(profile_file)
        engine.dispose()


def _database(kind: str, tmp_path: Path) -> AbstractContextManager[str]:
    if kind == "mariadb":
        return mariadb_database()
    if kind == "postgres":
        return postgres_database()
    return nullcontext(f"sqlite:///{tmp_path / 'koha.db'}")


def _env(engine: Engine, profile: str, **more: str) -> dict[str, str]:
    url = engine.url.render_as_string(hide_password=False)
    # A copy of koha.toml is a profile file of the library's own: its cost 8 is below
    # resetbot's floor, allowed by name (the shipped `koha` keeps 8 without it).
    weak = {} if profile == "koha" else {"PASSWORD_ALLOW_WEAK_ROUNDS": "true"}
    return {"DIRECTORY_URL": url, "DIRECTORY_PROFILE": profile, **weak, **more}


# ---- directory check ------------------------------------------------------------------------


@state_on_sqlite
def test_directory_check_reports_what_resetbot_sees_and_changes_nothing(
    run: RunCli, koha: tuple[Engine, str], cli_settings: Settings
) -> None:
    engine, profile = koha
    rows, schema = dump(engine), schema_objects(engine)
    done = run("directory", "check", **_env(engine, profile))
    assert (done.code, done.err) == (EXIT_OK, "")
    lines = done.out.splitlines()
    shown_profile = "koha (koha.toml)" if profile == "koha" else profile
    assert lines == [
        "Directory check (read-only: nothing was changed)",
        f"Profile:          {shown_profile}",
        f"Database:         {engine.url.render_as_string(hide_password=True)}",
        "Table:            borrowers",
        "Users:            8",
        "Staff:            2",
        "Without e-mail:   3",
        "Password hashes:",
        "  $2a$08$                4",
        "  empty                  2",
        "  $2b$12$                1",
        "  other/unknown          1",
        "A reset writes:   $2a$08$",
        "Optional grants:",
        "  hash survey: granted",
        "  undo: granted",
        "  Koha's password rules: not granted (SELECT (categorycode, min_password_length, "
        "require_strong_password) ON categories and SELECT (variable, value) ON "
        "systempreferences); without it a default or typed password is checked against "
        "resetbot's own policy only (the preview says Koha's rules were not read); resets "
        "work as before",
        lines[-1],
    ]
    # No systempreferences here: whether Koha logs cannot be read (nor, on SQLite, the grant).
    assert lines[-1].startswith("  Koha's log: not granted (SELECT (variable, value) ON "
                                "systempreferences")
    for secret in (OLD_HASH, OTHER_HASH, CLEAR, OLD_HASH[7:], OTHER_HASH[7:]):
        assert secret not in done.out
    assert dump(engine) == rows and schema_objects(engine) == schema
    # resetbot's own database was not even opened: its SQLite file was never made.
    assert not Path(cli_settings.database_url.removeprefix("sqlite:///")).exists()


@state_on_sqlite
@pytest.mark.parametrize("koha", ["sqlite"], indirect=True)
def test_directory_check_warns_when_a_reset_would_write_another_format(
    run: RunCli, koha: tuple[Engine, str]
) -> None:
    engine, profile = koha
    done = run("directory", "check", "--json", **_env(engine, profile, PASSWORD_ROUNDS="10"))
    assert done.code == EXIT_OK, done.err
    report = json.loads(done.out)
    assert report["hash_formats"] == {"$2a$08$": 4, "empty": 2, "$2b$12$": 1,
                                      "other/unknown": 1}
    assert (report["users"], report["staff"], report["without_email"]) == (8, 2, 3)
    assert report["writes"] == "$2a$10$"
    assert report["optional"][:2] == [{
        "name": "hash survey", "available": True, "grant": "SELECT (password) ON borrowers",
        "without": "the password formats the table holds are not counted, and no warning is "
                   "given should they differ from what a reset writes; resets work as before",
        "note": None,
    }, {
        "name": "undo", "available": True,
        "grant": "SELECT (password, password_expiration_date, login_attempts) ON borrowers",
        "without": "Undo is not offered: resetbot cannot keep the password a reset replaces, "
                   "so it could not put it back; resets work as before",
        "note": None,
    }]
    assert [(feature["name"], feature["available"]) for feature in report["optional"][2:]] == [
        ("Koha's password rules", False), ("Koha's log", False)]
    assert report["warning"].startswith(
        "warning: resetbot writes $2a$10$ hashes, but most passwords in borrowers are $2a$08$ "
        "(4 of 8 users)")
    plain = run("directory", "check", **_env(engine, profile, PASSWORD_ROUNDS="10"))
    assert plain.out.splitlines()[-6] == report["warning"]  # before the optional grants
    unchanged = run("directory", "check", "--json", **_env(engine, profile))
    assert json.loads(unchanged.out)["warning"] is None


@state_on_sqlite
def test_directory_check_on_resetbot_own_table(
    run: RunCli, settings: Settings, sample_users: list[Any]
) -> None:
    done = run("directory", "check", "--json")
    assert done.code == EXIT_OK, done.err
    report = json.loads(done.out)
    assert (report["profile"], report["table"], report["users"]) == (
        "resetbot", "users", len(sample_users))
    assert report["writes"] == "$2b$12$"  # PASSWORD_SCHEMES=bcrypt, passlib's default cost


@state_on_sqlite
def test_directory_check_before_db_upgrade_says_what_to_do(run: RunCli) -> None:
    done = run("directory", "check")
    assert done.code == EXIT_REFUSED
    assert done.err.strip().endswith("has no users table yet: run `resetbot db upgrade` first")


@pytest.mark.parametrize("hashed", [
    ("$2a$08$" + "a" * 53, "$2a$08$"), ("$2y$10$" + "b" * 53, "$2y$10$"),
    ("$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA", "$argon2id$v=19$m=65536,t=3,p=4$"),
    ("$pbkdf2-sha256$29000$c2FsdA$aGFzaA", "$pbkdf2-sha256$29000$"),
    ("$6$rounds=5000$salt$hash", "$6$rounds=5000$"), ("$6$salt$hash", "$6$"),
    ("{SSHA}c2FsdGFuZGhhc2g=", "{SSHA}"),
    ("pbkdf2_sha256$600000$salt$hash", "pbkdf2_sha256$600000$"),
    ("", "empty"), ("   ", "empty"), (None, "empty"), ("secret", "other/unknown"),
    ("$2a$", "other/unknown"),
])
def test_a_hash_is_shown_by_its_format_prefix_only(hashed: tuple[str | None, str]) -> None:
    stored, shown = hashed
    assert hash_format(stored) == shown


# ---- users import / export: resetbot's own table only -----------------------------------------


@state_on_sqlite
@pytest.mark.parametrize("koha", ["sqlite"], indirect=True)
@pytest.mark.parametrize("action", ["import", "export"])
def test_users_import_and_export_are_refused_on_a_library_system_table(
    run: RunCli, koha: tuple[Engine, str], tmp_path: Path, action: str
) -> None:
    engine, profile = koha
    rows, schema = dump(engine), schema_objects(engine)
    csv_file = tmp_path / "users.csv"
    if action == "import":
        csv_file.write_text("username,full_name,email\nzoe,Zoe Zed,zoe@example.org\n")
    done = run("users", action, str(csv_file), **_env(engine, profile))
    assert done.code == EXIT_CONFIG and done.out == ""
    assert done.err == (
        f"resetbot: users {action} is for resetbot's own users table; with DIRECTORY_PROFILE="
        f"{profile} the users are in 'borrowers', which resetbot does not own: manage them in "
        "that system (nothing was changed; `resetbot directory check` shows what resetbot "
        "sees)\n")
    assert dump(engine) == rows and schema_objects(engine) == schema
    if action == "export":
        assert not csv_file.exists()


# ---- a directory that cannot be used: one line, exit 2, from the real script -----------------


def _script(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *args], env={"PATH": str(SCRIPT.parent), **env}, capture_output=True,
        text=True, timeout=60, check=False, cwd=cwd,
    )


def _one_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == EXIT_CONFIG, done.stderr
    assert "Traceback" not in done.stderr and PASSWORD not in done.stderr + done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


@pytest.fixture(scope="module")
def missing_column_profile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("profile") / "library.toml"
    path.write_text(koha_profile_text().replace('email = "email"', 'email = "mail"'), "utf-8")
    return path


@pytest.fixture(scope="module")
def koha_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("koha") / "koha.db"
    engine = make_engine(f"sqlite:///{path}")
    create_borrowers(engine)
    engine.dispose()
    return f"sqlite:///{path}"


def _cases(port: int) -> dict[str, tuple[str, str, str]]:
    """name -> (DIRECTORY_URL, DIRECTORY_PROFILE or 'file', the line's start)."""
    return {
        "driver missing": (
            f"mysql+mysqldb://reset:{PASSWORD}@127.0.0.1/koha", "koha",
            "resetbot: DIRECTORY_URL: the driver for 'mysql+mysqldb' is not installed"),
        "mariadb refuses": (
            f"mysql+pymysql://reset:{PASSWORD}@127.0.0.1:{port}/koha", "koha",
            f"resetbot: DIRECTORY_URL: the directory database mysql+pymysql://reset:***@"
            f"127.0.0.1:{port}/koha cannot be read: (2003, \"Can't connect to MySQL server"),
        "postgres refuses": (
            f"postgresql://reset:{PASSWORD}@127.0.0.1:{port}/koha", "koha",
            f"resetbot: DIRECTORY_URL: the directory database postgresql+psycopg://reset:***@"
            f"127.0.0.1:{port}/koha cannot be read: connection failed"),
        "sqlite file missing": (
            "sqlite:///no-such-koha.db", "koha",
            "resetbot: DIRECTORY_URL: there is no SQLite database 'no-such-koha.db'"),
        "column missing": (
            "KOHA_FILE", "file", "resetbot: PROFILE: email: there is no column 'mail' in table "
            "'borrowers'"),
    }


@pytest.mark.parametrize("case", ["driver missing", "mariadb refuses", "postgres refuses",
                                  "sqlite file missing", "column missing"])
def test_an_unusable_directory_stops_every_command_with_one_line(
    tmp_path: Path, case: str, koha_file: str, missing_column_profile: Path
) -> None:
    state = f"sqlite:///{tmp_path / 'state.db'}"
    upgrade(replace(Settings.from_env({}, env_file=None), database_url=state))
    url, profile, start = _cases(free_port())[case]
    url = koha_file if url == "KOHA_FILE" else url
    profile = str(missing_column_profile) if profile == "file" else profile
    start = start.replace("PROFILE", str(missing_column_profile))
    env = {"DATABASE_URL": state, "DIRECTORY_URL": url, "DIRECTORY_PROFILE": profile,
           "SLACK_BOT_TOKEN": "xoxb-test", "SLACK_SIGNING_SECRET": "not-used",
           # The file is a copy of koha.toml: its cost 8 is allowed by name (see _env).
           "PASSWORD_SCHEMES": "bcrypt", "PASSWORD_ALLOW_WEAK_ROUNDS": "true"}
    commands = [("directory", "check"), ("worker", "--burst"), ("serve", "--port", "0"),
                ("reset", "--scope", "all", "--dry-run"), ("mail", "preview", "--user", "ada")]
    if case != "mariadb refuses":
        commands = commands[:1]  # the others once: each command opens the directory the same way
    for command in commands:
        line = _one_line(_script(tmp_path, env, *command))
        assert line.startswith(start), (command, line)


# ---- /healthz ---------------------------------------------------------------------------------


def _health(sessions: sessionmaker[Session], redis: Redis,
            directory: Directory | None) -> tuple[str, Any]:
    wsgi = make_wsgi_app(None, signing_secret=None, sessions=sessions, redis=redis,
                         namespace="unused",
                         directory=None if directory is None else SqlDirectory(directory))
    statuses: list[str] = []
    body = b"".join(wsgi({"PATH_INFO": "/healthz", "REQUEST_METHOD": "GET"},
                         lambda status, headers: statuses.append(status)))  # type: ignore[arg-type,return-value]
    return statuses[0], json.loads(body)


@state_on_sqlite
@pytest.mark.mariadb
def test_healthz_reports_the_directory_apart_from_the_database(
    settings: Settings, redis_conn: Redis
) -> None:
    upgrade(settings)
    state = make_engine(settings.database_url)
    sessions = make_sessionmaker(state)
    directory: Directory | None = None
    try:
        with mariadb_database() as url:
            engine = make_engine(url)
            create_borrowers(engine)
            engine.dispose()
            directory = Directory.from_settings(replace(
                settings, directory_url=url, directory_profile="koha", password_rounds=None))
            assert _health(sessions, redis_conn, directory) == (
                "200 OK", {"status": "ok", "database": "ok", "redis": "ok", "directory": "ok"})
        # The database is dropped now, its connections killed: the directory is down.
        assert _health(sessions, redis_conn, directory) == (
            "503 Service Unavailable", {"status": "unavailable", "database": "ok", "redis": "ok",
                                        "directory": "unavailable"})
    finally:
        if directory is not None:
            directory.dispose()
        state.dispose()


@state_on_sqlite
def test_healthz_says_unavailable_for_a_directory_on_a_closed_port(
    settings: Settings, redis_conn: Redis, koha_file: str
) -> None:
    upgrade(settings)
    state = make_engine(settings.database_url)
    try:
        directory = Directory.from_settings(replace(
            settings, directory_url=koha_file, directory_profile="koha", password_rounds=None))
        assert _health(make_sessionmaker(state), redis_conn, directory)[1]["directory"] == "ok"
        port = free_port()
        directory.dispose()  # as if the server went away: the same table, nothing listening
        directory.engine = make_engine(f"mysql+pymysql://reset:{PASSWORD}@127.0.0.1:{port}/koha")
        status, body = _health(make_sessionmaker(state), redis_conn, directory)
        assert status == "503 Service Unavailable"
        assert body == {"status": "unavailable", "database": "ok", "redis": "ok",
                        "directory": "unavailable"}
        directory.dispose()
    finally:
        state.dispose()
