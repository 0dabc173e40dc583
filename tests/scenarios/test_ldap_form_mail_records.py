"""What works on a SQL directory works on OpenLDAP too (issue 19), beyond test_ldap_end_to_end.py:
the Slack form refuses a password the directory would refuse, a mail outage pauses an LDAP task
before anyone's password changes and it resumes with passwords that bind, and the follow-up
list and the audit trail of an LDAP task are the same as for a table.
"""

from __future__ import annotations

import csv
import io
from dataclasses import replace
from datetime import timedelta

import pytest
from redis import Redis
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from core.directory.factory import open_directory
from core.models import ItemState, Scope, TaskStatus
from core.settings import Settings
from jobs.reaper import reap
from tests.scenarios.test_ldap_end_to_end import DEFAULT, cli, items
from tests.scenarios.test_ldap_end_to_end import configured as configured
from tests.scenarios.test_ldap_end_to_end import live as live
from tests.support.engine import build_context, run_task, run_until_final, task_snapshot, work
from tests.support.faults import tcp_proxy
from tests.support.openldap import OpenLdap
from tests.support.openldap import openldap_template as openldap_template
from tests.support.openldap import slapd as slapd
from tests.support.signing import app_settings, form_state, start_app, submitted_view
from tests.support.slack_standin import SlackStandIn
from tests.support.slack_standin import slack_standin as slack_standin
from tests.support.smtp import SmtpServer
from tests.support.smtp import smtp_server as smtp_server

#: The state database does not matter here: SQLite only (the LDAP end-to-end file runs both).
pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
SHORTER_THAN_30 = "The directory refuses passwords shorter than 30 characters"


def assert_untouched(slapd: OpenLdap, uids: set[str]) -> None:
    """Each still signs in with the password they had (the locked ones sign in with none)."""
    for uid in sorted(uids - {"frozen", "tripped"}):
        assert slapd.binds(uid, slapd.old(uid)) == (0, None), uid


def test_the_form_refuses_a_password_the_directory_would_refuse(
    configured: Settings, sessions: sessionmaker[Session], redis_conn: Redis, slapd: OpenLdap,
    slack_standin: SlackStandIn,
) -> None:
    """The default ppolicy asks for 30 characters: the form says so on the password field, in
    the directory's words, and no task is made."""
    with slapd.admin() as admin:
        admin.modify("cn=default,ou=policies,dc=example,dc=org",
                     {"pwdMinLength": [("MODIFY_REPLACE", ["30"])]})
    served = app_settings(configured, slack_standin)
    directory = open_directory(served)
    running, thread = start_app(served, sessions, directory, redis_conn, slack_standin)
    try:
        opened = running.open_modal()
        answer = running.slack.submit(submitted_view(
            opened, form_state("all_without_role", password=DEFAULT))).json()
        handout = running.slack.submit(submitted_view(opened, form_state(
            "all_without_role", no_email="set", no_email_password=DEFAULT))).json()
    finally:
        running.stop(thread)
        directory.dispose()
    assert answer["response_action"] == "errors"
    assert SHORTER_THAN_30 in answer["errors"]["password"]
    assert handout["response_action"] == "errors"
    assert any(SHORTER_THAN_30 in said for said in handout["errors"].values())
    assert slack_standin.requests_containing(DEFAULT) == []


