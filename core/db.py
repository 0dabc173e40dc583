"""Engine and session factories; built from settings at the edge, never at import time."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.orm import Session, sessionmaker

from core.errors import ConfigError

#: What DATABASE_URL should look like, for refusals.
EXPECTED_URL = "expected sqlite:///FILE or postgresql+psycopg://USER@HOST/DB"


def make_engine(database_url: str, **kwargs: Any) -> Engine:
    """An engine tuned for resetbot's access pattern on SQLite and PostgreSQL.

    Raises ConfigError (one line naming DATABASE_URL) for a URL no installed driver can open.
    """
    if database_url.startswith("postgresql://"):
        # psycopg 3 is the driver we ship; the bare scheme would ask for psycopg2.
        database_url = "postgresql+psycopg://" + database_url[len("postgresql://") :]
    try:
        return _create_engine(database_url, **kwargs)
    except NoSuchModuleError:  # (an ArgumentError too)
        raise ConfigError(
            f"DATABASE_URL: {_driver(database_url)!r} is not a database kind resetbot knows "
            f"({EXPECTED_URL})"
        ) from None
    except ArgumentError:  # the URL may hold a password: not shown
        raise ConfigError(f"DATABASE_URL is not a database URL ({EXPECTED_URL})") from None
    except ImportError as error:  # the dialect is known, its driver is not installed
        raise ConfigError(
            f"DATABASE_URL: the driver for {_driver(database_url)!r} is not installed "
            f"({error}); resetbot ships psycopg 3 ({EXPECTED_URL})"
        ) from None


def _driver(database_url: str) -> str:
    return make_url(database_url).drivername


def _create_engine(database_url: str, **kwargs: Any) -> Engine:
    # Statement parameters can hold password hashes (and, in the policy check, a default
    # password): keep them out of every exception text, log line and stored traceback.
    kwargs.setdefault("hide_parameters", True)
    if database_url.startswith("sqlite"):
        # Several processes (app, workers) share one SQLite file: wait for locks, don't fail.
        kwargs.setdefault("connect_args", {"timeout": 30})
        engine = create_engine(database_url, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(database_url, **kwargs)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)
