"""Engine and session factories; built from settings at the edge, never at import time."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from core.errors import ConfigError

if TYPE_CHECKING:  # the ORM is loaded by whoever opens sessions, not by reading DATABASE_URL
    from sqlalchemy.orm import Session, sessionmaker

#: SQLAlchemy's backend names for MariaDB and MySQL (`mariadb://` URLs get their own).
MYSQL_BACKENDS = frozenset({"mysql", "mariadb"})

#: What DATABASE_URL should look like, for refusals.
EXPECTED_URL = (
    "expected sqlite:///FILE, postgresql+psycopg://USER@HOST/DB or "
    "mysql+pymysql://USER@HOST/DB"
)
#: Bare schemes, mapped to the drivers resetbot ships (the bare ones would ask for others:
#: psycopg2, mysqlclient).
DRIVERS = {
    "postgresql://": "postgresql+psycopg://",
    "mysql://": "mysql+pymysql://",
    "mariadb://": "mariadb+pymysql://",
}
#: Said of a URL that does not parse: a password holding one of these, not encoded, breaks it.
URL_ENCODING_HINT = "if its password holds @, #, / or :, URL-encode the password (`@` is `%40`)"
#: Query parameters that carry a secret (`?password=...`): never shown.
SECRET_QUERY_KEYS = ("pass", "pwd", "secret", "token", "key")
#: MariaDB/MySQL close connections idle longer than wait_timeout (8 h by default): renew first.
MYSQL_POOL_RECYCLE = 3600


def parse_url(raw: str, setting: str) -> URL:
    """`raw` parsed. ConfigError naming `setting` when it does not parse, or parses only because
    an unencoded `@` in the password made the rest of the password the host: no part of the
    URL is shown, as it may hold a password."""
    try:
        url = make_url(with_shipped_driver(raw))
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise ConfigError(f"{setting} is not a database URL ({EXPECTED_URL}); "
                          f"{URL_ENCODING_HINT}") from None
    if "@" in (url.host or ""):
        raise ConfigError(f"{setting}: the host holds an `@`, so the password holds one: "
                          "URL-encode the password (`@` is `%40`)")
    # One `@` ends the user part; another (say `rb:Se@kr/3t@host/db`) is a password's, whose
    # rest became a host and a database or a query that a message would show. (A SQLite
    # file's path may hold one.)
    if url.get_backend_name() != "sqlite" and raw.partition("://")[2].count("@") > 1:
        raise ConfigError(f"{setting}: the URL holds more than one `@`, so the password "
                          "holds one: URL-encode the password (`@` is `%40`)")
    return url


def shown_url(url: URL) -> str:
    """A database URL for messages: its password hidden, in the user part and in the query."""
    secret = {key: "***" for key in url.query if is_secret_key(key)}
    shown = url.update_query_dict(secret).render_as_string(hide_password=True)
    return shown.replace("%2A%2A%2A", "***")


def url_secrets(url: URL) -> list[str]:
    """Every secret a URL carries (its password, secret query values), to take out of a
    driver's message before it is shown."""
    found = [str(url.password)] if url.password else []
    for key, value in url.query.items():
        if is_secret_key(key):
            found += [value] if isinstance(value, str) else list(value)
    return [item for item in found if item]


def is_secret_key(key: str) -> bool:
    return any(part in key.lower() for part in SECRET_QUERY_KEYS)


def make_engine(database_url: str, *, setting: str = "DATABASE_URL", **kwargs: Any) -> Engine:
    """An engine tuned for resetbot's access pattern on SQLite, PostgreSQL and MariaDB.

    Raises ConfigError (one line naming `setting`) for a URL no installed driver can open.
    """
    parse_url(database_url, setting)
    database_url = with_shipped_driver(database_url)
    try:
        return _create_engine(database_url, **kwargs)
    except NoSuchModuleError:  # (an ArgumentError too)
        raise ConfigError(
            f"{setting}: {_driver(database_url)!r} is not a database kind resetbot knows "
            f"({EXPECTED_URL})"
        ) from None
    except ArgumentError:  # the URL may hold a password: not shown
        raise ConfigError(f"{setting} is not a database URL ({EXPECTED_URL}); "
                          f"{URL_ENCODING_HINT}") from None
    except ImportError as error:  # the dialect is known, its driver is not installed
        raise ConfigError(
            f"{setting}: the driver for {_driver(database_url)!r} is not installed "
            f"({error}); resetbot ships psycopg 3 and PyMySQL ({EXPECTED_URL})"
        ) from None


def with_shipped_driver(database_url: str) -> str:
    """`postgresql://`, `mysql://` and `mariadb://` name the driver resetbot ships."""
    for bare, with_driver in DRIVERS.items():
        if database_url.startswith(bare):
            return with_driver + database_url[len(bare) :]
    return database_url


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
    if make_url(database_url).get_backend_name() in MYSQL_BACKENDS:
        kwargs.setdefault("pool_recycle", MYSQL_POOL_RECYCLE)
        # PostgreSQL's default: each statement sees what was committed before it. InnoDB's own
        # default (REPEATABLE READ) would show a transaction its first snapshot over and over,
        # and its gap locks would make concurrent claims wait on each other.
        kwargs.setdefault("isolation_level", "READ COMMITTED")
    return create_engine(database_url, **kwargs)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    from sqlalchemy.orm import sessionmaker

    return sessionmaker(engine, expire_on_commit=False)
