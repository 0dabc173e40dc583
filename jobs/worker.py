"""The resetbot worker: an RQ SimpleWorker that carries a WorkerContext and runs the reaper.

No fork per job: the database pool, the password hasher and the settings stay warm, and the
context is set around each job so job functions need only JSON ids as arguments.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import sys
import threading
import time
from datetime import timedelta
from types import FrameType
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from rq import SimpleWorker
from rq.defaults import DEFAULT_LOGGING_DATE_FORMAT, DEFAULT_LOGGING_FORMAT
from rq.exceptions import StopRequested
from rq.utils import now as rq_now
from rq.worker import DequeueStrategy, WorkerStatus

from core.settings import Settings
from jobs.connection import plain_client
from jobs.context import WorkerContext, use_context
from jobs.reaper import reap

logger = logging.getLogger(__name__)

#: Seconds between pings while a worker that lost Redis waits for it to come back.
REDIS_RECHECK_SECONDS = 1.0
#: The GIL switch interval of a worker process (Python's default is 5 ms).
GIL_SWITCH_SECONDS = 0.0005
#: Seconds an idle worker asked to stop may take to leave its loop before it is asked again.
STOP_CHECK_SECONDS = 2.0
#: Seconds before a stop that was put off (the signal landed inside logging) is asked again.
DEFERRED_STOP_SECONDS = 0.05
#: The share of the reaper's interval one worker's pass holds the turn for (jobs.worker
#: ReaperThread._my_turn): a little less than the interval, so the next pass is never missed.
REAPER_TURN = 0.9
#: Seconds RQ's scheduler process has to stop after SIGTERM before it is killed.
SCHEDULER_STOP_SECONDS = 10.0
#: Where logging's code is: a signal handler raises nowhere inside it.
_LOGGING_DIR = os.path.dirname(logging.__file__) + os.sep


def _inside_logging(frame: FrameType | None) -> bool:
    """Whether the interrupted main thread is inside logging (any frame of its stack)."""
    while frame is not None:
        if frame.f_code.co_filename.startswith(_LOGGING_DIR):
            return True
        frame = frame.f_back
    return False


def tune_worker_process() -> StartupStop:
    """Make this process a worker: SIGINT/SIGTERM stop it cleanly at any moment, and the GIL
    goes back to hashing fast. Returns what the signals heard before RQ took them over: hand
    it to `run_worker`.

    A hash releases the GIL; when it returns, the hashing thread needs the GIL back while the
    helper thread may be busy rendering mails. With the default 5 ms interval the hashing
    thread can sit idle that long after every hash; at 0.5 ms the core keeps hashing.
    """
    stop = StartupStop()
    stop.install()
    sys.setswitchinterval(GIL_SWITCH_SECONDS)
    return stop


class StartupStop:
    """SIGINT/SIGTERM while a worker starts, before RQ takes the signals over.

    Python's default for SIGTERM is to die on the spot: no `finally`, so neither the embedded
    Redis (when this process is its last client) nor anything else would be stopped. So the
    handler raises KeyboardInterrupt, as Ctrl-C does, and a worker stuck starting (a directory
    that does not answer) stops at once. But an exception raised in a weakref callback or a
    `__del__` (SQLAlchemy's, as the garbage collector runs) is printed and dropped
    ("Exception ignored in ..."), and inside logging the handler must not raise at all (see
    ResetWorker): so the signal is also remembered, and the worker stops before its first job.
    """

    def __init__(self) -> None:
        self._heard = threading.Event()
        self._pid = os.getpid()

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self.handle)

    def handle(self, signum: int, frame: FrameType | None) -> None:
        _end_if_forked_from(self._pid)
        self._heard.set()
        if not _inside_logging(frame):
            raise KeyboardInterrupt

    @property
    def heard(self) -> bool:
        return self._heard.is_set()


def _end_if_forked_from(worker_pid: int) -> None:
    """In a signal handler of the worker `worker_pid`: when this process is not that worker
    but RQ's scheduler, forked from it before the scheduler put its own handlers in place, end
    it now. Nothing there is worth finishing yet, and raising could be swallowed (a SIGTERM
    from the worker's `stop_scheduler` landing in the scheduler's first log line), leaving the
    worker waiting for it for ever; the worker releases the scheduler's locks."""
    if os.getpid() != worker_pid:
        os._exit(0)


class ResetWorker(SimpleWorker):
    """A worker on the reset queue; `reaper=True` also runs the periodic reaper in a thread."""

    #: Seconds `stop_scheduler` waits for the scheduler process after SIGTERM before SIGKILL.
    scheduler_stop_seconds = SCHEDULER_STOP_SECONDS

    def __init__(self, context: WorkerContext, *, reaper: bool = True,
                 startup_stop: StartupStop | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("connection", context.redis)
        kwargs.setdefault("serializer", context.queue.serializer)
        super().__init__([context.queue], **kwargs)
        self.context = context
        self.run_reaper = reaper
        self.startup_stop = startup_stop
        #: Not RQ's `pid`, which is None for a worker not prepared for work.
        self._own_pid = os.getpid()
        self._reaper: ReaperThread | None = None
        #: Set by SIGINT/SIGTERM (RQ's warm shutdown); any other end of `work` is an accident.
        self.stop_requested = False
        #: Set when RQ's loop has ended (its teardown begins).
        self._loop_left = threading.Event()
        #: What the signal handlers would have logged (a SimpleQueue may be put to from one).
        self._heard: queue.SimpleQueue[str] = queue.SimpleQueue()
        #: A stop a handler put off (the signal landed inside logging): asked again shortly.
        self._deferred = threading.Event()

    # ---- stopping ----------------------------------------------------------------------------
    #
    # RQ's own handlers log, touch Redis and raise wherever the main thread happens to be. A
    # signal lands between any two bytecodes: inside logging's `emit` a StopRequested is
    # swallowed (StreamHandler catches Exception), and raised between a handler lock's acquire
    # and its `try` it leaves the lock held, so the next line any other thread logs (the
    # reaper) waits for ever; a Redis command from the handler can wait on the connection
    # pool's lock that the interrupted code holds. So the handlers here only set flags and
    # raise where that is safe; the stop thread (an ordinary thread) logs, talks to Redis and
    # signals again.

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        """SIGINT/SIGTERM: RQ's warm shutdown, done the way a signal handler may."""
        _end_if_forked_from(self._own_pid)  # RQ's scheduler, restarted after RQ's handlers
        first = not self.stop_requested
        self.stop_requested = True
        self._shutdown_requested_date = rq_now()
        signal.signal(signal.SIGINT, self.request_force_stop)
        signal.signal(signal.SIGTERM, self.request_force_stop)
        if first:
            self._heard.put(f"warm shut down requested (signal {signum})")
            threading.Thread(target=self._see_stop_through, args=(signum,),
                             name="resetbot-stop-check", daemon=True).start()
        self._stop_unless_busy(frame)

    def request_force_stop(self, signum: int, frame: FrameType | None) -> None:
        """A signal after the first. Busy: RQ's cold shutdown (the job in hand is cut short),
        unless it follows the first within a second (RQ's guard against one press sent
        twice). Idle: nothing to cut short, the stop goes on as the first one asked."""
        _end_if_forked_from(self._own_pid)
        if not self._stop_requested:
            self._stop_unless_busy(frame)
            return
        asked = self._shutdown_requested_date
        if asked is not None and rq_now() - asked < timedelta(seconds=1):
            return
        if _inside_logging(frame):
            self._deferred.set()
            return
        self._heard.put("cold shut down: the job in hand is cut short")
        raise SystemExit()

    def _stop_unless_busy(self, frame: FrameType | None) -> None:
        """Idle: leave RQ's loop now (StopRequested), unless the main thread is inside logging,
        where the stop thread asks again a moment later. Busy: after the job in hand."""
        if self.get_state() == WorkerStatus.BUSY:
            self._stop_requested = True  # RQ's loop ends after the job; the rest is the thread's
            return
        if _inside_logging(frame):
            self._deferred.set()
            return
        raise StopRequested()

    def _see_stop_through(self, signum: int) -> None:
        """Until RQ's loop has ended: say what the handlers heard, do the Redis part of a busy
        worker's warm shutdown, and signal the main thread again when a stop was put off
        (it landed inside logging) or went missing.

        Missing: RQ stops an idle worker by raising StopRequested, wherever the main thread is;
        landing inside an `except Exception` it is swallowed, and the worker would wait for
        jobs again (up to RQ's dequeue timeout, minutes). The next signal ends the loop. A busy
        worker (`_stop_requested`) is left to finish its job: that is the warm shutdown.
        """
        busy_done = False
        last_signal = time.monotonic()
        while not self._loop_left.wait(DEFERRED_STOP_SECONDS):
            self._say_what_was_heard()
            if self._stop_requested and not busy_done:
                busy_done = True
                self._stop_after_the_job()
            if self._deferred.is_set():
                self._deferred.clear()
                last_signal = time.monotonic()
                signal.pthread_kill(threading.main_thread().ident or 0, signum)
            elif not self._stop_requested and time.monotonic() - last_signal >= STOP_CHECK_SECONDS:
                logger.warning("the worker did not stop on signal %s; signalling it again",
                               signum)
                last_signal = time.monotonic()
                signal.pthread_kill(threading.main_thread().ident or 0, signum)
        self._say_what_was_heard()

    def _stop_after_the_job(self) -> None:
        """What RQ's handler does for a busy worker, from this thread: the stop is recorded
        in Redis and the scheduler stopped; the job in hand finishes."""
        logger.info("stopping after the job in hand; signal again for a cold shut down")
        try:
            self.set_shutdown_requested_date()  # type: ignore[no-untyped-call]
        except RedisError as error:
            logger.warning("could not record the stop in Redis: %s", type(error).__name__)
        if self.scheduler:
            self.stop_scheduler()

    def _install_signal_handlers(self) -> None:
        """RQ's handlers, in place just before its loop; a stop heard while the worker was
        starting (and perhaps swallowed, see StartupStop) ends the loop before its first job."""
        super()._install_signal_handlers()  # type: ignore[no-untyped-call]
        if self._stopped_while_starting:
            logger.info("worker %s: stopping, as asked while it started", self.name)
            self.stop_requested = True
            self._stop_requested = True

    @property
    def _stopped_while_starting(self) -> bool:
        return self.startup_stop is not None and self.startup_stop.heard

    def stop_scheduler(self) -> None:
        """As RQ's (SIGTERM, then wait for the process), but a scheduler that does not stop in
        `scheduler_stop_seconds` is killed instead of waited for without end, and its locks
        released here. One that stopped released them itself: no Redis call here, whose
        server may be going away with this worker (the embedded one)."""
        scheduler = self.scheduler
        process = scheduler._process if scheduler else None
        if scheduler is None or process is None or process.pid is None:
            return
        with contextlib.suppress(OSError):
            os.kill(process.pid, signal.SIGTERM)
        process.join(self.scheduler_stop_seconds)
        if process.is_alive():
            logger.warning("RQ's scheduler (pid %s) did not stop in %s s; killing it",
                           process.pid, self.scheduler_stop_seconds)
            process.kill()
            process.join()
            try:
                scheduler.release_locks()
            except RedisError as error:
                logger.warning("could not release the killed scheduler's locks: %s",
                               type(error).__name__)

    def _say_what_was_heard(self) -> None:
        while not self._heard.empty():
            logger.info("worker %s: %s", self.name, self._heard.get_nowait())

    def teardown(self) -> None:
        self._loop_left.set()
        super().teardown()  # type: ignore[no-untyped-call]

    def perform_job(self, job: Any, queue: Any, execution: Any) -> bool:
        with use_context(self.context):
            return bool(super().perform_job(job, queue, execution))

    def work(
        self,
        burst: bool = False,
        logging_level: str | None = None,
        date_format: str = DEFAULT_LOGGING_DATE_FORMAT,
        log_format: str = DEFAULT_LOGGING_FORMAT,
        max_jobs: int | None = None,
        max_idle_time: int | None = None,
        with_scheduler: bool = False,
        dequeue_strategy: DequeueStrategy = DequeueStrategy.DEFAULT,
    ) -> bool:
        """As RQ's `work`; a long-running (not burst) worker also reaps every reaper_interval."""
        if self._stopped_while_starting:
            self.stop_requested = True
            return False
        if self.run_reaper and not burst:
            self._reaper = ReaperThread(self.context)
            self._reaper.start()
        handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            return super().work(
                burst=burst,
                logging_level=logging_level,
                date_format=date_format,
                log_format=log_format,
                max_jobs=max_jobs,
                max_idle_time=max_idle_time,
                with_scheduler=with_scheduler,
                dequeue_strategy=dequeue_strategy,
            )
        finally:
            self._loop_left.set()
            self._release_scheduler()
            for sig, handler in handlers.items():  # RQ leaves its handlers, bound to this worker
                if handler is not None:
                    signal.signal(sig, handler)
            if self._reaper is not None:
                self._reaper.stop()
                self._reaper = None

    def _release_scheduler(self) -> None:
        """Stop RQ's scheduler process and close its client, whatever ended `work`.

        RQ's teardown stops the process, but a signal arriving while `work` starts (before
        RQ's handlers are in place) skips it. And the scheduler's client, with a pool of its
        own, is made even when another worker holds the scheduler lock: left open, it counts as
        another user of the embedded Redis, which then outlives its last worker.
        """
        scheduler = self.scheduler
        if scheduler is None:
            return
        process = scheduler._process
        if process is not None and process.is_alive():
            self.stop_scheduler()
        if scheduler._connection is not None:
            # Its pool is its own but not closed by `close()` (RQ hands the client a pool's
            # settings, not a pool): disconnected here, or a burst worker's scheduler client
            # stays connected and the embedded redis-server outlives the last worker.
            scheduler._connection.connection_pool.disconnect()
            scheduler._connection.close()
            scheduler._connection = None


class ReaperThread(threading.Thread):
    """Runs `reap` every `settings.reaper_interval` seconds until stopped."""

    def __init__(self, context: WorkerContext) -> None:
        super().__init__(name="resetbot-reaper", daemon=True)
        self.context = context
        self._stop_event = threading.Event()

    def run(self) -> None:
        interval = self.context.settings.reaper_interval
        while not self._stop_event.wait(interval):
            self.reap_once()

    def reap_once(self) -> None:
        if not self._my_turn():
            return
        try:
            report = reap(self.context)
        except Exception:  # a DB or Redis hiccup must not kill the thread: logged, tried again
            logger.exception(
                "the reaper failed; trying again in %s s", self.context.settings.reaper_interval
            )
            return
        if report.changed:
            logger.info("reaper: %s", report)

    def _my_turn(self) -> bool:
        """Whether this worker's pass is the one due: of all the workers on the queue, the
        first to ask within REAPER_TURN of an interval reaps; the others skip that pass.

        Each pass reads every running task and lists the queue's jobs: with one pass per
        interval per worker, N workers would spend N times the database's and Redis's time
        (on the cores they hash on) for the same outcome. A worker that dies holding the turn
        holds it less than an interval. Without Redis, each worker reaps as before.
        """
        interval = self.context.settings.reaper_interval
        key = f"resetbot:{self.context.settings.reset_queue}:reaper-turn"
        try:
            return bool(self.context.redis.set(
                key, self.context.owner, nx=True, px=max(1, int(interval * REAPER_TURN * 1000))))
        except RedisError:
            return True

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=self.context.settings.reaper_interval + 5)


def run_worker(
    settings: Settings,
    redis: Redis,
    *,
    burst: bool = False,
    with_scheduler: bool = True,
    context: WorkerContext | None = None,
    startup_stop: StartupStop | None = None,
) -> bool:
    """What `resetbot worker` runs: a ResetWorker with RQ's scheduler (for mail retries).
    `startup_stop` is what `tune_worker_process` returned, in a process it tuned."""
    own_context = context is None
    client = plain_client(redis) if own_context else redis
    context = context if context is not None else WorkerContext.build(settings, client)
    try:
        if burst:
            # A burst worker exits when the queue is empty; reap once first so work lost by a
            # dead worker or an emptied Redis is put back on the queue for it.
            reap(context)
        worked = False
        while True:
            worker = ResetWorker(context, startup_stop=startup_stop)
            try:
                worked = worker.work(burst=burst, with_scheduler=with_scheduler) or worked
            except RedisError:
                # RQ's own bookkeeping as it stops (registering its death) can fail the same way.
                if burst or worker.stop_requested:
                    raise
            if burst or worker.stop_requested:
                return worked
            # RQ leaves its loop when Redis drops while it records a job's end. The database
            # holds every outcome and the reaper re-enqueues what Redis lost, so a worker must
            # carry on once Redis is back, not exit (with status 0, which no supervisor restarts).
            logger.error("the worker lost Redis and stopped; starting again when Redis answers")
            if not wait_for_redis(context.redis):
                return worked
    finally:
        if own_context:
            context.close()
            if client is not redis:
                client.close()


def wait_for_redis(redis: Redis, interval: float = REDIS_RECHECK_SECONDS) -> bool:
    """Ping until Redis answers (True) or SIGINT/SIGTERM asks to stop (False)."""
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.is_set():
            try:
                if redis.ping():
                    return True
            except (RedisError, OSError):
                pass
            stop.wait(interval)
        return False
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
