"""The password mail: built safely, sent over one SMTP connection per chunk, outcomes classified.

Nothing here logs a message body or puts a password into an exception: errors carry only the
mail server's reply.
"""

from __future__ import annotations

import binascii
import enum
import logging
import secrets
import smtplib
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from email.headerregistry import Address
from email.utils import formataddr, formatdate, make_msgid, parseaddr
from types import TracebackType

from core.addresses import UnusableAddress, parse_address
from core.controls import has_unsafe, single_line
from core.settings import Settings
from jobs.mail_templates import MAX_NAME, MailTemplates, Recipient, encoded_subject

logger = logging.getLogger(__name__)

SmtpFactory = Callable[[Settings], smtplib.SMTP]
MAX_REASON = 300


class MailSetupError(Exception):
    """The mail server cannot be used at all (bad credentials, no TLS): task-wide, not per user."""


class Outcome(enum.Enum):
    SENT = "sent"
    TRANSIENT = "transient"  # try again later: connection trouble, timeouts, 4xx
    PERMANENT = "permanent"  # 5xx or an address that cannot be mailed: don't try again


@dataclass(frozen=True)
class Delivery:
    outcome: Outcome
    reason: str | None = None


@dataclass(frozen=True)
class PasswordMail:
    full_name: str
    address: str
    username: str
    password: str = field(repr=False)
    require_change: bool = True
    #: The user's language (`fr`, `fr-CA`) when the directory knows it; None: MAIL_LANGUAGE.
    language: str | None = None


def connect_smtp(settings: Settings) -> smtplib.SMTP:
    """An SMTP connection as configured: plain, STARTTLS or implicit TLS; logged in if asked."""
    host, port, timeout = settings.smtp_host, settings.smtp_port, settings.smtp_timeout
    client: smtplib.SMTP
    if settings.smtp_security == "ssl":
        client = smtplib.SMTP_SSL(host, port, timeout=timeout, context=ssl.create_default_context())
    else:
        client = smtplib.SMTP(host, port, timeout=timeout)
    try:
        client.ehlo()
        if settings.smtp_security == "starttls":
            client.starttls(context=ssl.create_default_context())
            client.ehlo()
        if settings.smtp_username:
            _login(client, settings.smtp_username, settings.smtp_password or "")
    except BaseException:
        _close_quietly(client)
        raise
    return client


def _login(client: smtplib.SMTP, username: str, password: str) -> None:
    """Log in with one mechanism the server offers.

    smtplib's `login` tries every mechanism in turn after a refusal; one clear 535 is enough to
    know the credentials are wrong, and some servers drop or stall the connection on the next.
    """
    if not client.has_extn("auth"):
        raise smtplib.SMTPNotSupportedError("the server offers no SMTP AUTH")
    offered = client.esmtp_features["auth"].upper().split()
    client.user, client.password = username, password
    for mechanism in ("PLAIN", "LOGIN", "CRAM-MD5"):
        if mechanism in offered:
            method = getattr(client, "auth_" + mechanism.lower().replace("-", "_"))
            client.auth(mechanism, method)
            return
    raise smtplib.SMTPNotSupportedError("the server offers no SMTP AUTH mechanism resetbot knows")


def clean_display_name(name: str) -> str:
    """A name safe for a header: control characters (CR, LF, ...) become single spaces."""
    return single_line(name, MAX_NAME)


def _checked_address(address: str) -> Address:
    """A mailable address (core.addresses' one rule); ValueError saying why it is not."""
    try:
        return parse_address(address)
    except UnusableAddress as unusable:
        raise ValueError(_ADDRESS_WORDS[unusable.problem]) from None


_ADDRESS_WORDS = {
    "missing": "there is no e-mail address",
    "blank": "the e-mail address is blank",
    "no_at": "the e-mail address has no @",
    "spaces_or_controls": "the e-mail address contains spaces or control characters",
    "not_ascii": "the e-mail address is not plain ASCII",
    "not_an_address": "the e-mail address is not valid",
}


