"""A real SMTP server on loopback (aiosmtpd) for tests: records mail, refuses on request.

It offers PIPELINING as real servers do (`SmtpServer(pipelining=False)`: a server without it).

    server.refuse("bob@example.org", code=450, times=2)   # the first two RCPTs get 450
    server.require_auth("resetbot", "s3cret")             # AUTH before MAIL, 535 otherwise

It listens on 127.0.0.1 on a free port; `server.settings(settings)` points Settings at it.
"""

from __future__ import annotations

import re
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from core.settings import Settings

PASSWORD_LINE = re.compile(r"^New password: (\S+)\r?$", re.MULTILINE)


@dataclass(frozen=True)
class ReceivedMail:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    message: EmailMessage

    @property
    def to(self) -> str:
        return self.rcpt_tos[0]

    def part(self, subtype: str) -> str:
        body = self.message.get_body(preferencelist=(subtype,))
        assert body is not None, f"no text/{subtype} part"
        return str(body.get_content())

    @property
    def text(self) -> str:
        return self.part("plain")

    @property
    def html(self) -> str:
        return self.part("html")

    @property
    def password(self) -> str:
        found = PASSWORD_LINE.search(self.text)
        assert found, "no password line in the mail"
        return found.group(1)


@dataclass
class _Refusal:
    code: int
    times: int
    text: str


class _Handler:
    def __init__(self, server: SmtpServer) -> None:
        self.server = server

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        # aiosmtpd reads commands one by one from a stream, so pipelined ones work; it just
        # does not say so. Every real server does, and resetbot pipelines when told.
        session.host_name = hostname
        if not self.server.pipelining:
            return responses
        return [*responses[:-1], "250-PIPELINING", responses[-1]]

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        return self.server._rcpt(envelope, address)

    async def handle_DATA(
        self, server: Any, session: Any, envelope: Any
    ) -> str:
        self.server._deliver(envelope)
        return "250 Message accepted for delivery"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class SmtpServer:
    def __init__(
        self,
        *,
        username: str | None = None,
        password: str | None = None,
        pipelining: bool = True,
    ) -> None:
        self.host = "127.0.0.1"
        #: Whether EHLO offers PIPELINING (RFC 2920); without it resetbot uses smtplib's sendmail.
        self.pipelining = pipelining
        self.port = free_port()
        self._lock = threading.Lock()
        self._messages: list[ReceivedMail] = []
        self._refusals: dict[str, _Refusal] = {}
        self.rcpt_attempts: Counter[str] = Counter()
        self.logins: list[tuple[str, bool]] = []
        self._credentials = (username, password) if username is not None else None
        self._controller: Controller | None = None

    # -- control -------------------------------------------------------------------------------

    def start(self) -> SmtpServer:
        kwargs: dict[str, Any] = {}
        if self._credentials is not None:
            kwargs.update(
                authenticator=self._authenticate, auth_required=True, auth_require_tls=False
            )
        self._controller = Controller(
            _Handler(self), hostname=self.host, port=self.port, **kwargs
        )
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def refuse(self, address: str, *, code: int = 450, times: int = 1, text: str = "") -> None:
        """Refuse RCPT TO:<address> with `code` the next `times` times."""
        reply = text or ("Mailbox busy, try again later" if code < 500 else "No such user here")
        with self._lock:
            self._refusals[address.lower()] = _Refusal(code, times, reply)

    def settings(self, settings: Settings) -> Settings:
        """`settings` pointed at this server (with its credentials if it requires AUTH)."""
        username, password = self._credentials or (None, None)
        return replace(
            settings,
            smtp_host=self.host,
            smtp_port=self.port,
            smtp_security="none",
            smtp_username=username,
            smtp_password=password,
            smtp_allow_plaintext_auth=username is not None,  # this server is on loopback
            smtp_timeout=5.0,
            mail_from="Library <resetbot@library.example>",
            portal_url="https://portal.library.example/login",
        )

    # -- what happened -------------------------------------------------------------------------

    @property
    def messages(self) -> list[ReceivedMail]:
        with self._lock:
            return list(self._messages)

    def to(self, address: str) -> list[ReceivedMail]:
        return [mail for mail in self.messages if address.lower() in map(str.lower, mail.rcpt_tos)]

    def last_password(self, address: str) -> str:
        mails = self.to(address)
        assert mails, f"no mail to {address}"
        return mails[-1].password

    # -- aiosmtpd hooks (run in the server's thread) -------------------------------------------

    def _rcpt(self, envelope: Any, address: str) -> str:
        key = address.lower()
        with self._lock:
            self.rcpt_attempts[key] += 1
            refusal = self._refusals.get(key)
            if refusal is not None and refusal.times > 0:
                refusal.times -= 1
                return f"{refusal.code} {refusal.text}"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    def _deliver(self, envelope: Any) -> None:
        message = message_from_bytes(envelope.original_content, policy=policy.default)
        assert isinstance(message, EmailMessage)
        mail = ReceivedMail(envelope.mail_from, tuple(envelope.rcpt_tos), message)
        with self._lock:
            self._messages.append(mail)

    def _authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        ok = False
        login = ""
        if isinstance(auth_data, LoginPassword) and self._credentials is not None:
            login = auth_data.login.decode()
            ok = (login, auth_data.password.decode()) == self._credentials
        with self._lock:
            self.logins.append((login, ok))
        return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd sends the 535


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    server = SmtpServer().start()
    yield server
    server.stop()
