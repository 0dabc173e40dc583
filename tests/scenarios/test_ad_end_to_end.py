"""resetbot on Active Directory (a throw-away Samba AD domain), end to end (issue 19): the CLI
asks, a worker resets through the Directory protocol with the least-privilege service account,
and the domain's own sign-in is the proof (with must change: the new password gets `773`, the
old one `52e`; staff and users out of scope still sign in with their old passwords).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import replace

import pytest
from redis import Redis
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from bot.cli import main
from core.models import ItemState, ResetItem, TaskStatus
from core.settings import Settings
from jobs.context import WorkerContext
from tests.core.test_active_directory_samba import _samba_available
from tests.support.engine import build_context, run_until_final
from tests.support.samba_ad import (
    SEED_USERS,
    SERVICE_NAME,
    SERVICE_PASSWORD,
    STAFF_GROUP,
    DomainTemplate,
    SambaDomain,
    seed_user,
)
from tests.support.smtp import SmtpServer
from tests.support.smtp import smtp_server as smtp_server

# The domain is the slow part; resetbot's state on SQLite (the LDAP end-to-end tests run the
# state on PostgreSQL too).
pytestmark = [pytest.mark.services,
              pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)]

DEFAULT = "Harbour-Lantern-26"  # under pat's 20 characters
PATRONS = {"ann", "ben", "cy", "dee", "pat", "dis", "lou"}
STAFF = {"dana", "sam"}


@pytest.fixture(scope="module")
def samba_template() -> Iterator[DomainTemplate]:
    _samba_available()
    template = DomainTemplate.acquire()
    yield template
    template.release()


@pytest.fixture
def domain(samba_template: DomainTemplate) -> Iterator[SambaDomain]:
    with samba_template.domain() as running:
        yield running


@pytest.fixture
def configured(
    settings: Settings, domain: SambaDomain, smtp_server: SmtpServer, engine: Engine
) -> Settings:
    return replace(
        smtp_server.settings(settings),
        directory_url=domain.url,
        directory_profile="active-directory",
        directory_tls_ca_file=str(domain.ca_file),
        directory_bind_dn=SERVICE_NAME,
        directory_bind_password=SERVICE_PASSWORD,
        directory_staff_group=STAFF_GROUP,
    )


@pytest.fixture
def context(configured: Settings, redis_conn: Redis, engine: Engine) -> Iterator[WorkerContext]:
    built = build_context(configured, redis_conn, engine)
    yield built
    built.close()


def cli(configured: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        *argv: str, stdin: str = "") -> tuple[int, str]:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = main(list(argv), environ=configured.to_env())
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def states(sessions: sessionmaker[Session], task_id: int) -> dict[str, tuple[str, str | None]]:
    with sessions() as session:
        found = session.scalars(select(ResetItem).where(ResetItem.task_id == task_id))
        return {item.username: (item.state, item.last_error) for item in found}


def assert_old_passwords_work(domain: SambaDomain, names: set[str]) -> None:
    for name in sorted(names):
        user = seed_user(name)
        assert domain.sign_in(user.dn, user.password) == "ok", name


def test_a_default_password_for_every_patron(
    configured: Settings, context: WorkerContext, domain: SambaDomain,
    sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Every patron gets it (must change: 773), pat's fine-grained policy (20 characters, a rule
    the service account cannot read) makes the server refuse it for pat alone, who is not
    reset; staff (one of them only through a nested group) and olga (outside the base) keep
    their passwords."""
    code, out = cli(configured, monkeypatch, capsys, "reset", "--scope", "all_without_role",
                    "--default-password-stdin", "--yes", "--detach", stdin=DEFAULT + "\n")
    assert code == 0, out
    assert f"Users to reset:        {len(PATRONS):>8,}" in out
    assert "Locked on purpose:            1" in out  # dis, disabled
    final = run_until_final(context, 1)

    assert final.status is TaskStatus.COMPLETED_WITH_ERRORS, final
    assert final.counts[ItemState.RESET] == len(PATRONS) - 1
    for name in sorted(PATRONS - {"pat", "dis"}):
        user = seed_user(name)
        assert domain.sign_in(user.dn, DEFAULT) == "773", name
        assert domain.sign_in(user.dn, user.password) == "52e", name
    pat = seed_user("pat")
    state, reason = states(sessions, 1)["pat"]
    assert state == ItemState.REFUSED and reason and DEFAULT not in reason
    assert domain.sign_in(pat.dn, pat.password) == "ok"
    assert_old_passwords_work(domain, STAFF | {"olga"})


def test_e_mailed_passwords_sign_in_and_the_disabled_account_is_left_out(
    configured: Settings, context: WorkerContext, domain: SambaDomain, smtp_server: SmtpServer,
    sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out = cli(configured, monkeypatch, capsys, "reset", "--scope", "selected_only",
                    "--user", "ann,ben,cy,dis", "--without-email", "skip",
                    "--no-require-change", "--yes", "--detach")
    assert code == 0, out
    final = run_until_final(context, 1)

    assert final.status is TaskStatus.COMPLETED, final
    assert {name: state for name, (state, _) in states(sessions, 1).items()} == {
        "ann": "notified", "ben": "notified", "cy": "skipped", "dis": "locked"}
    for name in ("ann", "ben"):
        mailed = smtp_server.last_password(f"{name}@example.org")
        assert domain.sign_in(seed_user(name).dn, mailed) == "ok", name
    assert smtp_server.to("dis@example.org") == []
    assert_old_passwords_work(domain, {"cy"} | STAFF)


def test_directory_check_on_active_directory(
    configured: Settings, domain: SambaDomain, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out = cli(configured, monkeypatch, capsys, "directory", "check")
    assert code == 0, out
    in_scope = [user for user in SEED_USERS if user.in_scope]
    assert f"Users:            {len(in_scope)}" in out
    assert "Staff:            2" in out
    assert "Locked on purpose: 1" in out
    assert SERVICE_PASSWORD not in out
