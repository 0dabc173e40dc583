"""Issue 20 on Koha's real schema (MariaDB), over signed HTTP to the running app with the Slack
stand-in, as a library runs it: resetbot signs in with docs/koha.md's grants plus its optional
SELECT (password) that Undo needs.

- "Send me the list" equals the task's items for each scope (accounts locked on purpose, Koha's
  `login_attempts = -1`, listed as left alone, as the e-mailed reset leaves them out).
- Undo from the thread gives every borrower who kept the task's password their previous one
  back (Koha's own check says so), leaves alone one who changed it, and nothing stays sealed
  after the window.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import timedelta

import pytest
from redis import Redis
from sqlalchemy import Engine, func, select, text

from blocks.ids import ACTION_SEND_LIST, SEND_LIST_OF_PREVIEW
from core.db import make_engine, make_sessionmaker
from core.directory import Directory
from core.migrate import upgrade
from core.models import ItemState, ResetItem, ResetTask, TaskStatus, UndoSnapshot
from core.passwords import PasswordHasher
from core.progress import snapshot
from core.reset_list import WHAT_HAPPENS
from core.settings import Settings
from jobs.context import WorkerContext
from jobs.reaper import reap
from tests.bot.test_slack_app import confirm_task, run_worker, tasks, view_text
from tests.bot.test_slack_undo import parent_offers_undo
from tests.scenarios.test_readme_directories import Names, _drop_user, _grant
from tests.scenarios.test_task_centre import SCOPES, click_in_view, list_file, preview_of
from tests.support.engine import work
from tests.support.koha import (
    BORROWERS,
    before,
    but_moving,
    column_names,
    dump,
    koha_accepts,
    koha_with_passwords,
    url_as,
)
from tests.support.signing import RunningApp, app_settings, form_state, start_app
from tests.support.slack_standin import SlackStandIn
from tests.support.slack_standin import slack_standin as slack_standin
from tests.support.smtp import SmtpServer
from tests.support.smtp import smtp_server as smtp_server

pytestmark = [pytest.mark.mariadb,
              pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)]
OUTCOME = {words: state.value for state, words in WHAT_HAPPENS.items()}
LOCKED_ON_PURPOSE = {b.number for b in BORROWERS if b.login_attempts == -1}


@dataclass
class KohaApp:
    app: RunningApp
    koha: Engine  # as MariaDB's root, to look at the table


@pytest.fixture
def koha_app(settings: Settings, redis_conn: Redis, slack_standin: SlackStandIn,
             smtp_server: SmtpServer) -> Iterator[KohaApp]:
    """Koha's tables, every borrower signing in with `before(number)` (Koha's bcrypt); the app
    on them as a MariaDB user with docs/koha.md's grants and its optional ones."""
    with koha_with_passwords() as (koha, root_url):
        names = Names(root_url, settings.database_url)
        _grant(names)
        _grant(names, 1)
        try:
            url = url_as(koha, names.user, names.password)
            configured = app_settings(
                replace(smtp_server.settings(settings), directory_url=url,
                        directory_profile="koha", password_rounds=4,
                        password_allow_weak_rounds=True),
                slack_standin,
            )
            upgrade(configured)
            state = make_engine(configured.database_url)
            directory = Directory.from_settings(configured, state)
            running, thread = start_app(configured, make_sessionmaker(state), directory,
                                        redis_conn, slack_standin)
            try:
                yield KohaApp(running, koha)
            finally:
                running.stop(thread)
                directory.dispose()
                state.dispose()
        finally:
            _drop_user(names)


def items(app: RunningApp, task_id: int) -> list[tuple[str, str]]:
    with app.sessions() as session:
        return [(item.username, item.state) for item in session.scalars(
            select(ResetItem).where(ResetItem.task_id == task_id).order_by(ResetItem.user_id))]


# ---- the exact list --------------------------------------------------------------------------


