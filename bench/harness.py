"""The benchmark's moving parts: a stack of loopback services, worker processes, one timed task.

Workers are separate processes started from a clean working directory with an explicit
environment, exactly as an operator would start them on any host (`resetbot worker`).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from redis import Redis
from sqlalchemy import Engine, delete, select
from sqlalchemy.orm import Session, sessionmaker

from bench.measure import ForeignLoad, PeakRss
from bench.services import (
    SmtpSink,
    mariadb_database,
    postgres_database,
    private_redis,
    sqlite_database,
    wait_until,
)
from bench.synth import populate
from bench.worker_main import read_hash_stats
from core.db import make_engine, make_sessionmaker
from core.directory import Directory
from core.models import FOLLOW_UP_STATES, ResetItem, ResetTask, Scope, TaskStatus
from core.schema import create_schema
from core.settings import Settings
from core.tasks import ResetRequest, consume_pending, create_pending

REPO = Path(__file__).resolve().parent.parent
QUEUE = "resetbot-bench"
# A fixed key, for the benchmark only.
SECRET_KEY = "4634b3fdd4094496a06f3c4b2fdf7c1c0dcc8153580ed52c41d321cded4b05c5"
BENCH_CHANNEL = "C0BENCH01"
BENCH_ADMIN = "UBENCHADMIN"
#: A default password that passes the default policy and contains no synthetic username.
DEFAULT_PASSWORD = "Quiet-Harbour-7419"


@dataclass
class HashConfig:
    scheme: str = "pbkdf2_sha256"
    rounds: int | None = None  # None: passlib's default for the scheme

    @property
    def label(self) -> str:
        return f"{self.scheme}" + (f"/{self.rounds}" if self.rounds else "/default")


class Stack:
    """Private Redis, SMTP sink and Slack stand-in for the whole run; databases come and go."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._exit = ExitStack()
        self.redis_url = ""
        self.smtp: SmtpSink | None = None
        self.slack: Any = None  # tests.support.slack_standin.SlackStandIn when available

    def __enter__(self) -> Stack:
        self.redis_url = self._exit.enter_context(private_redis())
        self.smtp = self._exit.enter_context(SmtpSink())
        self.slack = _start_slack_standin()
        if self.slack is not None:
            self._exit.callback(self.slack.stop)
        return self

    def __exit__(self, *exc: object) -> None:
        self._exit.close()

    def redis(self) -> Redis:
        return Redis.from_url(self.redis_url)

    def environment(
        self, database_url: str, hashing: HashConfig, extra: dict[str, str] | None = None
    ) -> dict[str, str]:
        """What a worker (or the app) on another host would be given: settings as env vars."""
        assert self.smtp is not None
        env = {
            "DATABASE_URL": database_url,
            "REDIS_URL": self.redis_url,
            "RESET_QUEUE": QUEUE,
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(self.smtp.port),
            "SMTP_SECURITY": "none",
            "MAIL_FROM": "resetbot@library.example.org",
            "PORTAL_URL": "https://portal.library.example.org/",
            "PASSWORD_SCHEMES": hashing.scheme,
            # pbkdf2_sha256 at passlib's default cost, so that resetbot's overhead shows.
            "PASSWORD_ALLOW_WEAK_ROUNDS": "true",
            "RESET_SECRET_KEY": SECRET_KEY,
            "RESET_ADMINS": BENCH_ADMIN,
        }
        if hashing.rounds is not None:
            env["PASSWORD_ROUNDS"] = str(hashing.rounds)
        if self.slack is not None:
            env["SLACK_BOT_TOKEN"] = self.slack.token
            env["SLACK_API_URL"] = self.slack.api_url
            env["SLACK_SIGNING_SECRET"] = "bench-signing-secret"
        env.update(extra or {})
        return env

    def slack_counts(self, since: float = 0.0) -> dict[str, int]:
        """Web API calls per method made at or after `since` (epoch seconds)."""
        if self.slack is None:
            return {}
        counts: dict[str, int] = {}
        for call in self.slack.calls():
            if call.at >= since:
                counts[call.method] = counts.get(call.method, 0) + 1
        return counts

    def last_slack_call_at(self) -> float | None:
        if self.slack is None:
            return None
        calls = self.slack.calls()
        return float(calls[-1].at) if calls else None


