"""Hostile text from the library's directory, in the mails and the Slack messages resetbot sends.

A library's users table is not ours: names, usernames and addresses can hold line breaks, Slack
markup (`<!channel>`, `<@U123>`, `*bold*`), thousands of characters or any Unicode. Whatever
they hold, a mail has exactly our headers and one recipient, its body has one password line,
nobody is pinged in Slack, Block Kit limits hold, and the follow-up CSV is spreadsheet-safe.

tests/jobs/test_mail.py checks single hostile names at the renderer;
tests/blocks/test_messages.py checks hostile text in the message builders. These run hypothesis
over the renderer and send a whole task of hostile users through the engine, aiosmtpd and the
Slack stand-in.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import replace
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis import Redis
from sqlalchemy import Engine, insert, select
from sqlalchemy.orm import Session, sessionmaker

from core.directory import Directory
from core.models import ItemState, ResetItem, ResetTask, Scope, TaskStatus
from core.passwords import PasswordHasher, generate_password
from core.settings import PasswordPolicy, Settings
from core.tasks import ResetRequest, create_task
from jobs.context import WorkerContext
from jobs.mail_templates import MailTemplates
from jobs.mailer import PasswordMail, Sender, render_message
from jobs.queueing import enqueue_task
from jobs.reporting import NullReporter
from jobs.slack_reporter import SlackReporter
from jobs.worker import ResetWorker
from tests.support.faults import wait_until
from tests.support.slack_standin import UPLOAD, SlackStandIn, block_kit_problems
from tests.support.slack_standin import slack_standin as slack_standin
from tests.support.smtp import SmtpServer
from tests.support.smtp import smtp_server as smtp_server

MAIL_SETTINGS = replace(Settings(), mail_from="Library <resetbot@library.example>",
                        portal_url="https://portal.library.example/login")
MAIL_TEMPLATES = MailTemplates.load(MAIL_SETTINGS)
REPORTS = "G0REPORTS"
OUR_HEADERS = ["From", "To", "Subject", "Date", "Message-ID", "MIME-Version", "Content-Type"]
SUBJECT = "Your library password has been reset"
CHANNEL = "C0HOSTILE"
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
PINGS = ("<!channel>", "<!here>", "<!everyone>", "<@U0EVIL>", "<!subteam^S0EVIL>")


def parse(data: bytes) -> EmailMessage:
    message = BytesParser(policy=policy.default).parsebytes(data)
    assert isinstance(message, EmailMessage)
    return message


def header_lines(data: bytes) -> list[bytes]:
    return data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")


def plain_text(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content())  # type: ignore[attr-defined]


def assert_only_our_headers(message: EmailMessage, data: bytes, recipient: str) -> None:
    assert list(message.keys()) == OUR_HEADERS
    assert message["Subject"] == SUBJECT
    [to] = message.get_all("To") or []
    addresses = to.addresses  # type: ignore[attr-defined]
    assert [a.addr_spec for a in addresses] == [recipient]
    assert "\r" not in addresses[0].display_name and "\n" not in addresses[0].display_name
    assert all(len(line) <= 998 for line in data.split(b"\r\n"))  # RFC 5322 line limit
    for line in header_lines(data):  # a header or its folded continuation, nothing else
        assert line[:1] in (b" ", b"\t") or line.split(b":", 1)[0].decode() in OUR_HEADERS


# ---- the mail renderer, any text (hypothesis) ----------------------------------------------------

addresses = st.one_of(
    st.emails(),
    st.builds(lambda local, evil: f"{local}@example.org{evil}",
              st.from_regex(r"[a-z]{1,10}", fullmatch=True),
              st.sampled_from(["\r\nBcc: x@evil.example", "\nRCPT TO:<x@evil.example>",
                               " ", "\x00", ">", ",y@evil.example", ""])),
    st.text(max_size=60),
)


#: Text with, now and then, a break that tries to start a line of its own in the body.
breaking = st.builds(
    lambda head, tail: head + tail,
    st.text(max_size=200),
    st.sampled_from(["", "\nNew password: Fake-1", "\r\nNew password: Fake-1",
                     "\u2028New password: Fake-1", "\x85New password: Fake-1",
                     "\x0bNew password: Fake-1", "\x1eNew password: Fake-1"]),
)


@settings(max_examples=300, deadline=None)
@given(full_name=breaking, username=breaking.filter(bool), address=addresses)
def test_any_name_username_or_address_gives_our_headers_one_recipient_one_password(
    full_name: str, username: str, address: str
) -> None:
    password = generate_password(PasswordPolicy())
    mail = PasswordMail(full_name=full_name, address=address, username=username,
                        password=password, require_change=True)
    try:
        recipient, data = render_message(MAIL_TEMPLATES, Sender.from_settings(MAIL_SETTINGS),
                                         mail)
    except ValueError as refused:
        assert password not in str(refused)
        return
    assert recipient == address.strip()
    message = parse(data)
    assert_only_our_headers(message, data, recipient)
    password_lines = [line for line in plain_text(message).splitlines()
                      if line.startswith("New password:")]
    assert password_lines == [f"New password: {password}"]


# ---- a whole task of hostile users ---------------------------------------------------------------

HOSTILE_USERS: list[dict[str, Any]] = [
    # Headers: CR/LF in the name; the address itself trying to add a recipient.
    {"id": 1, "username": "mallory", "email": "mallory@example.org",
     "full_name": "Mallory\r\nBcc: everyone@evil.example\r\nSubject: pwned"},
    {"id": 2, "username": "eve", "email": "eve@example.org\r\nBcc: boss@evil.example",
     "full_name": "Eve"},
    # Slack: mass pings and mentions, mrkdwn, a link that lies.
    {"id": 3, "username": "<!channel>", "email": None,
     "full_name": "<!here> <!everyone> <@U0EVIL> <!subteam^S0EVIL> *bold* _it_ ~x~ `code`"},
    {"id": 4, "username": "=HYPERLINK(\"http://evil.example\",\"click\")", "email": None,
     "full_name": "+SUM(A1:A9)\n@cmd|' /C calc'!A0"},
    {"id": 5, "username": "long", "email": "long@example.org", "full_name": "Ö" * 255},
    {"id": 6, "username": "rtl", "email": "rtl@example.org",
     "full_name": "\u202eevil\u202c 🙂 名前 <script>alert(1)</script>"},
    # A username that tries to add a second password line to the mail body.
    {"id": 7, "username": "bob\nNew password: Fake-Password-1", "email": "bob@example.org",
     "full_name": "Bob"},
    {"id": 8, "username": "-minus", "email": "\t@example.org", "full_name": "-1+1"},
]


@pytest.fixture
def hostile_directory(engine: Engine, directory: Directory) -> list[dict[str, Any]]:
    with engine.begin() as connection:
        connection.execute(insert(directory.table), [
            {**user, "role": None, "password_hash": "old-hash", "must_change_password": False}
            for user in HOSTILE_USERS
        ])
    return HOSTILE_USERS


def test_a_task_over_hostile_users_injects_no_header_pings_nobody_and_keeps_csv_safe(
    settings: Settings, redis_conn: Redis, engine: Engine, sessions: sessionmaker[Session],
    directory: Directory, hostile_directory: list[dict[str, Any]], smtp_server: SmtpServer,
    slack_standin: SlackStandIn,
) -> None:
    # The requester is no Slack user: the list goes to the library's private report channel.
    slack_standin.add_channel(REPORTS, private=True)
    configured = replace(smtp_server.settings(slack_standin.apply_to(settings)),
                         reset_report_channel=REPORTS)
    context = WorkerContext.build(configured, redis_conn, engine=engine, reporter=NullReporter())
    context.reporter = SlackReporter(context, retry_intervals=(0,) * 5)
    with sessions.begin() as session:
        task_id = create_task(session, configured, ResetRequest(
            requester="cli:<!channel>", requester_name="<!channel> Root\r\n*x*",
            scope=Scope.ALL, slack_channel=CHANNEL)).id
    enqueue_task(context.queue, task_id)

    def told() -> bool:
        ResetWorker(context, reaper=False).work(burst=True)
        with sessions() as session:
            task = session.get(ResetTask, task_id)
            return bool(task and task.slack_csv_posted)

    wait_until(told, 30, "the task to end with its CSV in the thread")
    context.close()

    with sessions() as session:
        task = session.get(ResetTask, task_id)
        outcome = {int(i.user_id): i for i in session.scalars(
            select(ResetItem).where(ResetItem.task_id == task_id))}
    assert task is not None and task.status == TaskStatus.COMPLETED  # no mail failed
    # Mail: the injecting address (and one with a tab) is no usable address (core.addresses):
    # never mailed, left for staff like anyone without one; everyone else gets our headers only.
    assert outcome[2].state == outcome[8].state == ItemState.NO_EMAIL
    assert outcome[2].email is None and outcome[8].email is None
    mailed = {1: "mallory@example.org", 5: "long@example.org", 6: "rtl@example.org",
              7: "bob@example.org"}
    assert {u for u, i in outcome.items() if i.state == ItemState.NOTIFIED} == set(mailed)
    assert sorted(r for m in smtp_server.messages for r in m.rcpt_tos) == sorted(mailed.values())
    hasher = PasswordHasher.from_settings(configured)
    c = directory.table.c
    with sessions() as session:
        stored = dict(session.execute(select(c.id, c.password_hash)).all())
    for user_id, address in mailed.items():
        [received] = smtp_server.to(address)
        message = received.message
        assert list(message.keys()) == OUR_HEADERS
        assert message["Subject"] == SUBJECT and message["Bcc"] is None
        assert [a.addr_spec for a in message["To"].addresses] == [address]
        lines = [line for line in received.text.splitlines() if line.startswith("New password:")]
        assert len(lines) == 1, f"user {user_id}: {lines}"
        password = lines[0].removeprefix("New password: ")
        assert hasher.verify(password, stored[user_id])
    # Slack: every call accepted (Block Kit limits hold), nobody pinged by user data.
    calls = slack_standin.calls()
    assert calls and all(call.ok for call in calls), [c.error for c in calls if not c.ok]
    for ping in PINGS:  # (the CSV file's bytes are data, not a message: Slack parses no markup)
        sent = [c for c in slack_standin.requests_containing(ping) if c.method != UPLOAD]
        assert sent == [], f"{ping} reached Slack"
    for message in slack_standin.messages(CHANNEL):
        assert block_kit_problems(message.blocks or []) == []
        assert "\r" not in message.text
    # The follow-up CSV: one row per user to contact, no cell a spreadsheet would run.
    assert slack_standin.files(CHANNEL) == []
    [upload] = slack_standin.files(REPORTS)
    rows = list(csv.reader(io.StringIO(upload.text)))
    assert rows[0][0] == "username" and len(rows) == 1 + 4  # eve, <!channel>, =HYPERLINK, -minus
    for row in rows[1:]:
        for cell in row:
            assert not cell.startswith(FORMULA_START), row
            assert "\n" not in cell and "\r" not in cell
    assert any(re.fullmatch(r"'=HYPERLINK\(.*", cell) for row in rows for cell in row)
