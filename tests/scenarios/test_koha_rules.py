"""Koha's own password rules: what Koha would refuse is refused in the CLI and the form, with
Koha's reason and the category; generated passwords meet them; unread, resetbot says so.

Koha's rules (Koha::AuthUtils::is_password_valid): the category's min_password_length and
require_strong_password, else the minPasswordLength and RequireStrongPassword preferences;
"strong" is an uppercase letter, a lowercase letter and a digit.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from typing import Any

import pytest
from redis import Redis
from sqlalchemy import Engine

from core.db import make_engine, make_sessionmaker
from core.directory import Directory
from core.directory.sql.koha_rules import koha_rules_readable
from core.models import Scope
from core.settings import Settings
from core.tasks import RequestInvalid, ResetRequest, validate_request
from tests.support.cli import cli_settings as cli_settings
from tests.support.cli import run as run
from tests.support.engine import build_context, run_until_final, submit
from tests.support.koha import create_password_rules, koha_env, koha_on_mariadb
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
#: Passes resetbot's policy (15 characters, 3 classes), but has no uppercase letter.
WEAK_FOR_KOHA = "harbour-lantern-73"
PT_REFUSES = ("Koha refuses it for patrons of category PT: it must hold an uppercase letter, "
              "a lowercase letter and a digit.")
S_REFUSES = "Koha refuses it for patrons of category S: it must be at least 20 characters long."


@pytest.fixture
def koha(cli_settings: Settings) -> Iterator[tuple[Settings, Engine]]:
    with koha_on_mariadb(cli_settings) as made:
        yield made


@pytest.fixture
def rules(koha: tuple[Settings, Engine]) -> tuple[Settings, Engine]:
    """Patrons (PT): strong as the preference says; staff (S): 20 characters, not strong."""
    create_password_rules(koha[1], {"PT": (None, None), "S": (20, 0)},
                          {"minPasswordLength": "8", "RequireStrongPassword": "1"})
    return koha


def test_a_default_password_koha_refuses_is_refused_with_the_category_and_reason(
    rules: tuple[Settings, Engine], run: Any
) -> None:
    settings, _engine = rules
    directory = Directory.from_settings(settings)
    try:
        assert koha_rules_readable(directory)
        with pytest.raises(RequestInvalid) as everyone:
            validate_request(settings, directory, ResetRequest(
                requester="U1", scope=Scope.ALL, default_password=WEAK_FOR_KOHA))
        assert everyone.value.problems["password"] == [PT_REFUSES, S_REFUSES]
        with pytest.raises(RequestInvalid) as patrons:  # no staff in scope: category S is not
            validate_request(settings, directory, ResetRequest(
                requester="U1", scope=Scope.ALL_WITHOUT_ROLE, default_password=WEAK_FOR_KOHA))
        assert patrons.value.problems["password"] == [PT_REFUSES]
        good = validate_request(settings, directory, ResetRequest(
            requester="U1", scope=Scope.ALL_WITHOUT_ROLE, default_password="Harbour-Lantern-73"))
        assert good.notes == ()
    finally:
        directory.dispose()
    refused = run("reset", "--scope", "all", "--default-password-stdin", "--dry-run",
                  stdin=io.StringIO(WEAK_FOR_KOHA + "\n"), **koha_env(settings))
    assert refused.code == 1
    assert f"password: {PT_REFUSES}" in refused.err and f"password: {S_REFUSES}" in refused.err
    handout = run("reset", "--scope", "all_without_role", "--without-email", "set", "--dry-run",
                  stdin=io.StringIO(WEAK_FOR_KOHA + "\n"), **koha_env(settings))
    assert handout.code == 1 and f"no_email_password: {PT_REFUSES}" in handout.err


def test_the_form_refuses_what_koha_would_refuse(
    rules: tuple[Settings, Engine], redis_conn: Redis, slack_standin: SlackStandIn
) -> None:
    settings, _engine = rules
    configured = app_settings(settings, slack_standin)
    state = make_engine(settings.database_url)
    directory = Directory.from_settings(configured)
    running, thread = start_app(configured, make_sessionmaker(state), directory, redis_conn,
                                slack_standin)
    try:
        opened = running.open_modal()
        answer = running.slack.submit(submitted_view(
            opened, form_state("all_without_role", password=WEAK_FOR_KOHA))).json()
        assert answer["response_action"] == "errors"
        assert PT_REFUSES in answer["errors"]["password"]
    finally:
        running.stop(thread)
        directory.dispose()
        state.dispose()


def test_generated_passwords_meet_kohas_rules_for_every_category(
    rules: tuple[Settings, Engine], redis_conn: Redis, smtp_server: SmtpServer
) -> None:
    settings, _engine = rules
    state = make_engine(settings.database_url)
    context = build_context(settings, redis_conn, state)
    try:
        final = run_until_final(context, submit(context, Scope.ALL))
    finally:
        context.close()
        state.dispose()
    assert final.total == 8
    passwords = [mail.password for mail in smtp_server.messages]
    assert len(passwords) == 3  # five with an address, two of them locked on purpose
    for password in passwords:  # the longest minimum (S: 20), and strong as Koha means it
        assert len(password) >= 20
        assert re.search(r"[A-Z]", password) and re.search(r"[a-z]", password)
        assert re.search(r"\d", password) and password == password.strip()


def test_without_kohas_rules_resetbot_does_without_and_says_so(
    koha: tuple[Settings, Engine], run: Any
) -> None:
    settings, _engine = koha  # no categories or systempreferences resetbot may read
    directory = Directory.from_settings(settings)
    try:
        assert not koha_rules_readable(directory)
    finally:
        directory.dispose()
    dry = run("reset", "--scope", "all", "--default-password-stdin", "--dry-run",
              stdin=io.StringIO(WEAK_FOR_KOHA + "\n"), **koha_env(settings))
    assert dry.code == 0, dry.err
    assert "Note: Koha's own password rules were not read" in dry.out
    check = run("directory", "check", **koha_env(settings))
    assert check.code == 0, check.err
    assert ("  Koha's password rules: not granted (SELECT (categorycode, min_password_length, "
            "require_strong_password) ON categories and SELECT (variable, value) ON "
            "systempreferences); without it a default or typed password is checked against "
            "resetbot's own policy only") in check.out


def test_directory_check_says_kohas_rules_are_read(
    rules: tuple[Settings, Engine], run: Any
) -> None:
    check = run("directory", "check", **koha_env(rules[0]))
    assert check.code == 0, check.err
    assert "  Koha's password rules: granted\n" in check.out
