"""resetbot on an OpenLDAP directory, end to end (issue 19): the CLI asks, a worker resets
through the Directory protocol, and the directory's own sign-in is the proof.

A real slapd per test (tests/support/openldap.py), resetbot's state on SQLite and PostgreSQL as
every other engine test, real Redis, real SMTP on loopback. Every password that should work is
bound with as the user (OpenLDAP's ppolicy says `changeAfterReset` when it must be changed);
every one that should not gets 49; staff and users out of scope still bind with their old ones.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta

import pytest
from ldap3 import Connection
from redis import Redis
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from bot.cli import main
from core.directory.factory import open_directory
from core.directory.ldap import attempt_bind
from core.directory.ldap.directory import LdapDirectory
from core.directory.ldap.openldap import OpenLdapRules
from core.directory.ldap.server import Changes, Refusal
from core.directory.protocol import PasswordSet, SetResult
from core.models import ItemState, ResetItem, ResetTask, Scope, TaskStatus, utcnow
from core.settings import Settings
from core.tasks import ResetRequest, create_task, gate_new_task, validate_request
from core.undo import preview_note, undo_unavailable
from jobs.context import WorkerContext
from jobs.reaper import reap
from tests.support.engine import build_context, run_until_final, task_snapshot, work
from tests.support.openldap import (
    PERMANENT_LOCK,
    STAFF_GROUP,
    OpenLdap,
    OpenLdapTemplate,
    seeded_users,
)
from tests.support.signing import app_settings, form_state, start_app, submitted_view
from tests.support.slack_standin import SlackStandIn
from tests.support.slack_standin import slack_standin as slack_standin
from tests.support.smtp import SmtpServer
from tests.support.smtp import smtp_server as smtp_server

DEFAULT = "Lantern-Harbour-42!"
HANDOUT = "Quiet-Meadow-Gate-7"
SEEDED = [user.uid for user in seeded_users()]
STAFF = {"sam", "sue"}
NO_MAIL = {"nomail", "blank"}


@pytest.fixture(scope="module")
def template() -> Iterator[OpenLdapTemplate]:
    with OpenLdapTemplate.build() as built:
        yield built


@pytest.fixture
def slapd(template: OpenLdapTemplate) -> Iterator[OpenLdap]:
    with template.start() as server:
        yield server


def ldap_settings(settings: Settings, slapd: OpenLdap, scheme: str = "ldaps") -> Settings:
    """`settings` (resetbot's state) with the users on `slapd`, as an operator sets them."""
    env = slapd.env(scheme)
    return replace(
        settings,
        directory_url=env["DIRECTORY_URL"],
        directory_profile="openldap",
        directory_tls_ca_file=env["DIRECTORY_TLS_CA_FILE"],
        directory_bind_dn=env["DIRECTORY_BIND_DN"],
        directory_bind_password=env["DIRECTORY_BIND_PASSWORD"],
        directory_staff_group=STAFF_GROUP,
    )


@pytest.fixture
def configured(
    settings: Settings, slapd: OpenLdap, smtp_server: SmtpServer, engine: Engine
) -> Settings:
    return ldap_settings(smtp_server.settings(settings), slapd)


@pytest.fixture
def context(configured: Settings, redis_conn: Redis, engine: Engine) -> Iterator[WorkerContext]:
    built = build_context(configured, redis_conn, engine)
    yield built
    built.close()


def cli(configured: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        *argv: str, stdin: str = "", **env: str) -> tuple[int, str]:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = main(list(argv), environ={**configured.to_env(), **env})
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def bind(slapd: OpenLdap, uid: str, password: str) -> tuple[int, str | None]:
    attempt = attempt_bind(slapd.config(), slapd.user_dn(uid), password)
    return attempt.result, attempt.ppolicy_error


def old(slapd: OpenLdap, uid: str) -> str:
    return slapd.seeded(uid).password


def items(sessions: sessionmaker[Session], task_id: int) -> dict[str, ResetItem]:
    with sessions() as session:
        found = session.scalars(select(ResetItem).where(ResetItem.task_id == task_id))
        return {item.username: item for item in found}


def assert_untouched(slapd: OpenLdap, uids: set[str]) -> None:
    for uid in sorted(uids - {"frozen", "tripped"}):  # locked: no bind works for them
        assert bind(slapd, uid, old(slapd, uid)) == (0, None), uid


SCOPES = [
    ("all", [], set(SEEDED)),
    ("all_except_selected", ["ann,bob"], set(SEEDED) - {"ann", "bob"}),
    ("all_without_role", [], set(SEEDED) - STAFF),
    ("selected_only", ["ann,sam"], {"ann", "sam"}),
]


@pytest.mark.parametrize("scope,picked,reached", SCOPES, ids=[s[0] for s in SCOPES])
def test_a_default_password_reaches_exactly_the_scope(
    configured: Settings, context: WorkerContext, slapd: OpenLdap,
    sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], scope: str, picked: list[str], reached: set[str],
) -> None:
    users = [arg for names in picked for arg in ("--user", names)]
    code, out = cli(configured, monkeypatch, capsys, "reset", "--scope", scope, *users,
                    "--default-password-stdin", "--yes", "--detach", stdin=DEFAULT + "\n")
    assert code == 0, out
    assert f"Users to reset:        {len(reached):>8,}" in out
    final = run_until_final(context, 1)

    assert final.status is TaskStatus.COMPLETED, final
    assert final.counts[ItemState.RESET] == len(reached)
    for uid in sorted(reached - {"frozen"}):
        assert bind(slapd, uid, DEFAULT) == (0, "changeAfterReset"), uid
        assert bind(slapd, uid, old(slapd, uid))[0] == 49, uid
    assert_untouched(slapd, set(SEEDED) - reached)
    if "frozen" in reached:  # locked on purpose: the password changes, the lock stays
        assert slapd.operational("frozen", "pwdAccountLockedTime")["pwdAccountLockedTime"] == [
            PERMANENT_LOCK]
        assert bind(slapd, "frozen", DEFAULT)[0] == 49
    ids = {item.user_id for item in items(sessions, 1).values()}
    assert len(ids) == len(reached) and all(len(user_id) == 36 for user_id in ids)  # entryUUIDs
    assert DEFAULT not in out


