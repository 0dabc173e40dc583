"""Users picked by name on Koha as Koha compares names: its database's collation, after NFC.

Koha's sign-in finds `José` whatever case and accents are typed, and whichever Unicode form
(MariaDB's utf8mb4_unicode_ci); `resetbot reset --user` and `--users-file` find the same
patrons, and refuse a name that matches several, listing them.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from core.db import make_engine
from core.migrate import upgrade
from core.settings import Settings
from tests.support.cli import cli_settings as cli_settings
from tests.support.cli import run as run
from tests.support.databases import mariadb_database
from tests.support.koha import Borrower, add_borrowers, create_borrowers
from tests.support.smtp import smtp_server as smtp_server

pytestmark = [pytest.mark.mariadb, pytest.mark.parametrize("database_url", ["sqlite"],
                                                           indirect=True)]

NAMED = [
    Borrower(51, "C0051", "José", "José", "Martí", None, 0, 0, None),
    Borrower(52, "C0052", "Zoë", "Zoë", "Ångström", "zoe@example.org", 0, 0, None),
    # Two patrons Koha would both find for "Lena": one by user id, one by card number.
    Borrower(53, "C0053", "lena", "Lena", "One", None, 0, 0, None),
    Borrower(54, "LÉNA", None, "Léna", "Two", None, 0, 0, None),
]


@pytest.fixture
def koha_env(cli_settings: Settings) -> Iterator[dict[str, str]]:
    with mariadb_database() as url:
        engine = make_engine(url)
        create_borrowers(engine)
        add_borrowers(engine, NAMED)
        engine.dispose()
        upgrade(replace(cli_settings, directory_url=url, directory_profile="koha",
                        password_rounds=4, password_allow_weak_rounds=True))
        yield {"DIRECTORY_URL": url, "DIRECTORY_PROFILE": "koha", "PASSWORD_ROUNDS": "4",
               "PASSWORD_ALLOW_WEAK_ROUNDS": "true"}


def _nfd(name: str) -> str:
    return unicodedata.normalize("NFD", name)


def test_a_name_in_another_unicode_form_or_without_accents_finds_the_patron(
    run: Any, koha_env: dict[str, str], tmp_path: Path
) -> None:
    typed = run("reset", "--scope", "selected_only", "--user", _nfd("José"), "--dry-run",
                **koha_env)
    assert typed.code == 0, typed.err
    assert "(the 1 selected user)" in typed.out and " in the directory (" not in typed.out

    plain = run("reset", "--scope", "selected_only", "--user", "jose,ZOE", "--dry-run",
                **koha_env)
    assert plain.code == 0, plain.err
    assert "Note: jose is José in the directory (as the directory compares names)." in plain.out
    assert "Note: ZOE is Zoë in the directory" in plain.out
    assert "(the 2 selected users)" in plain.out

    listed = tmp_path / "names.txt"
    listed.write_text(f"{_nfd('zoë')}\nJOSE\n", encoding="utf-8")
    from_file = run("reset", "--scope", "selected_only", "--users-file", str(listed),
                    "--dry-run", **koha_env)
    assert from_file.code == 0, from_file.err
    assert "(the 2 selected users)" in from_file.out


def test_a_name_koha_would_find_twice_is_refused_and_both_are_listed(
    run: Any, koha_env: dict[str, str]
) -> None:
    clash = run("reset", "--scope", "selected_only", "--user", "Lena", "--yes", **koha_env)
    assert clash.code == 1
    assert "Lena (could be LÉNA, lena)" in clash.err
    # The same spelling as in the directory says which one is meant.
    exact = run("reset", "--scope", "selected_only", "--user", "lena", "--dry-run", **koha_env)
    assert exact.code == 0, exact.err
    assert "(the 1 selected user)" in exact.out and " in the directory (" not in exact.out
    unknown = run("reset", "--scope", "selected_only", "--user", "nobody", "--yes", **koha_env)
    assert unknown.code == 1 and "no such user in the directory: nobody" in unknown.err
