"""Signed requests are single-use: a signature (or an Events API event) counts once.

Slack signs `v0:{timestamp}:{body}` and a signature stays valid for five minutes either side of
its timestamp, so whoever captures a request could send it again within that window. Each
accepted signature is remembered until it can no longer verify: in Redis (shared by every app
process, with a TTL, keyed by a hash of the signature, never the body), and in this process.

Redis unreachable: requests are still accepted (the app keeps working while Redis is down, as
the README promises), each process refusing the replays it has seen itself. With several app
hosts, a replay sent to another host during the outage is not caught here; the database's own
once-only guards (a preview is confirmed once, cancel and retry act once) still hold.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import threading
import time
from collections.abc import Callable
from enum import Enum

from redis import Redis
from redis.exceptions import RedisError

log = logging.getLogger("resetbot.http")

#: slack_sdk's SignatureVerifier accepts timestamps up to this far from now, either way.
SIGNATURE_WINDOW_SECONDS = 300
#: Hosts' clocks differ a little: remember a signature this much longer than it can verify.
CLOCK_MARGIN_SECONDS = 60
#: Slack retries an event three times within about five minutes; an hour covers them all.
EVENT_MEMORY_SECONDS = 3600
#: After Redis fails, this process relies on its own memory for a while instead of waiting on
#: Redis for every request.
REDIS_PAUSE_SECONDS = 5.0


class Seen(Enum):
    FIRST = "first"
    AGAIN = "again"


class SeenRequests:
    """Remembers accepted signatures and event ids: in Redis (all processes) and in memory."""

    def __init__(
        self,
        redis: Redis,
        namespace: str,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = redis
        self._prefix = f"resetbot:{namespace}:seen"
        self._clock = clock
        self._lock = threading.Lock()
        self._expiry: dict[str, float] = {}
        self._by_expiry: list[tuple[float, str]] = []
        self._redis_paused_until = 0.0

    def signature(self, timestamp: str, signature: str) -> Seen:
        """Whether this (valid) signature was accepted before; remembers it either way."""
        now = self._clock()
        lifetime = int(timestamp) + SIGNATURE_WINDOW_SECONDS + CLOCK_MARGIN_SECONDS - now
        return self._first_time(f"signature:{_digest(signature)}", max(1, int(lifetime)))

    def event(self, team: str, event_id: str) -> Seen:
        """Whether this Events API event was handed to the app before (a retry or a replay)."""
        return self._first_time(f"event:{_digest(f'{team}:{event_id}')}", EVENT_MEMORY_SECONDS)

    def _first_time(self, name: str, lifetime: int) -> Seen:
        if not self._remember_here(name, lifetime):
            return Seen.AGAIN
        return Seen.FIRST if self._remember_in_redis(name, lifetime) else Seen.AGAIN

    def _remember_here(self, name: str, lifetime: int) -> bool:
        now = self._clock()
        with self._lock:
            while self._by_expiry and self._by_expiry[0][0] <= now:
                expired_at, old = heapq.heappop(self._by_expiry)
                if self._expiry.get(old) == expired_at:
                    del self._expiry[old]
            if self._expiry.get(name, 0.0) > now:
                return False
            self._expiry[name] = now + lifetime
            heapq.heappush(self._by_expiry, (now + lifetime, name))
            return True

    def _remember_in_redis(self, name: str, lifetime: int) -> bool:
        """False when another process saw it first; True when new, or when Redis cannot say."""
        if self._clock() < self._redis_paused_until:
            return True
        try:
            created = self._redis.set(f"{self._prefix}:{name}", b"1", nx=True, ex=lifetime)
        except (RedisError, OSError) as error:
            self._redis_paused_until = self._clock() + REDIS_PAUSE_SECONDS
            log.warning("replay check: Redis unavailable (%s); this process checks alone for "
                        "%.0f s", type(error).__name__, REDIS_PAUSE_SECONDS)
            return True
        return bool(created)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
