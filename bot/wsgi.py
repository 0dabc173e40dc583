"""The HTTP face of the app: `/slack/events` (Bolt's WSGI adapter behind a guard) and `/healthz`.

The guard checks the signature (with slack_sdk's SignatureVerifier) before Bolt sees a request:
a forged, stale or header-less request gets 401 without its body ever being logged (it may hold a
typed default password), and a signed but malformed one gets 400, where Bolt would answer 500.
A signature counts once (bot.replay): the same signed request sent again gets 401, and an Events
API event delivered again (Slack's retries carry `X-Slack-Retry-Num`) gets 200 without acting.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from redis import Redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry
from slack_bolt import App
from slack_bolt.adapter.wsgi import SlackRequestHandler
from slack_bolt.request.internals import parse_body
from slack_sdk.signature import Clock, SignatureVerifier
from sqlalchemy import Connection, inspect, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from bot.payloads import payload_problem
from bot.replay import Seen, SeenRequests
from core.directory.protocol import Directory, DirectoryUnavailable
from core.errors import ConfigError
from core.migrate import VERSION_TABLE, current_revision, head_revision
from core.models import Base
from jobs.connection import server_in_use

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIEnvironment

log = logging.getLogger("resetbot.http")

EVENTS_PATH = "/slack/events"
HEALTH_PATH = "/healthz"
#: Slack's largest payloads (a modal's state) are far smaller than this.
MAX_BODY_BYTES = 1_000_000
#: A health check answers quickly or says "unavailable"; it does not wait out retries.
PROBE_TIMEOUT = 2.0

WsgiApp = Callable[["WSGIEnvironment", "StartResponse"], Iterable[bytes]]


def redis_probe(url: str) -> Redis:
    """A client for health checks only: one try, short timeouts (the app's own client retries)."""
    return Redis.from_url(url, retry=Retry(NoBackoff(), 0), socket_timeout=PROBE_TIMEOUT,
                          socket_connect_timeout=PROBE_TIMEOUT)


class HealthCheck:
    """Whether the database (with this release's schema) and Redis answer, for `/healthz`; and
    the directory, when it is a database of its own (DIRECTORY_URL)."""

    def __init__(
        self, sessions: sessionmaker[Session], redis: Redis, directory: Directory | None = None
    ) -> None:
        self.sessions = sessions
        self.redis = redis
        self.directory = directory
        self._head: str | None = None

    def __call__(self) -> dict[str, str]:
        checks = {"database": self._database(), "redis": self._redis()}
        if self.directory is not None:
            checks["directory"] = self._directory(self.directory)
        return checks

    @staticmethod
    def _directory(directory: Directory) -> str:
        """The directory answers (`Directory.ping`: a SQL table read with `LIMIT 0`, an LDAP
        server signed in to)."""
        try:
            directory.ping()
        except (SQLAlchemyError, ConfigError, DirectoryUnavailable) as error:
            log.warning("health: directory unavailable: %s", type(error).__name__)
            return "unavailable"
        return "ok"

    def _database(self) -> str:
        try:
            with self.sessions() as session:
                session.execute(text("SELECT 1"))
                problem = self._schema_problem(session.connection())
        except SQLAlchemyError as error:
            log.warning("health: database unavailable: %s", type(error).__name__)
            return "unavailable"
        if problem:
            log.warning("health: %s", problem)
            return problem
        return "ok"

    def _schema_problem(self, connection: Connection) -> str | None:
        """Why the schema is not the one this release needs (None when it is).

        Missing tables, or an Alembic revision other than the head. A schema without Alembic's
        version table but with every table is one `create_schema` made from the models (tests
        and the benchmark), so it is current.
        """
        tables = set(inspect(connection).get_table_names())
        if not set(Base.metadata.tables) <= tables:
            return "schema missing: run `resetbot db upgrade`"
        if VERSION_TABLE not in tables:
            return None
        if self._head is None:
            self._head = head_revision()
        current = current_revision(connection)
        if current != self._head:
            return (f"schema at revision {current or 'none'}, this release needs {self._head}: "
                    "run `resetbot db upgrade`")
        return None

    def _redis(self) -> str:
        try:
            self.redis.ping()
        except (RedisError, OSError) as error:
            log.warning("health: redis unavailable: %s", type(error).__name__)
            return "unavailable"
        return "ok"


class ResetbotWsgi:
    """Routes `/slack/events` to Bolt (signed requests only), `/healthz`, and 404 for the rest."""

    def __init__(
        self,
        bolt_app: App | None,
        *,
        signing_secret: str | None,
        health: Callable[[], dict[str, str]],
        seen: SeenRequests | None = None,
        clock: Callable[[], float] = time.time,
        about: Callable[[], dict[str, str]] | None = None,
    ) -> None:
        """`about`: what `/healthz` says besides its checks (which Redis server is in use)."""
        if bolt_app is not None and not signing_secret:
            raise ValueError("serving Slack events over HTTP needs the signing secret")
        self._slack = SlackRequestHandler(bolt_app, path=EVENTS_PATH) if bolt_app else None
        # SignatureVerifier also refuses what was signed more than five minutes from now.
        self._verifier = (SignatureVerifier(signing_secret, clock=_CallableClock(clock))
                          if bolt_app and signing_secret else None)
        self._health = health
        self._seen = seen
        self._about = about

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "GET")
        if path == HEALTH_PATH:
            if method not in ("GET", "HEAD"):
                return _answer(start_response, 405, {"error": "use GET"}, [("Allow", "GET")])
            checks = self._health()
            healthy = all(value == "ok" for value in checks.values())
            status = {"status": "ok" if healthy else "unavailable", **checks}
            if self._about is not None:
                status.update(self._about())
            return _answer(start_response, 200 if healthy else 503, status)
        if path == EVENTS_PATH and self._slack is not None:
            if method != "POST":
                return _answer(start_response, 405, {"error": "use POST"}, [("Allow", "POST")])
            return self._slack_request(environ, start_response)
        return _answer(start_response, 404, {"error": "not found"})

    def _slack_request(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        assert self._slack is not None
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return _answer(start_response, 400, {"error": "bad content length"})
        if length < 0 or length > MAX_BODY_BYTES:
            return _answer(start_response, 413, {"error": "request too large"})
        raw = environ["wsgi.input"].read(length) if length else b""
        headers = _signature_headers(environ)
        if headers is None:
            return _refuse_unsigned(start_response, environ)
        body_text = _utf8(raw)
        if body_text is None:
            # SignatureVerifier checks text, and Slack never sends anything but UTF-8.
            log.warning("refused a request whose body is not UTF-8")
            return _answer(start_response, 400,
                           {"error": "malformed request: the body is not UTF-8"})
        assert self._verifier is not None
        if not self._verifier.is_valid(body_text, *headers):
            return _refuse_unsigned(start_response, environ)
        retry = environ.get("HTTP_X_SLACK_RETRY_NUM")
        if self._seen is not None and self._seen.signature(*headers) is Seen.AGAIN:
            if retry:
                log.info("answered a Slack retry of a request already handled, without acting")
                return _answer(start_response, 200, {"ok": True})
            log.warning("refused a replayed request (its signature was used before) from %s",
                        environ.get("REMOTE_ADDR", "?"))
            return _answer(start_response, 401, {"error": "invalid request"})
        problem = _malformed(body_text, environ.get("CONTENT_TYPE"))
        if problem:
            log.warning("refused a signed but malformed request: %s", problem)
            return _answer(start_response, 400, {"error": f"malformed request: {problem}"})
        event = _event_identity(body_text, environ.get("CONTENT_TYPE"))
        if self._seen is not None and event and self._seen.event(*event) is Seen.AGAIN:
            log.info("answered an event delivered again (a Slack retry or a replay) without "
                     "acting")
            return _answer(start_response, 200, {"ok": True})
        # Bolt reads the body again (and checks the signature again): hand it the same bytes.
        environ["wsgi.input"] = io.BytesIO(raw)
        environ["CONTENT_LENGTH"] = str(len(raw))
        return self._slack(environ, start_response)


class _CallableClock(Clock):
    """SignatureVerifier's clock, read from a plain function (ResetbotWsgi's `clock`)."""

    def __init__(self, now: Callable[[], float]) -> None:
        self._now = now

    def now(self) -> float:
        return self._now()


def _signature_headers(environ: WSGIEnvironment) -> tuple[str, str] | None:
    """Slack's timestamp and v0 signature headers, when they have a shape SignatureVerifier can
    check (it would raise on a timestamp that is not a number, or a non-ASCII signature)."""
    timestamp = str(environ.get("HTTP_X_SLACK_REQUEST_TIMESTAMP", ""))
    signature = str(environ.get("HTTP_X_SLACK_SIGNATURE", ""))
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12):
        return None
    if not (signature.isascii() and signature.startswith("v0=")):
        return None
    return timestamp, signature


