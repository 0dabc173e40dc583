"""Shared fixtures: real databases (SQLite file, PostgreSQL, MariaDB), real Redis, settings,
sample users.

Never FLUSHDB the shared Redis: tests (and other developers) share it. Each test gets its own
queue name instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy import Engine, insert, text
from sqlalchemy.orm import Session, sessionmaker

from core.db import make_engine, make_sessionmaker
from core.directory import Directory
from core.settings import Settings
from tests.support.databases import PostgresSchemas, mariadb_database, postgres_schemas
from tests.support.schema_copies import SqliteSchemas
from tests.support.services import REDIS_URL
from tests.support.slack_standin import slack_standin as slack_standin
from tests.support.tempdir import RunTemp

# CI (`.ci/run` sets HYPOTHESIS_PROFILE=ci) tries the same examples on every run, so a red build
# means a change broke something; local runs go on exploring fresh examples (and keep in
# .hypothesis/ what they found, for the next run and for an @example in the test).
hypothesis_settings.register_profile("ci", derandomize=True, database=None)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

# Where Redis (REDIS_URL: a logical database of each xdist worker's own), PostgreSQL and MariaDB
# are comes from the environment: tests/support/services.py.


RUN_TEMP = pytest.StashKey[RunTemp]()


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """The run's own temporary folder (TMPDIR), made before xdist starts its workers, which
    inherit it: what a test leaves there fails the run (tests/support/tempdir.py)."""
    if not hasattr(config, "workerinput"):  # the pytest process, or xdist's controller
        config.stash[RUN_TEMP] = RunTemp.start()


@pytest.hookimpl(wrapper=True)
def pytest_sessionfinish(session: pytest.Session) -> Iterator[None]:
    """After the workers are gone: nothing may be left in the run's temporary folder."""
    yield
    run = session.config.stash.get(RUN_TEMP, None)
    if run is None:
        return
    left = run.finish(session)
    terminal = session.config.pluginmanager.get_plugin("terminalreporter")
    if terminal is None:
        return
    terminal.ensure_newline()
    if left:
        terminal.write_line(
            "tests left these in the system's temporary folder (the run fails; removed): "
            + ", ".join(path.name for path in left), red=True,
        )
    if run.path.exists():
        terminal.write_line(f"the run failed: its temporary folder is kept, {run.path}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests on PostgreSQL, MariaDB or the shared Redis need live servers: `-m "not services"`
    leaves them out, so the rest runs anywhere in seconds.

    The tests marked `slow` run first: xdist hands tests out in this order, so the long ones
    are shared out at the start and none is among the last handed out, where one worker would
    go on alone while the other has finished (the workers then end together on short ones)."""
    for item in items:
        if (
            item.get_closest_marker("postgres") or item.get_closest_marker("mariadb")
            or "redis_conn" in getattr(item, "fixturenames", ())
        ):
            item.add_marker(pytest.mark.services)
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: file order


#: The databases every test taking `database_url` runs on.
DATABASES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
#: ... and those of the tests marked `every_database`: the engine, migrations, concurrency and
#: fault tests, where the databases differ (claims, locks, DDL). Running every test on
#: MariaDB too would add about a minute to the suite for statements those tests already cover.
EVERY_DATABASE = [*DATABASES, pytest.param("mariadb", marks=pytest.mark.mariadb)]


@pytest.hookimpl(tryfirst=True)
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test marked `every_database` (or in a module so marked) runs on MariaDB as well,
    unless it names its databases itself."""
    if "database_url" not in metafunc.fixturenames:
        return
    if not metafunc.definition.get_closest_marker("every_database"):
        return
    for mark in metafunc.definition.iter_markers("parametrize"):
        names = mark.args[0]
        if "database_url" in (names.replace(" ", "").split(",") if isinstance(names, str)
                              else names):
            return
    # As a mark, seen before the fixture's own params are (a test's own parametrize wins).
    metafunc.definition.add_marker(
        pytest.mark.parametrize("database_url", EVERY_DATABASE, indirect=True)
    )


@pytest.fixture(scope="session")
def postgres_test_schemas() -> Iterator[PostgresSchemas]:
    """This process's own PostgreSQL database (each xdist worker's), made at its first test on
    PostgreSQL and dropped at the end of the run: each test gets a schema in it."""
    with postgres_schemas(f"resetbot_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}") as made:
        yield made


@pytest.fixture(params=DATABASES)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database: a SQLite file, a new MariaDB database, or on PostgreSQL a new
    schema (the only one on the URL's search_path) in the worker's own database; dropped
    afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'resetbot.db'}"
        return
    if request.param == "mariadb":
        with mariadb_database() as url:
            yield url
        return
    schemas: PostgresSchemas = request.getfixturevalue("postgres_test_schemas")
    with schemas.schema() as url:
        yield url


@pytest.fixture
def settings(database_url: str, queue_name: str) -> Settings:
    """Settings for a test: cheap hashing so tests stay fast, short retry delays."""
    return replace(
        Settings.from_env({}, env_file=None),
        database_url=database_url,
        redis_url=REDIS_URL,
        reset_queue=queue_name,
        password_schemes=("pbkdf2_sha256",),
        password_rounds=1000,
        password_allow_weak_rounds=True,  # pbkdf2 at 1000 rounds: tests stay fast
        reset_secret_key="d684c92f38631de17bef9a00fa830ca6a394ca03f7c4a6bb4fa7a60fd6e82fdb",
        mail_retry_delays=(0, 0, 0),
        chunk_size=10,
        claim_batch=5,
    )


#: In every queue name of this run, so what a run leaves in Redis can be told apart.
RUN_ID = os.environ.get("RESETBOT_TEST_RUN") or uuid.uuid4().hex[:6]


@pytest.fixture
def queue_name() -> Iterator[str]:
    """A queue of this test's own; afterwards, whatever it left in the shared Redis is removed
    (when a Redis is there at all: tests without services use the name too)."""
    name = f"resetbot-test-{RUN_ID}-{uuid.uuid4().hex[:10]}"
    yield name
    connection = Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        remove_from_redis(connection, name)
    except RedisConnectionError:
        pass  # no Redis here: nothing can have been left in it
    finally:
        connection.close()


def remove_from_redis(connection: Redis, queue_name: str) -> None:
    """Every key naming the queue, RQ's records of the workers that served it (a worker's key
    outlives it by a minute, or by its heartbeat TTL when it was killed), and its entry in
    RQ's set of queues."""
    for key in connection.scan_iter(match=f"*{queue_name}*", count=1000):
        connection.delete(key)
    for key in connection.scan_iter(match="rq:worker:*", count=1000):
        if key.endswith(b":executions") or connection.type(key) != b"hash":
            continue
        served = (connection.hget(key, "queues") or b"").decode().split(",")
        if queue_name in served:
            connection.delete(key, key + b":executions")
            connection.srem("rq:workers", key)
    connection.srem("rq:queues", f"rq:queue:{queue_name}")


@pytest.fixture
def redis_conn(queue_name: str) -> Iterator[Redis]:
    """The shared Redis; the `queue_name` fixture removes what the test left in it."""
    connection = Redis.from_url(REDIS_URL)
    yield connection
    connection.close()


@pytest.fixture
def directory(settings: Settings) -> Iterator[Directory]:
    """The settings' directory over an engine of its own (the users live in the test database)."""
    directory = Directory.from_settings(settings)
    yield directory
    directory.dispose()


@pytest.fixture(scope="session")
def sqlite_schemas(tmp_path_factory: pytest.TempPathFactory) -> SqliteSchemas:
    """create_schema's SQLite files, made once in this process and copied per test."""
    return SqliteSchemas(tmp_path_factory.mktemp("schemas"))


@pytest.fixture
def engine(
    settings: Settings, directory: Directory, sqlite_schemas: SqliteSchemas
) -> Iterator[Engine]:
    """The test database with resetbot's schema (create_schema; on SQLite, its copied file)."""
    engine = make_engine(settings.database_url)
    sqlite_schemas.create(engine, directory)
    yield engine
    engine.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return make_sessionmaker(engine)


SampleUser = tuple[int, str, str, str | None, str | None]
SAMPLE_USERS: list[SampleUser] = [
    # id, username, full name, email, role
    (1, "alice", "Alice Archer", "alice@example.org", None),
    (2, "bob", "Bob Binder", "bob@example.org", ""),
    (3, "carol", "Carol Cataloguer", "carol@example.org", "librarian"),
    (4, "dave", "Dave Dewey", None, None),
    (5, "erin", "Erin Editor", "erin@example.org", "admin"),
    (6, "frank", "Frank Folio", "", None),
    (7, "grace", "Grace Gutenberg", "grace@example.org", None),
]


@pytest.fixture
def sample_users(engine: Engine, directory: Directory) -> list[SampleUser]:
    """Seven users: five patrons (two without e-mail) and two staff."""
    with engine.begin() as connection:
        connection.execute(
            insert(directory.table),
            [
                {"id": i, "username": u, "full_name": n, "email": e, "role": r,
                 "password_hash": "old-hash", "must_change_password": False}
                for i, u, n, e, r in SAMPLE_USERS
            ],
        )
        if connection.dialect.name == "postgresql":
            # Explicit ids leave the id sequence at 1: move it on, so later inserts work.
            table, id_column = directory.names.table, directory.names.column("id")
            connection.execute(
                text(
                    f"SELECT setval(pg_get_serial_sequence('{table}', '{id_column}'), "
                    f"(SELECT max({id_column}) FROM {table}))"
                )
            )
    return SAMPLE_USERS
