"""The real Slack app in its own process, driven over signed HTTP as Slack drives it.

Used for the figures a person feels: picker search (options load), preview (submit ->
`response_action: update`), and confirm (submit -> `response_action: clear`) latencies, and the
app's memory during a big task. Needs C's app (bot.server) and the signed client from the tests.
"""

from __future__ import annotations

import functools
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from bench.harness import (
    BENCH_ADMIN,
    BENCH_CHANNEL,
    Database,
    Stack,
    cli_has,
    process_environment,
)
from bench.latency import Latencies
from bench.services import free_port, wait_until
from bench.synth import SearchTerm
from core.models import ResetTask
from core.tasks import ResetRequest

SIGNING_SECRET = "bench-signing-secret"


def app_available() -> bool:
    try:
        import bot.server  # noqa: F401
        import tests.support.signing  # noqa: F401
    except ImportError:
        return False
    return True


def app_command(port: int) -> list[str]:
    """`resetbot serve --port N` when the CLI has it, else the benchmark's launcher."""
    return [part.replace("{port}", str(port)) for part in _app_command_template()]


@functools.cache
def _app_command_template() -> tuple[str, ...]:
    if cli_has("serve"):
        cli = Path(sys.executable).with_name("resetbot")
        return (str(cli), "serve", "--port", "{port}", "--host", "127.0.0.1")
    return (sys.executable, "-m", "bench.app_main", "{port}")


class AppProcess:
    """`resetbot serve` on a free loopback port, for one database."""

    def __init__(self, stack: Stack, env: dict[str, str], logdir: Path) -> None:
        self.port = free_port()
        self.env = process_environment({**env, "SLACK_SIGNING_SECRET": SIGNING_SECRET})
        self.logdir = logdir
        self.command = app_command(self.port)
        self.stack = stack
        self.process: subprocess.Popen[bytes] | None = None
        self._cwd = tempfile.mkdtemp(prefix="bench-app-")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def pids(self) -> list[int]:
        return [self.process.pid] if self.process and self.process.poll() is None else []

    def __enter__(self) -> AppProcess:
        with open(self.logdir / f"app-{self.port}.log", "wb") as log:
            self.process = subprocess.Popen(self.command, env=self.env, cwd=self._cwd,
                                            stdout=log, stderr=subprocess.STDOUT)

        def healthy() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"the app exited with {self.process.returncode}; "
                                   f"see {self.logdir}")
            try:
                with urllib.request.urlopen(self.base_url + "/healthz", timeout=2) as answer:
                    return bool(answer.status == 200)
            except (urllib.error.URLError, OSError):
                return False

        wait_until(healthy, 60, interval=0.1, what="the Slack app to answer /healthz")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self._cwd, ignore_errors=True)  # left in the temporary folder otherwise

    def client(self) -> Any:
        from tests.support.signing import SignedSlack

        return SignedSlack(self.base_url, secret=SIGNING_SECRET)


class HttpConfirmer:
    """Creates a task the way a person does: command, submit the form, confirm the preview.

    Only the confirm is timed (`response_action: clear` back within Slack's 3 s is the target).
    """

    name = "http"

    def __init__(self, app: AppProcess) -> None:
        self.app = app
        self.slack = app.client()
        self.preview_seconds: list[float] = []

    def open_modal(self) -> dict[str, Any]:
        standin = self.app.stack.slack
        before = standin.count("views.open")
        answer = self.slack.command(user=BENCH_ADMIN, channel=BENCH_CHANNEL)
        if answer.status != 200:
            raise RuntimeError(f"the command got HTTP {answer.status}: {answer.body[:200]!r}")
        call = standin.wait_for_call("views.open", count=before + 1, timeout=10)
        view: dict[str, Any] = call.params["view"]
        return view

    def preview(self, request: ResetRequest) -> tuple[dict[str, Any], float]:
        """Submit the form for `request`; the preview view and the submit's latency."""
        from tests.support.signing import form_state, submitted_view

        opened = self.open_modal()
        values = form_state(scope=request.scope.value, users=request.selection,
                            password=request.default_password,
                            require_change=request.require_change)
        answer = self.slack.submit(submitted_view(opened, values), user=BENCH_ADMIN)
        body = answer.json() if answer.status == 200 else None
        if not body or body.get("response_action") != "update":
            raise RuntimeError(f"the submit got {answer.status}: {answer.body[:300]!r}")
        view: dict[str, Any] = body["view"]
        return view, answer.elapsed

    def confirm(self, db: Database, request: ResetRequest) -> tuple[int, float, float]:
        preview, seconds = self.preview(request)
        self.preview_seconds.append(seconds)
        with db.sessions() as session:
            before = session.query(ResetTask.id).order_by(ResetTask.id.desc()).first()
        started_wall = time.time()
        answer = self.slack.submit(preview, user=BENCH_ADMIN)
        body = answer.json() if answer.status == 200 else None
        if not body or body.get("response_action") != "clear":
            raise RuntimeError(f"the confirm got {answer.status}: {answer.body[:300]!r}")
        with db.sessions() as session:
            newest = session.query(ResetTask.id).order_by(ResetTask.id.desc()).first()
        if newest is None or newest == before:
            raise RuntimeError("the confirm answered but no task was created")
        return int(newest[0]), started_wall, float(answer.elapsed)


def search_latency_http(app: AppProcess, terms: list[SearchTerm]) -> Latencies:
    """Options loads as Slack sends them while staff type in the picker."""
    slack = app.client()
    result = Latencies()
    for term in terms:
        answer = slack.options(term.term, user=BENCH_ADMIN)
        if answer.status != 200:
            raise RuntimeError(f"options load got HTTP {answer.status}")
        options = json.loads(answer.body).get("options", [])
        assert len(options) <= 100
        result.add(answer.elapsed, term.kind)
    return result


def preview_latency_http(confirmer: HttpConfirmer, requests: list[ResetRequest],
                         rounds: int = 5) -> Latencies:
    result = Latencies()
    for _ in range(rounds):
        for request in requests:
            _view, seconds = confirmer.preview(request)
            result.add(seconds, request.scope.value)
    return result