def _utf8(raw: bytes) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _refuse_unsigned(start_response: StartResponse, environ: WSGIEnvironment) -> list[bytes]:
    log.info("refused a request without a valid Slack signature from %s",
             environ.get("REMOTE_ADDR", "?"))
    return _answer(start_response, 401, {"error": "invalid request"})


def _malformed(body_text: str, content_type: object) -> str | None:
    """Why Bolt could not take this body (None when it can), parsed as Bolt parses it."""
    try:
        body = parse_body(body_text, _media_type(content_type))
    except ValueError:  # json.JSONDecodeError included
        return "the payload is not valid JSON"
    except RecursionError:  # `[[[[...` a few thousand deep: json gives up this way
        return "the payload is nested too deeply"
    if _holds_unstorable_text(body):
        return "the payload holds a NUL character or an unpaired surrogate"
    return payload_problem(body)


def _media_type(content_type: object) -> str | None:
    return str(content_type).split(";")[0].strip() if content_type else None


def _event_identity(body_text: str, content_type: object) -> tuple[str, str] | None:
    """(team, event id) of an Events API callback, the same for each of Slack's retries."""
    body = parse_body(body_text, _media_type(content_type))  # _malformed has parsed it once
    event_id = body.get("event_id")
    if body.get("type") != "event_callback" or not isinstance(event_id, str) or not event_id:
        return None
    team = body.get("team_id")
    return (team if isinstance(team, str) else "", event_id)


