"""What the benchmark starts on loopback: a private Redis, a throw-away PostgreSQL database,
an SMTP sink. All of it is removed again afterwards; the shared Redis on 6379 is never touched."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from tests.support.databases import mariadb_database as _mariadb_database
from tests.support.databases import postgres_database as _postgres_database

#: Every database the benchmark makes is named so (and dropped afterwards).
PREFIX = "resetbot_bench"


def postgres_database() -> AbstractContextManager[str]:
    """A throw-away PostgreSQL database `resetbot_bench_*`, dropped on leaving."""
    return _postgres_database(PREFIX)


def mariadb_database() -> AbstractContextManager[str]:
    """A throw-away MariaDB database `resetbot_bench_*`, dropped on leaving."""
    return _mariadb_database(PREFIX)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Any, timeout: float, interval: float = 0.05, what: str = "") -> None:
    """Poll `condition()` until it is true; raise TimeoutError naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what or condition}")
        time.sleep(interval)


@contextmanager
def private_redis() -> Iterator[str]:
    """A redis-server of our own on a free port, no persistence; yields its URL."""
    from redis import Redis
    from redis.exceptions import ConnectionError as RedisConnectionError

    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="bench-redis-")
    process = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
         "--dir", workdir, "--loglevel", "warning"],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = Redis.from_url(url)

    def answers() -> bool:
        try:
            return bool(client.ping())
        except RedisConnectionError:
            return False

    try:
        wait_until(answers, 10, what="the private redis-server")
        yield url
    finally:
        client.close()
        process.terminate()
        process.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def sqlite_database() -> Iterator[str]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-sqlite-"))
    try:
        yield f"sqlite:///{workdir / 'resetbot.db'}"
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


class SmtpSink:
    """The bare SMTP sink (bench/smtp_sink.py) on a free loopback port, in its own process,
    counting mail."""

    def __init__(self) -> None:
        self.port = free_port()
        self._dir = Path(tempfile.mkdtemp(prefix="bench-smtp-"))
        self._counter = self._dir / "count"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def messages(self) -> int:
        from bench.smtp_sink import read_count

        return read_count(self._counter)

    @property
    def last_accepted(self) -> float | None:
        """When the sink last accepted a message (epoch seconds)."""
        from bench.smtp_sink import read_last_accepted

        return read_last_accepted(self._counter)

    def reset(self) -> None:
        from bench.smtp_sink import reset_count

        reset_count(self._counter)

    def __enter__(self) -> SmtpSink:
        import os
        import sys

        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
               "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
        self._process = subprocess.Popen(
            [sys.executable, "-m", "bench.smtp_sink", str(self.port), str(self._counter)],
            env=env, stdout=subprocess.PIPE,
        )
        assert self._process.stdout is not None
        if self._process.stdout.readline().strip() != b"ready":
            raise RuntimeError("the SMTP sink did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(10)
        shutil.rmtree(self._dir, ignore_errors=True)
