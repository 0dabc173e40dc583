"""A password never reaches the directory's database (issue 18, items 3 and 7).

The check that a password holds no username of the users it is for is made in resetbot, over
the scope's usernames read from the directory: neither the default password nor the one typed
for users without e-mail is in any statement or parameter sent on the directory's connection,
nor in its bytes on the wire (a real TCP capture on loopback to MariaDB). And a username with
`_` or `%` is just a username: it blocks only a password that really contains it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import Engine, event
from sqlalchemy.engine import make_url

from core.db import make_engine
from core.directory import Directory
from core.models import NoEmailChoice, Scope
from core.settings import Settings
from core.tasks import RequestInvalid, ResetRequest, validate_request
from tests.support.databases import mariadb_database
from tests.support.faults import TcpProxy, tcp_proxy
from tests.support.koha import Borrower, add_borrowers, create_borrowers

#: Passwords with a marker no statement would hold by chance.
DEFAULT = "Zq9!defaultMarker-77"
HANDOUT = "Zq9!handoutMarker-88"
ODD_NAMES = [
    # A card number that is only '%', a user id with '_': LIKE patterns that match anything.
    Borrower(41, "%", None, "Per", "Cent", None, 0, 0, None),
    Borrower(42, "C0042", "ar_7", "Under", "Score", None, 0, 0, None),
    Borrower(43, "C0043", "kim", "Kim", "Blank", "   ", 0, 0, None),
]


@pytest.fixture
def koha_url() -> Iterator[str]:
    with mariadb_database() as url:
        engine = make_engine(url)
        create_borrowers(engine)
        add_borrowers(engine, ODD_NAMES)
        engine.dispose()
        yield url


@pytest.fixture
def proxy(koha_url: str) -> Iterator[TcpProxy]:
    target = make_url(koha_url)
    with tcp_proxy(str(target.host), int(target.port or 3306)) as running:
        yield running


def _directory(settings: Settings, url: str) -> Directory:
    return Directory.from_settings(replace(
        settings, directory_url=url, directory_profile="koha",
        password_rounds=4, password_allow_weak_rounds=True,
    ))


def _record_statements(engine: Engine) -> list[str]:
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        seen.append(f"{statement} {parameters!r}")

    event.listen(engine, "before_cursor_execute", record)
    return seen


@pytest.mark.mariadb
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_no_password_goes_to_the_directory_database(
    settings: Settings, koha_url: str, proxy: TcpProxy
) -> None:
    through_proxy = make_url(koha_url).set(host="127.0.0.1", port=proxy.port)
    directory = _directory(settings, through_proxy.render_as_string(hide_password=False))
    statements = _record_statements(directory.engine)
    try:
        for scope in Scope:
            validate_request(settings, directory, ResetRequest(
                requester="U1", scope=scope, selection=(1, 43), default_password=DEFAULT))
            validate_request(settings, directory, ResetRequest(
                requester="U1", scope=scope, selection=(1, 43), no_email=NoEmailChoice.SET,
                no_email_password=HANDOUT))
        # A clash is still found, and the password still stays here.
        with pytest.raises(RequestInvalid) as refused:
            validate_request(settings, directory, ResetRequest(
                requester="U1", scope=Scope.ALL, default_password="Zq9!x-Grace-77"))
        assert "username of 1 of the users" in str(refused.value.problems["password"])
    finally:
        directory.dispose()
    assert proxy.connections >= 1 and len(proxy.traffic) > 1000  # the capture saw the work
    assert b"borrowers" in proxy.traffic
    wire = bytes(proxy.traffic).lower()
    for secret in (DEFAULT, HANDOUT, "Zq9!x-Grace-77"):
        assert secret.lower().encode() not in wire
        assert all(secret.lower() not in statement.lower() for statement in statements)
    assert any("borrowers" in statement for statement in statements)


@pytest.mark.mariadb
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_underscore_and_percent_in_usernames_block_only_passwords_that_hold_them(
    settings: Settings, koha_url: str
) -> None:
    directory = _directory(settings, koha_url)
    try:
        # 'Harbour-73' would match LIKE '%ar_7%', and anything LIKE '%%%'.
        preview = validate_request(settings, directory, ResetRequest(
            requester="U1", scope=Scope.ALL, default_password="Quiet-Harbour-73!"))
        assert preview.users == 11
        with pytest.raises(RequestInvalid) as refused:
            validate_request(settings, directory, ResetRequest(
                requester="U1", scope=Scope.ALL, default_password="Quiet-Har_7-73%!"))
        assert "username of 2 of the users" in str(refused.value.problems["password"])
    finally:
        directory.dispose()


@pytest.mark.mariadb
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_password_for_users_without_e_mail_is_checked_against_their_usernames(
    settings: Settings, koha_url: str
) -> None:
    directory = _directory(settings, koha_url)

    def handout(password: str) -> ResetRequest:
        return ResetRequest(requester="U1", scope=Scope.SELECTED_ONLY, selection=(1, 43),
                            no_email=NoEmailChoice.SET, no_email_password=password)

    try:
        with pytest.raises(RequestInvalid) as refused:
            validate_request(settings, directory, handout("Lantern-Kim-4821"))
        assert refused.value.problems["no_email_password"] == [
            "It contains the username of 1 of the users without an e-mail address it would "
            "be set for."
        ]
        # ada has an address: she is mailed her own password, never this one.
        assert validate_request(settings, directory, handout("Lantern-Ada-4821")).users == 2
    finally:
        directory.dispose()