def _header_address(name: str, address: Address) -> str:
    # formataddr quotes specials and RFC 2047-encodes a non-ASCII name; its folds become CRLF.
    text = formataddr((clean_display_name(name), address.addr_spec), charset="utf-8")
    return text.replace("\r\n", "\n").replace("\n", "\r\n")


@dataclass(frozen=True)
class Sender:
    """The From: of every mail, checked once per connection rather than once per message."""

    envelope: str
    header: str
    domain: str

    @classmethod
    def from_settings(cls, settings: Settings) -> Sender:
        name, address = parseaddr(settings.mail_from)
        if has_unsafe(settings.mail_from) or not address:
            raise MailSetupError(f"MAIL_FROM is not a valid address: {settings.mail_from!r}")
        try:
            checked = _checked_address(address)
        except ValueError:
            raise MailSetupError(
                f"MAIL_FROM is not a valid address: {settings.mail_from!r}"
            ) from None
        return cls(checked.addr_spec, _header_address(name, checked), checked.domain)


def render_message(
    templates: MailTemplates, sender: Sender, mail: PasswordMail
) -> tuple[str, bytes]:
    """(envelope recipient, the message as SMTP DATA) for one user.

    Built directly rather than through email.message: the standard library's header registry
    costs milliseconds per message, as much as hashing the password, and a task sends thousands.
    Safety stays with what goes into headers: the address is parsed strictly by
    `email.headerregistry.Address`, the name is stripped of control characters and encoded by
    `formataddr`, the subject is one line (RFC 2047-encoded when not ASCII), and the bodies are
    quoted-printable (7-bit, short lines, no header tricks). Raises ValueError when the address
    cannot be mailed.
    """
    address = _checked_address(mail.address)
    rendered = templates.render(
        Recipient(mail.full_name, mail.username, mail.password, mail.require_change,
                  mail.language)
    )
    lines = [
        f"From: {sender.header}",
        f"To: {_header_address(mail.full_name, address)}",
        f"Subject: {encoded_subject(rendered.subject)}",
        f"Date: {formatdate(usegmt=True)}",
        f"Message-ID: {make_msgid(domain=sender.domain)}",
        "MIME-Version: 1.0",
    ]
    text_part = _part("plain", rendered.text)
    if rendered.html is None:
        lines += [*text_part, ""]
    else:
        boundary = "=_resetbot_" + secrets.token_hex(12)  # "=_" never occurs in quoted-printable
        lines += [
            f'Content-Type: multipart/alternative; boundary="{boundary}"',
            "",
            f"--{boundary}",
            *text_part,
            f"--{boundary}",
            *_part("html", rendered.html),
            f"--{boundary}--",
            "",
        ]
    return address.addr_spec, "\r\n".join(lines).encode("ascii")


def _part(subtype: str, body: str) -> list[str]:
    return [
        f'Content-Type: text/{subtype}; charset="utf-8"',
        "Content-Transfer-Encoding: quoted-printable",
        "",
        _quoted_printable(body),
    ]


def _quoted_printable(text: str) -> str:
    encoded = binascii.b2a_qp(text.encode("utf-8"), istext=True).decode("ascii")
    return encoded.replace("\r\n", "\n").replace("\n", "\r\n").rstrip("\r\n")


def _reply(code: int, message: bytes | str) -> str:
    text = message.decode("utf-8", "replace") if isinstance(message, bytes) else str(message)
    return f"{code} {' '.join(text.split())}"[:MAX_REASON]


def _close_quietly(client: smtplib.SMTP) -> None:
    try:
        client.quit()
    except (smtplib.SMTPException, OSError):
        client.close()


