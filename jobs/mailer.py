"""The password mail: built safely, sent over one SMTP connection per chunk, outcomes classified.

Nothing here logs a message body or puts a password into an exception: errors carry only the
mail server's reply.
"""

from __future__ import annotations

import enum
import html
import logging
import re
import smtplib
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from email.errors import HeaderParseError
from email.headerregistry import Address
from email.message import EmailMessage
from types import TracebackType

from core.settings import Settings

logger = logging.getLogger(__name__)

SmtpFactory = Callable[[Settings], smtplib.SMTP]
SUBJECT = "Your library password has been reset"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
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
    return " ".join(_CONTROL.sub(" ", name).split())


def recipient(mail: PasswordMail) -> Address:
    """The To: address; raises ValueError for an address that could inject or cannot be sent."""
    address = mail.address.strip()
    if not address or _CONTROL.search(address) or any(ch.isspace() for ch in address):
        raise ValueError("the e-mail address contains spaces or control characters")
    try:
        return Address(display_name=clean_display_name(mail.full_name), addr_spec=address)
    except (ValueError, IndexError, HeaderParseError):
        raise ValueError("the e-mail address is not valid") from None


def build_message(settings: Settings, mail: PasswordMail) -> EmailMessage:
    message = EmailMessage()
    message["Subject"] = SUBJECT
    message["From"] = settings.mail_from
    message["To"] = recipient(mail)
    message.set_content(_plain_body(settings, mail))
    message.add_alternative(_html_body(settings, mail), subtype="html")
    return message


def _greeting_name(mail: PasswordMail) -> str:
    return clean_display_name(mail.full_name) or mail.username


def _plain_body(settings: Settings, mail: PasswordMail) -> str:
    lines = [
        f"Hello {_greeting_name(mail)},",
        "",
        f"The password of your library account \"{mail.username}\" has been reset.",
        "",
        f"Username: {mail.username}",
        f"New password: {mail.password}",
        "",
        f"Sign in at {settings.portal_url}",
    ]
    if mail.require_change:
        lines.append("You must change this password the next time you sign in.")
    lines += ["", "If you did not expect this message, please contact the library."]
    return "\n".join(lines) + "\n"


def _html_body(settings: Settings, mail: PasswordMail) -> str:
    e = html.escape
    portal = e(settings.portal_url, quote=True)
    change = (
        "<p><strong>You must change this password the next time you sign in.</strong></p>"
        if mail.require_change
        else ""
    )
    return (
        "<!DOCTYPE html><html><body>"
        f"<p>Hello {e(_greeting_name(mail))},</p>"
        f"<p>The password of your library account <strong>{e(mail.username)}</strong> "
        "has been reset.</p>"
        "<table>"
        f"<tr><td>Username:</td><td><code>{e(mail.username)}</code></td></tr>"
        f"<tr><td>New password:</td><td><code>{e(mail.password)}</code></td></tr>"
        "</table>"
        f'<p>Sign in at <a href="{portal}">{portal}</a></p>'
        f"{change}"
        "<p>If you did not expect this message, please contact the library.</p>"
        "</body></html>"
    )


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

    def __init__(self, settings: Settings, factory: SmtpFactory) -> None:
        self.settings = settings
        self.factory = factory
        self._client: smtplib.SMTP | None = None
        #: Why the server could not be reached; later sends fail fast instead of each waiting
        #: for a timeout, until `reachable_again` is called.
        self.unreachable: str | None = None

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

    def reachable_again(self) -> None:
        """Allow one new connection attempt (the next batch may find the server back)."""
        self.unreachable = None

    def close(self) -> None:
        if self._client is not None:
            _close_quietly(self._client)
            self._client = None

    def send(self, mail: PasswordMail) -> Delivery:
        """Send one mail; every failure is classified, only MailSetupError escapes."""
        try:
            message = build_message(self.settings, mail)
        except ValueError as error:
            return Delivery(Outcome.PERMANENT, f"Not sent: {error}.")
        self.open()
        if self._client is None:
            return Delivery(Outcome.TRANSIENT, self.unreachable)
        try:
            refused = self._client.send_message(message)
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
