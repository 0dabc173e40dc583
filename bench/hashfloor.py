"""One hash's median time, measured in a fresh process configured exactly like a worker.

Run as `python -m bench.hashfloor COUNT` with the workers' environment; prints one JSON line.
The benchmark's floor for a task is users x this median / workers.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

from core.passwords import PasswordHasher, generate_password
from core.settings import Settings


def hash_times(settings: Settings, count: int) -> list[float]:
    hasher = PasswordHasher.from_settings(settings)
    passwords = [generate_password(settings.policy) for _ in range(count + 2)]
    hasher.hash(passwords[0])  # warm-up: first call loads the backend
    times: list[float] = []
    for password in passwords[2:]:
        started = time.perf_counter()
        hasher.hash(password)
        times.append(time.perf_counter() - started)
    return times


def main(argv: list[str]) -> int:
    count = int(argv[0]) if argv else 50
    settings = Settings.from_env(env_file=None)
    times = hash_times(settings, count)
    print(json.dumps({
        "scheme": settings.password_schemes[0],
        "rounds": settings.password_rounds,
        "samples": len(times),
        "median_s": statistics.median(times),
        "min_s": min(times),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
