"""A DIRECTORY_URL or DATABASE_URL refused, or a database that refuses: no part of a password is
ever shown (user part or `?password=`), and a password that breaks the URL is named as such."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from core.db import parse_url, shown_url
from core.errors import ConfigError

SCRIPT = Path(sys.executable).parent / "resetbot"
#: A closed port on loopback: the server refuses at once.
CLOSED = "127.0.0.1:9"
HINT = "URL-encode the password (`@` is `%40`)"


def resetbot(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), *args], env={"PATH": str(SCRIPT.parent), **env},
                          capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path)


#: (URL, the parts of its password that may never be shown).
BROKEN = [
    (f"mysql+pymysql://rb:Lib@2026@{CLOSED}/koha", ["Lib", "2026"]),
    (f"mysql+pymysql://rb:Li@20:26@{CLOSED}/koha", ["Li@", "20:26", "26@"]),
    (f"postgresql+psycopg://rb:p@ss:w0rd@{CLOSED}/koha", ["p@ss", "ss:w0rd", "w0rd"]),
    ("mysql+pymysql://rb:Lib", ["Lib"]),  # a `#` in a .env line cut the rest off
    # An `@` then a `/` or `?` in the password: the rest parses as a host and a database or a
    # query, which a message would show.
    (f"mysql+pymysql://rb:Se@kr/3t@{CLOSED}/koha", ["kr/", "3t"]),
    (f"postgresql+psycopg://rb:Se@kr?x=3t@{CLOSED}/koha", ["kr", "3t"]),
]


@pytest.mark.parametrize(("url", "secrets"), BROKEN)
@pytest.mark.parametrize("setting", ["DIRECTORY_URL", "DATABASE_URL"])
def test_a_url_broken_by_its_password_says_to_encode_it_and_shows_none_of_it(
    url: str, secrets: list[str], setting: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_url(url, setting)
    said = str(refused.value)
    assert said.startswith(setting) and said.endswith(HINT)
    for secret in secrets:
        assert secret not in said


@pytest.mark.parametrize(("url", "secrets"), BROKEN[:2])
def test_the_commands_refuse_such_a_url_in_one_line(
    tmp_path: Path, url: str, secrets: list[str]
) -> None:
    for env, args in (
        ({"DIRECTORY_URL": url, "DIRECTORY_PROFILE": "koha",
          "DATABASE_URL": f"sqlite:///{tmp_path / 'state.db'}"}, ("directory", "check")),
        ({"DATABASE_URL": url}, ("db", "upgrade")),
    ):
        done = resetbot(tmp_path, env, *args)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert HINT in done.stderr and done.stderr.count("\n") == 1
        for secret in secrets:
            assert secret not in done.stdout + done.stderr


def test_a_password_in_the_query_is_hidden() -> None:
    url = make_url(f"mysql+pymysql://rb@{CLOSED}/koha?password=Sekr3t&charset=utf8mb4")
    assert shown_url(url) == f"mysql+pymysql://rb@{CLOSED}/koha?charset=utf8mb4&password=***"
    both = make_url(f"postgresql+psycopg://rb:Sekr3t@{CLOSED}/koha?passfile=/x&sslkey=/k")
    assert "Sekr3t" not in shown_url(both) and "/x" not in shown_url(both)


@pytest.mark.parametrize("url", [
    f"mysql+pymysql://rb@{CLOSED}/koha?password=Sekr3t-Query",
    f"mysql+pymysql://rb:Sekr3t-User@{CLOSED}/koha",
    f"postgresql+psycopg://rb@{CLOSED}/koha?password=Sekr3t-Query",
])
def test_a_directory_that_refuses_is_named_without_its_password(tmp_path: Path, url: str) -> None:
    done = resetbot(tmp_path, {"DIRECTORY_URL": url, "DIRECTORY_PROFILE": "koha",
                               "DATABASE_URL": f"sqlite:///{tmp_path / 'state.db'}"},
                    "directory", "check")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("resetbot: DIRECTORY_URL: the directory database ")
    assert "Sekr3t" not in done.stdout + done.stderr
