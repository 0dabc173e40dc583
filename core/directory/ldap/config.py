"""The LDAP directory's settings, read from an environment mapping into one `LdapConfig`.

Kept apart from core/settings.py for now (groundwork of issue 19): `LdapConfig.from_env(env)`
reads the same names `Settings` will, so adopting it there is a few lines.

- `DIRECTORY_URL=ldaps://host[:port]/BASE_DN` or `ldap://host[:port]/BASE_DN` (RFC 4516: the
  base DN is the URL's path, percent-encoded where it must be). `ldap://` is always upgraded
  with StartTLS before anything else is sent: no password ever crosses without TLS.
- `DIRECTORY_TLS_CA_FILE`: the CA bundle the server's certificate is verified with (default:
  the system's). Verification and the host-name check are never off.
- `DIRECTORY_BIND_DN` and `DIRECTORY_BIND_PASSWORD` or `DIRECTORY_BIND_PASSWORD_FILE`: the
  service account. The password is never shown: not in a repr, an error or a log line.
- `DIRECTORY_PROFILE`: `openldap`, `active-directory` or a TOML file with an `[ldap]` section.
- `DIRECTORY_STAFF_GROUP`: DN of the group whose members are staff.
- `DIRECTORY_LDAP_WINDOW`: how many password writes a worker keeps in flight on its one
  connection (1: one at a time, each answer awaited before the next is sent).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ldap3.core.exceptions import LDAPInvalidDnError
from ldap3.utils.dn import parse_dn

from core.directory.ldap.profile import LdapProfile, load_ldap_profile
from core.errors import ConfigError
from core.ldap_urls import SCHEMES, LdapScheme
from core.ldap_urls import is_ldap_url as is_ldap_url

DEFAULT_PORTS: dict[LdapScheme, int] = {"ldaps": 636, "ldap": 389}
#: Seconds to wait for the server to answer a connection, then an operation.
DEFAULT_TIMEOUT = 10.0
#: Password writes in flight on a worker's connection (core/directory/ldap/pipeline.py).
#: Measured (slapd 2.5, 2,000 users, 2 cores): 1 -> 2.35 ms a Password Modify, 8 -> 0.91 ms,
#: 16 -> 0.90 ms; the server's synced commits bound it beyond. 8: as quick as 16, and half as
#: many users in flight should the server go away mid-batch.
DEFAULT_WINDOW = 8
MAX_WINDOW = 256


@dataclass(frozen=True)
class LdapUrl:
    scheme: LdapScheme
    host: str
    port: int
    base_dn: str

    @property
    def implicit_tls(self) -> bool:
        """ldaps: TLS from the first byte; ldap: StartTLS before anything else."""
        return self.scheme == "ldaps"

    @property
    def shown(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}/{self.base_dn}"


def parse_ldap_url(raw: str, setting: str = "DIRECTORY_URL") -> LdapUrl:
    """An RFC 4516 URL with a host and a base DN, and nothing else (no attributes, scope,
    filter or extensions: resetbot's profile says those)."""
    value = raw.strip()
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as error:
        raise ConfigError(f"{setting}: not an LDAP URL ({error})") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise ConfigError(f"{setting}: expected ldaps://host[:port]/BASE_DN or "
                          "ldap://host[:port]/BASE_DN")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(f"{setting}: put no user or password in the URL (use "
                          "DIRECTORY_BIND_DN and DIRECTORY_BIND_PASSWORD)")
    host = parts.hostname or ""
    if not host:
        raise ConfigError(f"{setting}: the URL names no host (ldap:/// is not supported: "
                          "resetbot needs a server it can verify by name)")
    if parts.query or "?" in value:
        raise ConfigError(f"{setting}: attributes, scope, filter and extensions (after '?') "
                          "are not read; the profile says them: remove them from the URL")
    if parts.fragment:
        raise ConfigError(f"{setting}: unexpected '#' in the URL")
    base_dn = unquote(parts.path.removeprefix("/"))
    if not base_dn:
        raise ConfigError(f"{setting}: the URL has no base DN (ldaps://host/dc=example,dc=org)")
    check_dn(base_dn, setting)
    if port is None:
        port = DEFAULT_PORTS[scheme]
    elif port == 0:
        raise ConfigError(f"{setting}: port 0 is not a port")
    return LdapUrl(scheme, _host(host), port, base_dn)


def _host(host: str) -> str:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host.lower()


def check_dn(dn: str, setting: str) -> str:
    """`dn` when it is a well-formed DN; else ConfigError naming the setting."""
    try:
        parse_dn(dn)
    except LDAPInvalidDnError:
        raise ConfigError(f"{setting}: {dn!r} is not a distinguished name "
                          "(attr=value,attr=value)") from None
    return dn


@dataclass(frozen=True)
class LdapConfig:
    """How to reach and read an LDAP directory. The bind password is never in its repr."""

    url: LdapUrl
    bind_dn: str
    bind_password: str = field(repr=False)
    profile: LdapProfile
    ca_file: Path | None = None
    staff_group: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    window: int = DEFAULT_WINDOW

    @property
    def base_dn(self) -> str:
        return self.url.base_dn

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> LdapConfig:
        """Read the DIRECTORY_* names of `env` (ConfigError naming the variable)."""
        url = parse_ldap_url(_required(env, "DIRECTORY_URL"))
        return cls(
            url=url,
            bind_dn=_bind_dn(env),
            bind_password=_bind_password(env),
            profile=load_ldap_profile(_optional(env, "DIRECTORY_PROFILE") or "openldap"),
            ca_file=_ca_file(env),
            staff_group=_staff_group(env),
            window=_window(env),
        )


def _optional(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name, "").strip()
    return value or None


def _required(env: Mapping[str, str], name: str) -> str:
    value = _optional(env, name)
    if value is None:
        raise ConfigError(f"{name}: not set")
    return value


def _bind_dn(env: Mapping[str, str]) -> str:
    """A DN, or (Active Directory) a `name@domain` sign-in name."""
    value = _optional(env, "DIRECTORY_BIND_DN")
    if value is None:
        raise ConfigError("DIRECTORY_BIND_DN: not set (resetbot signs in as a service account; "
                          "it never binds anonymously)")
    if "=" not in value and "@" in value:
        return value
    return check_dn(value, "DIRECTORY_BIND_DN")


def _bind_password(env: Mapping[str, str]) -> str:
    """From DIRECTORY_BIND_PASSWORD or the file DIRECTORY_BIND_PASSWORD_FILE names (its one
    line, without the line end). No message ever holds it."""
    typed = env.get("DIRECTORY_BIND_PASSWORD", "")
    path = _optional(env, "DIRECTORY_BIND_PASSWORD_FILE")
    if typed and path:
        raise ConfigError("DIRECTORY_BIND_PASSWORD_FILE: set it or DIRECTORY_BIND_PASSWORD, "
                          "not both")
    if path:
        try:
            text = Path(path).read_text("utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"DIRECTORY_BIND_PASSWORD_FILE: {path} cannot be read "
                              f"({type(error).__name__})") from None
        password = text.removesuffix("\n").removesuffix("\r")
        if not password or "\n" in password:
            raise ConfigError(f"DIRECTORY_BIND_PASSWORD_FILE: {path} must hold the password "
                              "on one line")
        return password
    if not typed:
        raise ConfigError("DIRECTORY_BIND_PASSWORD: not set (or DIRECTORY_BIND_PASSWORD_FILE)")
    return typed


def _ca_file(env: Mapping[str, str]) -> Path | None:
    value = _optional(env, "DIRECTORY_TLS_CA_FILE")
    if value is None:
        return None
    path = Path(value)
    if not path.is_file():
        raise ConfigError(f"DIRECTORY_TLS_CA_FILE: there is no file {value!r}")
    try:
        text = path.read_text("ascii", errors="replace")
    except OSError as error:
        raise ConfigError(f"DIRECTORY_TLS_CA_FILE: {value} cannot be read "
                          f"({type(error).__name__})") from None
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise ConfigError(f"DIRECTORY_TLS_CA_FILE: {value} holds no PEM certificate")
    return path


def _staff_group(env: Mapping[str, str]) -> str | None:
    value = _optional(env, "DIRECTORY_STAFF_GROUP")
    return None if value is None else check_dn(value, "DIRECTORY_STAFF_GROUP")


def _window(env: Mapping[str, str]) -> int:
    value = _optional(env, "DIRECTORY_LDAP_WINDOW")
    if value is None:
        return DEFAULT_WINDOW
    try:
        window = int(value)
    except ValueError:
        window = 0
    if not 1 <= window <= MAX_WINDOW:
        raise ConfigError(f"DIRECTORY_LDAP_WINDOW: expected a whole number from 1 to "
                          f"{MAX_WINDOW}, not {value!r}")
    return window
