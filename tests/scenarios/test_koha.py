"""Resets in a library system's own users table: Koha's `borrowers`, in a database of its own.

The directory is a Koha-shaped table on MariaDB (the `koha` profile), and the same table on
PostgreSQL and SQLite read through a profile *file*; resetbot's state lives in another database.
Real tasks run through the real engine (RQ burst workers on the shared Redis, mail to an SMTP
server on loopback), and every hash is checked the way Koha checks a sign-in, with Perl's
Crypt::Eksblowfish::Bcrypt.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from redis import Redis
from sqlalchemy import Engine, inspect

from core.directory import Directory
from core.migrate import upgrade
from core.models import ItemState, Scope, TaskStatus
from core.settings import Settings
from tests.support.engine import build_context, items_by_user, run_until_final, submit
from tests.support.koha import (
    BORROWERS,
    EVERYONE,
    FUTURE,
    ON_MARIADB,
    ON_POSTGRES,
    ON_SQLITE,
    PATRONS,
    STAFF,
    KohaDirectory,
    dump,
    koha_accepts,
    koha_directory_in,
    row,
    schema_objects,
)
from tests.support.koha import koha_engine as koha_engine
from tests.support.koha import koha_settings as koha_settings
from tests.support.koha import state_engine as state_engine
from tests.support.smtp import SmtpServer
from tests.support.smtp import smtp_server as smtp_server

pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")

DEFAULT_PASSWORD = "Quiet-Harbour-73!"
#: What a reset may change in a row it resets; every other column stays as it was.
PASSWORD_COLUMNS = {"password", "password_expiration_date", "login_attempts", "updated_on"}
BY_NUMBER = {b.number: b for b in BORROWERS}
state_on_sqlite = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture(params=[ON_MARIADB, ON_POSTGRES, ON_SQLITE])
def koha_directory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KohaDirectory]:
    with koha_directory_in(request.param, tmp_path) as made:
        yield made


def _same_except_password_columns(before: dict[str, Any], after: dict[str, Any]) -> None:
    for column, value in before.items():
        if column not in PASSWORD_COLUMNS:
            assert after[column] == value, column


def _as_date(value: object) -> date | None:
    """DATE as the driver returns it (SQLite: text)."""
    if value is None or isinstance(value, date):
        return value
    return date.fromisoformat(str(value)[:10])


@state_on_sqlite
@pytest.mark.parametrize(
    ("scope", "selection", "expected"),
    [
        (Scope.ALL, (), EVERYONE),
        (Scope.ALL_EXCEPT_SELECTED, (2, 5), EVERYONE - {2, 5}),
        (Scope.ALL_WITHOUT_ROLE, (), PATRONS),  # staff (flags non-zero) are left alone
        (Scope.SELECTED_ONLY, (3, 4), {3, 4}),
    ],
)
def test_each_scope_sets_a_default_password_koha_accepts(
    koha_settings: Settings, koha_engine: Engine, state_engine: Engine, redis_conn: Redis,
    scope: Scope, selection: tuple[int, ...], expected: set[int],
) -> None:
    before, schema = dump(koha_engine), schema_objects(koha_engine)
    before_rows = {number: row(koha_engine, number) for number in expected}
    context = build_context(koha_settings, redis_conn, state_engine)
    try:
        task_id = submit(context, scope, selection, default_password=DEFAULT_PASSWORD)
        final = run_until_final(context, task_id)
    finally:
        context.close()
    assert final.status is TaskStatus.COMPLETED
    assert final.counts.get(ItemState.RESET) == len(expected)

    after = dump(koha_engine)
    assert set(after) == EVERYONE  # no row added or removed
    for number in EVERYONE - expected:
        assert after[number] == before[number], f"borrower {number} was touched"
    stored = {number: row(koha_engine, number) for number in sorted(expected)}
    assert all(r["password"].startswith("$2a$04$") for r in stored.values())
    assert koha_accepts([(DEFAULT_PASSWORD, r["password"]) for r in stored.values()]) == [
        True
    ] * len(expected)
    for number, current in stored.items():
        _same_except_password_columns(before_rows[number], current)
        # Must change at the next sign-in: Koha asks for a new password from today.
        assert _as_date(current["password_expiration_date"]) == date.today()
        locked_on_purpose = BY_NUMBER[number].login_attempts == -1
        assert current["login_attempts"] == (-1 if locked_on_purpose else 0)
    assert schema_objects(koha_engine) == schema  # no table, index or trigger added


@pytest.mark.parametrize("database_url", [
    "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)
], indirect=True)
def test_mailed_passwords_work_in_koha_and_expiry_dates_follow_the_rules(
    koha_settings: Settings, koha_engine: Engine, state_engine: Engine, redis_conn: Redis,
    smtp_server: SmtpServer,
) -> None:
    before, schema = dump(koha_engine), schema_objects(koha_engine)
    context = build_context(koha_settings, redis_conn, state_engine)
    try:
        task_id = submit(context, Scope.ALL_WITHOUT_ROLE, require_change=False)
        final = run_until_final(context, task_id)
    finally:
        context.close()
    assert final.status is TaskStatus.COMPLETED
    items = items_by_user(context.sessions, task_id)
    assert set(items) == PATRONS
    # Accounts staff locked on purpose (-1) are left out of an e-mailed reset by default.
    locked = {b.number for b in BORROWERS if b.login_attempts == -1 and not b.is_staff}
    with_email = {b.number for b in BORROWERS if b.email and not b.is_staff} - locked
    assert {n for n, item in items.items() if item.state == ItemState.NOTIFIED} == with_email
    assert {n for n, item in items.items() if item.state == ItemState.LOCKED} == locked
    assert {n for n, item in items.items() if item.state == ItemState.NO_EMAIL} == (
        PATRONS - with_email - locked
    )

    mails = smtp_server.messages
    assert sorted(mail.to for mail in mails) == sorted(
        str(BY_NUMBER[n].email) for n in with_email
    )
    pairs = []
    for mail in mails:
        number = next(b.number for b in BORROWERS if b.email == mail.to)
        assert f"Username: {BY_NUMBER[number].username}" in mail.text
        pairs.append((mail.password, row(koha_engine, number)["password"]))
    assert koha_accepts(pairs) == [True] * len(with_email)

    after = dump(koha_engine)
    for number in STAFF:
        assert after[number] == before[number], f"staff member {number} was touched"
    for number in locked:
        assert after[number] == before[number], f"locked borrower {number} was touched"
    for number in PATRONS - locked:
        current, borrower = row(koha_engine, number), BY_NUMBER[number]
        assert current["password"] != before[number][list(current).index("password")]
        # Without must-change, a date already past is cleared (the new password is not born
        # expired) and a date to come is the library's own choice: kept.
        expected_expiry = borrower.expires if borrower.expires == FUTURE else None
        assert _as_date(current["password_expiration_date"]) == expected_expiry
        assert current["login_attempts"] == (-1 if borrower.login_attempts == -1 else 0)
    assert schema_objects(koha_engine) == schema


@state_on_sqlite
def test_db_upgrade_makes_no_users_table_and_nothing_in_the_directory(
    koha_settings: Settings, koha_engine: Engine, state_engine: Engine
) -> None:
    schema = schema_objects(koha_engine)
    upgrade(koha_settings)  # again: idempotent, still nothing there
    tables = set(inspect(state_engine).get_table_names())
    assert {"reset_tasks", "reset_items", "audit_log"} <= tables
    assert not tables & {"users", "users_search", "borrowers"}
    assert schema_objects(koha_engine) == schema


@state_on_sqlite
def test_the_picker_and_the_preview_read_koha_as_koha_does(
    koha_settings: Settings, koha_engine: Engine
) -> None:
    directory = Directory.from_settings(koha_settings)
    try:
        # No user id: the card number is the username, and searching by card finds them.
        assert [(u.username, u.full_name) for u in directory.search("c0002")] == [
            ("C0002", "Bob Binder")
        ]
        assert [u.username for u in directory.search("LOVELACE")] == ["ada"]
        assert [u.username for u in directory.search("example.org")] == [
            "C0002", "ada", "carol", "grace", "heidi"
        ]
        assert directory.search("%") == []
        assert [u.id for u in directory.by_username(["C0004", "erin"])] == [4, 5]
        staff = {u.id for u in directory.get_many(EVERYONE) if u.is_staff}
        assert staff == STAFF
        preview = directory.preview(Scope.ALL, ())
        assert (preview.users, preview.emailable, preview.staff) == (8, 5, 2)
        assert directory.preview(Scope.ALL_WITHOUT_ROLE, ()).users == len(PATRONS)
        assert directory.usernames_in_password("xx-grace-xx", Scope.ALL, ()) == 1
    finally:
        directory.dispose()
