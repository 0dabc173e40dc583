"""Fault injection on real services: a private Redis, a cuttable TCP proxy, a killable worker.

    redis = PrivateRedis().start()        # its own redis-server on a free port, nothing on disk
    redis.restart()                        # comes back on the same port, EMPTY

    proxy = TcpProxy("127.0.0.1", 5432).start()
    proxy.cut()                            # live connections reset, new ones reset at once
    proxy.restore()                        # connections go through again

    worker = WorkerProcess(settings, tmp_path).start()   # `resetbot worker` as a real process
    worker.kill()                          # SIGKILL, no goodbye

Plus what a test needs to prove nothing leaked: every Redis key and value, type by type; every
text cell of every table; and waiting on a condition with a deadline instead of sleeping.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar, cast

import pytest
from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy import Engine, MetaData, String, Text, select
from sqlalchemy.types import JSON

from core.settings import Settings

T = TypeVar("T")
REPO_ROOT = Path(__file__).resolve().parents[2]


# ---- waiting without sleeping blindly ------------------------------------------------------------


def wait_until(
    condition: Callable[[], T | bool | None],
    timeout: float,
    what: str,
    interval: float = 0.05,
) -> T:
    """Poll `condition` until it returns something truthy; fail with `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# ---- a private Redis -----------------------------------------------------------------------------


class PrivateRedis:
    """A redis-server of the test's own on a free loopback port, keeping nothing on disk.

    `restart()` kills it (SIGKILL: no shutdown save either way) and starts it again on the same
    port: clients see their connections drop, and then an empty server.
    """

    def __init__(self, port: int | None = None) -> None:
        self.port = port if port is not None else free_port()
        self._directory = Path(tempfile.mkdtemp(prefix="resetbot-redis-"))
        self._process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> Redis:
        return Redis.from_url(self.url)

    def start(self) -> PrivateRedis:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed")
        self._process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(self._directory),
             "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.starts += 1
        wait_until(self._answers, 10, f"redis-server on port {self.port} to answer")
        return self

    def _answers(self) -> bool:
        assert self._process is not None
        if self._process.poll() is not None:
            raise AssertionError(f"redis-server on port {self.port} exited at start")
        probe: Redis = Redis(host="127.0.0.1", port=self.port, socket_timeout=0.5)
        try:
            return bool(probe.ping())
        except RedisError:
            return False
        finally:
            probe.close()

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
        if self._process is not None:
            self._process.wait(10)
        self._process = None

    def restart(self) -> None:
        """Down and up again on the same port, with nothing in it."""
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._directory, ignore_errors=True)


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis().start()
    yield server
    server.close()


# ---- a loopback TCP proxy that can be cut --------------------------------------------------------


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a real service over real TCP connections.

    `cut()` resets every live connection and, until `restore()`, resets every new one as soon as
    it is accepted: to a client the service is down (connection refused / closed unexpectedly).
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._live: set[socket.socket] = set()
        self._open = True
        self._closed = False
        self.connections = 0
        self.refused = 0
        #: Every byte that went through, both ways: what a test looks into for secrets.
        self.traffic = bytearray()
        self._thread = threading.Thread(target=self._accept_loop, name="tcp-proxy", daemon=True)

    def start(self) -> TcpProxy:
        self._thread.start()
        return self

    @property
    def is_cut(self) -> bool:
        return not self._open

    def cut(self) -> None:
        with self._lock:
            self._open = False
            live, self._live = self._live, set()
        for sock in live:
            _reset(sock)

    def restore(self) -> None:
        with self._lock:
            self._open = True

    def close(self) -> None:
        self._closed = True
        self.cut()
        with contextlib.suppress(OSError):
            self._listener.close()
        self._thread.join(5)

    def _accept_loop(self) -> None:
        self._listener.settimeout(0.2)
        while not self._closed:
            try:
                client, _address = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._handle(client)

    def _handle(self, client: socket.socket) -> None:
        with self._lock:
            allowed = self._open
        if not allowed:
            self.refused += 1
            _reset(client)
            return
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            _reset(client)
            return
        upstream.settimeout(None)
        with self._lock:
            if not self._open:  # cut while we were connecting
                _reset(client)
                _reset(upstream)
                return
            self._live.update((client, upstream))
            self.connections += 1
        for source, sink in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                with self._lock:
                    self.traffic += data
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._live.discard(source)
                self._live.discard(sink)
            _reset(source)
            _reset(sink)


def _reset(sock: socket.socket) -> None:
    """Close with RST (linger 0): the peer sees the connection die, not a polite goodbye."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


@contextlib.contextmanager
def tcp_proxy(host: str, port: int) -> Iterator[TcpProxy]:
    proxy = TcpProxy(host, port).start()
    try:
        yield proxy
    finally:
        proxy.close()


# ---- a worker as a real process ------------------------------------------------------------------


def resetbot_command() -> list[str]:
    """`resetbot` as installed beside this interpreter, or the same entry point without it."""
    script = Path(sys.executable).parent / "resetbot"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from bot.cli import main; sys.exit(main())"]


@dataclass
class WorkerProcess:
    """`resetbot worker` in its own process group, configured only through its environment.

    It runs in `workdir` (so no developer's `.env` is read) and writes its log to `log_path`.
    `kill()` is SIGKILL to the whole group: the worker and the RQ scheduler it forked die
    together, as when a container or host goes down.
    """

    settings: Settings
    workdir: Path
    name: str = "worker"
    extra_env: dict[str, str] = field(default_factory=dict)
    _process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def start(self) -> WorkerProcess:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", str(self.workdir)),
            "LANG": "C.UTF-8",
            "PYTHONPATH": str(REPO_ROOT),
            "PYTHONUNBUFFERED": "1",
            **self.settings.to_env(),
            **self.extra_env,
        }
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [*resetbot_command(), "worker"],
                cwd=self.workdir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self._process is None else self._process.poll()

    def terminate(self) -> None:
        """SIGTERM to the worker alone: RQ's warm shutdown (finish the job in hand, then stop)."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL the worker and everything it started."""
        if self._process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._process.pid, signal.SIGKILL)
        self._process.wait(10)

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM (RQ's warm shutdown), then SIGKILL if it lingers; reaps the whole group."""
        if self._process is None:
            return
        if self._process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout)
        self.kill()

    def log(self) -> str:
        return self.log_path.read_text("utf-8", "replace") if self.log_path.exists() else ""


class Workers:
    """Starts worker processes for a test and makes sure none outlives it."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[WorkerProcess] = []

    def start(self, settings: Settings, **extra_env: str) -> WorkerProcess:
        worker = WorkerProcess(
            settings, self.workdir, name=f"worker{len(self.started) + 1}", extra_env=extra_env
        ).start()
        self.started.append(worker)
        return worker

    def logs(self) -> str:
        return "\n".join(f"--- {w.name} ---\n{w.log()}" for w in self.started)

    def close(self) -> None:
        for worker in self.started:
            worker.stop(timeout=5)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    pool = Workers(tmp_path / "workers")
    yield pool
    pool.close()


# ---- looking everywhere for a secret -------------------------------------------------------------


def _raw(value: object) -> bytes:
    """A value as the client returns it: bytes (its connections do not decode responses)."""
    assert isinstance(value, bytes), value
    return value


def redis_dump(redis: Redis, match: str | None = None) -> bytes:
    """Every key and every value of every type in this Redis (or the keys matching `match`),
    as one blob to search. RQ compresses a job's arguments and traceback with zlib (and results
    as base64 of zlib): those are searched decompressed too, or a password in them would hide."""
    blob = bytearray()
    for key in redis.scan_iter(match=match, count=1000):
        blob += b"\n" + key + b"\n"
        for value in _values(redis, key):
            blob += readable(value) + b"\n"
    return bytes(blob)


def _values(redis: Redis, key: bytes) -> list[bytes]:
    kind = redis.type(key)
    if kind == b"string":
        return [_raw(redis.get(key) or b"")]
    if kind == b"hash":
        return [_raw(part) for pair in redis.hgetall(key).items() for part in pair]
    if kind == b"list":
        return [_raw(value) for value in redis.lrange(key, 0, -1)]
    if kind == b"set":
        return [_raw(value) for value in redis.smembers(key)]
    if kind == b"zset":
        members = cast("list[tuple[bytes, float]]", redis.zrange(key, 0, -1, withscores=True))
        return [_raw(member) for member, _score in members]
    if kind == b"stream":
        entries = cast("list[tuple[bytes, dict[bytes, bytes]]]", redis.xrange(key))
        return [_raw(part) for entry_id, fields in entries
                for part in (entry_id, *(b for pair in fields.items() for b in pair))]
    if kind == b"none":  # a key that expired between SCAN and TYPE
        return []
    raise AssertionError(f"redis key {key!r} has a type this scan cannot read: {kind!r}")


def readable(value: bytes) -> bytes:
    """The value, plus what it holds zlib-compressed or as base64 of zlib (RQ stores both)."""
    found = [value]
    for candidate in (value, _b64(value)):
        if candidate:
            with contextlib.suppress(zlib.error):
                found.append(zlib.decompress(candidate))
    return b"\n".join(found)


def _b64(value: bytes) -> bytes | None:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None


def database_text(engine: Engine) -> dict[str, str]:
    """Every table's every row, all columns, as text: {table: blob}."""
    metadata = MetaData()
    metadata.reflect(engine)
    found: dict[str, str] = {}
    with engine.connect() as connection:
        for table in metadata.sorted_tables:
            rows = connection.execute(select(table)).all()
            found[table.name] = "\n".join(
                "\t".join("" if value is None else str(value) for value in row) for row in rows
            )
    return found


def text_columns(engine: Engine) -> dict[str, list[str]]:
    """Names of the text-holding columns of each table (for reports of what was scanned)."""
    metadata = MetaData()
    metadata.reflect(engine)
    return {
        table.name: [c.name for c in table.columns if isinstance(c.type, String | Text | JSON)]
        for table in metadata.sorted_tables
    }