def test_e_mailed_passwords_bind_and_users_without_mail_are_told_to_staff(
    configured: Settings, context: WorkerContext, slapd: OpenLdap, smtp_server: SmtpServer,
    sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out = cli(configured, monkeypatch, capsys, "reset", "--scope", "all_without_role",
                    "--yes", "--detach")
    assert code == 0, out
    assert "Locked on purpose:            1   (left out" in out
    final = run_until_final(context, 1)

    patrons = set(SEEDED) - STAFF - {"frozen"}  # locked on purpose: left out, nobody mailed
    assert final.status is TaskStatus.COMPLETED, final
    assert (final.total, final.counts[ItemState.LOCKED]) == (len(patrons) + 1, 1)
    assert final.counts[ItemState.NOTIFIED] == len(patrons - NO_MAIL)
    assert final.counts[ItemState.NO_EMAIL] == len(NO_MAIL)
    for uid in sorted(patrons - NO_MAIL):
        mailed = smtp_server.last_password(f"{uid}@example.org")
        assert len(smtp_server.to(f"{uid}@example.org")) == 1
        assert bind(slapd, uid, mailed) == (0, "changeAfterReset"), uid
        assert bind(slapd, uid, old(slapd, uid))[0] == 49, uid
    for uid in sorted(NO_MAIL):  # reset to a password nobody was told
        assert bind(slapd, uid, old(slapd, uid))[0] == 49, uid
    assert smtp_server.to("frozen@example.org") == []
    assert items(sessions, 1)["frozen"].state == ItemState.LOCKED
    assert slapd.operational("frozen", "pwdAccountLockedTime")["pwdAccountLockedTime"] == [
        PERMANENT_LOCK]
    assert_untouched(slapd, STAFF)


@pytest.mark.parametrize("choice", ["skip", "set"])
def test_users_without_mail_are_left_alone_or_handed_the_typed_password(
    configured: Settings, context: WorkerContext, slapd: OpenLdap, smtp_server: SmtpServer,
    sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], choice: str,
) -> None:
    code, out = cli(configured, monkeypatch, capsys, "reset", "--scope", "selected_only",
                    "--user", "ann,nomail,blank", "--without-email", choice, "--no-require-change",
                    "--yes", "--detach", stdin=HANDOUT + "\n" if choice == "set" else "")
    assert code == 0, out
    final = run_until_final(context, 1)

    assert final.status is TaskStatus.COMPLETED, final
    assert bind(slapd, "ann", smtp_server.last_password("ann@example.org")) == (0, None)
    states = {name: item.state for name, item in items(sessions, 1).items()}
    if choice == "skip":
        assert states == {"ann": "notified", "nomail": "skipped", "blank": "skipped"}
        assert_untouched(slapd, NO_MAIL)
    else:  # a handed-out password is changed at the next sign-in, whatever the task says
        assert states == {"ann": "notified", "nomail": "handed_out", "blank": "handed_out"}
        for uid in sorted(NO_MAIL):
            assert bind(slapd, uid, HANDOUT) == (0, "changeAfterReset"), uid
    assert HANDOUT not in out