def _start_slack_standin() -> Any:
    try:
        from tests.support.slack_standin import SlackStandIn
    except ImportError:
        return None
    return SlackStandIn().start()


def process_environment(env: dict[str, str]) -> dict[str, str]:
    """The child's full environment: ours minus any resetbot settings, plus `env`."""
    inherited = {
        key: value for key, value in os.environ.items()
        if key in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV", "TZ")
    }
    inherited["PYTHONPATH"] = str(REPO)
    inherited["PYTHONUNBUFFERED"] = "1"
    return {**inherited, **env}


@dataclass
class Database:
    """A database with the schema and a synthetic directory of `size` users."""

    url: str
    engine: Engine
    sessions: sessionmaker[Session]
    directory: Directory
    size: int
    populate_seconds: float

    @property
    def kind(self) -> str:
        name = self.engine.dialect.name
        return "mariadb" if name == "mysql" else name

    def forget_tasks(self) -> None:
        """Drop the previous tasks' items so every timed task starts from the same table size."""
        with self.sessions() as session:
            session.execute(delete(ResetItem))
            session.commit()


@contextmanager
def database(kind: str, size: int, settings: Settings) -> Iterator[Database]:
    opener = {"postgresql": postgres_database, "mariadb": mariadb_database}.get(
        kind, sqlite_database
    )
    with opener() as url:
        engine = make_engine(url)
        directory = Directory.own_table(engine, settings.directory)
        try:
            create_schema(engine, directory)
            seconds = populate(engine, directory, size)
            yield Database(url, engine, make_sessionmaker(engine), directory, size, seconds)
        finally:
            engine.dispose()


def cli_has(*words: str) -> bool:
    """Whether the installed `resetbot` CLI knows `resetbot <words> --help` (asked in-process)."""
    import contextlib
    import io

    if not Path(sys.executable).with_name("resetbot").exists():
        return False
    try:
        from bot.cli import main as cli_main
    except ImportError:
        return False
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            cli_main([*words, "--help"])
        except SystemExit as done:
            return done.code in (0, None)
    return False


@functools.cache
def worker_command() -> list[str]:
    """`resetbot worker`, through bench.worker_main so the time spent hashing can be read."""
    return [sys.executable, "-m", "bench.worker_main"]


