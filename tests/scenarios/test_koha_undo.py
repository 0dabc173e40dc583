"""Undo on Koha's own `borrowers` (MariaDB), from the terminal, with real burst workers.

After a reset e-mailed new passwords, `tasks undo` gives every borrower who has not changed
theirs since their previous password back, as Koha checks a sign-in (Perl's
Crypt::Eksblowfish), with the expiry date and lock as they were; one who changed it is left
alone. With only docs/koha.md's required grants (no SELECT on `password`), nothing is kept and
Undo is refused before anything changes, as `directory check` says.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from redis import Redis
from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session

from core.db import make_engine
from core.directory import Directory
from core.models import ItemState, ResetItem, ResetTask, TaskStatus, UndoSnapshot
from core.passwords import PasswordHasher
from core.settings import Settings
from core.undo import undo_offered_until
from tests.scenarios.test_readme_directories import Names, _drop_user, _grant
from tests.support.cli import cli_settings as cli_settings
from tests.support.cli import run as run
from tests.support.engine import build_context
from tests.support.engine import work as engine_work
from tests.support.koha import (
    BORROWERS,
    MOVES_BY_ITSELF,
    before,
    but_moving,
    column_names,
    dump,
    koha_accepts,
    koha_with_passwords,
    url_as,
)
from tests.support.smtp import SmtpServer
from tests.support.smtp import smtp_server as smtp_server

pytestmark = [pytest.mark.mariadb,
              pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)]


@pytest.fixture
def koha() -> Iterator[tuple[Engine, str]]:
    """Koha's tables, each borrower signing in with `before(number)` (Koha's bcrypt)."""
    with koha_with_passwords() as made:
        yield made


def env(url: str) -> dict[str, str]:
    return {"DIRECTORY_URL": url, "DIRECTORY_PROFILE": "koha", "PASSWORD_ROUNDS": "4",
            "PASSWORD_ALLOW_WEAK_ROUNDS": "true"}


def burst(run: Any, url: str) -> None:
    done = run("worker", "--burst", **env(url))
    assert done.code == 0, done.err


def kept(cli_settings: Settings) -> int:
    engine = make_engine(cli_settings.database_url)
    try:
        with Session(engine) as session:
            return int(session.scalar(select(func.count()).select_from(UndoSnapshot)) or 0)
    finally:
        engine.dispose()


def mailed_numbers(cli_settings: Settings, task_id: int) -> set[int]:
    engine = make_engine(cli_settings.database_url)
    try:
        with Session(engine) as session:
            return {int(user_id) for user_id in session.scalars(select(ResetItem.user_id).where(
                ResetItem.task_id == task_id, ResetItem.state == ItemState.NOTIFIED))}
    finally:
        engine.dispose()


def test_undo_gives_koha_borrowers_their_previous_password_expiry_and_lock(
    run: Any, koha: tuple[Engine, str], cli_settings: Settings, redis_conn: Redis,
    smtp_server: SmtpServer,
) -> None:
    engine, url = koha
    assert run("db", "upgrade", **env(url)).code == 0
    original = dump(engine)
    started = run("reset", "--scope", "all", "--no-skip-locked", "--yes", "--detach", **env(url))
    assert started.code == 0 and "cannot be undone" not in started.out
    burst(run, url)
    reset = dump(engine)
    assert all(reset[n] != original[n] for n in original), "every borrower was reset"
    assert kept(cli_settings) == len(BORROWERS)
    mailed = mailed_numbers(cli_settings, 1)
    assert mailed, "some borrowers were e-mailed"
    # Carol signs in and chooses a password of her own: Undo must leave her alone.
    with engine.begin() as connection:
        connection.execute(text("UPDATE borrowers SET password = :hash WHERE borrowernumber = 3"),
                           {"hash": PasswordHasher(("bcrypt",), 4, ident="2a").hash("Carols")})
    changed_by_carol = dump(engine)[3]
    messages_before = len(smtp_server.messages)

    undone = run("tasks", "undo", "1", "--yes", "--detach", **env(url))
    assert undone.code == 0, undone.err
    assert f"{len(BORROWERS) - 1} users still have the password it set" in undone.out
    assert "1 user changed their password since" in undone.out
    burst(run, url)

    after = dump(engine)
    assert after[3] == changed_by_carol
    columns = column_names(engine)
    for borrower in BORROWERS:
        if borrower.number == 3:
            continue
        was, now = dict(zip(columns, original[borrower.number], strict=True)), dict(
            zip(columns, after[borrower.number], strict=True))
        was.pop(MOVES_BY_ITSELF), now.pop(MOVES_BY_ITSELF)
        assert now == was, f"borrower {borrower.number} is not as before the reset"
    others = [b.number for b in BORROWERS if b.number != 3]
    assert koha_accepts([(before(n), str(after[n][columns.index("password")]))
                         for n in others]) == [True] * len(others)
    told = {mail.to for mail in smtp_server.messages[messages_before:]}
    emails = {b.number: b.email for b in BORROWERS}
    assert told == {emails[n] for n in mailed if n != 3}
    burst(run, url)  # the reaper: the Undo has ended, nothing stays sealed
    assert kept(cli_settings) == 0


def test_with_the_optional_grant_undo_works_with_column_grants_only(
    run: Any, koha: tuple[Engine, str], cli_settings: Settings, redis_conn: Redis,
    smtp_server: SmtpServer,
) -> None:
    """The grants of docs/koha.md plus its optional SELECT (password): every Undo query (the locked
    read in the reset's write, the put-back) runs with column privileges only."""
    engine, root_url = koha
    names = Names(root_url, cli_settings.database_url)
    _grant(names)
    _grant(names, 1)
    try:
        url = url_as(engine, names.user, names.password)
        assert "  undo: granted" in run("directory", "check", **env(url)).out
        assert run("db", "upgrade", **env(url)).code == 0
        original = dump(engine)
        started = run("reset", "--scope", "selected_only", "--user", "ada,erin", "--yes",
                      "--detach", **env(url))
        assert started.code == 0 and "cannot be undone" not in started.out
        burst(run, url)
        assert kept(cli_settings) == 2
        undone = run("tasks", "undo", "1", "--yes", "--detach", **env(url))
        assert undone.code == 0, undone.err
        burst(run, url)
        after = dump(engine)
        columns = column_names(engine)
        for number in (1, 5):
            assert but_moving(after[number], columns) == but_moving(original[number], columns)
        assert koha_accepts([(before(1), str(after[1][columns.index("password")]))]) == [True]
    finally:
        _drop_user(names)


@pytest.mark.slow
def test_undo_after_a_cancel_on_koha_puts_back_the_borrowers_reset_before_it(
    run: Any, koha: tuple[Engine, str], cli_settings: Settings, redis_conn: Redis,
    smtp_server: SmtpServer,
) -> None:
    engine, url = koha
    assert run("db", "upgrade", **env(url)).code == 0
    original = dump(engine)
    assert run("reset", "--scope", "all", "--no-skip-locked", "--yes", "--detach",
               **env(url)).code == 0
    # Planned in chunks of two; only the first chunk is reset before the cancel.
    library = replace(cli_settings, directory_url=url, directory_profile="koha",
                      password_rounds=4, password_allow_weak_rounds=True, chunk_size=2,
                      chunk_sweep=0)  # a job for each chunk: the cancel falls between them
    state = make_engine(cli_settings.database_url)
    context = build_context(library, redis_conn, state)
    try:
        engine_work(context, max_jobs=2)
    finally:
        context.close()
        state.dispose()
    assert run("tasks", "cancel", "1", **env(url)).code == 0
    burst(run, url)
    cancelled = dump(engine)
    reset = {n for n in original if cancelled[n] != original[n]}
    assert reset == {1, 2}, "the first chunk only"

    undone = run("tasks", "undo", "1", "--yes", "--detach", **env(url))
    assert undone.code == 0, undone.err
    assert "2 users still have the password it set" in undone.out
    burst(run, url)
    after = dump(engine)
    columns = column_names(engine)
    for number, row in original.items():
        assert but_moving(after[number], columns) == but_moving(row, columns), (
            f"borrower {number} is not as before the reset")
    assert koha_accepts([(before(n), str(after[n][columns.index("password")]))
                         for n in sorted(reset)]) == [True, True]


def test_without_select_on_password_nothing_is_kept_and_undo_is_refused_first(
    run: Any, koha: tuple[Engine, str], cli_settings: Settings, redis_conn: Redis,
    smtp_server: SmtpServer,
) -> None:
    engine, root_url = koha
    names = Names(root_url, cli_settings.database_url)
    _grant(names)  # docs/koha.md's required grants only
    try:
        url = url_as(engine, names.user, names.password)
        checked = run("directory", "check", **env(url))
        assert checked.code == 0, checked.err
        assert ("  undo: not granted (SELECT (password, password_expiration_date, "
                "login_attempts) ON borrowers); without it Undo is not offered") in checked.out
        assert run("db", "upgrade", **env(url)).code == 0
        started = run("reset", "--scope", "selected_only", "--user", "ada", "--yes", "--detach",
                      **env(url))
        assert started.code == 0, started.err
        assert ("Note: This reset cannot be undone. Undo is not possible with this directory"
                in started.out), "the preview says so before the confirm"
        burst(run, url)
        assert kept(cli_settings) == 0, "nothing kept: the old value could not be put back"
        after_reset = dump(engine)
        refused = run("tasks", "undo", "1", "--yes", **env(url))
        assert refused.code == 1
        assert "Undo is not possible with this directory" in refused.err
        assert "GRANT SELECT (password, password_expiration_date, login_attempts)" in refused.err
        assert dump(engine) == after_reset
        # Nor does the task's thread offer Undo (what the Slack reporter renders its buttons by).
        library = replace(cli_settings, directory_url=url, directory_profile="koha",
                          password_rounds=4, password_allow_weak_rounds=True)
        directory = Directory.from_settings(library)
        state = make_engine(cli_settings.database_url)
        try:
            with Session(state) as session:
                task = session.get(ResetTask, 1)
                assert task is not None and task.status == TaskStatus.COMPLETED
                assert undo_offered_until(session, library, directory, task) is None
        finally:
            directory.dispose()
            state.dispose()
    finally:
        _drop_user(names)
