"""A resetbot worker process for the benchmark: `python -m bench.worker_main`, settings from env.

The same thing `resetbot worker` runs (jobs.worker.run_worker with the scheduler); the benchmark
uses the CLI when it is installed and falls back to this.
"""

from __future__ import annotations

import logging
import signal
import sys

from redis import Redis

from core.settings import Settings


def main() -> int:
    from jobs.worker import run_worker

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    settings = Settings.from_env(env_file=None)
    if not settings.redis_url:
        print("bench worker: REDIS_URL must be set", file=sys.stderr)
        return 2
    # RQ stops a worker on SIGTERM after its current job; SIGINT is the same to us.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    redis: Redis = Redis.from_url(settings.redis_url)
    try:
        run_worker(settings, redis, burst=False, with_scheduler=True)
    finally:
        redis.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
