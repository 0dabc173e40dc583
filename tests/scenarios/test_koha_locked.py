"""Accounts staff locked on purpose (Koha: login_attempts = -1) are counted and may be left out.

A new password does not open a locked account, so an e-mailed reset leaves them out unless told
otherwise (`--no-skip-locked`, or the form's box unticked): they are not changed at all, and the
summary counts them. Koha's profile says what "locked on purpose" is (its `[locked]` rule).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from redis import Redis
from sqlalchemy import Engine

from core.db import make_engine, make_sessionmaker
from core.directory import Directory
from core.migrate import upgrade
from core.models import ItemState, ResetTask, TaskStatus
from core.settings import Settings
from jobs.context import WorkerContext
from tests.support.cli import cli_settings as cli_settings
from tests.support.cli import run as run
from tests.support.databases import mariadb_database
from tests.support.engine import build_context, items_by_user, run_until_final
from tests.support.koha import BORROWERS, PATRONS, create_borrowers, dump
from tests.support.signing import app_settings, form_state, start_app, submitted_view
from tests.support.slack_standin import SlackStandIn
from tests.support.slack_standin import slack_standin as slack_standin
from tests.support.smtp import SmtpServer
from tests.support.smtp import smtp_server as smtp_server

pytestmark = [
    pytest.mark.mariadb,
    pytest.mark.parametrize("database_url", ["sqlite"], indirect=True),
    pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS"),
]
LOCKED = {b.number for b in BORROWERS if b.login_attempts == -1}  # Bob (2), Heidi (8)
LOCKED_PATRONS = LOCKED & PATRONS


@pytest.fixture
def koha(cli_settings: Settings) -> Iterator[tuple[Settings, Engine]]:
    with mariadb_database() as url:
        engine = make_engine(url)
        create_borrowers(engine)
        configured = replace(cli_settings, directory_url=url, directory_profile="koha",
                             password_rounds=4, password_allow_weak_rounds=True)
        upgrade(configured)
        yield configured, engine
        engine.dispose()


def _env(settings: Settings) -> dict[str, str]:
    return {"DIRECTORY_URL": str(settings.directory_url), "DIRECTORY_PROFILE": "koha",
            "PASSWORD_ROUNDS": "4", "PASSWORD_ALLOW_WEAK_ROUNDS": "true"}


def test_the_cli_counts_locked_accounts_and_an_e_mailed_reset_leaves_them_alone(
    run: Any, koha: tuple[Settings, Engine], redis_conn: Redis, smtp_server: SmtpServer
) -> None:
    settings, engine = koha
    assert {2, 8} == LOCKED_PATRONS
    dry = run("reset", "--scope", "all_without_role", "--dry-run", **_env(settings))
    assert dry.code == 0, dry.err
    assert "Locked on purpose:            2   (left out, their password does not change)" in (
        dry.out)
    told = run("reset", "--scope", "all_without_role", "--no-skip-locked", "--dry-run",
               **_env(settings))
    assert "(reset too; they stay locked)" in told.out
    with_default = run("reset", "--scope", "all_without_role", "--default-password-stdin",
                       "--dry-run", stdin=io.StringIO("Quiet-Harbour-73!\n"), **_env(settings))
    assert with_default.code == 0, with_default.err
    assert "(reset too; they stay locked)" in with_default.out  # a default password: the same

    before = dump(engine)
    queued = run("reset", "--scope", "all_without_role", "--yes", "--detach", **_env(settings))
    assert queued.code == 0, queued.err
    state = make_engine(settings.database_url)
    context = build_context(settings, redis_conn, state)
    try:
        [task_id] = [int(word.strip("#")) for word in queued.out.split() if word.startswith("#")]
        final = run_until_final(context, task_id)
    finally:
        context.close()
        state.dispose()
    assert final.status in (TaskStatus.COMPLETED, TaskStatus.COMPLETED_WITH_ERRORS)
    assert final.counts.get(ItemState.LOCKED) == 2
    items = items_by_user(context.sessions, task_id)
    assert {n for n, i in items.items() if i.state == ItemState.LOCKED} == LOCKED_PATRONS
    after = dump(engine)
    for number in LOCKED_PATRONS:
        assert after[number] == before[number], f"locked borrower {number} was changed"
    for number in PATRONS - LOCKED_PATRONS:
        assert after[number] != before[number]
    assert "bob@example.org" not in [m.to for m in smtp_server.messages]
    assert "heidi@example.org" not in [m.to for m in smtp_server.messages]
    shown = run("tasks", "show", str(task_id), **_env(settings))
    assert "locked on purpose: left alone" in shown.out


def _texts(node: object) -> str:
    """Every text a view shows, one after the other."""
    if isinstance(node, dict):
        return "\n".join(node["text"] if k == "text" and isinstance(node["text"], str)
                         else _texts(v) for k, v in node.items())
    if isinstance(node, list):
        return "\n".join(_texts(item) for item in node)
    return ""


def test_the_slack_form_offers_to_leave_locked_accounts_out(
    koha: tuple[Settings, Engine], redis_conn: Redis, slack_standin: SlackStandIn,
) -> None:
    settings, engine = koha
    configured = app_settings(settings, slack_standin)
    state = make_engine(settings.database_url)
    sessions = make_sessionmaker(state)
    directory = Directory.from_settings(configured)
    running, thread = start_app(configured, sessions, directory, redis_conn, slack_standin)
    try:
        opened = running.open_modal()
        box = next(b for b in opened["blocks"] if b["block_id"] == "skip_locked")
        assert box["element"]["initial_options"][0]["value"] == "yes"  # ticked to begin with

        left_out = running.slack.submit(submitted_view(
            opened, form_state("all_without_role", skip_locked=True))).json()["view"]
        assert "*Locked on purpose*\n2: left out" in _texts(left_out)
        before = dump(engine)
        assert running.slack.submit(left_out).json() == {"response_action": "clear"}
        with sessions() as session:
            task = session.query(ResetTask).one()
            assert task.skip_locked is True
        context = WorkerContext.build(configured, redis_conn)
        try:
            final = run_until_final(context, task.id)
        finally:
            context.close()
        assert final.counts.get(ItemState.LOCKED) == 2
        after = dump(engine)
        assert all(after[n] == before[n] for n in LOCKED_PATRONS)

        reset_too = running.slack.submit(submitted_view(
            opened, form_state("all_without_role", skip_locked=False))).json()["view"]
        assert "*Locked on purpose*\n2: reset too" in _texts(reset_too)
    finally:
        running.stop(thread)
        directory.dispose()
        state.dispose()
