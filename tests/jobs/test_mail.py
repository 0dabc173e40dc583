"""The password mail: content, escaping, header safety, and how SMTP replies are classified."""

from __future__ import annotations

import smtplib
from dataclasses import replace
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest

from core.settings import Settings
from jobs.mail_templates import MailTemplates
from jobs.mailer import (
    Mailer,
    MailSetupError,
    Outcome,
    PasswordMail,
    Sender,
    clean_display_name,
    connect_smtp,
    render_message,
)
from tests.support.smtp import SmtpServer, free_port
from tests.support.smtp import smtp_server as smtp_server

# The test server takes AUTH without TLS (loopback only); aiosmtpd warns about that each time.
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")

SETTINGS = Settings(mail_from="Library <resetbot@library.example>",
                    portal_url="https://portal.example/?a=1&b=<2>")


def mail(**overrides: object) -> PasswordMail:
    values: dict[str, object] = {
        "full_name": "Alice Archer", "address": "alice@example.org", "username": "alice",
        "password": "Tq7#kWm!xz9Rp4Ae", "require_change": True,
    }
    values.update(overrides)
    return PasswordMail(**values)  # type: ignore[arg-type]


def build_message(settings: Settings, password_mail: PasswordMail) -> EmailMessage:
    """The rendered mail as a mail client reads it."""
    templates = MailTemplates.load(settings)
    _to, data = render_message(templates, Sender.from_settings(settings), password_mail)
    assert all(len(line) <= 998 for line in data.split(b"\r\n"))  # SMTP's line limit
    parsed = message_from_bytes(data, policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def test_the_mail_holds_name_username_password_portal_and_the_change_line() -> None:
    message = build_message(SETTINGS, mail())
    plain = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    html_part = message.get_body(("html",)).get_content()  # type: ignore[union-attr]

    assert "Hello Alice Archer," in plain
    assert "Username: alice" in plain
    assert "New password: Tq7#kWm!xz9Rp4Ae" in plain
    assert "https://portal.example/?a=1&b=<2>" in plain
    assert "must change this password the next time you sign in" in plain
    assert "<code>Tq7#kWm!xz9Rp4Ae</code>" in html_part
    assert 'href="https://portal.example/?a=1&amp;b=&lt;2&gt;"' in html_part
    assert message["To"] == "Alice Archer <alice@example.org>"
    assert message["From"] == "Library <resetbot@library.example>"
    assert message["Message-ID"] and message["Date"]
    assert message["Subject"] == "Your library password has been reset"


def test_a_name_with_accents_and_specials_is_encoded_not_mangled() -> None:
    message = build_message(SETTINGS, mail(full_name='Zoë "Zed" Öztürk, Jr.'))
    assert message["To"].addresses[0].display_name == 'Zoë "Zed" Öztürk, Jr.'
    assert message["To"].addresses[0].addr_spec == "alice@example.org"
    plain = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "Hello Zoë \"Zed\" Öztürk, Jr.," in plain


def test_no_change_line_when_the_password_need_not_be_changed() -> None:
    message = build_message(SETTINGS, mail(require_change=False))
    for subtype in ("plain", "html"):
        body = message.get_body((subtype,)).get_content()  # type: ignore[union-attr]
        assert "must change" not in body


def test_html_escapes_every_value() -> None:
    message = build_message(
        SETTINGS, mail(full_name="<script>alert(1)</script>", password="a<b>&c\"d'e-Long1")
    )
    html_part = message.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert "<script>" not in html_part
    assert "&lt;script&gt;" in html_part
    assert "a&lt;b&gt;&amp;c&quot;d&#x27;e-Long1" in html_part


def test_a_name_with_line_breaks_cannot_inject_headers() -> None:
    evil = "Mallory\r\nBcc: everyone@example.org\r\nSubject: pwned"
    message = build_message(SETTINGS, mail(full_name=evil))
    _to, data = render_message(MailTemplates.load(SETTINGS), Sender.from_settings(SETTINGS),
                               mail(full_name=evil))
    headers = data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")

    assert message["Bcc"] is None
    assert [line for line in headers if line.startswith(b"Subject:")] == [
        b"Subject: Your library password has been reset"
    ]
    assert not any(line.startswith(b"Bcc:") for line in headers)
    assert clean_display_name(evil) == "Mallory Bcc: everyone@example.org Subject: pwned"


@pytest.mark.parametrize(
    "address",
    ["alice@example.org\r\nBcc: x@example.org", "alice@example.org\nRCPT TO:<x@y.org>",
     "two words@example.org", "not-an-address", ""],
)
def test_an_address_that_could_inject_or_cannot_be_mailed_is_refused_for_good(
    address: str, smtp_server: SmtpServer
) -> None:
    with Mailer(smtp_server.settings(SETTINGS), connect_smtp) as mailer:
        delivery = mailer.send(mail(address=address))

    assert delivery.outcome is Outcome.PERMANENT
    assert delivery.reason is not None and "Tq7#" not in delivery.reason
    assert smtp_server.messages == []


def test_one_connection_carries_many_mails(smtp_server: SmtpServer) -> None:
    connections = []

    def counting_factory(settings: Settings) -> smtplib.SMTP:
        connections.append(1)
        return connect_smtp(settings)

    with Mailer(smtp_server.settings(SETTINGS), counting_factory) as mailer:
        outcomes = [
            mailer.send(mail(address=f"user{n}@example.org", username=f"user{n}")).outcome
            for n in range(5)
        ]

    assert outcomes == [Outcome.SENT] * 5
    assert len(connections) == 1
    assert len(smtp_server.messages) == 5


def test_4xx_is_transient_and_5xx_permanent_with_the_servers_reason(
    smtp_server: SmtpServer,
) -> None:
    smtp_server.refuse("busy@example.org", code=452, times=1, text="4.2.2 Mailbox full")
    smtp_server.refuse("gone@example.org", code=550, times=1, text="5.1.1 User unknown")

    with Mailer(smtp_server.settings(SETTINGS), connect_smtp) as mailer:
        busy = mailer.send(mail(address="busy@example.org"))
        gone = mailer.send(mail(address="gone@example.org"))
        fine = mailer.send(mail(address="alice@example.org"))

    assert (busy.outcome, busy.reason) == (Outcome.TRANSIENT, "452 4.2.2 Mailbox full")
    assert (gone.outcome, gone.reason) == (Outcome.PERMANENT, "550 5.1.1 User unknown")
    assert fine.outcome is Outcome.SENT


def test_an_unreachable_server_is_transient_and_tried_once() -> None:
    settings = replace(SETTINGS, smtp_host="127.0.0.1", smtp_port=free_port(), smtp_timeout=2)
    attempts = []

    def factory(settings: Settings) -> smtplib.SMTP:
        attempts.append(1)
        return connect_smtp(settings)

    with Mailer(settings, factory) as mailer:
        first = mailer.send(mail())
        second = mailer.send(mail(address="bob@example.org"))

    assert first.outcome is second.outcome is Outcome.TRANSIENT
    assert first.reason is not None and "Could not reach the mail server" in first.reason
    assert len(attempts) == 1  # the rest of the batch fails fast instead of timing out each


def test_a_bad_mail_from_is_a_setup_error() -> None:
    settings = replace(SETTINGS, mail_from="Library\r\nBcc: x@example.org <a@b.org>")
    with pytest.raises(MailSetupError, match="MAIL_FROM"):
        Sender.from_settings(settings)


def test_wrong_credentials_are_a_setup_error_not_a_per_user_failure() -> None:
    server = SmtpServer(username="resetbot", password="right").start()
    try:
        settings = replace(server.settings(SETTINGS), smtp_password="wrong")
        with Mailer(settings, connect_smtp) as mailer, pytest.raises(MailSetupError) as caught:
            mailer.open()
        assert "535" in str(caught.value)
        assert "wrong" not in str(caught.value)
        assert server.logins == [("resetbot", False)]
    finally:
        server.stop()


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "one-by-one"])
def test_a_batch_goes_over_one_connection_each_mail_classified(pipelining: bool) -> None:
    """Pipelined (RFC 2920) or not, a batch's refusals stay with their own mail and the mails
    after them are sent, each with its own password."""
    server = SmtpServer(pipelining=pipelining).start()
    connections, renewals = [], []

    def counting_factory(settings: Settings) -> smtplib.SMTP:
        connections.append(1)
        return connect_smtp(settings)

    try:
        server.refuse("busy@example.org", code=452, times=1, text="4.2.2 Mailbox full")
        server.refuse("gone@example.org", code=550, times=1, text="5.1.1 User unknown")
        mails = [
            mail(address="busy@example.org"),
            mail(address="no address"),
            mail(address="gone@example.org"),
            mail(address="alice@example.org", password="Aa3#first"),
            mail(address="bob@example.org", username="bob", password="Bb4#second"),
        ]
        with Mailer(server.settings(SETTINGS), counting_factory) as mailer:
            deliveries = list(mailer.send_each(mails, before=lambda: renewals.append(1)))
            assert mailer.transient_streak == 0
        assert [(d.outcome, d.reason) for d in deliveries] == [
            (Outcome.TRANSIENT, "452 4.2.2 Mailbox full"),
            (Outcome.PERMANENT, "Not sent: the e-mail address has no @."),
            (Outcome.PERMANENT, "550 5.1.1 User unknown"),
            (Outcome.SENT, None),
            (Outcome.SENT, None),
        ]
        assert [(m.to, m.password) for m in server.messages] == [
            ("alice@example.org", "Aa3#first"), ("bob@example.org", "Bb4#second"),
        ]
        assert len(connections) == 1 and len(renewals) == 5
    finally:
        server.stop()


