"""Picker search and preview latency measured straight through core (no HTTP in between).

The benchmark prefers the real app over signed HTTP (bench.slackapp); this is the fallback and
the reference that shows how much of a request's time the database takes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from sqlalchemy.orm import Session, sessionmaker

from bench.measure import median, percentile
from bench.synth import SearchTerm
from core import tasks
from core.directory import Directory
from core.directory.protocol import CountsElsewhere
from core.models import Scope
from core.settings import Settings
from core.tasks import ResetRequest


@dataclass
class Latencies:
    seconds: list[float] = field(default_factory=list)
    by_kind: dict[str, list[float]] = field(default_factory=dict)

    def add(self, elapsed: float, kind: str = "") -> None:
        self.seconds.append(elapsed)
        if kind:
            self.by_kind.setdefault(kind, []).append(elapsed)

    def summary(self) -> dict[str, float | int | dict[str, float]]:
        result: dict[str, float | int | dict[str, float]] = {
            "n": len(self.seconds),
            "p50_ms": round(median(self.seconds) * 1000, 2),
            "p99_ms": round(percentile(self.seconds, 99) * 1000, 2),
            "max_ms": round(max(self.seconds, default=0.0) * 1000, 2),
        }
        for kind, values in sorted(self.by_kind.items()):
            result[kind] = {
                "p50_ms": round(median(values) * 1000, 2),
                "p99_ms": round(percentile(values, 99) * 1000, 2),
            }
        return result


def search_latency_core(
    sessions: sessionmaker[Session], directory: Directory, terms: list[SearchTerm],
    cpu: Latencies | None = None,
) -> Latencies:
    """One session per query, as each options request opens its own. `cpu`, when given,
    gets each search's CPU time in this thread (what a search costs, whatever else the
    machine runs: on a loaded machine the wall time is mostly waiting for a core)."""
    result = Latencies()
    for term in terms:
        started, thread_started = time.perf_counter(), time.thread_time()
        with sessions():  # kept, so the figures stay comparable with earlier runs
            found = directory.search(term.term)
        result.add(time.perf_counter() - started, term.kind)
        if cpu is not None:
            cpu.add(time.thread_time() - thread_started, term.kind)
        assert len(found) <= 100
    return result


def preview_requests() -> list[ResetRequest]:
    """The submissions staff make: every scope, with and without a default password."""
    return [
        ResetRequest("UBENCH", Scope.ALL),
        ResetRequest("UBENCH", Scope.ALL_WITHOUT_ROLE, default_password="Quiet-Harbour-7419"),
        ResetRequest("UBENCH", Scope.ALL_EXCEPT_SELECTED, ("1", "2", "3", "50", "99")),
        ResetRequest(
            "UBENCH", Scope.SELECTED_ONLY, ("10", "20", "30"), default_password="Quiet-Harbour-7419"
        ),
    ]


def preview_latency_core(
    sessions: sessionmaker[Session], settings: Settings, directory: Directory, rounds: int = 5,
    counts: CountsElsewhere | None = None, cpu: Latencies | None = None,
) -> Latencies:
    """What a submit does before it answers: validate (policy, selection, preview counts) and
    park the request; one session and commit each, as the app does. `counts`: where the app
    counts a preview when it can (its search copy: AppDeps.counts). `cpu`, when given, gets
    each preview's CPU time in this thread (the database's is not in it)."""
    result = Latencies()
    for _ in range(rounds):
        for request in preview_requests():
            started = time.perf_counter()
            thread_started = time.thread_time()
            with sessions() as session:
                tasks.validate_request(settings, directory, request, counts)
                tasks.create_pending(session, settings, request)
                session.commit()
            result.add(time.perf_counter() - started, request.scope.value)
            if cpu is not None:
                cpu.add(time.thread_time() - thread_started, request.scope.value)
    return result
