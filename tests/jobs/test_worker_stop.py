"""A worker asked to stop while idle stops, even when RQ's StopRequested gets lost on its way."""

from __future__ import annotations

import signal
import threading

import pytest
from redis import Redis
from rq.exceptions import StopRequested
from sqlalchemy import Engine

from core.settings import Settings
from jobs.worker import STOP_CHECK_SECONDS, ResetWorker
from tests.support.engine import build_context


def test_an_idle_worker_whose_stop_was_swallowed_is_signalled_again(
    settings: Settings, redis_conn: Redis, engine: Engine
) -> None:
    worker = ResetWorker(build_context(settings, redis_conn, engine), reaper=False)
    signalled = threading.Event()
    # RQ's handler swaps in its own for SIGINT/SIGTERM: this test's process keeps its own.
    kept = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: signalled.set())
    try:
        # Idle, RQ raises StopRequested from the handler, wherever the main thread is; caught
        # here as logging's `emit` catches it when the signal lands there: the worker goes on.
        with pytest.raises(StopRequested):
            worker.request_stop(signal.SIGUSR1, None)
        assert signalled.wait(STOP_CHECK_SECONDS * 5), "the signal was not sent again"
    finally:
        worker.teardown()
        signal.signal(signal.SIGUSR1, previous)
        for sig, handler in kept.items():
            signal.signal(sig, handler)