def test_a_line_starting_with_a_dot_arrives_whole(smtp_server: SmtpServer, tmp_path: Path) -> None:
    """DATA ends at a line holding only "."; a line starting with one is sent doubled (RFC 5321
    4.5.2) and arrives as written. Quoted-printable leaves such a line as it is."""
    (tmp_path / "reset.txt").write_text("Subject: Reset\n\n.{name}\n.\nPassword: {password}\n")
    settings = replace(smtp_server.settings(SETTINGS), mail_templates=str(tmp_path))
    with Mailer(settings, connect_smtp) as mailer:
        assert mailer.send(mail()).outcome is Outcome.SENT
    (received,) = smtp_server.messages
    assert received.text.splitlines() == [".Alice Archer", ".", "Password: Tq7#kWm!xz9Rp4Ae"]


def test_a_batch_given_up_halfway_leaves_no_transaction_open(smtp_server: SmtpServer) -> None:
    """Pipelining sends the next mail's envelope with each message: a batch stopped after a
    mail (a lease lost, an error) must not leave it open, or the next message sent on that
    connection would go to that envelope's recipient."""
    with Mailer(smtp_server.settings(SETTINGS), connect_smtp) as mailer:
        deliveries = mailer.send_each([
            mail(address="alice@example.org", password="Aa3#first"),
            mail(address="bob@example.org", password="Bb4#second"),
        ])
        assert next(deliveries).outcome is Outcome.SENT
        deliveries.close()
        assert mailer.send(mail(address="carol@example.org", password="Cc5#third")).outcome \
            is Outcome.SENT

    assert [(m.to, m.password) for m in smtp_server.messages] == [
        ("alice@example.org", "Aa3#first"), ("carol@example.org", "Cc5#third"),
    ]