@pytest.mark.parametrize(("scope", "picked"), SCOPES)
def test_the_list_on_koha_is_what_the_confirm_resets(
    koha_app: KohaApp, slack_standin: SlackStandIn, scope: str, picked: tuple[int, ...],
) -> None:
    app = koha_app.app
    view = preview_of(app, form_state(scope, picked))
    click_in_view(app, view, ACTION_SEND_LIST, SEND_LIST_OF_PREVIEW)
    listed = list_file(slack_standin, app_admin(app))
    assert slack_standin.files_in_public_channels() == []
    # The preview and its button count the passwords reset: the locked ones are left alone.
    left_alone = (ItemState.LOCKED.value, ItemState.SKIPPED.value)
    changed = sum(OUTCOME[row["what_happens"]] not in left_alone for row in listed)
    assert view["submit"]["text"] == f"Reset {changed:,} & e-mail"
    assert f"*Users to reset*\n{changed:,}" in view_text(view)

    assert app.slack.submit(view).json() == {"response_action": "clear"}
    [task] = tasks(app.sessions)
    assert run_worker(app, task.id).status is TaskStatus.COMPLETED
    assert listed, "the scope has borrowers"
    assert [(row["username"], OUTCOME[row["what_happens"]]) for row in listed] == items(
        app, task.id)
    with app.sessions() as session:
        shown = snapshot(session, task.id)
    assert shown is not None and shown.tally.changed == changed
    assert shown.tally.left_alone == len(listed) - changed
    # Koha's accounts locked on purpose: marked, and left out by the e-mailed reset.
    by_name = {b.username: b for b in BORROWERS}
    for row in listed:
        locked = by_name[row["username"]].number in LOCKED_ON_PURPOSE
        assert (row["locked"] == "yes") == locked
        assert (OUTCOME[row["what_happens"]] == ItemState.LOCKED.value) == locked


def app_admin(app: RunningApp) -> str:
    [admin] = app.settings.reset_admins
    return admin


# ---- Undo ------------------------------------------------------------------------------------


def test_undo_from_the_thread_gives_koha_borrowers_their_previous_password(
    koha_app: KohaApp, slack_standin: SlackStandIn, smtp_server: SmtpServer,
) -> None:
    app, koha = koha_app.app, koha_app.koha
    original = dump(koha)
    task_id = confirm_task(app, form_state("all"))
    assert run_worker(app, task_id).status is TaskStatus.COMPLETED
    reset = {n for n, row in dump(koha).items() if row != original[n]}
    assert reset == {b.number for b in BORROWERS} - LOCKED_ON_PURPOSE
    assert slack_standin.wait_for(lambda: parent_offers_undo(slack_standin, task_id))
    # Carol signs in to Koha and chooses a password of her own: Undo leaves her alone.
    with koha.begin() as connection:
        connection.execute(text("UPDATE borrowers SET password = :hash WHERE borrowernumber = 3"),
                           {"hash": PasswordHasher(("bcrypt",), 4, ident="2a").hash("Carols")})
    carols = dump(koha)[3]

    opened_before = slack_standin.count("views.open")
    assert app.slack.click("undo_task", str(task_id)).status == 200
    modal = slack_standin.wait_for_call("views.open", count=opened_before + 1).params["view"]
    said = view_text(modal)
    assert f"{len(reset) - 1} users still have the password it set" in said
    assert "1 user changed their password since: left alone" in said
    mails_before = len(smtp_server.messages)
    assert app.slack.submit(modal).status == 200
    _, undo = tasks(app.sessions)
    assert undo.undo_of == task_id
    assert run_worker(app, undo.id).status is TaskStatus.COMPLETED

    after = dump(koha)
    assert after[3] == carols
    names = column_names(koha)
    for number, row in original.items():
        if number != 3:
            assert but_moving(after[number], names) == but_moving(row, names), (
                f"borrower {number} is not as before the reset")
    restored = sorted(reset - {3})
    password = names.index("password")
    assert koha_accepts([(before(n), str(after[n][password])) for n in restored]) == [
        True] * len(restored)
    with app.sessions() as session:
        states = {int(user_id): state for user_id, state in session.execute(
            select(ResetItem.user_id, ResetItem.state).where(ResetItem.task_id == undo.id))}
    assert states.pop(3) == ItemState.CHANGED_SINCE
    assert states == dict.fromkeys(restored, ItemState.RESTORED)
    emails = {b.number: b.email for b in BORROWERS}
    mailed = {n for n in restored if emails[n]}
    assert sorted(m.to for m in smtp_server.messages[mails_before:]) == sorted(
        str(emails[n]) for n in mailed)

    # The window closes: nothing stays sealed, and the thread no longer offers Undo.
    with app.sessions() as session:
        task = session.get(ResetTask, task_id)
        assert task is not None and task.finished_at is not None
        closes = task.finished_at + timedelta(seconds=app.settings.reset_undo_window)
    context = WorkerContext.build(app.settings, app.redis)
    try:
        reap(context, now=closes + timedelta(seconds=1))
        work(context)
    finally:
        context.close()
    with app.sessions() as session:
        assert session.scalar(select(func.count()).select_from(UndoSnapshot)) == 0
    assert not parent_offers_undo(slack_standin, task_id)