def test_a_password_the_directory_refuses_is_said_where_it_was_typed(
    configured: Settings, slapd: OpenLdap, sessions: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """The default ppolicy asks for more than resetbot's policy here: refused before any
    task, in the directory's words, and nobody's password changes."""
    with slapd.admin() as admin:
        admin.modify("cn=default,ou=policies,dc=example,dc=org",
                     {"pwdMinLength": [("MODIFY_REPLACE", ["30"])]})
    code, out = cli(configured, monkeypatch, capsys, "reset", "--scope", "all",
                    "--default-password-stdin", "--yes", "--detach", stdin=DEFAULT + "\n")
    assert code != 0
    assert "The directory refuses passwords shorter than 30 characters" in out
    with sessions() as session:
        assert session.scalars(select(ResetTask)).all() == []
    assert_untouched(slapd, set(SEEDED))


def test_the_preview_approval_recount_and_the_worker_use_the_same_ldap_directory(
    configured: Settings, redis_conn: Redis, engine: Engine, slapd: OpenLdap,
    sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Approval: a reset of 5 or more waits for a second admin, whose approve re-counts the
    scope on the LDAP server, then the worker resets it."""
    strict = replace(configured, reset_approval_min_users=5)
    directory = open_directory(strict)
    try:  # asked for in Slack by one admin: the gate holds it for another
        with sessions() as session:
            request = ResetRequest(requester="UADMIN", scope=Scope.ALL_WITHOUT_ROLE,
                                   default_password=DEFAULT)
            preview = validate_request(strict, directory, request)
            assert (preview.users, preview.locked) == (len(SEEDED) - len(STAFF), 1)
            task = create_task(session, strict, request, preview)
            assert gate_new_task(session, strict, task) is TaskStatus.AWAITING_APPROVAL
            session.commit()
    finally:
        directory.dispose()
    with sessions() as session:
        task = session.get(ResetTask, 1)
        assert task is not None and task.preview is not None
        assert task.preview["users"] == len(SEEDED) - len(STAFF)
    code, out = cli(strict, monkeypatch, capsys, "tasks", "approve", "1", "--as", "USECOND",
                    RESET_ADMINS="UADMIN,USECOND")
    assert code == 0, out
    context = build_context(strict, redis_conn, engine)
    try:
        final = run_until_final(context, 1)
    finally:
        context.close()
    assert final.status is TaskStatus.COMPLETED
    assert bind(slapd, "ann", DEFAULT) == (0, "changeAfterReset")
    assert_untouched(slapd, STAFF)


def test_cancel_and_retry_on_ldap(
    configured: Settings, context: WorkerContext, slapd: OpenLdap, smtp_server: SmtpServer,
    sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A mail refused for good is retried with a fresh password (the one that binds); a task
    cancelled before it ran changes nobody."""
    smtp_server.refuse("bob@example.org", code=550, times=1)
    code, out = cli(configured, monkeypatch, capsys, "reset", "--scope", "selected_only",
                    "--user", "ann,bob", "--yes", "--detach")
    assert code == 0, out
    first = run_until_final(context, 1)
    assert first.status is TaskStatus.COMPLETED_WITH_ERRORS
    code, out = cli(configured, monkeypatch, capsys, "tasks", "retry", "1", "--detach")
    assert code == 0, out
    retried = run_until_final(context, 2)
    assert retried.status is TaskStatus.COMPLETED
    assert bind(slapd, "bob", smtp_server.last_password("bob@example.org"))[0] == 0
    assert bind(slapd, "ann", smtp_server.last_password("ann@example.org"))[0] == 0

    code, out = cli(configured, monkeypatch, capsys, "reset", "--scope", "selected_only",
                    "--user", "p01", "--yes", "--detach")
    assert code == 0, out
    code, out = cli(configured, monkeypatch, capsys, "tasks", "cancel", "3")
    assert code == 0, out
    cancelled = run_until_final(context, 3)
    assert cancelled.status is TaskStatus.CANCELLED
    assert_untouched(slapd, {"p01"})
    assert smtp_server.to("p01@example.org") == []


def test_directory_check_and_users_import_on_ldap(
    configured: Settings, slapd: OpenLdap, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out = cli(configured, monkeypatch, capsys, "db", "upgrade")
    assert code == 0, out  # resetbot's tables only: the users are on the LDAP server
    code, out = cli(configured, monkeypatch, capsys, "directory", "check")
    assert code == 0, out
    assert f"Users:            {len(SEEDED)}" in out
    assert "Staff:            2" in out
    assert "Locked on purpose: 1" in out
    assert "Password rules:   at least 8 characters" in out
    assert configured.directory_bind_password not in out  # type: ignore[operator]
    for action in ("import", "export"):
        code, out = cli(configured, monkeypatch, capsys, "users", action, "-")
        assert code != 0
        assert f"users {action} is for resetbot's own users table" in out


def test_the_factory_makes_the_ldap_directory_from_settings(
    configured: Settings, slapd: OpenLdap
) -> None:
    directory = open_directory(configured)
    try:
        assert isinstance(directory, LdapDirectory)
        assert not directory.owns_users
        assert directory.preview(Scope.ALL, ()).users == len(SEEDED)
        # Undo puts back what a SQL table held; an LDAP server never gives old passwords back,
        # so nothing is kept and Undo is not offered (the preview says why when Undo is on).
        assert configured.reset_undo_window > 0
        reason = undo_unavailable(directory)
        assert reason is not None and "LDAP" in reason
        assert preview_note(configured, directory) == f"This reset cannot be undone. {reason}."
    finally:
        directory.dispose()
    assert configured.directory_bind_password
    assert configured.directory_bind_password not in repr(configured)


def test_a_user_the_directory_refuses_is_not_reset_nor_mailed_and_the_task_goes_on(
    configured: Settings, context: WorkerContext, slapd: OpenLdap,
    sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """p04 had the default password before (ppolicy's pwdInHistory): the server refuses it
    for p04 alone, with its reason; ann gets it; the task says so and lists p04."""
    directory = open_directory(configured)
    assert isinstance(directory, LdapDirectory)
    try:
        [p04] = directory.by_username(["p04"])
        for password in (DEFAULT, "Between-pass-7"):
            assert directory.set_passwords([PasswordSet(p04.id, password, False)])[0].result \
                is SetResult.SET
    finally:
        directory.dispose()
    code, out = cli(configured, monkeypatch, capsys, "reset", "--scope", "selected_only",
                    "--user", "ann,p04", "--default-password-stdin", "--yes", "--detach",
                    stdin=DEFAULT + "\n")
    assert code == 0, out
    final = run_until_final(context, 1)

    assert final.status is TaskStatus.COMPLETED_WITH_ERRORS
    assert (final.counts[ItemState.RESET], final.counts[ItemState.REFUSED]) == (1, 1)
    assert bind(slapd, "ann", DEFAULT) == (0, "changeAfterReset")
    assert bind(slapd, "p04", "Between-pass-7") == (0, None)
    refused = items(sessions, 1)["p04"]
    assert refused.state == ItemState.REFUSED and "history" in (refused.last_error or "")
    assert DEFAULT not in (refused.last_error or "")
    code, out = cli(configured, monkeypatch, capsys, "tasks", "show", "1", "--csv")
    assert code == 0, out
    [row] = [line for line in out.splitlines() if line.startswith("p04,")]
    assert "refused by the directory" in row and "history" in row


def test_slapd_stopped_mid_batch_pauses_the_task_and_every_last_mail_binds(
    configured: Settings, redis_conn: Redis, engine: Engine, slapd: OpenLdap,
    smtp_server: SmtpServer, sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The real server stops after two of five passwords: those two are mailed (their new
    password works), the other three go back untouched and the task pauses; once the server
    is back, the reaper resumes it and each of them is mailed the password that binds."""
    names = ["p05", "p06", "p07", "p08", "p09"]
    # The pause's first wait, short: the claim compares it with the real clock.
    context = build_context(replace(configured, mail_outage_retry=0.5), redis_conn, engine)
    directory = context.directory
    assert isinstance(directory, LdapDirectory)

    class StopAfterTwo(OpenLdapRules):
        sets = 0

        def set_password(self, connection: Connection, dn: str, password: str,
                         changes: Changes | None = None) -> Refusal | None:
            if self.sets == 2:
                slapd.stop()
            self.sets += 1
            return super().set_password(connection, dn, password, changes)

    directory.rules = StopAfterTwo(directory.profile)
    code, out = cli(configured, monkeypatch, capsys, "reset", "--scope", "selected_only",
                    "--user", ",".join(names), "--yes", "--detach")
    assert code == 0, out
    work(context)

    paused = task_snapshot(context, 1)
    assert paused.status is TaskStatus.RUNNING and paused.paused
    assert (paused.pause_reason or "").startswith("The directory ldaps://localhost:")
    assert paused.counts[ItemState.NOTIFIED] == 2 and paused.counts[ItemState.PENDING] == 3
    mailed = [n for n in names if smtp_server.to(f"{n}@example.org")]
    assert len(mailed) == 2
    slapd.start()  # the same data: the two mailed have their new password, the rest the old
    for n in names:
        if n in mailed:
            assert bind(slapd, n, smtp_server.last_password(f"{n}@example.org"))[0] == 0, n
        else:
            assert bind(slapd, n, old(slapd, n)) == (0, None), n
    assert paused.paused_until is not None
    time.sleep(max(0.0, (paused.paused_until - utcnow()).total_seconds()))
    reap(context, now=paused.paused_until + timedelta(seconds=1))
    final = run_until_final(context, 1)
    context.close()

    assert final.status is TaskStatus.COMPLETED, final
    assert final.counts[ItemState.NOTIFIED] == len(names)
    for n in names:  # nobody is left with a password nobody knows
        assert len(smtp_server.to(f"{n}@example.org")) == 1, n
        assert bind(slapd, n, smtp_server.last_password(f"{n}@example.org")) == (
            0, "changeAfterReset"), n


def test_slack_picks_ldap_users_by_name_and_their_mailed_passwords_bind(
    configured: Settings, sessions: sessionmaker[Session], redis_conn: Redis, slapd: OpenLdap,
    slack_standin: SlackStandIn, smtp_server: SmtpServer,
) -> None:
    """Signed HTTP to the Bolt app with the Slack stand-in: the picker finds users in the
    search copy read from the LDAP server (entryUUIDs as option values), the preview counts
    on the server, the confirm queues, a worker resets through the protocol."""
    served = app_settings(configured, slack_standin)
    directory = open_directory(served)
    running, thread = start_app(served, sessions, directory, redis_conn, slack_standin)
    try:
        opened = running.open_modal()
        found = running.slack.options("patron").json()["options"]
        by_name = {option["text"]["text"]: option["value"] for option in found}
        ann, bob = by_name["Ann Patron (ann)"], by_name["Bob Patron (bob)"]
        assert len(ann) == 36 and len(bob) == 36  # entryUUIDs, as text
        answer = running.slack.submit(submitted_view(opened, form_state(
            "selected_only", [ann, bob])))  # type: ignore[list-item]
        preview = answer.json()["view"]
        assert "*Users to reset*\\n2" in str(preview)  # (the repr of a text with its newline)
        everyone = running.slack.submit(submitted_view(opened, form_state("all_without_role")))
        assert "*Locked on purpose*\\n1: left out, their password does not change" in str(
            everyone.json())
        assert running.slack.submit(preview).json() == {"response_action": "clear"}
        context = WorkerContext.build(running.settings, running.redis)
        try:
            final = run_until_final(context, 1)
        finally:
            context.close()
    finally:
        running.stop(thread)
        directory.dispose()
    assert final.status is TaskStatus.COMPLETED
    for uid in ("ann", "bob"):
        assert bind(slapd, uid, smtp_server.last_password(f"{uid}@example.org")) == (
            0, "changeAfterReset")
    assert_untouched(slapd, set(SEEDED) - {"ann", "bob"})
    assert slack_standin.requests_containing(configured.directory_bind_password or "?") == []


def test_a_scheduled_reset_is_counted_again_on_the_server_at_its_time(
    configured: Settings, context: WorkerContext, slapd: OpenLdap,
    sessions: sessionmaker[Session],
) -> None:
    """Scheduled for ann and bob; bob leaves the directory before its time: the re-count on
    the LDAP server differs from the preview, so the start is held and nobody is reset."""
    start_at = utcnow() + timedelta(minutes=5)
    directory = open_directory(configured)
    try:
        ids = tuple(user.id for user in directory.by_username(["ann", "bob"]))
        with sessions() as session:
            request = ResetRequest(requester="UADMIN", scope=Scope.SELECTED_ONLY,
                                   selection=ids, default_password=DEFAULT, start_at=start_at)
            preview = validate_request(configured, directory, request)
            task = create_task(session, configured, request, preview)
            assert gate_new_task(session, configured, task) is TaskStatus.SCHEDULED
            session.commit()
    finally:
        directory.dispose()
    with slapd.admin() as admin:
        admin.delete(slapd.user_dn("bob"))

    assert reap(context, now=start_at + timedelta(seconds=5)).schedules_held == 1
    with sessions() as session:
        held = session.get(ResetTask, 1)
        assert held is not None and held.start_held_at is not None
        assert (held.preview_users, held.recheck_users) == (2, 1)
    work(context)
    assert bind(slapd, "ann", old(slapd, "ann")) == (0, None)
