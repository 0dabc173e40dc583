"""Talk to the running Slack app as Slack does: signed HTTP requests to `/slack/events`.

`SignedSlack` builds the bodies Slack sends (slash commands form-encoded; interactivity as a form
field `payload` holding JSON; events as JSON) and signs them with the signing secret
(`v0:{timestamp}:{body}`, HMAC-SHA256, as slack_sdk's SignatureVerifier checks). The
`slack_app` fixture starts the real app over real HTTP (the WSGI app of `bot.wsgi`, under a
threaded wsgiref server), with the Slack Web API stand-in, real Redis and the test database.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import urlencode
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
from redis import Redis
from rq import Queue
from sqlalchemy.orm import Session, sessionmaker

from bot.app import create_app
from bot.wsgi import EVENTS_PATH, make_wsgi_app
from core.db import make_engine, make_sessionmaker
from core.directory import Directory
from core.directory.protocol import Directory as AnyDirectory
from core.directory.sql import SqlDirectory
from core.migrate import upgrade
from core.settings import Settings
from jobs.queueing import make_queue
from tests.support.servers import stop_serving
from tests.support.slack_standin import SlackStandIn

SIGNING_SECRET = "test-signing-secret-8f2c"
ADMIN = "UADMIN"
REPO = Path(__file__).resolve().parents[2]
OUTSIDER = "UOUTSIDER"
CHANNEL = "C0TASKS"
TEAM = {"id": "T0LIBRARY", "domain": "library"}

Json = dict[str, Any]

#: The last timestamp each body was signed with (by its hash), for every client in this process:
#: the benchmark makes a new client per measurement and sends the same searches again.
_SIGNED_AT: dict[bytes, int] = {}
_SIGNING_LOCK = threading.Lock()


def serve_environment(settings: Settings, standin: SlackStandIn, **extra: str) -> dict[str, str]:
    """The environment of a `resetbot serve` process for `settings`, talking to the stand-in.

    Only this environment configures it (no SLACK_/RESET_ variable of the developer's leaks
    in); hashing is cheap, as in every test. `extra` adds or overrides variables.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "RESET_"))}
    env.update({
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url or "",
        "RESET_QUEUE": settings.reset_queue,
        "RESET_SECRET_KEY": settings.reset_secret_key,
        "RESET_ADMINS": ADMIN,
        "SLACK_BOT_TOKEN": standin.token,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_API_URL": standin.api_url,
        "PASSWORD_SCHEMES": "pbkdf2_sha256",
        "PASSWORD_ROUNDS": "1000",
        "PASSWORD_ALLOW_WEAK_ROUNDS": "true",
        "PYTHONPATH": str(REPO),
        **extra,
    })
    return env


