"""`resetbot serve` under idle connections: clients that connect and send nothing cannot lock
Slack out, and the server closes such connections soon. The real command, on loopback.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from bot.server import CONNECTION_LIMIT, IDLE_CHECK_SECONDS, IDLE_TIMEOUT_SECONDS
from core.settings import Settings
from tests.support.signing import SignedSlack, serve_environment
from tests.support.slack_standin import SlackStandIn
from tests.support.slack_standin import slack_standin as slack_standin
from tests.support.smtp import free_port

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
#: More idle connections than waitress's default limit (100), which locked Slack out.
IDLE_CLIENTS = 200



@pytest.fixture
def serving(settings: Settings, sample_users: list[Any], slack_standin: SlackStandIn,
            tmp_path: Path) -> Iterator[tuple[SignedSlack, int]]:
    """`resetbot serve` (no worker) on a free loopback port."""
    for slack, port, _listening in serve_on(settings, slack_standin, tmp_path,
                                            "--host", "127.0.0.1"):
        yield slack, port


def serve_on(settings: Settings, slack_standin: SlackStandIn, tmp_path: Path,
             *options: str) -> Iterator[tuple[SignedSlack, int, list[tuple[str, int]]]]:
    """`resetbot serve OPTIONS --port FREE` once /healthz answers on loopback, with the
    addresses it listens on; stopped after."""
    port = free_port()
    log = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "bot.cli", "serve", *options, "--port", str(port)],
        cwd=tmp_path, env=serve_environment(settings, slack_standin), stdout=log, stderr=log,
    )
    slack = SignedSlack(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                if slack.get("/healthz").status == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "resetbot serve did not answer /healthz"
            time.sleep(0.05)
        listening = [(c.laddr.ip, c.laddr.port) for c in
                     psutil.Process(process.pid).net_connections("inet")
                     if c.status == psutil.CONN_LISTEN]
        yield slack, port, listening
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def open_idle(port: int, count: int) -> list[socket.socket]:
    """`count` connections that send nothing, each accepted by the server's kernel queue."""
    idle = []
    for _ in range(count):
        connection = socket.create_connection(("127.0.0.1", port), timeout=5)
        idle.append(connection)
    return idle


def get_within(url: str, seconds: float) -> int:
    """The status of a GET that must be answered within `seconds` (else an error is raised)."""
    with urllib.request.urlopen(url, timeout=seconds) as answer:
        return int(answer.status)


@sqlite_only
@pytest.mark.services
def test_serve_listens_on_loopback_only_unless_told(
    settings: Settings, sample_users: list[Any], slack_standin: SlackStandIn, tmp_path: Path
) -> None:
    """Behind the reverse proxy docs/deployment.md asks for, nothing else needs to reach the port:
    `/healthz` (database, Redis, directory state) is not open on every interface."""
    for _slack, port, listening in serve_on(settings, slack_standin, tmp_path):
        assert listening == [("127.0.0.1", port)]
    log = (tmp_path / "serve.log").read_text()
    assert "serving Slack requests on http://127.0.0.1:" in log


def test_the_limits_are_above_what_locked_slack_out() -> None:
    assert CONNECTION_LIMIT >= 5 * IDLE_CLIENTS
    assert IDLE_TIMEOUT_SECONDS <= 15 and IDLE_CHECK_SECONDS <= 5


@sqlite_only
@pytest.mark.services
@pytest.mark.slow
def test_idle_connections_do_not_lock_slack_out_and_are_closed_soon(
    serving: tuple[SignedSlack, int], slack_standin: SlackStandIn
) -> None:
    slack, port = serving
    idle = open_idle(port, IDLE_CLIENTS)
    try:
        # Before the fix these waited for waitress's 120 s channel timeout: the answer must come
        # while the idle connections are still open (a timeout here raises).
        assert get_within(f"{slack.base_url}/healthz", 5) == 200
        started = time.monotonic()
        answer = slack.command()  # a signed request, as Slack sends it
        assert answer.status == 200, answer.body
        assert time.monotonic() - started < 5
        slack_standin.wait_for_call("views.open")

        # The server closes connections that never sent anything: reading one ends (b"") after
        # the idle timeout, well before the old 120 s.
        first = idle[0]
        first.settimeout(IDLE_TIMEOUT_SECONDS + IDLE_CHECK_SECONDS + 15)
        opened = time.monotonic()
        assert first.recv(1) == b""
        assert time.monotonic() - opened <= IDLE_TIMEOUT_SECONDS + IDLE_CHECK_SECONDS + 15
    finally:
        for connection in idle:
            connection.close()
