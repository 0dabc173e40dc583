"""The form submitted while the directory's database cannot be reached: Slack gets a field
error that says so (an answer it shows in the modal), never an HTTP 500, and nothing is stored.

Koha's `borrowers` on a throw-away MariaDB database, reached through a TCP proxy that the test
cuts (the shared server itself is never stopped); resetbot's own state is on SQLite.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from redis import Redis
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from blocks.text import DIRECTORY_UNREACHABLE
from core.db import make_engine, make_sessionmaker
from core.directory import Directory
from core.migrate import upgrade
from core.models import PendingRequest
from core.settings import Settings
from tests.support.databases import mariadb_database
from tests.support.faults import TcpProxy, tcp_proxy
from tests.support.koha import create_borrowers
from tests.support.signing import RunningApp, app_settings, form_state, start_app, submitted_view
from tests.support.slack_standin import SlackStandIn
from tests.support.slack_standin import slack_standin as slack_standin

pytestmark = [
    pytest.mark.mariadb,
    pytest.mark.parametrize("database_url", ["sqlite"], indirect=True),
]


@pytest.fixture
def proxied_koha() -> Iterator[tuple[str, TcpProxy]]:
    """A Koha directory, and its URL through a proxy the test can cut."""
    with mariadb_database() as url:
        engine = make_engine(url)
        create_borrowers(engine)
        engine.dispose()
        direct = make_url(url)
        with tcp_proxy(direct.host or "127.0.0.1", direct.port or 3306) as proxy:
            proxied = direct.set(host="127.0.0.1", port=proxy.port)
            yield proxied.render_as_string(hide_password=False), proxy


@pytest.fixture
def koha_app(
    settings: Settings, proxied_koha: tuple[str, TcpProxy], redis_conn: Redis,
    slack_standin: SlackStandIn,
) -> Iterator[RunningApp]:
    koha_url, _proxy = proxied_koha
    configured = app_settings(
        replace(settings, directory_url=koha_url, directory_profile="koha",
                password_rounds=4, password_allow_weak_rounds=True),
        slack_standin,
    )
    upgrade(configured)
    state = make_engine(configured.database_url)
    directory = Directory.from_settings(configured, state)
    running, thread = start_app(configured, make_sessionmaker(state), directory, redis_conn,
                                slack_standin)
    try:
        yield running
    finally:
        running.stop(thread)
        directory.dispose()
        state.dispose()


@pytest.mark.parametrize("form", [form_state("all"), form_state(users=[1, 7])],
                         ids=["all", "picked"])
def test_the_form_submitted_while_the_directory_is_down_gets_a_field_error(
    koha_app: RunningApp, proxied_koha: tuple[str, TcpProxy], form: dict[str, Any]
) -> None:
    _url, proxy = proxied_koha
    opened = koha_app.open_modal()
    proxy.cut()

    answer = koha_app.slack.submit(submitted_view(opened, form))

    assert answer.status == 200, answer.body
    body: dict[str, Any] = answer.json()
    assert body == {"response_action": "errors", "errors": {"scope": DIRECTORY_UNREACHABLE}}
    assert "cannot be reached" in DIRECTORY_UNREACHABLE
    with koha_app.sessions() as session:
        assert session.scalar(select(func.count()).select_from(PendingRequest)) == 0

    proxy.restore()  # back: the same form gets its preview
    again = koha_app.slack.submit(submitted_view(opened, form)).json()
    assert again["response_action"] == "update", again