class WorkerPool:
    """N worker processes with the given environment; started, awaited, stopped."""

    def __init__(self, count: int, env: dict[str, str], redis: Redis, logdir: Path,
                 command: list[str] | None = None) -> None:
        self.count = count
        self.env = process_environment(env)
        self.redis = redis
        self.logdir = logdir
        self.command = command or worker_command()
        self.processes: list[subprocess.Popen[bytes]] = []
        self._cwd = tempfile.mkdtemp(prefix="bench-worker-")
        self.hash_stats = Path(self._cwd) / "hash-stats"
        self.hash_stats.mkdir()
        self.env["BENCH_HASH_STATS"] = str(self.hash_stats)

    def pids(self) -> list[int]:
        return [p.pid for p in self.processes if p.poll() is None]

    def __enter__(self) -> WorkerPool:
        from rq import Worker

        for index in range(self.count):
            name = f"worker-{time.monotonic_ns()}-{index}.log"
            log = open(self.logdir / name, "wb")
            self.processes.append(
                subprocess.Popen(
                    self.command, env=self.env, cwd=self._cwd, stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
            log.close()

        def registered() -> bool:
            dead = [p for p in self.processes if p.poll() is not None]
            if dead:
                raise RuntimeError(f"a worker exited with {dead[0].returncode}; see {self.logdir}")
            return len(Worker.all(connection=self.redis)) >= self.count

        wait_until(registered, 60, what=f"{self.count} worker(s) to register")
        return self

    def __exit__(self, *exc: object) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for process in self.processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(self._cwd, ignore_errors=True)

    def cpu_seconds(self) -> float:
        import psutil

        total = 0.0
        for pid in self.pids():
            try:
                times = psutil.Process(pid).cpu_times()
                total += times.user + times.system
            except psutil.NoSuchProcess:
                continue
        return total


def measure_hash(env: dict[str, str], samples: int) -> dict[str, Any]:
    """One hash's median time in a fresh process with the workers' settings."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.hashfloor", str(samples)],
        env=process_environment(env), capture_output=True, check=True, timeout=600,
        cwd=tempfile.gettempdir(),
    )
    result: dict[str, Any] = json.loads(out.stdout.decode().strip().splitlines()[-1])
    return result


def measure_parallel_hash(env: dict[str, str], processes: int, samples: int) -> float:
    """One hash's median time while `processes` worker-like processes hash at once.

    With N workers the floor assumes N hashes run side by side as fast as one alone; this shows
    how far the machine itself falls short of that (shared caches, turbo, the hypervisor).
    """
    started = [
        subprocess.Popen(
            [sys.executable, "-m", "bench.hashfloor", str(samples)],
            env=process_environment(env), stdout=subprocess.PIPE, cwd=tempfile.gettempdir(),
        )
        for _ in range(processes)
    ]
    medians = []
    for process in started:
        out, _ = process.communicate(timeout=600)
        medians.append(float(json.loads(out.decode().strip().splitlines()[-1])["median_s"]))
    return sum(medians) / len(medians)


@dataclass
class TaskRun:
    task_id: int
    users: int
    mode: str
    workers: int
    confirm_seconds: float
    wall_seconds: float
    db_seconds: float
    status: str
    counts: dict[str, int]
    slack_calls: dict[str, int]
    mails: int
    leased_by: dict[str, int] = field(default_factory=dict)
    #: Hash calls in the workers during the task, their wall time and the hashing thread's CPU.
    hashes: int = 0
    hash_wall_seconds: float = 0.0
    hash_cpu_seconds: float = 0.0
    worker_cpu_seconds: float = 0.0
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    foreign_load: float = 0.0
    cpu_by_role: dict[str, float] = field(default_factory=dict)

    @property
    def slack_total(self) -> int:
        return sum(self.slack_calls.values())


class ConfirmsTasks(Protocol):
    name: str

    def confirm(self, db: Database, request: ResetRequest) -> tuple[int, float, float]: ...


class Confirmer:
    """Creates and confirms a task as the Slack confirm does: park the request, consume it once,
    enqueue its plan. The app-over-HTTP confirmer replaces this when the app is running."""

    name = "core"

    def __init__(self, settings: Settings, redis: Redis) -> None:
        self.settings = settings
        self.redis = redis

    def confirm(self, db: Database, request: ResetRequest) -> tuple[int, float, float]:
        """(task id, wall-clock start, seconds until the confirm answered)."""
        from jobs.queueing import enqueue_task, make_queue

        settings = replace(self.settings, database_url=db.url)
        with db.sessions() as session:
            pending = create_pending(session, settings, request)
            session.commit()
            pending_id = pending.id
        queue = make_queue(settings, self.redis)
        started_wall = time.time()
        started = time.perf_counter()
        with db.sessions() as session:
            task = consume_pending(session, pending_id, request.requester)
            session.commit()
            task_id = task.id
        enqueue_task(queue, task_id)
        return task_id, started_wall, time.perf_counter() - started


def bench_request(
    mode: str, scope: Scope = Scope.ALL, selection: tuple[str, ...] = ()
) -> ResetRequest:
    return ResetRequest(
        requester=BENCH_ADMIN,
        requester_name="Bench Admin",
        scope=scope,
        selection=selection,
        default_password=DEFAULT_PASSWORD if mode == "default" else None,
        require_change=True,
        slack_channel=BENCH_CHANNEL,
    )


def _epoch(moment: datetime | None) -> float | None:
    if moment is None:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def run_task(
    stack: Stack,
    db: Database,
    confirmer: ConfirmsTasks,
    mode: str,
    pool: WorkerPool,
    *,
    timeout: float,
    rss: PeakRss | None = None,
) -> TaskRun:
    """One whole task, confirm to final summary, with the pool's workers doing everything."""
    from sqlalchemy import func

    db.forget_tasks()
    assert stack.smtp is not None
    stack.smtp.reset()
    if stack.slack is not None:
        stack.slack.clear_calls()
    cpu_before = pool.cpu_seconds()
    foreign = ForeignLoad(db.url.rsplit("/", 1)[-1] if db.kind == "postgresql" else None)
    foreign.start()
    hashes_before = read_hash_stats(pool.hash_stats)
    task_id, started_wall, confirm_seconds = confirmer.confirm(db, bench_request(mode))

    reporting = stack.slack is not None

    def finished() -> bool:
        """Final in the database and, with Slack, the summary (and follow-up CSV) posted."""
        with db.sessions() as session:
            task = session.get(ResetTask, task_id)
            if task is None or not TaskStatus(task.status).is_final:
                return False
            if not reporting:
                return True
            follow_ups = session.scalar(
                select(func.count()).where(
                    ResetItem.task_id == task_id,
                    ResetItem.state.in_([s.value for s in FOLLOW_UP_STATES]),
                )
            )
            if not task.summary_posted:
                return False
        # The reporter marks the CSV posted *before* it builds and uploads it: the upload's
        # completion on the stand-in is what says the task centre has told everything.
        return not follow_ups or stack.slack_counts(since=started_wall).get(
            "files.completeUploadExternal", 0
        ) > 0

    # Polled gently: the end time comes from the recorded timestamps, not from the poll.
    wait_until(finished, timeout, interval=0.5, what=f"task {task_id} to finish")
    with db.sessions() as session:
        task = session.get(ResetTask, task_id)
        assert task is not None
        finished_at = _epoch(task.finished_at) or time.time()
        status, total = task.status, task.total
    end = finished_at
    if stack.slack is not None:
        # The summary and CSV are marked posted around their calls: let the last call land,
        # then take its time as the end.
        _wait_quiet(stack, quiet=0.3, timeout=60)
        last = stack.last_slack_call_at()
        end = max(end, last or end)
    cpu = pool.cpu_seconds() - cpu_before
    foreign_share, cpu_by_role = foreign.stop()
    hashes_after = read_hash_stats(pool.hash_stats)
    with db.sessions() as session:
        counts = dict(
            session.execute(
                select(ResetItem.state, func.count())
                .where(ResetItem.task_id == task_id)
                .group_by(ResetItem.state)
            ).all()
        )
        leased = dict(
            session.execute(
                select(ResetItem.leased_by, func.count())
                .where(ResetItem.task_id == task_id)
                .group_by(ResetItem.leased_by)
            ).all()
        )
    return TaskRun(
        task_id=task_id,
        users=int(total),
        mode=mode,
        workers=pool.count,
        confirm_seconds=confirm_seconds,
        wall_seconds=end - started_wall,
        db_seconds=finished_at - started_wall,
        status=str(status),
        counts={str(k): int(v) for k, v in counts.items()},
        slack_calls=stack.slack_counts(since=started_wall),
        mails=stack.smtp.messages,
        leased_by={str(k): int(v) for k, v in leased.items()},
        worker_cpu_seconds=cpu,
        peak_rss_mb=rss.peak_mb() if rss is not None else {},
        foreign_load=foreign_share,
        cpu_by_role=cpu_by_role,
        hashes=hashes_after[0] - hashes_before[0],
        hash_wall_seconds=hashes_after[1] - hashes_before[1],
        hash_cpu_seconds=hashes_after[2] - hashes_before[2],
    )


def _wait_quiet(stack: Stack, quiet: float, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        last = stack.last_slack_call_at()
        if last is None or time.time() - last >= quiet:
            return
        time.sleep(0.1)


def first_user_with_email(db: Database) -> int:
    c = db.directory.table.c
    with db.sessions() as session:
        found = session.scalar(
            select(c.id).where(c.email.is_not(None), c.email != "").order_by(c.id).limit(1)
        )
    assert found is not None, "the synthetic directory has users with an address"
    return int(found)


def wait_task_told(stack: Stack, db: Database, task_id: int, timeout: float) -> ResetTask:
    """Until the task is final and its Slack thread has said so (the worker is idle again)."""

    def told() -> bool:
        with db.sessions() as session:
            task = session.get(ResetTask, task_id)
            if task is None or not TaskStatus(task.status).is_final:
                return False
            return stack.slack is None or bool(task.summary_posted)

    wait_until(told, timeout, interval=0.05, what=f"task {task_id} to be told")
    _wait_quiet(stack, quiet=0.3, timeout=30)
    with db.sessions() as session:
        task = session.get(ResetTask, task_id)
        assert task is not None
        session.expunge(task)
        return task


def one_user_reset(
    stack: Stack, db: Database, confirmer: ConfirmsTasks, user_id: int, timeout: float = 60
) -> dict[str, Any]:
    """One e-mailed reset of one user: from the confirm sent to the mail accepted by the sink.

    Also where that time went, from the timestamps the app, the worker, the sink and the Slack
    stand-in wrote: the confirm's answer, the task's start, its first Slack call and the mail.
    """
    assert stack.smtp is not None
    before = stack.smtp.messages
    task_id, started_wall, confirm_seconds = confirmer.confirm(
        db, bench_request("generated", Scope.SELECTED_ONLY, (str(user_id),))
    )
    sink = stack.smtp
    wait_until(lambda: sink.messages > before, timeout, interval=0.002,
               what=f"the mail of task {task_id}")
    mailed = sink.last_accepted
    assert mailed is not None
    task = wait_task_told(stack, db, task_id, timeout)
    first_slack, before_mail = None, 0
    if stack.slack is not None:
        calls = [call.at for call in stack.slack.calls() if call.at >= started_wall]
        first_slack = min(calls) if calls else None
        # Each one is a round trip to Slack (0.1-0.5 s from a library's server, not the
        # stand-in's milliseconds) that the mail waited for.
        before_mail = sum(1 for at in calls if at < mailed)

    def since(moment: float | None) -> float | None:
        return None if moment is None else round(moment - started_wall, 4)

    return {
        "task_id": task_id,
        "status": str(task.status),
        "seconds": round(mailed - started_wall, 4),
        "confirm_s": round(confirm_seconds, 4),
        "created_s": since(_epoch(task.created_at)),
        "started_s": since(_epoch(task.started_at)),
        "first_slack_call_s": since(first_slack),
        "slack_calls_before_mail": before_mail,
        "finished_s": since(_epoch(task.finished_at)),
    }


def eta_run(
    stack: Stack, db: Database, confirmer: ConfirmsTasks, mode: str, at_fraction: float,
    timeout: float,
) -> dict[str, Any]:
    """The time left shown once `at_fraction` of a whole-directory task is done (or, in a short
    task, the first one shown after that), against the time it really took from then: what the
    Slack message and `tasks show` would have said."""
    from core.progress import pace_words, snapshot

    db.forget_tasks()
    task_id, _started_wall, _confirm = confirmer.confirm(db, bench_request(mode))
    shown: dict[str, Any] | None = None

    def reached() -> bool:
        nonlocal shown
        with db.sessions() as session:
            current = snapshot(session, task_id)
        if current is None or not current.total or not current.planned:
            return False
        if current.status.is_final:
            return True
        if current.done < current.total * at_fraction or current.pace.seconds_left is None:
            return False  # not there yet, or no estimate yet (the first seconds give none)
        shown = {"at": time.time(), "done": current.done, "total": current.total,
                 "seconds_left": current.pace.seconds_left,
                 "words": pace_words(current.pace)}
        return True

    wait_until(reached, timeout, interval=0.05, what=f"task {task_id} to reach {at_fraction:.0%}")
    task = wait_task_told(stack, db, task_id, timeout)
    finished = _epoch(task.finished_at)
    if shown is None or finished is None:
        return {"task_id": task_id, "status": str(task.status), "eta_s": None}
    real = finished - shown["at"]
    return {
        "task_id": task_id, "status": str(task.status), "users": shown["total"],
        "done_when_shown": shown["done"], "shown": shown["words"],
        "fraction_when_shown": round(shown["done"] / shown["total"], 4),
        "eta_s": round(shown["seconds_left"], 2), "real_s": round(real, 2),
        "error": round(shown["seconds_left"] / real - 1, 4) if real > 0 else None,
    }
