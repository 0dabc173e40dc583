"""One typed settings object, read from the environment (and `.env`) at the edge and passed down.

Each setting is declared once, on its dataclass field (`setting(...)`): environment variable,
default, parser (which also validates), and the line the README's Configuration table shows.
That one declaration drives reading (`Settings.from_env`), writing back for child processes
(`Settings.to_env`), the help rows (`settings_help`) and the test that keeps the README
table equal to it.

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

import os
import re
import secrets
from collections.abc import Callable, Iterator, Mapping
from copy import copy
from dataclasses import MISSING, Field, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar, cast

from core.errors import ConfigError

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


def setting(
    name: str,
    default: T,
    meaning: str,
    *,
    parse: Parser[T],
    shown: str | None = None,
    secret: bool = False,
    default_for: Callable[[Mapping[str, object]], T] | None = None,
) -> T:
    """A dataclass field read from the environment variable `name` (secret: kept out of repr)."""
    variable = Variable(name, default, parse, meaning, shown or _shown(default), default_for)
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
    """A default as the README shows it: unset, or the value as code (30.0 as 30)."""
    if default is None or default == "" or default == frozenset():
        return "unset"
    if isinstance(default, float):
        return f"`{default:g}`"
    return f"`{_as_text(default)}`"


# -- parsers: each gets the variable's name and its stripped, non-empty text ----------------------


def text(name: str, raw: str) -> str:
    return raw


def integer(minimum: int = 0, maximum: int = 2**31) -> Parser[int]:
    def parse(name: str, raw: str) -> int:
        value = _convert(name, raw, int)
        if not minimum <= value <= maximum:
            raise ConfigError(f"{name} must be between {minimum} and {maximum}, not {value}")
        return value

    return parse


def positive_number(name: str, raw: str) -> float:
    value = _convert(name, raw, float)
    if value <= 0:
        raise ConfigError(f"{name} must be positive, not {raw}")
    return value


def boolean(name: str, raw: str) -> bool:
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, not {raw!r}")


def comma_list(name: str, raw: str) -> tuple[str, ...]:
    items = tuple(part.strip() for part in raw.split(",") if part.strip())
    if not items:
        raise ConfigError(f"{name} must list at least one value")
    return items


def _convert(name: str, raw: str, parse: Callable[[str], T]) -> T:
    try:
        return parse(raw)
    except ValueError:
        raise ConfigError(f"{name}: {raw!r} is not a valid value") from None


def _non_negative_int(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError("negative")
    return value


def _delays(name: str, raw: str) -> tuple[int, ...]:
    return tuple(_convert(name, item, _non_negative_int) for item in comma_list(name, raw))


def _schemes(name: str, raw: str) -> tuple[str, ...]:
    from passlib.registry import get_crypt_handler

    schemes = comma_list(name, raw)
    for scheme in schemes:
        try:
            get_crypt_handler(scheme)
        except KeyError:
            raise ConfigError(f"{name}: unknown passlib scheme {scheme!r}") from None
    return schemes


def _smtp_security(name: str, raw: str) -> SmtpSecurity:
    security = raw.lower()
    if security not in _SMTP_PORTS:
        raise ConfigError(f"{name} must be starttls, ssl or none, not {security!r}")
    return cast(SmtpSecurity, security)


def _smtp_port_for(values: Mapping[str, object]) -> int:
    return _SMTP_PORTS[str(values["smtp_security"])]


def _admins(name: str, raw: str) -> frozenset[str]:
    return frozenset(comma_list(name, raw))


def _private_channel(name: str, raw: str) -> str:
    if re.fullmatch(r"[CG][A-Z0-9]{2,30}", raw) is None:
        raise ConfigError(f"{name}: {raw!r} is not a Slack channel id (C... or G..., from the "
                          "channel's details in Slack)")
    return raw


def _with_slash(name: str, raw: str) -> str:
    return raw if raw.endswith("/") else raw + "/"


def _table(name: str, raw: str) -> str:
    if not _is_identifier(raw):
        raise ConfigError(f"{name}: {raw!r} is not a valid table name")
    return raw


def _columns(name: str, raw: str) -> Mapping[str, str]:
    columns = {key: key for key in USER_COLUMN_KEYS}
    for pair in comma_list(name, raw):
        key, sep, column = pair.partition("=")
        key, column = key.strip(), column.strip()
        if not sep or key not in USER_COLUMN_KEYS or not _is_identifier(column):
            raise ConfigError(
                f"{name}: {pair!r} must be key=column with key one of "
                + ", ".join(USER_COLUMN_KEYS)
            )
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
        "PASSWORD_MIN_LENGTH", 12, "policy: minimum length (at least 4)",
        parse=integer(minimum=4),
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
        "(`postgresql://` works too)",
        parse=text,
    )
    redis_url: str | None = setting(
        "REDIS_URL", None,
        "`redis://host:6379/0`. Unset: an embedded Redis for single-host use, with its files in "
        "`.resetbot/` beside the SQLite file (in the working directory for PostgreSQL). Every "
        "resetbot process on the host that uses the same database shares it",
        parse=text,
    )
    reset_queue: str = setting("RESET_QUEUE", "resetbot", "RQ queue name", parse=text)
    smtp_host: str = setting("SMTP_HOST", "localhost", "mail server", parse=text)
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
    smtp_security: SmtpSecurity = setting(  # noqa: RUF009 (a str, immutable)
        "SMTP_SECURITY", "none", "`starttls`, `ssl` or `none`", parse=_smtp_security,
    )
    smtp_timeout: float = setting(
        "SMTP_TIMEOUT", 30.0, "seconds per SMTP operation", parse=positive_number,
    )
    mail_from: str = setting(
        "MAIL_FROM", "resetbot@localhost", "sender of the password mails", parse=text,
    )
    portal_url: str = setting(
        "PORTAL_URL", "http://localhost/", "sign-in link in the mails", parse=text,
    )
    mail_retry_delays: tuple[int, ...] = setting(
        "MAIL_RETRY_DELAYS", (60, 300, 900),
        "seconds before each retry of a mail that failed transiently (connection error, "
        "timeout, 4xx); one retry per value. 5xx is never retried",
        parse=_delays,
    )
    mail_outage_retry: float = setting(
        "MAIL_OUTAGE_RETRY", 60.0,
        "seconds a task pauses when the mail server cannot be used, before trying again; "
        "doubled at each try, up to 15 minutes",
        parse=positive_number,
    )
    mail_outage_give_up: float = setting(
        "MAIL_OUTAGE_GIVE_UP", 86400.0,
        "seconds of mail outage after which a paused task fails (its untouched users are "
        "listed as not reset)",
        parse=positive_number,
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
        "passlib scheme names, comma-separated; the first hashes new passwords",
        parse=_schemes,
    )
    password_rounds: int | None = setting(  # None: passlib's default cost for the scheme
        "PASSWORD_ROUNDS", None, "cost of the first scheme (bcrypt: 12)",
        parse=integer(1, 10_000_000), shown="scheme default",
    )
    policy: PasswordPolicy = field(default_factory=PasswordPolicy)
    reset_secret_key: str = setting(
        "RESET_SECRET_KEY", "",
        "seals a default password while it waits in the database. Unset: on a single host, a "
        "key is created in `.resetbot/secret.key`. **Set it on every host when there are "
        "several**",
        parse=text, secret=True,
    )
    directory: DirectoryNames = field(default_factory=DirectoryNames)
    chunk_size: int = setting(
        "RESET_CHUNK_SIZE", 100, "users per job", parse=integer(1, 10_000),
    )
    claim_batch: int = setting(
        "RESET_CLAIM_BATCH", 25, "users a worker claims (leases) at a time inside a chunk",
        parse=integer(1, 10_000),
    )
    lease_seconds: int = setting(
        "RESET_LEASE_SECONDS", 30,
        "after this long, a dead worker's claimed users go back to pending",
        parse=integer(5, 3600),
    )
    reaper_interval: float = setting(
        "RESET_REAPER_INTERVAL", 5.0, "seconds between each worker's checks for lost work",
        parse=positive_number,
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
        parse=_with_slash,
    )
    reset_admins: frozenset[str] = setting(
        "RESET_ADMINS", frozenset(), "Slack user ids allowed to reset, comma-separated",
        parse=_admins,
    )
    reset_admin_group: str | None = setting(
        "RESET_ADMIN_GROUP", None, "a Slack user group id whose members may reset", parse=text,
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
        parse=positive_number,
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
    return replace(settings, reset_secret_key=key_file.read_text(encoding="utf-8").strip())


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
        elif raw := env.get(variable.name, "").strip():
            values[item.name] = variable.parse(variable.name, raw)
    for name, variable, default_for in dependent:
        raw = env.get(variable.name, "").strip()
        values[name] = (
            variable.parse(variable.name, raw) if raw else default_for({**defaults, **values})
        )
    return cls(**values)


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
            "PASSWORD_GENERATED_LENGTH must be at least PASSWORD_MIN_LENGTH "
            f"({policy.min_length})"
        )
