"""README's "Using resetbot with Koha" and "Describing your own users table", run as written.

The profile file example is used as it stands against a matching table on SQLite, PostgreSQL and
MariaDB. The Koha settings, the GRANT statements and the shell lines run for real, with only the
names a reader would change replaced (database, MariaDB user, its password): the reset of one
patron goes through a MariaDB user with the README's rights and nothing more, so it shows
resetbot needs no others.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from core.db import make_engine
from tests.support.databases import MARIADB_ADMIN_URL, mariadb_database, postgres_database
from tests.support.koha import BORROWERS, create_borrowers, dump, koha_accepts, schema_objects
from tests.support.services import REDIS_URL

README = Path(__file__).resolve().parents[2] / "README.md"
SCRIPT = Path(sys.executable).parent / "resetbot"
FIRST_PASSWORD = "Quiet-Harbour-73!"
#: What a reset may change in the row it resets (MariaDB moves updated_on by itself).
PASSWORD_COLUMNS = {"password", "password_expiration_date", "login_attempts", "updated_on"}

PATRONS_DDL = """
    CREATE TABLE patrons (
        patron_id INTEGER PRIMARY KEY,
        login VARCHAR(64) NULL,
        barcode VARCHAR(32) NULL,
        given_name VARCHAR(100) NULL,
        family_name VARCHAR(100) NULL,
        email_address VARCHAR(255) NULL,
        patron_type VARCHAR(16) NULL,
        pass_hash VARCHAR(255) NULL,
        must_reset BOOLEAN NOT NULL DEFAULT FALSE,
        failed_logins INTEGER NOT NULL DEFAULT 0,
        password_set_at TIMESTAMP NULL,
        home_branch VARCHAR(10) NULL
    )
"""
PATRONS = [
    (1, "ada", "B1", "Ada", "Lovelace", "ada@example.org", "PATRON", "$2b$12$" + "a" * 53),
    (2, "", "B2", "Bob", "Binder", None, "PATRON", "$2b$12$" + "b" * 53),
    (3, "carol", "B3", "Carol", "Cataloguer", "carol@example.org", "STAFF", None),
]


def section(title: str) -> str:
    text_ = README.read_text("utf-8")
    start = text_.index(f"\n## {title}\n")
    end = text_.find("\n## ", start + 1)
    return text_[start:end]


def blocks(title: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", section(title), flags=re.S)


def resetbot(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), *args], env={"PATH": str(SCRIPT.parent), **env},
                          capture_output=True, text=True, timeout=120, check=False, cwd=cwd)


# ---- "Describing your own users table" ---------------------------------------------------------


def _database(kind: str, tmp_path: Path) -> AbstractContextManager[str]:
    if kind == "mariadb":
        return mariadb_database()
    if kind == "postgres":
        return postgres_database()
    return nullcontext(f"sqlite:///{tmp_path / 'library.db'}")


@pytest.fixture(params=[
    pytest.param("mariadb", marks=pytest.mark.mariadb),
    pytest.param("postgres", marks=pytest.mark.postgres),
    "sqlite",
])
def patrons_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with _database(request.param, tmp_path) as url:
        engine = make_engine(url)
        with engine.begin() as connection:
            connection.execute(text(PATRONS_DDL))
            connection.execute(text(
                "INSERT INTO patrons (patron_id, login, barcode, given_name, family_name, "
                "email_address, patron_type, pass_hash) VALUES (:i, :l, :b, :g, :f, :e, :t, :p)"
            ), [dict(zip("ilbgfetp", patron, strict=True)) for patron in PATRONS])
        engine.dispose()
        yield url


def test_the_profile_file_example_works_as_written(patrons_url: str, tmp_path: Path) -> None:
    (profile,) = blocks("Describing your own users table", "toml")
    path = tmp_path / "library.toml"
    path.write_text(profile, encoding="utf-8")
    state = tmp_path / "state.db"
    done = resetbot(tmp_path, {"DIRECTORY_URL": patrons_url, "DIRECTORY_PROFILE": str(path),
                               "DATABASE_URL": f"sqlite:///{state}"}, "directory", "check",
                    "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["table"], report["users"], report["staff"], report["without_email"]) == (
        "patrons", 3, 1, 1)
    assert report["hash_formats"] == {"$2b$12$": 2, "empty": 1}
    assert (report["writes"], report["warning"]) == ("$2b$12$", None)
    assert not state.exists()  # resetbot's own database was not touched


def test_the_profile_file_example_names_a_missing_column_in_one_line(tmp_path: Path) -> None:
    (profile,) = blocks("Describing your own users table", "toml")
    path = tmp_path / "library.toml"
    path.write_text(profile, encoding="utf-8")
    url = f"sqlite:///{tmp_path / 'library.db'}"
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text(PATRONS_DDL.replace("email_address", "email")))
    engine.dispose()
    done = resetbot(tmp_path, {"DIRECTORY_URL": url, "DIRECTORY_PROFILE": str(path)},
                    "directory", "check")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr == (f"resetbot: {path}: email: there is no column 'email_address' in "
                           "table 'patrons'\n")
    # The README quotes the same refusal for a file named library.toml.
    assert "`library.toml: email: there is no column 'email_address' in table 'patrons'`" in (
        section("Describing your own users table").replace("\n", " "))


# ---- "Using resetbot with Koha" ---------------------------------------------------------------


class Names:
    """The names a reader replaces in the README's lines: Koha's database, the MariaDB user
    and its password, resetbot's own database."""

    def __init__(self, koha_url: str, state_url: str) -> None:
        self.koha = make_url(koha_url)
        self.state = make_url(state_url)
        self.user = f"rb_{secrets.token_hex(4)}"
        self.password = secrets.token_urlsafe(16)

    def sql(self, statement: str) -> str:
        return (statement.replace("'resetbot'@", f"'{self.user}'@")
                .replace("koha.borrowers", f"`{self.koha.database}`.borrowers")
                .replace("choose-a-long-password", self.password))

    def setting(self, name: str, value: str) -> str:
        if name == "DIRECTORY_URL":
            return (value.replace("resetbot:", f"{self.user}:")
                    .replace("choose-a-long-password", self.password)
                    .replace("/koha", f"/{self.koha.database}"))
        if name == "DATABASE_URL":
            # The test PostgreSQL's user, host and port (RESETBOT_TEST_POSTGRES_URL).
            state = self.state.render_as_string(hide_password=False).partition("://")[2]
            return value.replace("resetbot@127.0.0.1/resetbot", state)
        return value