def sign(secret: str, timestamp: str, body: bytes) -> str:
    base = b"v0:" + timestamp.encode() + b":" + body
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    headers: dict[str, str]
    elapsed: float

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass
class SignedSlack:
    """A client for the app's HTTP endpoint that signs like Slack (or wrongly, on request)."""

    base_url: str
    secret: str = SIGNING_SECRET
    trigger_ids: list[str] = field(default_factory=list)

    # ---- raw ------------------------------------------------------------------------------

    def post(
        self,
        body: bytes,
        *,
        content_type: str = "application/x-www-form-urlencoded",
        timestamp: str | None = None,
        signature: str | None = None,
        signed: bool = True,
        path: str = EVENTS_PATH,
        extra_headers: dict[str, str] | None = None,
    ) -> Response:
        timestamp = timestamp if timestamp is not None else self._fresh_timestamp(body)
        headers = {"Content-Type": content_type}
        if signed:
            headers["X-Slack-Request-Timestamp"] = timestamp
            headers["X-Slack-Signature"] = (
                signature if signature is not None else sign(self.secret, timestamp, body)
            )
        headers.update(extra_headers or {})
        request = urllib.request.Request(self.base_url + path, data=body, headers=headers,
                                         method="POST")
        return _send(request)

    def _fresh_timestamp(self, body: bytes) -> str:
        """Now, or the next second when this very body was just signed for now: Slack never
        sends one signature twice, and the app refuses a repeated one as a replay (tests replay
        on purpose by passing `timestamp` and `signature`)."""
        digest = hashlib.sha256(body).digest()
        with _SIGNING_LOCK:
            stamp = max(int(time.time()), _SIGNED_AT.get(digest, 0) + 1)
            _SIGNED_AT[digest] = stamp
        return str(stamp)

    def get(self, path: str) -> Response:
        return _send(urllib.request.Request(self.base_url + path, method="GET"))

    # ---- what Slack sends ---------------------------------------------------------------------

    def command(self, text: str = "", *, user: str = ADMIN, channel: str = CHANNEL,
                **fields: str) -> Response:
        trigger = self.new_trigger()
        form = {
            "token": "legacy-verification-token", "team_id": TEAM["id"],
            "team_domain": TEAM["domain"], "channel_id": channel, "channel_name": "tasks",
            "user_id": user, "user_name": user.lower(), "command": "/reset-passwords",
            "text": text, "api_app_id": "ARESETBOT", "is_enterprise_install": "false",
            "response_url": "https://hooks.slack.com/commands/T0LIBRARY/1/abc",
            "trigger_id": trigger, **fields,
        }
        return self.post(urlencode(form).encode())

    def payload(self, payload: Json, **kwargs: Any) -> Response:
        return self.post(urlencode({"payload": json.dumps(payload)}).encode(), **kwargs)

    def options(self, value: str, *, user: str = ADMIN, action_id: str = "users") -> Response:
        return self.payload({
            "type": "block_suggestion", "user": _user(user), "team": TEAM,
            "api_app_id": "ARESETBOT", "action_id": action_id, "block_id": action_id,
            "value": value, "container": {"type": "view", "view_id": "V0MODAL"},
            "view": {"id": "V0MODAL", "type": "modal", "callback_id": "bulk_reset"},
        })

    def submit(self, view: Json, *, user: str = ADMIN) -> Response:
        return self.payload({
            "type": "view_submission", "user": _user(user), "team": TEAM,
            "api_app_id": "ARESETBOT", "trigger_id": self.new_trigger(), "view": view,
            "response_urls": [],
        })

    def click(self, action_id: str, value: str, *, user: str = ADMIN,
              channel: str = CHANNEL, message_ts: str = "1700000000.000100") -> Response:
        return self.payload({
            "type": "block_actions", "user": _user(user), "team": TEAM,
            "api_app_id": "ARESETBOT", "trigger_id": self.new_trigger(),
            "container": {"type": "message", "message_ts": message_ts, "channel_id": channel,
                          "is_ephemeral": False},
            "channel": {"id": channel, "name": "tasks"},
            "message": {"type": "message", "ts": message_ts, "text": "reset"},
            "response_url": "https://hooks.slack.com/actions/T0LIBRARY/1/abc",
            "actions": [{"type": "button", "action_id": action_id, "block_id": "task_buttons",
                         "value": value, "action_ts": str(time.time())}],
        })

    def click_in_home(self, action_id: str, *, user: str = ADMIN) -> Response:
        return self.payload({
            "type": "block_actions", "user": _user(user), "team": TEAM,
            "api_app_id": "ARESETBOT", "trigger_id": self.new_trigger(),
            "container": {"type": "view", "view_id": "V0HOME"},
            "view": {"id": "V0HOME", "type": "home", "callback_id": ""},
            "actions": [{"type": "button", "action_id": action_id, "block_id": "b1",
                         "action_ts": str(time.time())}],
        })

    def event(self, event: Json) -> Response:
        body = {
            "token": "legacy", "team_id": TEAM["id"], "api_app_id": "ARESETBOT",
            "event": event, "type": "event_callback", "event_id": f"Ev{uuid.uuid4().hex[:8]}",
            "event_time": int(time.time()),
            "authorizations": [{"team_id": TEAM["id"], "user_id": "UBOTRESET",
                                "is_bot": True, "is_enterprise_install": False}],
        }
        return self.post(json.dumps(body).encode(), content_type="application/json")

    def new_trigger(self) -> str:
        trigger = f"{int(time.time())}.{uuid.uuid4().int % 10**12}.{uuid.uuid4().hex}"
        self.trigger_ids.append(trigger)
        return trigger


def _user(user_id: str) -> Json:
    return {"id": user_id, "username": user_id.lower(), "name": user_id.lower(),
            "team_id": TEAM["id"]}


def _send(request: urllib.request.Request) -> Response:
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            body = answer.read()
            status, headers = answer.status, dict(answer.headers)
    except urllib.error.HTTPError as refused:
        body, status, headers = refused.read(), refused.code, dict(refused.headers)
    return Response(status, body, {k.lower(): v for k, v in headers.items()},
                    time.perf_counter() - started)


# ---- view state, as Slack sends it back on submit -----------------------------------------------


def form_state(
    scope: str | None = "selected_only",
    users: Sequence[int | str] = (),
    password: str | None = None,
    require_change: bool = True,
    no_email: str | None = None,
    no_email_password: str | None = None,
    skip_locked: bool | None = None,
) -> Json:
    """`view.state.values` for the reset modal (`no_email`, `skip_locked` None: as a form
    older than them)."""
    scope_state: Json = {"type": "radio_buttons", "selected_option": None}
    if scope is not None:
        scope_state["selected_option"] = {"text": {"type": "plain_text", "text": scope},
                                          "value": scope}
    check = {"text": {"type": "plain_text", "text": "Require"}, "value": "yes"}
    return {
        "scope": {"scope": scope_state},
        "users": {"users": {"type": "multi_external_select", "selected_options": [
            {"text": {"type": "plain_text", "text": str(u)}, "value": str(u)} for u in users
        ]}},
        "password": {"password": {"type": "plain_text_input", "value": password}},
        "require_change": {"require_change": {
            "type": "checkboxes", "selected_options": [check] if require_change else []}},
        **({} if no_email is None else {
            "no_email": {"no_email": {"type": "radio_buttons", "selected_option": {
                "text": {"type": "plain_text", "text": no_email}, "value": no_email}}},
            "no_email_password": {"no_email_password": {
                "type": "plain_text_input", "value": no_email_password}},
        }),
        **({} if skip_locked is None else {"skip_locked": {"skip_locked": {
            "type": "checkboxes", "selected_options": [
                {"text": {"type": "plain_text", "text": "Leave out"}, "value": "yes"}
            ] if skip_locked else []}}}),
    }


