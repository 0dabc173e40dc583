"""Small measuring tools: percentiles, a peak-RSS sampler for process trees, timers."""

from __future__ import annotations

import math
import statistics
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import psutil  # type: ignore[import-untyped]

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

    def __init__(self, roots: dict[str, Callable[[], list[int]]], interval: float = 0.1) -> None:
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
