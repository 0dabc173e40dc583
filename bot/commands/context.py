"""What every `resetbot` command shares: where it writes, its settings (read once per command,
from the environment and `.env`), and the database, directory and Redis it opens with them.

SQLAlchemy, Redis and the directory drivers are imported by the functions that open them, not
here: every command imports this module, and `resetbot --help` or a mistyped option should not
load them (tests/bot/test_cli_startup.py).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

from bot.terminal import SECRET_KEY_FILE, Refused
from core.errors import ConfigError
from core.settings import Settings, ensure_secret_key

if TYPE_CHECKING:
    from redis import Redis
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session, sessionmaker

    from core.directory.protocol import Directory


@dataclass
class Cli:
    environ: Mapping[str, str] | None
    out: TextIO
    err: TextIO

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def fail(self, text: str) -> None:
        print(f"resetbot: {text}", file=self.err, flush=True)

    def settings(self, *, with_secret_key: bool = False) -> Settings:
        if self.environ is None:
            settings = Settings.from_env()
        else:
            settings = Settings.from_env(self.environ, env_file=None)
        if with_secret_key and not settings.reset_secret_key:
            # Single host: every resetbot process finds the key file beside the database.
            from jobs.connection import state_dir

            directory = state_dir(settings)
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            settings = ensure_secret_key(settings, directory / SECRET_KEY_FILE)
        return settings

    @contextmanager
    def database(self, settings: Settings) -> Iterator[sessionmaker[Session]]:
        from core.db import make_sessionmaker

        engine = open_engine(settings)
        try:
            require_schema(engine, settings)
            yield make_sessionmaker(engine)
        finally:
            engine.dispose()

    @contextmanager
    def redis(self, settings: Settings) -> Iterator[Redis]:
        from jobs.connection import close_redis, connect_redis

        redis = connect_redis(settings)
        try:
            redis.ping()
            yield redis
        finally:
            close_redis(redis)


def open_engine(settings: Settings) -> Engine:
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    from core.db import make_engine

    try:
        return make_engine(settings.database_url)
    except (ArgumentError, NoSuchModuleError, ValueError) as error:
        raise ConfigError(f"DATABASE_URL: not a usable database URL ({error})") from None


def require_schema(engine: Engine, settings: Settings) -> None:
    """A clear word instead of 'no such table' when the database was never set up."""
    from sqlalchemy import inspect
    from sqlalchemy.exc import ProgrammingError

    try:
        tables = set(inspect(engine).get_table_names())
    except ProgrammingError as error:
        raise Refused(f"the database cannot be read: {first_line(error.orig)}") from None
    from core.migrate import own_users_names

    own = own_users_names(settings)  # resetbot's own users table, when it lives here
    missing = {"reset_tasks", "reset_items", "audit_log", *([own.table] if own else [])} - tables
    if missing:
        raise Refused(
            f"the database {shown_url(settings.database_url)} has no {', '.join(sorted(missing))}"
            " table yet: run `resetbot db upgrade` first"
        )


def shown_url(url: str) -> str:
    """A database URL with any password hidden, for messages."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    from core.db import shown_url as shown

    try:
        return shown(make_url(url))
    except (ArgumentError, ValueError):
        return "(invalid URL)"


def first_line(error: object) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]


@contextmanager
def users_directory(settings: Settings, sessions: sessionmaker[Session]) -> Iterator[Directory]:
    """The directory, sharing the state database's engine when the users live there too."""
    from core.directory.factory import open_directory

    directory = open_directory(settings, bound_engine(sessions))
    try:
        yield directory
    finally:
        directory.dispose()


def bound_engine(sessions: sessionmaker[Session]) -> Engine | None:
    """The state database's engine the sessions are bound to, for a directory to share."""
    from sqlalchemy import Engine

    engine = sessions.kw.get("bind")
    return engine if isinstance(engine, Engine) else None


def log_to_stderr() -> None:
    import logging

    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s"
        )