class Mailer:
    """Sends a chunk's mails over one connection, reconnecting only after the server drops it."""

    def __init__(
        self, settings: Settings, factory: SmtpFactory, templates: MailTemplates | None = None
    ) -> None:
        self.settings = settings
        self.factory = factory
        #: Loaded once per worker (WorkerContext); loaded here only for a Mailer built alone.
        self.templates = templates if templates is not None else MailTemplates.load(settings)
        self._client: smtplib.SMTP | None = None
        self._sender: Sender | None = None
        #: Why the server could not be reached; later sends fail fast instead of each waiting
        #: for a timeout, until `reachable_again` is called.
        self.unreachable: str | None = None
        #: Transient failures in a row (reset by a sent mail), and the last one's reason.
        self.transient_streak = 0
        self.last_transient: str | None = None

    def __enter__(self) -> Mailer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def open(self) -> None:
        """Connect if not connected. Raises MailSetupError when the server can never be used;
        a server that cannot be reached now is remembered in `unreachable`."""
        self.sender()
        if self._client is not None or self.unreachable is not None:
            return
        try:
            self._client = self.factory(self.settings)
        except smtplib.SMTPAuthenticationError as error:
            raise MailSetupError(
                "The mail server refused resetbot's SMTP login: "
                + _reply(error.smtp_code, error.smtp_error)
            ) from None
        except smtplib.SMTPNotSupportedError as error:
            raise MailSetupError(
                f"The mail server does not support SMTP_SECURITY={self.settings.smtp_security}"
                f" ({error})"[:MAX_REASON]
            ) from None
        except ssl.SSLCertVerificationError as error:
            raise MailSetupError(
                f"The mail server's TLS certificate was not accepted: {error.verify_message}"
            ) from None
        except smtplib.SMTPResponseException as error:
            self.unreachable = _reply(error.smtp_code, error.smtp_error)
        except (smtplib.SMTPException, OSError) as error:
            self.unreachable = _connection_reason(self.settings, error)

    @property
    def connected(self) -> bool:
        return self._client is not None

    def sender(self) -> Sender:
        """MAIL_FROM, checked once; a bad one is a MailSetupError."""
        if self._sender is None:
            self._sender = Sender.from_settings(self.settings)
        return self._sender

    def reachable_again(self) -> None:
        """Allow one new connection attempt (the next batch may find the server back)."""
        self.unreachable = None

    def close(self) -> None:
        if self._client is not None:
            _close_quietly(self._client)
            self._client = None

    def send(self, mail: PasswordMail) -> Delivery:
        """Send one mail; every failure is classified, only MailSetupError escapes."""
        delivery = self._deliver(mail)
        if delivery.outcome is Outcome.SENT:
            self.transient_streak = 0
        elif delivery.outcome is Outcome.TRANSIENT:
            self.transient_streak += 1
            self.last_transient = delivery.reason
        return delivery

    def _deliver(self, mail: PasswordMail) -> Delivery:
        sender = self.sender()
        try:
            to, data = render_message(self.templates, sender, mail)
        except ValueError as error:
            return Delivery(Outcome.PERMANENT, f"Not sent: {error}.")
        self.open()
        if self._client is None:
            return Delivery(Outcome.TRANSIENT, self.unreachable)
        try:
            refused = self._client.sendmail(sender.envelope, [to], data)
        except smtplib.SMTPRecipientsRefused as error:
            code, reply = next(iter(error.recipients.values()))
            return self._refused(code, reply)
        except smtplib.SMTPResponseException as error:
            # Sender refused, data refused, or any other coded reply.
            if error.smtp_code in (421,) or isinstance(error, smtplib.SMTPSenderRefused):
                self.close()
            return self._refused(error.smtp_code, error.smtp_error)
        except smtplib.SMTPServerDisconnected:
            self.close()
            return Delivery(Outcome.TRANSIENT, "The mail server closed the connection.")
        except (smtplib.SMTPException, OSError) as error:
            self.close()
            return Delivery(Outcome.TRANSIENT, _connection_reason(self.settings, error))
        if refused:
            code, reply = next(iter(refused.values()))
            return self._refused(code, reply)
        return Delivery(Outcome.SENT)

    def _refused(self, code: int, reply: bytes | str) -> Delivery:
        outcome = Outcome.TRANSIENT if 400 <= code < 500 or code < 0 else Outcome.PERMANENT
        return Delivery(outcome, _reply(code, reply))


def _connection_reason(settings: Settings, error: BaseException) -> str:
    what = type(error).__name__
    return (
        f"Could not reach the mail server {settings.smtp_host}:{settings.smtp_port} ({what})."
    )
