"""`resetbot worker` for the benchmark, with the time spent hashing made visible.

`python -m bench.worker_main` runs exactly `resetbot worker` (settings from the environment),
after wrapping `PasswordHasher.hash` so that every call adds its duration to a 24-byte file in
BENCH_HASH_STATS (one per process, memory-mapped: no system call per hash). The benchmark reads
those counters before and after a task: the hash floor of that very run, measured in the very
processes that did the work. Without BENCH_HASH_STATS it is plain `resetbot worker`.
"""

from __future__ import annotations

import mmap
import os
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: count, seconds of wall time inside hash(), seconds of the hashing thread's own CPU time
LAYOUT = struct.Struct("ddd")


class HashStats:
    """This process's running totals, in a file others can read at any time."""

    def __init__(self, directory: Path) -> None:
        path = directory / f"{os.getpid()}.bin"
        path.write_bytes(bytes(LAYOUT.size))
        self._file = path.open("r+b")
        self._map = mmap.mmap(self._file.fileno(), LAYOUT.size)
        self.count = 0
        self.wall = 0.0
        self.cpu = 0.0

    def add(self, wall: float, cpu: float) -> None:
        self.count += 1
        self.wall += wall
        self.cpu += cpu
        LAYOUT.pack_into(self._map, 0, self.count, self.wall, self.cpu)


def read_hash_stats(directory: Path) -> tuple[int, float, float]:
    """Totals over every worker process that has written to `directory`."""
    count, wall, cpu = 0, 0.0, 0.0
    for path in directory.glob("*.bin"):
        data = path.read_bytes()
        if len(data) == LAYOUT.size:
            c, w, u = LAYOUT.unpack(data)
            count, wall, cpu = count + int(c), wall + w, cpu + u
    return count, wall, cpu


def time_hashes(directory: Path) -> None:
    from core.passwords import PasswordHasher

    stats = HashStats(directory)
    original: Callable[[Any, str], str] = PasswordHasher.hash

    def timed(self: Any, password: str) -> str:
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            return original(self, password)
        finally:
            stats.add(time.perf_counter() - wall, time.thread_time() - cpu)

    PasswordHasher.hash = timed  # type: ignore[method-assign]


def main() -> int:
    stats = os.environ.get("BENCH_HASH_STATS")
    if stats:
        time_hashes(Path(stats))
    try:
        from bot.cli import main as resetbot
    except ImportError:
        return _bare_worker()
    return resetbot(["worker"])


def _bare_worker() -> int:
    """Before the CLI existed: the same worker, straight from jobs.worker."""
    from redis import Redis

    from core.settings import Settings
    from jobs.worker import run_worker

    settings = Settings.from_env(env_file=None)
    redis: Redis = Redis.from_url(settings.redis_url or "redis://127.0.0.1:6379/0")
    try:
        run_worker(settings, redis, burst=False, with_scheduler=True)
    finally:
        redis.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