def _holds_unstorable_text(body: object) -> bool:
    """NUL characters and unpaired surrogates: Slack never sends them, and PostgreSQL, SQLite
    and every UTF-8 encoder refuse them, which would turn a search or a name into a 500."""
    waiting = [body]
    while waiting:
        value = waiting.pop()
        if isinstance(value, str):
            if "\x00" in value or not _utf8_encodable(value):
                return True
        elif isinstance(value, dict):
            waiting.extend(value.keys())
            waiting.extend(value.values())
        elif isinstance(value, list):
            waiting.extend(value)
    return False


def _utf8_encodable(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _answer(
    start_response: StartResponse,
    status: int,
    body: dict[str, Any],
    headers: list[tuple[str, str]] | None = None,
) -> list[bytes]:
    data = json.dumps(body).encode()
    reason = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
              405: "Method Not Allowed", 413: "Payload Too Large",
              503: "Service Unavailable"}[status]
    start_response(f"{status} {reason}", [
        ("Content-Type", "application/json; charset=utf-8"),
        ("Content-Length", str(len(data))),
        *(headers or []),
    ])
    return [data]


def make_wsgi_app(
    bolt_app: App | None,
    *,
    signing_secret: str | None,
    sessions: sessionmaker[Session],
    redis: Redis,
    namespace: str,
    directory: Directory | None = None,
    embedded_redis: bool | None = None,
) -> ResetbotWsgi:
    """The WSGI app `serve` runs (and tests start): Slack events when `bolt_app` is given.

    `namespace` (RESET_QUEUE) keeps the signatures this app has seen apart in a shared Redis.
    `directory`: a directory in a database of its own, which `/healthz` reports apart.
    `embedded_redis` (True or False, as `serve` knows): `/healthz` also says which Redis server
    is in use (`redis_server`: its binary and version, as the server says itself).
    """
    return ResetbotWsgi(bolt_app, signing_secret=signing_secret,
                        health=HealthCheck(sessions, redis, directory),
                        seen=SeenRequests(redis, namespace) if bolt_app else None,
                        about=None if embedded_redis is None else redis_server_about(
                            redis, embedded=embedded_redis))


def redis_server_about(redis: Redis, *, embedded: bool) -> Callable[[], dict[str, str]]:
    """`{"redis_server": "/usr/bin/redis-server 7.0.15 (embedded)"}`; nothing while Redis does
    not answer (the `redis` check says so)."""

    def about() -> dict[str, str]:
        try:
            said = server_in_use(redis)
        except (RedisError, OSError):
            return {}
        return {"redis_server": said + (" (embedded)" if embedded else "")}

    return about
