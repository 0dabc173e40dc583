"""Small measuring tools: percentiles, a peak-RSS sampler for process trees, timers."""

from __future__ import annotations

import math
import os
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import psutil

MB = 1024 * 1024


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile: p99 of 200 samples is the 198th smallest."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def high_water_mark(pid: int) -> int | None:
    """The kernel's own peak RSS of a process (VmHWM), in bytes; None when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


class PeakRss:
    """Samples a set of process trees every `interval` seconds and keeps each one's peak RSS.

    A tree is a role ("worker", "app") and a function giving its root pids now. Children
    (an RQ work horse forked per job) count as processes of the same role; the figure kept is
    the largest single process, read from the kernel's high-water mark where it can be.
    """

    def __init__(self, roots: dict[str, Callable[[], list[int]]], interval: float = 1.0) -> None:
        self.roots = roots
        self.interval = interval
        self.peak: dict[str, int] = dict.fromkeys(roots, 0)
        self.peak_pid: dict[str, int | None] = dict.fromkeys(roots, None)
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peak-rss", daemon=True)

    def _processes(self, role: str) -> list[psutil.Process]:
        found: list[psutil.Process] = []
        for pid in self.roots[role]():
            try:
                root = psutil.Process(pid)
                found.append(root)
                found.extend(root.children(recursive=True))
            except psutil.NoSuchProcess:
                continue
        return found

    def sample(self) -> None:
        for role in self.roots:
            for process in self._processes(role):
                try:
                    rss = high_water_mark(process.pid) or process.memory_info().rss
                except psutil.NoSuchProcess:
                    continue
                if rss > self.peak[role]:
                    self.peak[role] = rss
                    self.peak_pid[role] = process.pid
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> PeakRss:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def peak_mb(self) -> dict[str, float]:
        return {role: round(value / MB, 1) for role, value in self.peak.items()}


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has been busy since boot (all cores, from /proc/stat)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class ForeignLoad:
    """How much CPU other people's processes used while the benchmark measured something.

    Ours: this process, everything it started, and PostgreSQL backends serving our database.
    Everything else busy on the machine in the window is foreign; as a share of all cores it
    says whether a figure was taken on a quiet machine.
    """

    def __init__(self, database_name: str | None = None) -> None:
        self.database_name = database_name
        self._start_busy = 0.0
        self._start_ours: dict[int, tuple[str, float]] = {}
        self._started = 0.0

    def _ours(self) -> dict[int, tuple[str, float]]:
        """Our processes now: pid -> (role, CPU seconds so far)."""
        me = psutil.Process()
        processes = [me, *me.children(recursive=True)]
        for process in psutil.process_iter(["cmdline"]):
            cmdline = " ".join(process.info["cmdline"] or [])
            if cmdline.startswith("postgres:") and self._serves_us(cmdline):
                processes.append(process)
        found: dict[int, tuple[str, float]] = {}
        for process in processes:
            try:
                times = process.cpu_times()
                role = "bench" if process.pid == me.pid else _role(process.cmdline())
                found[process.pid] = (role, times.user + times.system)
            except psutil.NoSuchProcess:
                continue
        return found

    def _serves_us(self, cmdline: str) -> bool:
        """PostgreSQL's own helpers (checkpointer, WAL writer, ...) and our database's backends
        work for us; a backend or autovacuum worker of another database does not."""
        words = cmdline.split()
        is_backend = "(" in cmdline or "[local]" in cmdline  # "user db 127.0.0.1(5432) idle"
        if is_backend or "autovacuum worker" in cmdline:
            return bool(self.database_name) and self.database_name in words
        return True

    def start(self) -> None:
        self._start_busy = busy_cpu_seconds()
        self._start_ours = self._ours()
        self._started = time.monotonic()

    def stop(self) -> tuple[float, dict[str, float]]:
        """Foreign CPU since start() as a fraction of all cores' time (0.0 = quiet), and our
        own CPU seconds in the window by role (worker, postgres, bench, app, redis, ...)."""
        busy = busy_cpu_seconds() - self._start_busy
        by_role: dict[str, float] = {}
        for pid, (role, now) in self._ours().items():
            spent = now - self._start_ours.get(pid, ("", 0.0))[1]
            by_role[role] = by_role.get(role, 0.0) + spent
        ours = sum(by_role.values())
        elapsed = (time.monotonic() - self._started) * (os.cpu_count() or 1)
        share = max(0.0, (busy - ours) / elapsed) if elapsed > 0 else 0.0
        return share, {role: round(spent, 2) for role, spent in sorted(by_role.items())}


def _role(cmdline: list[str]) -> str:
    text = " ".join(cmdline)
    if text.startswith("postgres:"):
        return "postgres"
    if "redis-server" in text:
        return "redis"
    if "bench.smtp_sink" in text:
        return "smtp"
    if "slapd" in text:
        return "slapd"
    if text.startswith("samba") or "/samba " in text:
        return "samba"
    if "bench.ldapfloor" in text:
        return "floor"
    if "bench.worker_main" in text or "worker" in cmdline:
        return "worker"
    if "serve" in cmdline or "bench.app_main" in text:
        return "app"
    return "other"