def submitted_view(opened: Json, values: Json) -> Json:
    """The view Slack sends on submit: what was opened, plus its state."""
    return dict(opened, state={"values": values})


def view_text(view: Json) -> str:
    """Every text in a view, flattened, for asserting on what a person reads."""
    found: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "text" and isinstance(value, str):
                    found.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(view)
    return "\n".join(found)


# ---- the running app ------------------------------------------------------------------------


@dataclass
class RunningApp:
    settings: Settings
    sessions: sessionmaker[Session]
    directory: Directory | AnyDirectory
    redis: Redis
    queue: Queue
    standin: SlackStandIn
    slack: SignedSlack
    server: ThreadingWSGIServer

    def stop(self, thread: threading.Thread) -> None:
        assert thread.is_alive(), "the HTTP server stopped before the test ended"
        stop_serving(self.server, thread)
        assert not thread.is_alive()

    def open_modal(self, *, user: str = ADMIN, channel: str = CHANNEL) -> Json:
        """Type the command; return the modal the app opened (as the stand-in stored it)."""
        before = self.standin.count("views.open")
        answer = self.slack.command(user=user, channel=channel)
        assert answer.status == 200, answer.body
        call = self.standin.wait_for_call("views.open", count=before + 1)
        assert call.params["trigger_id"] == self.slack.trigger_ids[-1]
        view: Json = call.params["view"]
        return view


class ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    """wsgiref, one thread per request (as waitress serves them concurrently), clean shutdown.

    `resetbot serve` runs the same WSGI app under waitress; test_slack_app_serve.py covers that.
    """

    daemon_threads = True


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """The tests assert on responses; no access log on stderr."""


def start_app(
    settings: Settings,
    sessions: sessionmaker[Session],
    directory: Directory | AnyDirectory,
    redis: Redis,
    standin: SlackStandIn,
    **create_kwargs: Any,
) -> tuple[RunningApp, threading.Thread]:
    queue = make_queue(settings, redis)
    # The tests' table directory (conftest), behind the protocol as `serve` makes it.
    served = SqlDirectory(directory) if isinstance(directory, Directory) else directory
    app = create_app(settings, sessions=sessions, directory=served, queue=queue,
                     **create_kwargs)
    wsgi = make_wsgi_app(app, signing_secret=settings.slack_signing_secret, sessions=sessions,
                         redis=redis, namespace=settings.reset_queue)
    server = make_server("127.0.0.1", 0, wsgi, server_class=ThreadingWSGIServer,
                         handler_class=QuietHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              name="resetbot-http", daemon=True)
    thread.start()
    slack = SignedSlack(f"http://127.0.0.1:{server.server_port}")
    running = RunningApp(settings, sessions, directory, redis, queue, standin, slack, server)
    return running, thread


@contextmanager
def app_on_its_own_state(
    configured: Settings, redis: Redis, standin: SlackStandIn
) -> Iterator[RunningApp]:
    """The app on `configured`'s directory, with resetbot's state upgraded on its database.

    For directories outside the test's database (Koha on MariaDB): the app gets its own engine
    on the state database and a `Directory` from the settings, both disposed of afterwards.
    """
    upgrade(configured)
    state = make_engine(configured.database_url)
    directory = Directory.from_settings(configured, state)
    running, thread = start_app(configured, make_sessionmaker(state), directory, redis, standin)
    try:
        yield running
    finally:
        running.stop(thread)
        directory.dispose()
        state.dispose()


def app_settings(settings: Settings, standin: SlackStandIn, **changes: Any) -> Settings:
    return replace(
        settings,
        slack_bot_token=standin.token,
        slack_signing_secret=SIGNING_SECRET,
        slack_api_url=standin.api_url,
        reset_admins=frozenset({ADMIN}),
        **changes,
    )


@pytest.fixture
def slack_app(
    settings: Settings,
    sessions: sessionmaker[Session],
    directory: Directory,
    redis_conn: Redis,
    slack_standin: SlackStandIn,
) -> Iterator[RunningApp]:
    """The Slack app serving real HTTP on a free port, admins = {UADMIN}."""
    running, thread = start_app(app_settings(settings, slack_standin), sessions, directory,
                                redis_conn, slack_standin)
    try:
        yield running
    finally:
        running.stop(thread)
