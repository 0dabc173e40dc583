"""One typed settings object, read from the environment (and `.env`) at the edge and passed down."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

from core.errors import ConfigError

SmtpSecurity = Literal["starttls", "ssl", "none"]
T = TypeVar("T")

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


@dataclass(frozen=True)
class DirectoryNames:
    """Where the library keeps its users: table name and the real name of each logical column."""

    table: str = "users"
    columns: Mapping[str, str] = field(default_factory=lambda: {k: k for k in USER_COLUMN_KEYS})

    def column(self, key: str) -> str:
        return self.columns.get(key, key)


@dataclass(frozen=True)
class PasswordPolicy:
    min_length: int = 12
    min_classes: int = 3
    forbid_username: bool = True
    forbid_common: bool = True
    generated_length: int = 16


@dataclass(frozen=True)
class Settings:
    database_url: str = "sqlite:///resetbot.db"
    redis_url: str | None = None
    reset_queue: str = "resetbot"
    smtp_host: str = "localhost"
    smtp_port: int = 25
    smtp_username: str | None = None
    smtp_password: str | None = field(default=None, repr=False)
    smtp_security: SmtpSecurity = "none"
    smtp_timeout: float = 30.0
    mail_from: str = "resetbot@localhost"
    portal_url: str = "http://localhost/"
    mail_retry_delays: tuple[int, ...] = (60, 300, 900)
    password_schemes: tuple[str, ...] = ("bcrypt",)
    password_rounds: int | None = None  # None: passlib's default cost for the scheme
    policy: PasswordPolicy = field(default_factory=PasswordPolicy)
    reset_secret_key: str = field(default="", repr=False)
    directory: DirectoryNames = field(default_factory=DirectoryNames)
    chunk_size: int = 100
    claim_batch: int = 25
    lease_seconds: int = 30
    reaper_interval: float = 5.0
    slack_bot_token: str | None = field(default=None, repr=False)
    slack_signing_secret: str | None = field(default=None, repr=False)
    slack_app_token: str | None = field(default=None, repr=False)
    slack_api_url: str = "https://slack.com/api/"
    reset_admins: frozenset[str] = frozenset()
    reset_admin_group: str | None = None
    progress_steps: int = 10

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
        return _parse(env)


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


def _parse(env: Mapping[str, str]) -> Settings:
    defaults = Settings()
    get = _Reader(env)
    policy = PasswordPolicy(
        min_length=get.integer("PASSWORD_MIN_LENGTH", defaults.policy.min_length, minimum=4),
        min_classes=get.integer("PASSWORD_MIN_CLASSES", defaults.policy.min_classes, 0, 4),
        forbid_username=get.boolean("PASSWORD_FORBID_USERNAME", True),
        forbid_common=get.boolean("PASSWORD_FORBID_COMMON", True),
        generated_length=get.integer("PASSWORD_GENERATED_LENGTH", 16, minimum=8, maximum=64),
    )
    if policy.generated_length < policy.min_length:
        raise ConfigError(
            "PASSWORD_GENERATED_LENGTH must be at least PASSWORD_MIN_LENGTH "
            f"({policy.min_length})"
        )
    schemes = get.csv("PASSWORD_SCHEMES", defaults.password_schemes)
    _check_schemes(schemes)
    delays = tuple(
        get.convert("MAIL_RETRY_DELAYS", raw, _non_negative_int)
        for raw in get.csv("MAIL_RETRY_DELAYS", ("60", "300", "900"))
    )
    security = get.text("SMTP_SECURITY", defaults.smtp_security).lower()
    if security not in ("starttls", "ssl", "none"):
        raise ConfigError(f"SMTP_SECURITY must be starttls, ssl or none, not {security!r}")
    smtp_port_default = {"starttls": 587, "ssl": 465}.get(security, 25)
    return Settings(
        database_url=get.text("DATABASE_URL", defaults.database_url),
        redis_url=get.optional("REDIS_URL"),
        reset_queue=get.text("RESET_QUEUE", defaults.reset_queue),
        smtp_host=get.text("SMTP_HOST", defaults.smtp_host),
        smtp_port=get.integer("SMTP_PORT", smtp_port_default, 1, 65535),
        smtp_username=get.optional("SMTP_USERNAME"),
        smtp_password=get.optional("SMTP_PASSWORD"),
        smtp_security=security,  # type: ignore[arg-type]
        smtp_timeout=get.number("SMTP_TIMEOUT", defaults.smtp_timeout),
        mail_from=get.text("MAIL_FROM", defaults.mail_from),
        portal_url=get.text("PORTAL_URL", defaults.portal_url),
        mail_retry_delays=delays,
        password_schemes=schemes,
        password_rounds=_optional_int(get, "PASSWORD_ROUNDS"),
        policy=policy,
        reset_secret_key=get.text("RESET_SECRET_KEY", ""),
        directory=_directory_names(get),
        chunk_size=get.integer("RESET_CHUNK_SIZE", defaults.chunk_size, 1, 10_000),
        claim_batch=get.integer("RESET_CLAIM_BATCH", defaults.claim_batch, 1, 10_000),
        lease_seconds=get.integer("RESET_LEASE_SECONDS", defaults.lease_seconds, 5, 3600),
        reaper_interval=get.number("RESET_REAPER_INTERVAL", defaults.reaper_interval),
        slack_bot_token=get.optional("SLACK_BOT_TOKEN"),
        slack_signing_secret=get.optional("SLACK_SIGNING_SECRET"),
        slack_app_token=get.optional("SLACK_APP_TOKEN"),
        slack_api_url=_with_slash(get.text("SLACK_API_URL", defaults.slack_api_url)),
        reset_admins=frozenset(get.csv("RESET_ADMINS", ())),
        reset_admin_group=get.optional("RESET_ADMIN_GROUP"),
        progress_steps=get.integer("RESET_PROGRESS_STEPS", defaults.progress_steps, 1, 20),
    )


def _directory_names(get: _Reader) -> DirectoryNames:
    columns = {key: key for key in USER_COLUMN_KEYS}
    for pair in get.csv("USERS_COLUMNS", ()):
        key, sep, name = pair.partition("=")
        key, name = key.strip(), name.strip()
        if not sep or key not in USER_COLUMN_KEYS or not _is_identifier(name):
            raise ConfigError(
                f"USERS_COLUMNS: {pair!r} must be key=column with key one of "
                + ", ".join(USER_COLUMN_KEYS)
            )
        columns[key] = name
    table = get.text("USERS_TABLE", "users")
    if not _is_identifier(table):
        raise ConfigError(f"USERS_TABLE: {table!r} is not a valid table name")
    return DirectoryNames(table=table, columns=columns)


def _is_identifier(name: str) -> bool:
    return bool(name) and name.replace("_", "a").isalnum() and not name[0].isdigit()


def _check_schemes(schemes: tuple[str, ...]) -> None:
    from passlib.registry import get_crypt_handler

    for scheme in schemes:
        try:
            get_crypt_handler(scheme)
        except KeyError:
            raise ConfigError(f"PASSWORD_SCHEMES: unknown passlib scheme {scheme!r}") from None


def _optional_int(get: _Reader, name: str) -> int | None:
    return None if get.optional(name) is None else get.integer(name, 0, 1, 10_000_000)


def _non_negative_int(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError("negative")
    return value


def _with_slash(url: str) -> str:
    return url if url.endswith("/") else url + "/"


def ensure_secret_key(settings: Settings, key_file: Path) -> Settings:
    """Single-host convenience: with no RESET_SECRET_KEY, keep one in a private file.

    Every process on the host reads the same file, so they can all open what another sealed.
    """
    from dataclasses import replace

    if settings.reset_secret_key:
        return settings
    if not key_file.exists():
        key_file.write_text(secrets.token_urlsafe(32), encoding="utf-8")
        key_file.chmod(0o600)
    return replace(settings, reset_secret_key=key_file.read_text(encoding="utf-8").strip())


class _Reader:
    """Reads typed values; every failure names its variable in one line."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def optional(self, name: str) -> str | None:
        value = self.env.get(name, "").strip()
        return value or None

    def text(self, name: str, default: str) -> str:
        return self.optional(name) or default

    def convert(self, name: str, raw: str, parse: Callable[[str], T]) -> T:
        try:
            return parse(raw.strip())
        except ValueError:
            raise ConfigError(f"{name}: {raw.strip()!r} is not a valid value") from None

    def integer(self, name: str, default: int, minimum: int = 0, maximum: int = 2**31) -> int:
        raw = self.optional(name)
        if raw is None:
            return default
        value = self.convert(name, raw, int)
        if not minimum <= value <= maximum:
            raise ConfigError(f"{name} must be between {minimum} and {maximum}, not {value}")
        return value

    def number(self, name: str, default: float) -> float:
        raw = self.optional(name)
        if raw is None:
            return default
        value = self.convert(name, raw, float)
        if value <= 0:
            raise ConfigError(f"{name} must be positive, not {raw}")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        raw = self.optional(name)
        if raw is None:
            return default
        lowered = raw.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name} must be true or false, not {raw!r}")

    def csv(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        raw = self.optional(name)
        if raw is None:
            return default
        items = tuple(part.strip() for part in raw.split(",") if part.strip())
        if not items:
            raise ConfigError(f"{name} must list at least one value")
        return items
