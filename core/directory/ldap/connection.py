"""One TLS connection to the LDAP server, bound as the service account (or, to check a password,
as a user).

Rules this module keeps, whatever the caller asks:
- TLS before any credential: `ldaps://` is TLS from the first byte; `ldap://` sends StartTLS
  first and nothing else is sent unless the server agreed and the handshake verified it.
- The certificate is verified (CERT_REQUIRED, the host name checked) against
  DIRECTORY_TLS_CA_FILE, else the system's CAs. There is no switch to turn that off.
- ldap3 reads the server's schema and root DSE on each connection unless `get_info=NONE`
  (~10 ms a connection, measured): resetbot names every attribute itself, so it never does.
- No password in a message: ldap3's Connection repr shows its password, so the password is
  dropped from the Connection once bound, and every error is re-raised as resetbot's own, in
  words made here (the server's diagnostic is kept, with any password taken out).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ldap3 import NONE, SIMPLE, SYNC, Connection, Server, Tls
from ldap3.core.exceptions import LDAPCertificateError, LDAPException, LDAPStartTLSError

from core.directory.ldap.config import LdapConfig
from core.directory.protocol import DirectoryUnavailable
from core.errors import ConfigError

#: The password policy request/response control (draft-behera-ldap-password-policy).
PPOLICY_CONTROL = "1.3.6.1.4.1.42.2.27.8.5.1"
#: Its response's `error` values, by number.
PPOLICY_ERRORS = {
    0: "passwordExpired", 1: "accountLocked", 2: "changeAfterReset",
    3: "passwordModNotAllowed", 4: "mustSupplyOldPassword", 5: "insufficientPasswordQuality",
    6: "passwordTooShort", 7: "passwordTooYoung", 8: "passwordInHistory",
    9: "passwordTooLong",
}
INVALID_CREDENTIALS = 49


class DirectoryTlsError(ConfigError):
    """The server's certificate could not be verified, or TLS could not be started: a setting
    to fix (DIRECTORY_TLS_CA_FILE, the URL's host name), never something to work around."""


def tls_for(config: LdapConfig) -> Tls:
    """Verification on, host name checked (by ldap3, against the URL's host), TLS 1.2 or later
    (Python's default context), SNI sent."""
    host = config.url.host
    return Tls(
        validate=ssl.CERT_REQUIRED,
        ca_certs_file=str(config.ca_file) if config.ca_file else None,
        sni=None if _is_address(host) else host,
    )


def server_for(config: LdapConfig) -> Server:
    return Server(
        config.url.host,
        port=config.url.port,
        use_ssl=config.url.implicit_tls,
        tls=tls_for(config),
        get_info=NONE,
        connect_timeout=config.timeout,
    )


def open_connection(
    config: LdapConfig,
    who: str | None = None,
    password: str | None = None,
    *,
    controls: Sequence[tuple[str, bool, Any]] | None = None,
) -> tuple[Connection, dict[str, Any]]:
    """A connection over verified TLS, then a simple bind as `who` (default: the service
    account); the connection and the bind's result (ldap3's dict: `result`, `description`,
    `message`, `controls`). The bind may have failed: the caller reads the result.

    Raises DirectoryTlsError when TLS cannot be had, DirectoryUnavailable when the server
    cannot be reached.
    """
    secret = config.bind_password if password is None else password
    connection = Connection(
        server_for(config),
        user=config.bind_dn if who is None else who,
        password=secret,
        authentication=SIMPLE,
        client_strategy=SYNC,
        auto_bind=False,
        raise_exceptions=False,
        receive_timeout=int(config.timeout),
        auto_referrals=False,
        return_empty_attributes=False,
        check_names=False,
    )
    try:
        _start_tls(config, connection)
        connection.bind(controls=list(controls) if controls else None)
    except DirectoryTlsError:
        # The server would not start TLS: hang up now, not when the socket is collected.
        close_quietly(connection)
        raise
    except LDAPCertificateError as error:
        close_quietly(connection)
        raise DirectoryTlsError(
            f"DIRECTORY_URL: {config.url.shown}: the server's certificate is not for this "
            f"host ({_words(error, secret)})"
        ) from None
    except LDAPException as error:
        close_quietly(connection)
        if _is_tls_failure(error):
            raise DirectoryTlsError(
                f"DIRECTORY_URL: {config.url.shown}: TLS failed ({_words(error, secret)}); "
                "check DIRECTORY_TLS_CA_FILE and the host name"
            ) from None
        raise unavailable(config, error, secret) from None
    finally:
        connection.password = None  # ldap3's repr would show it
    return connection, dict(connection.result or {})


def connect(config: LdapConfig) -> Connection:
    """The service account's connection; ConfigError when the server refuses its bind."""
    connection, result = open_connection(config)
    if result.get("result") != 0:
        close_quietly(connection)
        code = result.get("result")
        reason = result.get("message") or result.get("description") or "refused"
        raise ConfigError(
            f"DIRECTORY_BIND_DN: the directory {config.url.shown} refused the service "
            f"account's sign-in (result {code}: {_clean(str(reason), config.bind_password)})"
        )
    return connection


def _start_tls(config: LdapConfig, connection: Connection) -> None:
    """Open the socket; on ldap:// send StartTLS and refuse to go on without it."""
    connection.open()
    send_at_once(connection)
    if config.url.implicit_tls:
        return
    try:
        started = connection.start_tls() and connection.tls_started
    except LDAPStartTLSError as error:  # ldap3 raises it whatever raise_exceptions says
        started, connection.result = False, {"message": _words(error, "")}
    if not started:
        result = connection.result or {}
        reason = result.get("message") or result.get("description") or "no answer"
        raise DirectoryTlsError(
            f"DIRECTORY_URL: {config.url.shown}: the server did not start TLS ({reason}); "
            "resetbot never signs in without it (use ldaps:// or enable StartTLS)"
        )


def send_at_once(connection: Connection) -> None:
    """Turn Nagle's algorithm off on the connection's socket. A request is one write, so there
    is nothing to coalesce; with it on, a request written while the server has not yet
    acknowledged the last segment (the bind right after the TLS handshake; the StartTLS
    request's successor; a pipelined write) waits for that ACK, which the server delays by
    up to 40 ms: measured against slapd, a StartTLS-and-bind took 50 ms, 5 ms without."""
    raw: Any = connection.socket
    if isinstance(raw, socket.socket) and raw.family in (socket.AF_INET, socket.AF_INET6):
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


@dataclass(frozen=True)
class BindAttempt:
    """What the directory answered a sign-in: its result code, and the ppolicy error if any."""

    result: int
    description: str
    ppolicy_error: str | None = None

    @property
    def ok(self) -> bool:
        return self.result == 0


def attempt_bind(config: LdapConfig, who: str, password: str) -> BindAttempt:
    """Sign in as `who` over the same verified TLS, with the password policy control: the
    directory's own check of a password (result 49 for a wrong one)."""
    connection, result = open_connection(
        config, who, password, controls=[(PPOLICY_CONTROL, False, None)]
    )
    close_quietly(connection)
    return BindAttempt(
        int(result.get("result", -1)),
        str(result.get("description", "")),
        ppolicy_error(result.get("controls")),
    )


def ppolicy_error(controls: object) -> str | None:
    """The `error` of a password policy response control (ldap3 leaves its value undecoded)."""
    if not isinstance(controls, dict) or PPOLICY_CONTROL not in controls:
        return None
    value = controls[PPOLICY_CONTROL].get("value")
    if not isinstance(value, bytes | bytearray):
        return None
    number = _ppolicy_error_number(bytes(value))
    return None if number is None else PPOLICY_ERRORS.get(number, str(number))


def _ppolicy_error_number(value: bytes) -> int | None:
    """PasswordPolicyResponseValue ::= SEQUENCE { warning [0] ... OPTIONAL,
    error [1] ENUMERATED OPTIONAL }: the [1] element's number (BER, short lengths)."""
    if len(value) < 2 or value[0] != 0x30:
        return None
    position = 2
    while position + 1 < len(value):
        tag, length = value[position], value[position + 1]
        content = value[position + 2 : position + 2 + length]
        if tag == 0x81 and content:
            return int.from_bytes(content, "big")
        position += 2 + length
    return None


def unavailable(config: LdapConfig, error: BaseException, secret: str = "") -> DirectoryUnavailable:
    return DirectoryUnavailable(
        f"the directory {config.url.shown} cannot be reached: {_words(error, secret)} "
        "(resetbot tries again)"
    )


def close_quietly(connection: Connection) -> None:
    # Closing a connection that broke: nothing is left to do.
    with contextlib.suppress(LDAPException, OSError):
        connection.unbind()


def _is_tls_failure(error: LDAPException) -> bool:
    if isinstance(error, LDAPStartTLSError):
        return True
    text = str(error).lower()
    return any(word in text for word in ("certificate", "ssl", "tls"))


def _words(error: BaseException, secret: str) -> str:
    return _clean(str(error).strip().splitlines()[0] if str(error).strip()
                  else type(error).__name__, secret)


def _clean(text: str, secret: str) -> str:
    """The text cut to one line of 300 characters, with the secret taken out should it hold it."""
    text = text[:300]
    return text.replace(secret, "***") if secret else text


def _is_address(host: str) -> bool:
    return host.replace(".", "").isdigit() or ":" in host