def test_a_mail_outage_pauses_an_ldap_task_before_any_password_changes(
    configured: Settings, redis_conn: Redis, engine: Engine, slapd: OpenLdap,
    smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The mail server cannot be reached: the task pauses with everyone still pending and
    every old password still binding; when it answers again the task resumes, and each mailed
    password binds (with "must change")."""
    names = ["ann", "bob", "p01"]
    with tcp_proxy(smtp_server.host, smtp_server.port) as proxy:
        through = replace(configured, smtp_port=proxy.port, mail_outage_retry=0.01)
        context = build_context(through, redis_conn, engine)
        try:
            proxy.cut()
            code, out = cli(through, monkeypatch, capsys, "reset", "--scope", "selected_only",
                            "--user", ",".join(names), "--yes", "--detach")
            assert code == 0, out
            work(context)
            paused = task_snapshot(context, 1)
            assert paused.status is TaskStatus.RUNNING and paused.paused, paused
            assert paused.counts[ItemState.PENDING] == len(names)
            assert_untouched(slapd, set(names))
            assert smtp_server.messages == []

            proxy.restore()
            assert paused.paused_until is not None
            reap(context, now=paused.paused_until + timedelta(seconds=1))
            final = run_until_final(context, 1)
        finally:
            context.close()
    assert final.status is TaskStatus.COMPLETED, final
    assert final.counts[ItemState.NOTIFIED] == len(names)
    for uid in names:
        assert len(smtp_server.to(f"{uid}@example.org")) == 1, uid
        mailed = smtp_server.last_password(f"{uid}@example.org")
        assert slapd.binds(uid, mailed) == (0, "changeAfterReset"), uid
        assert slapd.binds(uid, slapd.old(uid))[0] == 49, uid


def test_the_follow_up_list_and_the_audit_of_an_ldap_task(
    configured: Settings, redis_conn: Redis, engine: Engine, slapd: OpenLdap,
    smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`tasks show --csv` lists the LDAP users to contact by hand (no address, a mail refused
    for good) and nobody else; `audit` records the reset; neither holds a password."""
    smtp_server.refuse("bob@example.org", code=550, times=5)
    code, out = cli(configured, monkeypatch, capsys, "reset", "--scope", "selected_only",
                    "--user", "ann,bob,nomail,blank", "--yes", "--detach")
    assert code == 0, out
    final = run_task(build_context(configured, redis_conn, engine), 1)
    assert final.status is TaskStatus.COMPLETED_WITH_ERRORS, final
    code, listed = cli(configured, monkeypatch, capsys, "tasks", "show", "1", "--csv")
    assert code == 0, listed
    rows = {row["username"]: row for row in csv.DictReader(io.StringIO(listed))}
    assert set(rows) == {"bob", "nomail", "blank"}
    assert {rows[uid]["outcome"] for uid in ("nomail", "blank")} == {"no e-mail"}
    assert rows["bob"]["email"] == "bob@example.org"
    ann = smtp_server.last_password("ann@example.org")
    assert slapd.binds("ann", ann) == (0, "changeAfterReset")

    code, trail = cli(configured, monkeypatch, capsys, "audit", "--csv")
    assert code == 0, trail
    entries = list(csv.DictReader(io.StringIO(trail)))
    assert [(e["action"], e["task_id"]) for e in entries if e["action"] == "confirm"] == [
        ("confirm", "1")]
    assert "selected_only" in next(e["detail"] for e in entries if e["action"] == "confirm")
    for said in (listed, trail):
        assert ann not in said
        assert (configured.directory_bind_password or "?") not in said


def test_a_mail_value_that_is_no_address_is_no_e_mail_on_ldap_too(
    configured: Settings, redis_conn: Redis, engine: Engine, slapd: OpenLdap,
    smtp_server: SmtpServer, sessions: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """Issue 17's one rule for an address holds for an LDAP `mail` as for a Koha column: `n/a`
    counts as no e-mail in the preview (which says why), and `--without-email skip` leaves that
    user alone."""
    with slapd.admin() as admin:
        admin.modify(slapd.user_dn("bob"), {"mail": [("MODIFY_REPLACE", ["n/a"])]})
    directory = open_directory(configured)
    try:
        counted = directory.preview(Scope.SELECTED_ONLY, [
            user.id for user in directory.by_username(["ann", "bob"])])
    finally:
        directory.dispose()
    assert (counted.emailable, counted.without_email) == (1, 1)
    assert counted.unusable == {"no_at": 1}  # the preview says why, as for a SQL table
    code, out = cli(configured, monkeypatch, capsys, "reset", "--scope", "selected_only",
                    "--user", "ann,bob", "--without-email", "skip", "--yes", "--detach")
    assert code == 0, out
    assert "1 address cannot be used and count as no e-mail" in out, out
    final = run_task(build_context(configured, redis_conn, engine), 1)
    assert final.status is TaskStatus.COMPLETED, final
    states = {name: item.state for name, item in items(sessions, 1).items()}
    assert states == {"ann": "notified", "bob": "skipped"}
    assert_untouched(slapd, {"bob"})
    assert [mail.to for mail in smtp_server.messages] == ["ann@example.org"]
