"""The password mail: built safely, sent over one SMTP connection per chunk, outcomes classified.

Nothing here logs a message body or puts a password into an exception: errors carry only the
mail server's reply.
"""

from __future__ import annotations

import binascii
import enum
import logging
import re
import secrets
import smtplib
import ssl
from collections.abc import Callable, Generator, Sequence
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
    #: Which mail: `reset` (the new password) or `undone` (an Undo: the previous one works).
    kind: str = "reset"


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
                  mail.language, mail.kind)
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


def _envelope(client: smtplib.SMTP, sender: Sender, message: tuple[str, bytes]) -> bytes:
    """MAIL, RCPT and DATA for one mail, in one piece (the addresses are checked ASCII); the
    message's size when the server takes it (RFC 1870), as smtplib's `sendmail` says it."""
    to, data = message
    size = f" size={len(data)}" if client.has_extn("size") else ""
    return f"MAIL FROM:<{sender.envelope}>{size}\r\nRCPT TO:<{to}>\r\nDATA\r\n".encode("ascii")


def _dot_stuffed(data: bytes) -> bytes:
    """The message as DATA sends it: a line starting with "." gets another (RFC 5321 4.5.2),
    and it ends with a line break (the terminating "." follows)."""
    if data.startswith(b".") or b"\n." in data:
        data = _LEADING_DOT.sub(b"..", data)
    return data if data.endswith(b"\r\n") else data + b"\r\n"


_LEADING_DOT = re.compile(rb"(?m)^\.")


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

    def drop(self) -> None:
        """Close the connection without a word (a QUIT could be read as a message's text)."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def send(self, mail: PasswordMail) -> Delivery:
        """Send one mail; every failure is classified, only MailSetupError escapes."""
        return next(self.send_each([mail]))

    def send_each(
        self, mails: Sequence[PasswordMail], before: Callable[[], None] | None = None
    ) -> Generator[Delivery, None, None]:
        """Send `mails` in order over this connection, yielding each one's delivery as it is
        known; `before` runs before each mail (a lease renewal). Every failure is classified;
        only MailSetupError escapes (a reconnect found the server unusable).

        A server that offers PIPELINING (RFC 2920: every server in use does) gets each mail's
        MAIL, RCPT and DATA in one write, and after its message, in the same write, the next
        mail's: one round trip a mail instead of four, for the server as for resetbot. Each
        message still waits for its own 354, so at most one mail at a time is in doubt when a
        connection drops, as without pipelining. Other servers get smtplib's `sendmail`.
        """
        sender = self.sender()
        rendered: list[tuple[str, bytes] | Delivery | None] = [
            self._render(sender, mail) for mail in mails
        ]
        del mails  # the rendered messages are all that holds the passwords now
        #: The envelope of the mail about to go out was sent along with the previous message.
        carried = False
        #: A mail's conversation is under way (its replies may still be unread).
        talking = False
        try:
            for index, current in enumerate(rendered):
                if before is not None:
                    before()
                if not isinstance(current, tuple):  # an address that cannot be mailed
                    assert current is not None, "each mail is sent once"
                    yield current
                    continue
                rendered[index] = None  # the message holds a password: keep it no longer
                self.open()
                client = self._client
                talking = True
                if client is None:
                    delivery, carried = Delivery(Outcome.TRANSIENT, self.unreachable), False
                elif client.has_extn("pipelining"):
                    upcoming = rendered[index + 1] if index + 1 < len(rendered) else None
                    delivery, carried = self._pipelined(
                        client, sender, current, carried,
                        upcoming if isinstance(upcoming, tuple) else None,
                    )
                else:
                    delivery, carried = self._sendmail(client, sender, current), False
                talking = False
                yield self._counted(delivery)
        finally:
            if carried or talking:
                # Stopped (an error, or the caller gave up) with a transaction open on the
                # server: whatever this connection sent next would be read as its message,
                # to that recipient (even a QUIT). Cut it: the server drops an unfinished
                # message; only a new connection is safe.
                self.drop()

    def _render(self, sender: Sender, mail: PasswordMail) -> tuple[str, bytes] | Delivery:
        try:
            return render_message(self.templates, sender, mail)
        except ValueError as error:
            return Delivery(Outcome.PERMANENT, f"Not sent: {error}.")

    def _counted(self, delivery: Delivery) -> Delivery:
        if delivery.outcome is Outcome.SENT:
            self.transient_streak = 0
        elif delivery.outcome is Outcome.TRANSIENT:
            self.transient_streak += 1
            self.last_transient = delivery.reason
        return delivery

    def _pipelined(
        self,
        client: smtplib.SMTP,
        sender: Sender,
        message: tuple[str, bytes],
        carried: bool,
        upcoming: tuple[str, bytes] | None,
    ) -> tuple[Delivery, bool]:
        """One mail over a pipelining server: (its delivery, whether the envelope of the
        `upcoming` mail went out after its message). `carried`: this mail's envelope went out
        already. Replies are checked in the order smtplib's `sendmail` checks them."""
        data = message[1]
        try:
            if not carried:
                client.send(_envelope(client, sender, message))
            mail_code, mail_reply = client.getreply()
            rcpt_code, rcpt_reply = client.getreply()
            data_code, data_reply = client.getreply()
            if data_code == 354 and (mail_code != 250 or rcpt_code not in (250, 251)):
                # A server that took DATA without a recipient: end the empty message.
                client.send(b".\r\n")
                client.getreply()
            if mail_code != 250:
                self.close()  # as after smtplib's SMTPSenderRefused: start afresh
                return self._refused(mail_code, mail_reply), False
            if rcpt_code not in (250, 251) or data_code != 354:
                code, reply = (
                    (rcpt_code, rcpt_reply) if rcpt_code not in (250, 251)
                    else (data_code, data_reply)
                )
                if code == 421:
                    self.close()
                else:
                    self._rset(client)
                return self._refused(code, reply), False
            payload = _dot_stuffed(data) + b".\r\n"
            if upcoming is not None:
                payload += _envelope(client, sender, upcoming)
            client.send(payload)
            code, reply = client.getreply()
        # Cut without a QUIT: mid-conversation, the server might read it as a message's text.
        except smtplib.SMTPServerDisconnected:
            self.drop()
            return Delivery(Outcome.TRANSIENT, "The mail server closed the connection."), False
        except smtplib.SMTPResponseException as error:  # a reply line too long
            self.drop()
            return self._refused(error.smtp_code, error.smtp_error), False
        except (smtplib.SMTPException, OSError) as error:
            self.drop()
            return Delivery(Outcome.TRANSIENT, _connection_reason(self.settings, error)), False
        if code == 250:
            return Delivery(Outcome.SENT), upcoming is not None
        if code == 421:
            self.close()
            return self._refused(code, reply), False
        # The message's transaction is over whatever its reply: the next envelope stands.
        return self._refused(code, reply), upcoming is not None

    def _rset(self, client: smtplib.SMTP) -> None:
        """Clear a failed transaction (a refused recipient) before the next mail."""
        try:
            client.send(b"RSET\r\n")
            client.getreply()
        except (smtplib.SMTPException, OSError):
            self.close()

    def _sendmail(
        self, client: smtplib.SMTP, sender: Sender, message: tuple[str, bytes]
    ) -> Delivery:
        """One mail through smtplib, for a server without PIPELINING."""
        to, data = message
        try:
            refused = client.sendmail(sender.envelope, [to], data)
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
