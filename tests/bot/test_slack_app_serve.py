"""`serve` itself: the production server (waitress) in its own process, with a worker beside it,
configured only through the environment; and the one-line errors for missing credentials.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from bot.app import create_app
from bot.server import serve
from core.directory import Directory
from core.errors import ConfigError
from core.models import ResetTask, TaskStatus
from core.settings import Settings
from tests.support.services import REDIS_URL
from tests.support.signing import (
    ADMIN,
    SignedSlack,
    form_state,
    serve_environment,
    submitted_view,
)
from tests.support.slack_standin import SlackStandIn
from tests.support.slack_standin import slack_standin as slack_standin
from tests.support.smtp import SmtpServer, free_port
from tests.support.smtp import smtp_server as smtp_server

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
SERVE = (
    "import sys\n"
    "from core.settings import Settings\n"
    "from bot.server import serve\n"
    "serve(Settings.from_env(env_file=None), port=int(sys.argv[1]), host='127.0.0.1',\n"
    "      with_worker=True)\n"
)


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def environment(settings: Settings, standin: SlackStandIn, smtp: SmtpServer) -> dict[str, str]:
    return serve_environment(
        settings, standin, RESET_REAPER_INTERVAL="1", MAIL_RETRY_DELAYS="0,0,0",
        SMTP_HOST=smtp.host, SMTP_PORT=str(smtp.port), SMTP_SECURITY="none",
    )


@pytest.fixture
def served(
    settings: Settings, sample_users: list[Any], slack_standin: SlackStandIn,
    smtp_server: SmtpServer, tmp_path: Path,
) -> Iterator[tuple[SignedSlack, subprocess.Popen[bytes]]]:
    port = free_port()
    log = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-c", SERVE, str(port)], cwd=tmp_path,
        env=environment(settings, slack_standin, smtp_server), stdout=log, stderr=log,
    )
    slack = SignedSlack(f"http://127.0.0.1:{port}")

    def healthy() -> bool:
        assert process.poll() is None, (tmp_path / "serve.log").read_text()
        try:
            return slack.get("/healthz").status == 200
        except OSError:
            return False

    try:
        wait_until(healthy, 30, "resetbot serve to answer /healthz")
        yield slack, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()


@pytest.mark.slow
@sqlite_only
@pytest.mark.services
def test_serve_runs_the_app_and_a_worker_with_one_command(
    served: tuple[SignedSlack, subprocess.Popen[bytes]], slack_standin: SlackStandIn,
    smtp_server: SmtpServer, sessions: sessionmaker[Session],
) -> None:
    slack, process = served
    health = slack.get("/healthz")
    said = health.json()
    # REDIS_URL's server, as it describes itself: its binary and version.
    assert re.fullmatch(r"\S*redis-server \d+\.\d+\.\d+", said.pop("redis_server")), said
    assert said == {"status": "ok", "database": "ok", "redis": "ok"}
    assert health.headers["server"] == "resetbot"

    assert slack.command().status == 200
    opened = slack_standin.wait_for_call("views.open").params["view"]
    preview = slack.submit(submitted_view(opened, form_state("selected_only", (1, 2)))).json()
    assert slack.submit(preview["view"]).json() == {"response_action": "clear"}

    def finished() -> bool:
        with sessions() as session:
            task = session.scalars(select(ResetTask)).one()
            return TaskStatus(task.status).is_final
    wait_until(finished, 60, "the worker beside the app to finish the task")
    with sessions() as session:
        assert session.scalars(select(ResetTask)).one().status == TaskStatus.COMPLETED
    assert sorted(m.to for m in smtp_server.messages) == ["alice@example.org",
                                                         "bob@example.org"]

    # Interrupted, it stops the worker and exits cleanly.
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=40) == 0


@sqlite_only
@pytest.mark.services
def test_waitress_refuses_what_is_not_signed_or_too_big(
    served: tuple[SignedSlack, subprocess.Popen[bytes]],
) -> None:
    slack, _ = served
    assert slack.post(b"command=%2Freset-passwords", signed=False).status == 401
    assert slack.get("/somewhere").status == 404
    port = int(slack.base_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        connection.sendall(b"POST /slack/events HTTP/1.1\r\nHost: x\r\n"
                           b"Content-Length: 50000000\r\n\r\npayload=")
        assert connection.recv(4096).split(b" ")[1] == b"413"


# ---- credentials --------------------------------------------------------------------------------


@sqlite_only
@pytest.mark.parametrize("missing,named,where", [
    ({"slack_bot_token": None}, "SLACK_BOT_TOKEN", "OAuth & Permissions"),
    ({"slack_signing_secret": None}, "SLACK_SIGNING_SECRET", "Basic Information"),
    ({"slack_app_token": "xoxb-not-an-app-token"}, "SLACK_APP_TOKEN", "App-Level Tokens"),
])
def test_missing_credentials_are_one_clear_line(
    settings: Settings, missing: dict[str, Any], named: str, where: str
) -> None:
    configured = replace(settings, **{"slack_bot_token": "xoxb-x", "slack_signing_secret": "s",
                                      **missing})
    with pytest.raises(ConfigError) as refused:
        serve(configured, port=free_port(), host="127.0.0.1")
    message = str(refused.value)
    assert message.startswith(named) and "api.slack.com/apps" in message and where in message
    assert "\n" not in message


@sqlite_only
def test_socket_mode_needs_no_signing_secret(settings: Settings) -> None:
    from bot.app import check_slack_settings

    check_slack_settings(replace(settings, slack_bot_token="xoxb-x", slack_signing_secret=None,
                                 slack_app_token="xapp-1-A-1-x"))


@sqlite_only
def test_a_token_slack_refuses_fails_at_start(
    settings: Settings, sessions: sessionmaker[Session], directory: Directory,
    slack_standin: SlackStandIn,
) -> None:
    from redis import Redis

    from jobs.queueing import make_queue

    configured = replace(settings, slack_bot_token="xoxb-wrong", slack_signing_secret="s",
                         slack_api_url=slack_standin.api_url)
    with pytest.raises(ConfigError, match=r"^SLACK_BOT_TOKEN was not accepted .*invalid_auth"):
        create_app(configured, sessions=sessions, directory=directory,
                   queue=make_queue(configured, Redis.from_url(REDIS_URL)))


@sqlite_only
def test_socket_mode_with_a_refused_app_token_is_one_clear_line(
    settings: Settings, sample_users: list[Any], slack_standin: SlackStandIn,
) -> None:
    configured = replace(settings, slack_bot_token=slack_standin.token, slack_signing_secret=None,
                         slack_app_token="xapp-1-A0-1-wrong", slack_api_url=slack_standin.api_url,
                         reset_admins=frozenset({ADMIN}))
    with pytest.raises(ConfigError, match=r"^SLACK_APP_TOKEN was not accepted by Slack "
                                          r"\(invalid_auth\).*App-Level Tokens"):
        serve(configured, port=free_port(), host="127.0.0.1")
    [opened] = slack_standin.calls("apps.connections.open")
    assert opened.headers["authorization"] == "Bearer xapp-1-A0-1-wrong"
