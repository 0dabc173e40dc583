"""The user picker on Koha's `borrowers` (MariaDB), through the real Bolt app over signed HTTP.

The app searches an in-memory copy of the directory (read at start, read again once older than
DIRECTORY_SEARCH_REFRESH); resetbot's own state is on SQLite. The preview checks picked ids
against the directory itself, so a user deleted after the copy was read is refused there.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from redis import Redis
from sqlalchemy import Engine, select, text

from blocks.text import SEARCH_UNAVAILABLE_OPTION
from bot.listeners.options import SEARCH_UNAVAILABLE_VALUE
from core.db import make_engine, make_sessionmaker
from core.directory import Directory
from core.migrate import upgrade
from core.models import PendingRequest, Scope
from core.search_copy import SearchCopy
from core.settings import Settings
from core.tasks import preview_counts
from tests.support.databases import mariadb_database
from tests.support.koha import create_borrowers
from tests.support.signing import (
    RunningApp,
    app_on_its_own_state,
    app_settings,
    form_state,
    start_app,
    submitted_view,
)
from tests.support.slack_standin import SlackStandIn

pytestmark = [
    pytest.mark.mariadb,
    pytest.mark.parametrize("database_url", ["sqlite"], indirect=True),
]

#: Short, so a test sees a change in the directory without waiting long; the copy is read
#: again only once it is this old.
REFRESH_SECONDS = 0.3


@pytest.fixture
def koha_url() -> Iterator[str]:
    with mariadb_database() as url:
        engine = make_engine(url)
        create_borrowers(engine)
        engine.dispose()
        yield url


@pytest.fixture
def koha_engine(koha_url: str) -> Iterator[Engine]:
    engine = make_engine(koha_url)
    yield engine
    engine.dispose()


@pytest.fixture
def koha_app(
    settings: Settings, koha_url: str, redis_conn: Redis, slack_standin: SlackStandIn
) -> Iterator[RunningApp]:
    configured = app_settings(
        replace(settings, directory_url=koha_url, directory_profile="koha",
                directory_search_refresh=REFRESH_SECONDS,
                password_rounds=4, password_allow_weak_rounds=True),
        slack_standin,
    )
    with app_on_its_own_state(configured, redis_conn, slack_standin) as running:
        yield running


def copy_of(app: RunningApp) -> SearchCopy:
    source = app.directory.search_source
    copy = getattr(source, "copy", None)
    assert isinstance(copy, SearchCopy), "a Koha directory is searched through its copy"
    return copy


def options(app: RunningApp, term: str) -> list[tuple[str, str]]:
    answer = app.slack.options(term)
    assert answer.status == 200, answer.body
    return [(o["value"], o["text"]["text"]) for o in answer.json()["options"]]


@pytest.mark.parametrize(("term", "expected"), [
    ("carol", [("3", "Carol Cataloguer (carol) · staff")]),  # username (userid)
    ("c0002", [("2", "Bob Binder (C0002)")]),  # no userid: the card number is the username
    ("C0007", [("7", "Grace Gutenberg (grace)")]),  # card number of a user with a userid
    ("hopper", [("8", "Heidi Hopper (heidi)")]),  # surname, any case
    ("ada lov", [("1", "Ada Lovelace (ada)")]),  # first name and surname
    ("grace@example", [("7", "Grace Gutenberg (grace)")]),  # e-mail
    ("nobody-at-all", []),
])
def test_options_find_by_username_card_name_and_email(
    koha_app: RunningApp, term: str, expected: list[tuple[str, str]]
) -> None:
    assert len(copy_of(koha_app)) == 8, "the copy was read at start"
    assert options(koha_app, term) == expected


def test_a_new_borrower_shows_once_the_copy_is_read_again(
    koha_app: RunningApp, koha_engine: Engine
) -> None:
    copy = copy_of(koha_app)
    read_at = copy.loaded_at
    assert read_at is not None
    with koha_engine.begin() as connection:
        connection.execute(text(
            "INSERT INTO borrowers (borrowernumber, cardnumber, userid, firstname, surname, "
            "email, flags, branchcode, categorycode) VALUES (9, 'C0009', 'ivy', 'Ivy', "
            "'Indexer', 'ivy@example.org', 0, 'MAIN', 'PT')"
        ))
    assert options(koha_app, "indexer") == []  # the copy is younger than the refresh time
    # Once the copy is DIRECTORY_SEARCH_REFRESH old (a wait for the clock, which is all the
    # setting asks for), opening the form starts a read in the background: await it.
    left = read_at + REFRESH_SECONDS - time.monotonic()
    if left > 0:
        time.sleep(left)
    koha_app.open_modal()
    assert copy.wait_idle(timeout=10)
    assert copy.loaded_at is not None and copy.loaded_at > read_at
    assert options(koha_app, "indexer") == [("9", "Ivy Indexer (ivy)")]


def test_a_borrower_deleted_after_the_copy_was_read_is_refused_at_preview(
    koha_app: RunningApp, koha_engine: Engine
) -> None:
    assert options(koha_app, "frank") == [("6", "Frank Folio (frank)")]
    with koha_engine.begin() as connection:
        connection.execute(text("DELETE FROM borrowers WHERE borrowernumber = 6"))
    assert options(koha_app, "frank") == [("6", "Frank Folio (frank)")], "still in the copy"
    opened = koha_app.open_modal()
    answer = koha_app.slack.submit(submitted_view(opened, form_state(users=[6, 7])))
    body: dict[str, Any] = answer.json()
    assert body["response_action"] == "errors", body
    assert "no longer exist in the directory" in body["errors"]["users"]
    assert body["errors"]["users"].startswith("1 of the picked users")


def test_search_says_it_is_not_available_while_the_directory_cannot_be_read(
    settings: Settings, redis_conn: Redis, slack_standin: SlackStandIn, koha_url: str,
    koha_engine: Engine,
) -> None:
    configured = app_settings(
        replace(settings, directory_url=koha_url, directory_profile="koha",
                password_rounds=4, password_allow_weak_rounds=True),
        slack_standin,
    )
    upgrade(configured)
    state = make_engine(configured.database_url)
    directory = Directory.from_settings(configured, state)
    with koha_engine.begin() as connection:  # the table goes away after the start checks
        connection.execute(text("RENAME TABLE borrowers TO borrowers_gone"))
    running, thread = start_app(configured, make_sessionmaker(state), directory, redis_conn,
                                slack_standin)
    try:
        assert options(running, "ada") == [(SEARCH_UNAVAILABLE_VALUE, SEARCH_UNAVAILABLE_OPTION)]
    finally:
        running.stop(thread)
        directory.dispose()
        state.dispose()
        with koha_engine.begin() as connection:
            connection.execute(text("RENAME TABLE borrowers_gone TO borrowers"))



def test_a_preview_is_counted_in_the_copy_and_says_so(
    settings: Settings, koha_url: str, redis_conn: Redis, slack_standin: SlackStandIn
) -> None:
    """A copy that is not old counts the preview (core.directory.picker.CopyCounts); the
    modal says how old it is and shows what the table would count."""
    configured = app_settings(
        replace(settings, directory_url=koha_url, directory_profile="koha",
                directory_search_refresh=3600, password_rounds=4,
                password_allow_weak_rounds=True),
        slack_standin,
    )
    with app_on_its_own_state(configured, redis_conn, slack_standin) as app:
        opened = app.open_modal()
        answer = app.slack.submit(submitted_view(opened, form_state(scope="all_without_role")))
        body: dict[str, Any] = answer.json()
        assert body["response_action"] == "update", body
        shown = str(body["view"])
        assert "Counted in resetbot's copy of the directory, read " in shown
        table = app.directory.preview(Scope.ALL_WITHOUT_ROLE, ())
        with app.sessions() as session:
            [kept] = session.scalars(select(PendingRequest.preview)).all()
        assert kept == preview_counts(table)
