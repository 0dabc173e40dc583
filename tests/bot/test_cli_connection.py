"""The embedded Redis: one server per state directory, reachable from child processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import psutil
import pytest
from redis import Redis

from core.settings import Settings
from jobs.connection import child_environment, close_redis, connect_redis, redis_url, state_dir
from tests.support.services import REDIS_URL


@pytest.fixture
def local_settings(tmp_path: Path) -> Settings:
    (tmp_path / "data").mkdir()  # the database's folder: resetbot never creates it
    return replace(
        Settings.from_env({}, env_file=None),
        database_url=f"sqlite:///{tmp_path / 'data' / 'resetbot.db'}",
        redis_url=None,
    )


def test_state_dir_sits_beside_the_sqlite_file(local_settings: Settings, tmp_path: Path) -> None:
    assert state_dir(local_settings) == tmp_path / "data" / ".resetbot"
    relative = replace(local_settings, database_url="sqlite:///x.db")
    assert state_dir(relative, cwd=tmp_path) == tmp_path / ".resetbot"
    postgres = replace(local_settings, database_url="postgresql+psycopg://h/db")
    assert state_dir(postgres, cwd=tmp_path) == tmp_path / ".resetbot"


@pytest.mark.services
def test_configured_url_is_used_as_is(local_settings: Settings) -> None:
    settings = replace(local_settings, redis_url=REDIS_URL)
    redis = connect_redis(settings)
    try:
        assert redis.ping()
        assert redis_url(settings, redis) == REDIS_URL
    finally:
        close_redis(redis)


@pytest.mark.slow
def test_embedded_redis_is_shared_with_children_and_stops_with_the_last_client(
    local_settings: Settings,
) -> None:
    first = connect_redis(local_settings)
    server = psutil.Process(first.pid)
    second = connect_redis(local_settings)  # a second client finds the running server
    assert redis_url(local_settings, second) == redis_url(local_settings, first)
    url = redis_url(local_settings, first)
    assert url.startswith("unix:///") and url.endswith("redis.socket")
    first.set("resetbot-test-handoff", b"from-parent")
    child = subprocess.run(
        [
            sys.executable, "-c",
            "from core.settings import Settings; from jobs.connection import connect_redis;"
            "r = connect_redis(Settings.from_env(env_file=None));"
            "print(r.get('resetbot-test-handoff').decode()); r.set('resetbot-test-back', 'ok')",
        ],
        env=child_environment(local_settings, first),
        capture_output=True, text=True, timeout=30, check=True,
    )
    assert child.stdout.strip() == "from-parent"
    assert first.get("resetbot-test-back") == b"ok"
    close_redis(second)
    assert server.is_running(), "the server must outlive a client while another is connected"
    close_redis(first)
    assert _stopped(server, deadline=time.monotonic() + 10)


def _stopped(process: psutil.Process, deadline: float) -> bool:
    # The daemonised server is not our child: it may linger as a zombie until init reaps it.
    while time.monotonic() < deadline:
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.slow
def test_a_stop_signal_heard_while_letting_go_waits_until_the_server_and_its_folder_are_gone(
    local_settings: Settings,
) -> None:
    """A second SIGTERM (serve's watcher, a supervisor) once landed while a stopping worker was
    letting go of the embedded Redis: RQ's handler raised, and the stopped server's folder was
    left behind. Here it lands while close_redis waits for another client to leave."""
    embedded = connect_redis(local_settings)
    server = psutil.Process(embedded.pid)
    socket_path = redis_url(local_settings, embedded).removeprefix("unix://")
    folder = Path(socket_path).parent
    own_connection = str(embedded.client_id())
    other = Redis(unix_socket_path=socket_path)
    other.ping()  # connected: close_redis waits for it to leave
    heard: list[bool] = []

    def force_stop(signum: int, frame: object) -> None:  # as RQ's second-signal handler does
        heard.append(folder.exists())
        raise SystemExit(0)

    def signal_then_leave() -> None:
        deadline = time.monotonic() + 30
        while own_connection in {c["id"] for c in other.client_list()}:  # not letting go yet
            assert time.monotonic() < deadline
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)
        other.close()

    previous = signal.signal(signal.SIGTERM, force_stop)
    try:
        sender = threading.Thread(target=signal_then_leave)
        sender.start()
        with pytest.raises(SystemExit):
            close_redis(embedded)
        sender.join()
    finally:
        signal.signal(signal.SIGTERM, previous)

    assert heard == [False], "the signal was acted on once, after the folder had gone"
    assert _stopped(server, deadline=time.monotonic() + 10)
    assert not (state_dir(local_settings) / "redis.db.settings").exists()
