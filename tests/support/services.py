"""Where the test services are: read from the environment, today's local servers by default.

    RESETBOT_TEST_REDIS_URL      redis://127.0.0.1:6379/0
    RESETBOT_TEST_POSTGRES_URL   postgresql+psycopg://postgres@127.0.0.1:5432/test
    RESETBOT_TEST_MARIADB_URL    mysql+pymysql://root@127.0.0.1:3306/test

The PostgreSQL and MariaDB URLs name a database the tests may connect to as an administrator
(to create and drop their throw-away databases); the tests never write into it.

Under pytest-xdist each worker (gw0, gw1, ...) uses a Redis logical database of its own, the
configured one plus 1 plus the worker's number: RQ's keys that name no queue (the set of all
workers, of all queues) and any test that reads every key see only their own worker's tests.
A run without xdist uses the configured database itself.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import URL, make_url

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
DEFAULT_MARIADB_URL = "mysql+pymysql://root@127.0.0.1:3306/test"

#: Redis's default number of logical databases (`databases 16` in redis.conf).
REDIS_DATABASES = 16


def xdist_worker_number() -> int | None:
    """This process's pytest-xdist worker number (gw3 is 3); None outside xdist."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if worker.startswith("gw") and worker[2:].isdigit():
        return int(worker[2:])
    return None


def redis_url_for(configured: str, worker: int | None) -> str:
    """The configured Redis URL, on a logical database of the worker's own under xdist.

    Only redis:// and rediss:// URLs with the database in the path (or none: 0) are moved; a
    unix socket URL is left as it is (queue names still keep the tests apart)."""
    parts = urlsplit(configured)
    if worker is None or parts.scheme not in ("redis", "rediss"):
        return configured
    database = parts.path.strip("/") or "0"
    if not database.isdigit():
        return configured
    own = (int(database) + 1 + worker) % REDIS_DATABASES
    return urlunsplit(parts._replace(path=f"/{own}"))


def redis_url() -> str:
    return redis_url_for(
        os.environ.get("RESETBOT_TEST_REDIS_URL") or DEFAULT_REDIS_URL, xdist_worker_number()
    )


def postgres_admin_url() -> str:
    return os.environ.get("RESETBOT_TEST_POSTGRES_URL") or DEFAULT_POSTGRES_URL


def mariadb_admin_url() -> str:
    return os.environ.get("RESETBOT_TEST_MARIADB_URL") or DEFAULT_MARIADB_URL


def server_of(url: str) -> str:
    """`scheme://user:password@host:port` of a database URL: a database name is appended."""
    parsed = make_url(url)
    server = URL.create(parsed.drivername, parsed.username, parsed.password, parsed.host,
                        parsed.port)
    return server.render_as_string(hide_password=False)


#: Read once, when the test support is imported (the environment of the pytest run).
REDIS_URL = redis_url()
POSTGRES_ADMIN_URL = postgres_admin_url()
MARIADB_ADMIN_URL = mariadb_admin_url()