def _settings(names: Names) -> dict[str, str]:
    settings_block = blocks("Using resetbot with Koha", "sh")[0]
    env: dict[str, str] = {}
    for line in settings_block.splitlines():
        name, _, value = line.partition("=")
        env[name] = names.setting(name, value)
    assert set(env) == {"DIRECTORY_URL", "DIRECTORY_PROFILE", "DATABASE_URL"}
    return env


def _grant(names: Names) -> None:
    (grants,) = blocks("Using resetbot with Koha", "sql")
    admin = create_engine(MARIADB_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        for statement in filter(None, (part.strip() for part in grants.split(";"))):
            connection.execute(text(names.sql(statement)))
    admin.dispose()


def _drop_user(names: Names) -> None:
    admin = create_engine(MARIADB_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"DROP USER IF EXISTS '{names.user}'@'127.0.0.1'"))
    admin.dispose()


@pytest.fixture
def koha() -> Iterator[Engine]:
    with mariadb_database() as url:
        engine = make_engine(url)
        create_borrowers(engine)
        yield engine
        engine.dispose()


@pytest.mark.mariadb
@pytest.mark.postgres
def test_using_resetbot_with_koha_as_written(
    koha: Engine, tmp_path: Path, queue_name: str, redis_conn: Any
) -> None:
    shell = blocks("Using resetbot with Koha", "sh")[1]
    with postgres_database() as state_url:
        names = Names(koha.url.render_as_string(hide_password=False), state_url)
        _grant(names)
        try:
            env = {**_settings(names), "REDIS_URL": REDIS_URL,
                   "RESET_QUEUE": queue_name}
            rows, schema = dump(koha), schema_objects(koha)
            (tmp_path / "first-password.txt").write_text(FIRST_PASSWORD + "\n")
            # The lines as written; then the worker they started in the background is stopped.
            script = "set -e\n" + shell + 'kill -TERM "$!"\nwait "$!" || true\n'
            done = subprocess.run(
                ["bash", "-c", script], env={"PATH": str(SCRIPT.parent) + ":/usr/bin:/bin",
                                             **env},
                capture_output=True, text=True, timeout=180, check=False, cwd=tmp_path,
            )
        finally:
            _drop_user(names)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "Table:            borrowers" in done.stdout
    assert "A reset writes:   $2a$08$" in done.stdout
    assert FIRST_PASSWORD not in output and names.password not in output
    after = dump(koha)
    ada = next(b.number for b in BORROWERS if b.userid == "ada")
    assert {number for number in rows if after[number] != rows[number]} == {ada}
    columns = list(_columns(koha))
    changed = {columns[i] for i, (old, new) in enumerate(zip(rows[ada], after[ada], strict=True))
               if old != new}
    assert "password" in changed and changed <= PASSWORD_COLUMNS
    stored = str(after[ada][columns.index("password")])
    assert stored.startswith("$2a$08$")
    assert koha_accepts([(FIRST_PASSWORD, stored)]) == [True]
    assert schema_objects(koha) == schema


def _columns(engine: Engine) -> list[str]:
    with engine.connect() as connection:
        return list(connection.execute(text("SELECT * FROM borrowers LIMIT 0")).keys())
