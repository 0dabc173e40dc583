"""docs/koha.md ("Using resetbot with Koha") and docs/sql-tables.md ("Describing your own users
table"), run as written.

The profile file example is used as it stands against a matching table on SQLite, PostgreSQL and
MariaDB. The Koha settings, the GRANT statements and the shell lines run for real, with only the
names a reader would change replaced (database, MariaDB user, its password), on Koha's own
tables: every step goes through a MariaDB user with the page's column grants and nothing
more, so it shows resetbot needs no others.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from core.addresses import usable_address
from core.db import make_engine
from tests.support import docs
from tests.support.databases import MARIADB_ADMIN_URL, mariadb_database, postgres_database
from tests.support.koha import (
    BORROWERS,
    KOHA_CASES,
    create_action_logs,
    create_borrowers,
    create_password_rules,
    dump,
    dump_tables,
    koha_accepts,
    schema_objects,
)
from tests.support.services import REDIS_URL
from tests.support.smtp import SmtpServer
from tests.support.smtp import smtp_server as smtp_server

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


#: The page each section is on.
PAGES = {"Using resetbot with Koha": "docs/koha.md",
         "Describing your own users table": "docs/sql-tables.md"}


def section(title: str) -> str:
    return docs.section(PAGES[title], title)


def blocks(title: str, language: str) -> list[str]:
    return docs.blocks(PAGES[title], title, language)


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


@pytest.mark.slow
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
    # The page quotes the same refusal for a file named library.toml.
    assert "`library.toml: email: there is no column 'email_address' in table 'patrons'`" in (
        section("Describing your own users table").replace("\n", " "))


# ---- "Using resetbot with Koha" ---------------------------------------------------------------


class Names:
    """The names a reader replaces in the page's lines: Koha's database, the MariaDB user
    and its password, resetbot's own database."""

    def __init__(self, koha_url: str, state_url: str) -> None:
        self.koha = make_url(koha_url)
        self.state = make_url(state_url)
        self.user = f"rb_{secrets.token_hex(4)}"
        self.password = secrets.token_urlsafe(16)

    def sql(self, statement: str) -> str:
        return (statement.replace("'resetbot'@", f"'{self.user}'@")
                .replace(" ON koha.", f" ON `{self.koha.database}`.")
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


def _grant(names: Names, block: int = 0) -> None:
    """Run one of the section's SQL blocks as MariaDB's root (0: the user and its rights; 1:
    the optional grants)."""
    grants = blocks("Using resetbot with Koha", "sql")[block]
    lines = [line for line in grants.splitlines() if not line.startswith("--")]
    admin = create_engine(MARIADB_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        for statement in filter(None, (part.strip() for part in "\n".join(lines).split(";"))):
            connection.execute(text(names.sql(statement)))
    admin.dispose()


def _drop_user(names: Names) -> None:
    admin = create_engine(MARIADB_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"DROP USER IF EXISTS '{names.user}'@'127.0.0.1'"))
    admin.dispose()


@pytest.fixture
def koha() -> Iterator[Engine]:
    """Koha's own tables (tests/support/koha.py) with every row of BORROWERS and KOHA_CASES,
    and the tables the optional grants name (Koha's rules and log, BorrowersLog off)."""
    with mariadb_database() as url:
        engine = make_engine(url)
        create_borrowers(engine, [*BORROWERS, *KOHA_CASES])
        create_password_rules(engine, {}, {"BorrowersLog": "0"})
        create_action_logs(engine)
        yield engine
        engine.dispose()


DESK_PASSWORD = "Lantern-Quarry-58?"


def _steps(cwd: Path, env: dict[str, str], *lines: str) -> subprocess.CompletedProcess[str]:
    """The page's lines run by bash as written, with a worker in the background (started by the
    lines themselves, or here: "a worker (or serve --with-worker)" is running), stopped after."""
    body = "".join(line + "\n" for line in lines)
    if "resetbot worker &" not in body:
        body = "resetbot worker &\n" + body
    script = "set -e\n" + body + 'kill -TERM "$!"\nwait "$!" || true\n'
    return subprocess.run(
        ["bash", "-c", script], env={"PATH": str(SCRIPT.parent) + ":/usr/bin:/bin", **env},
        capture_output=True, text=True, timeout=60, check=False, cwd=cwd,
        stdin=subprocess.DEVNULL,
    )


def _changed(before: dict[int, tuple[Any, ...]], after: dict[int, tuple[Any, ...]]) -> set[int]:
    assert set(before) == set(after)  # no row added or removed
    return {number for number in before if after[number] != before[number]}


@pytest.mark.slow
@pytest.mark.mariadb
@pytest.mark.postgres
def test_using_resetbot_with_koha_as_written(
    koha: Engine, tmp_path: Path, queue_name: str, redis_conn: Any, smtp_server: SmtpServer
) -> None:
    """With only the page's column grants, on Koha's own tables (foreign keys to tables the
    user cannot read): check, a default password, a preview, an e-mailed reset that leaves
    patrons without an address alone, and a typed password for them without "must change"."""
    first, everyone = blocks("Using resetbot with Koha", "sh")[1:3]
    people = {b.number: b for b in [*BORROWERS, *KOHA_CASES] if b.number in dump(koha)}
    patrons = {n for n, b in people.items() if not b.is_staff}
    with_address = {n for n in patrons if usable_address(people[n].email)}
    no_address = patrons - with_address
    columns = _columns(koha)
    rows, tables, schema = dump(koha), dump_tables(koha), schema_objects(koha)
    with postgres_database() as state_url:
        names = Names(koha.url.render_as_string(hide_password=False), state_url)
        _grant(names)
        try:
            env = {**_settings(names), "REDIS_URL": REDIS_URL,
                   "RESET_QUEUE": queue_name, "SMTP_HOST": smtp_server.host,
                   "SMTP_PORT": str(smtp_server.port), "MAIL_FROM": "library@example.org"}
            (tmp_path / "first-password.txt").write_text(FIRST_PASSWORD + "\n")
            done = _steps(tmp_path, env, *first.splitlines())
            output = done.stdout + done.stderr
            assert done.returncode == 0, output
            assert "Table:            borrowers" in done.stdout
            assert "A reset writes:   $2a$08$" in done.stdout
            # No SELECT on the password column: the survey is skipped and said to be.
            assert "Password hashes:  not read (an optional grant, below)" in done.stdout
            assert ("  hash survey: not granted (SELECT (password) ON borrowers); without it "
                    "the password formats") in done.stdout
            assert ("  undo: not granted (SELECT (password, password_expiration_date, "
                    "login_attempts) ON borrowers); without it Undo is not offered") in done.stdout
            assert "  Koha's password rules: not granted (SELECT (categorycode, " in done.stdout
            assert ("  Koha's log: not granted (SELECT (variable, value) ON systempreferences "
                    "and INSERT ON action_logs); ") in done.stdout
            assert FIRST_PASSWORD not in output and names.password not in output
            after_first = dump(koha)
            ada = next(b.number for b in BORROWERS if b.userid == "ada")
            assert _changed(rows, after_first) == {ada}
            _assert_only_password_columns(columns, rows[ada], after_first[ada])
            stored = str(after_first[ada][columns.index("password")])
            assert stored.startswith("$2a$08$")
            assert koha_accepts([(FIRST_PASSWORD, stored)]) == [True]

            preview, mailed, typed = everyone.splitlines()
            done = _steps(tmp_path, env, preview)
            assert done.returncode == 0, done.stdout + done.stderr
            # Blanks and values without @ are no e-mail, said with why (KOHA_CASES 101-103).
            assert ("    (3 addresses cannot be used and count as no e-mail: 1 only spaces, "
                    "2 no @ (such as n/a or none))\n") in done.stdout
            assert dump(koha) == after_first  # a dry run changes nothing

            done = _steps(tmp_path, env, mailed)
            assert done.returncode == 0, done.stdout + done.stderr
            after_mailed = dump(koha)
            reset = _changed(after_first, after_mailed)
            # Every patron with an address and not locked on purpose was reset (whether one
            # locked on purpose is, is issue 17's --skip-locked); none without one, no staff.
            assert {n for n in with_address if people[n].login_attempts != -1} <= reset
            assert reset <= with_address
            last_mail = {mail.to: mail.password for mail in smtp_server.messages}
            assert koha_accepts([
                (last_mail[str(people[n].email)], str(after_mailed[n][columns.index("password")]))
                for n in sorted(reset)
            ]) == [True] * len(reset)
            expiry = columns.index("password_expiration_date")
            today = date.today()
            for number in reset:
                _assert_only_password_columns(columns, after_first[number], after_mailed[number])
                # --no-require-change: a date of today or gone is cleared, one to come is kept.
                was = after_first[number][expiry]
                assert after_mailed[number][expiry] == (None if was and was <= today else was)

            (tmp_path / "no-address.txt").write_text(
                "".join(people[n].username + "\n" for n in sorted(no_address)))
            (tmp_path / "desk-password.txt").write_text(DESK_PASSWORD + "\n")
            done = _steps(tmp_path, env, typed)
            assert done.returncode == 0, done.stdout + done.stderr
            assert DESK_PASSWORD not in done.stdout + done.stderr
            final = dump(koha)
            assert _changed(after_mailed, final) == no_address
            for number in no_address:
                _assert_only_password_columns(columns, after_mailed[number], final[number])
                assert final[number][expiry] == today  # a password handed out: change it
            assert koha_accepts([
                (DESK_PASSWORD, str(final[n][columns.index("password")]))
                for n in sorted(no_address)
            ]) == [True] * len(no_address)

            # The optional grant: the survey is read, and said to be granted.
            _grant(names, 1)
            done = _steps(tmp_path, env, "resetbot directory check")
            assert "  $2a$08$" in done.stdout and "  hash survey: granted" in done.stdout
            assert "  undo: granted" in done.stdout
            assert "  Koha's password rules: granted\n" in done.stdout
            assert ("  Koha's log: granted (Koha's BorrowersLog preference is off: nothing is "
                    "written)") in done.stdout
        finally:
            _drop_user(names)
    assert dump_tables(koha) | {"borrowers": []} == tables | {"borrowers": []}
    assert schema_objects(koha) == schema


def _assert_only_password_columns(
    columns: list[str], before: tuple[Any, ...], after: tuple[Any, ...]
) -> None:
    changed = {columns[i] for i, (old, new) in enumerate(zip(before, after, strict=True))
               if old != new}
    assert "password" in changed and changed <= PASSWORD_COLUMNS, changed


def _columns(engine: Engine) -> list[str]:
    with engine.connect() as connection:
        return list(connection.execute(text("SELECT * FROM borrowers LIMIT 0")).keys())
