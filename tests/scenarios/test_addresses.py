"""One rule for "has a usable address": blanks and values that are not an address are no e-mail.

The preview, the planner, the worker, the summary and the follow-up list agree on it, in a Koha
directory (MariaDB, whose `'   ' = ''` once hid blanks from the preview while the worker mailed
them) and in resetbot's own table: `skip` leaves such a user alone, `set` gives them the typed
password, and nobody mails them.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from redis import Redis
from sqlalchemy import Engine, insert, select
from sqlalchemy.orm import Session, sessionmaker

from core.addresses import usable_address
from core.directory import Directory
from core.models import ItemState, NoEmailChoice, Scope, TaskStatus
from core.passwords import PasswordHasher
from core.settings import Settings
from core.tasks import ResetRequest, create_task, validate_request
from jobs.context import WorkerContext
from jobs.queueing import enqueue_task
from tests.support.engine import build_context, items_by_user, run_until_final
from tests.support.koha import (
    BORROWERS,
    ON_MARIADB,
    ON_SQLITE,
    Borrower,
    KohaDirectory,
    add_borrowers,
    dump,
    koha_accepts,
    koha_directory_in,
    row,
)
from tests.support.koha import koha_engine as koha_engine
from tests.support.koha import koha_settings as koha_settings
from tests.support.koha import state_engine as state_engine
from tests.support.smtp import SmtpServer
from tests.support.smtp import smtp_server as smtp_server

pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")

HANDOUT = "Lantern-Quay-4821"
#: Patrons whose `email` is there but cannot be mailed, and one whose address has spaces around.
UNUSABLE = [
    Borrower(11, "C0011", "kim", "Kim", "Blank", "   ", 0, 0, None),
    Borrower(12, "C0012", "lee", "Lee", "Nota", "n/a", 0, 0, None),
    Borrower(13, "C0013", "max", "Max", "None", "none", 0, 0, None),
    Borrower(14, "C0014", "ned", "Ned", "At", "@example.org", 0, 0, None),
]
PADDED = Borrower(15, "C0015", "zoe", "Zoe", "Padded", "  zoe@example.org ", 0, 0, None)
UNUSABLE_IDS = {b.number for b in UNUSABLE}
#: The picked users: ada (a plain address), the padded one, and the four without a usable one.
PICKED = (1, *sorted(UNUSABLE_IDS), PADDED.number)
state_on_sqlite = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture(params=[ON_MARIADB, ON_SQLITE])
def koha_directory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KohaDirectory]:
    with koha_directory_in(request.param, tmp_path, [*BORROWERS, *UNUSABLE, PADDED]) as made:
        yield made


def _run(
    settings: Settings, redis: Redis, engine: Engine, choice: NoEmailChoice,
    selection: tuple[int, ...],
) -> tuple[WorkerContext, int]:
    request = ResetRequest(
        requester="cli:tester", scope=Scope.SELECTED_ONLY, selection=selection,
        no_email=choice, no_email_password=HANDOUT if choice is NoEmailChoice.SET else None,
    )
    context = build_context(settings, redis, engine)
    validate_request(settings, context.directory, request)
    with context.sessions() as session:
        task_id = create_task(session, settings, request).id
        session.commit()
    enqueue_task(context.queue, task_id)
    return context, task_id


@state_on_sqlite
def test_the_koha_preview_counts_blank_and_unmailable_addresses_as_none_and_says_why(
    koha_settings: Settings, koha_engine: Engine
) -> None:
    directory = Directory.from_settings(koha_settings)
    try:
        preview = directory.preview(Scope.SELECTED_ONLY, PICKED)
        users = {u.id: u for u in directory.get_many(PICKED)}
    finally:
        directory.dispose()
    assert (preview.users, preview.emailable, preview.without_email) == (6, 2, 4)
    assert preview.unusable == {"blank": 1, "no_at": 2, "not_an_address": 1}
    assert {n for n, u in users.items() if u.email is None} == UNUSABLE_IDS
    assert users[PADDED.number].email == "zoe@example.org"


@state_on_sqlite
def test_skip_leaves_koha_patrons_without_a_usable_address_untouched_and_mails_none_of_them(
    koha_settings: Settings, koha_engine: Engine, state_engine: Engine, redis_conn: Redis,
    smtp_server: SmtpServer,
) -> None:
    before = dump(koha_engine)
    context, task_id = _run(koha_settings, redis_conn, state_engine, NoEmailChoice.SKIP, PICKED)
    try:
        final = run_until_final(context, task_id)
    finally:
        context.close()
    assert final.status is TaskStatus.COMPLETED
    items = items_by_user(context.sessions, task_id)
    assert {n for n, i in items.items() if i.state == ItemState.SKIPPED} == UNUSABLE_IDS
    assert {n for n, i in items.items() if i.state == ItemState.NOTIFIED} == {1, PADDED.number}
    assert all(items[n].email is None for n in UNUSABLE_IDS)
    after = dump(koha_engine)
    for number in UNUSABLE_IDS:
        assert after[number] == before[number], f"borrower {number} was changed"
    assert sorted(m.to for m in smtp_server.messages) == ["ada@example.org", "zoe@example.org"]
    password = smtp_server.last_password("zoe@example.org")
    assert koha_accepts([(password, row(koha_engine, PADDED.number)["password"])]) == [True]


@state_on_sqlite
def test_set_gives_koha_patrons_without_a_usable_address_the_typed_password(
    koha_settings: Settings, koha_engine: Engine, state_engine: Engine, redis_conn: Redis,
    smtp_server: SmtpServer,
) -> None:
    context, task_id = _run(koha_settings, redis_conn, state_engine, NoEmailChoice.SET, PICKED)
    try:
        final = run_until_final(context, task_id)
    finally:
        context.close()
    assert final.counts.get(ItemState.HANDED_OUT) == len(UNUSABLE_IDS)
    items = items_by_user(context.sessions, task_id)
    assert {n for n, i in items.items() if i.state == ItemState.HANDED_OUT} == UNUSABLE_IDS
    stored = [row(koha_engine, n) for n in sorted(UNUSABLE_IDS)]
    assert koha_accepts([(HANDOUT, r["password"]) for r in stored]) == [True] * len(stored)
    # A handed-out password is changed at the next sign-in: Koha's expiry from today.
    assert all(str(r["password_expiration_date"])[:10] == date.today().isoformat()
               for r in stored)
    assert sorted(m.to for m in smtp_server.messages) == ["ada@example.org", "zoe@example.org"]


OWN_USERS = [
    (21, "una", "Una Spaces", "   "),
    (22, "vic", "Vic Nota", "n/a"),
    (23, "wes", "Wes Mail", "wes@example.org"),
]


def test_skip_leaves_own_table_users_without_a_usable_address_untouched(
    settings: Settings, redis_conn: Redis, engine: Engine, sessions: sessionmaker[Session],
    directory: Directory, smtp_server: SmtpServer,
) -> None:
    with engine.begin() as connection:
        connection.execute(insert(directory.table), [
            {"id": i, "username": u, "full_name": n, "email": e, "role": None,
             "password_hash": "old-hash", "must_change_password": False}
            for i, u, n, e in OWN_USERS
        ])
    configured = smtp_server.settings(settings)
    preview = directory.preview(Scope.ALL, ())
    assert (preview.users, preview.emailable, preview.without_email) == (3, 1, 2)
    assert preview.unusable == {"blank": 1, "no_at": 1}
    context, task_id = _run(configured, redis_conn, engine, NoEmailChoice.SKIP, (21, 22, 23))
    try:
        run_until_final(context, task_id)
    finally:
        context.close()
    items = items_by_user(sessions, task_id)
    assert {n: items[n].state for n in items} == {
        21: ItemState.SKIPPED, 22: ItemState.SKIPPED, 23: ItemState.NOTIFIED,
    }
    c = directory.table.c
    with sessions() as session:
        hashes = dict(session.execute(select(c.id, c.password_hash)).all())
    assert hashes[21] == hashes[22] == "old-hash"
    assert PasswordHasher.from_settings(configured).verify(
        smtp_server.last_password("wes@example.org"), hashes[23]
    )
    assert [m.to for m in smtp_server.messages] == ["wes@example.org"]


@state_on_sqlite
def test_without_must_change_an_expiry_of_today_or_earlier_is_cleared_and_a_later_one_kept(
    koha_settings: Settings, koha_engine: Engine
) -> None:
    today = date.today()
    add_borrowers(koha_engine, [
        Borrower(31, "C0031", "past", "P", "Ast", None, 0, 0, today - timedelta(days=1)),
        Borrower(32, "C0032", "today", "T", "Oday", None, 0, 0, today),
        Borrower(33, "C0033", "later", "L", "Ater", None, 0, 0, today + timedelta(days=1)),
    ])
    directory = Directory.from_settings(koha_settings)
    try:
        directory.write_hashes([(31, "$2a$04$x"), (32, "$2a$04$y"), (33, "$2a$04$z")],
                               require_change=False, changed_at=datetime.now(UTC))
    finally:
        directory.dispose()
    expiry = {n: row(koha_engine, n)["password_expiration_date"] for n in (31, 32, 33)}
    # Koha asks for a new password once the date has come: today is already expired.
    assert expiry[31] is None and expiry[32] is None
    assert str(expiry[33])[:10] == (today + timedelta(days=1)).isoformat()


@pytest.mark.parametrize("database_url", [
    "sqlite", pytest.param("postgres", marks=pytest.mark.postgres),
    pytest.param("mariadb", marks=pytest.mark.mariadb),
], indirect=True)
def test_the_database_counts_only_what_the_rule_takes(
    engine: Engine, directory: Directory
) -> None:
    """The preview lets the database count plain addresses; every other value is judged by the
    rule in Python. Values on the edge of "plain" land where the rule says."""
    values = ["ada@example.org", "ada@example.org\n", " ada@example.org", "\u212aim@example.org",
              "\u017fam@example.org", "ADA@EXAMPLE.ORG", "a.b@c", "a..b@c.org", "a@b@c.org", "n/a",
              "   ", "", "zoë@example.org", "a\tb@example.org", "x@y.org\r"]
    with engine.begin() as connection:
        connection.execute(insert(directory.table), [
            {"id": i, "username": f"u{i}", "full_name": "U", "email": value, "role": None,
             "password_hash": "h", "must_change_password": False}
            for i, value in enumerate(values, 1)
        ])
    preview = directory.preview(Scope.ALL, ())
    usable = [v for v in values if usable_address(v) is not None]
    assert preview.emailable == len(usable) == 4  # ada, ' ada', ADA, a.b@c
    assert preview.users - preview.emailable == sum(preview.unusable.values()) + 1  # '' missing
