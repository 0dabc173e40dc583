"""The picker phase: options search at a large size on a library system's own table (a Koha-shaped
`borrowers` on MariaDB, PostgreSQL and SQLite) through the in-memory search copy, beside today's
search on resetbot's own table, with the same terms in the same run.

For each database:
  own     resetbot's own users table with its trigram index (PostgreSQL pg_trgm, SQLite FTS5),
          searched through core.directory as the app does; on MariaDB, where it has no index,
          through the search copy as the app does there (and, for scale, its plain LIKE);
  copy    the Koha table read into core.search_copy.SearchCopy (its build and reload timed,
          its memory traced), then searched;
  copy during reload
          the same searches, back to back (the worst case) and 20 ms apart (several people
          typing), while the copy is read again in a background thread of this very process
          (as in the app: the read competes with searches for the interpreter);
  direct  for scale, what the search would cost as SQL on the Koha table without the index
          resetbot may not add there (`lower(column) LIKE '%term%'` over four columns).
"""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import Engine, Table, create_engine, func, or_
from sqlalchemy.exc import OperationalError

from bench.harness import database
from bench.koha import PickerTerm, picker_terms, populate_borrowers, search_select
from bench.latency import Latencies, search_latency_core
from bench.measure import MB
from bench.services import mariadb_database, postgres_database, sqlite_database
from bench.synth import SearchTerm
from core.directory.picker import CopySearch, attach_search_copy
from core.search_copy import SearchCopy, load_lines
from core.settings import Settings
from tests.support.databases import MARIADB_SERVER

KINDS = ("mariadb", "postgresql", "sqlite")
LIMIT = 100
Row = dict[str, Any]


class Clock:
    """The copy's clock, moved by hand so that the bench decides when the copy is stale."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class PickerResult:
    latency: list[Row]
    copies: list[Row]


def koha_opener(kind: str) -> Callable[[], AbstractContextManager[str]]:
    if kind == "mariadb":
        return mariadb_database
    if kind == "postgresql":
        return postgres_database
    return sqlite_database


def mariadb_available() -> bool:
    engine = create_engine(f"{MARIADB_SERVER}/test", connect_args={"connect_timeout": 3})
    try:
        with engine.connect():
            return True
    except OperationalError:
        return False
    finally:
        engine.dispose()


@contextmanager
def koha_engine(kind: str, size: int) -> Iterator[tuple[Engine, Table, float]]:
    with koha_opener(kind)() as url:
        engine = create_engine(url)
        try:
            table, seconds = populate_borrowers(engine, size)
            yield engine, table, seconds
        finally:
            engine.dispose()


def time_searches(search: Callable[[str], object], terms: list[PickerTerm],
                  cpu: Latencies | None = None) -> Latencies:
    """Each search's wall time; and its CPU time in this thread into `cpu`, when given."""
    result = Latencies()
    for term in terms:
        started, thread_started = time.perf_counter(), time.thread_time()
        search(term.term)
        result.add(time.perf_counter() - started, term.kind)
        if cpu is not None:
            cpu.add(time.thread_time() - thread_started, term.kind)
    return result


def searches_during_reload(
    copy: SearchCopy, clock: Clock, terms: list[PickerTerm], max_age: float, gap: float = 0.0
) -> tuple[Latencies, float]:
    """Make the copy stale, let a search start the background read, and keep searching (the
    terms in turn, `gap` seconds apart) until the read is done; returns those searches'
    latencies (the first one, which started the read, included) and how long the read took."""
    clock.now += max_age
    result = Latencies()
    started = time.perf_counter()
    copy.search(terms[0].term, LIMIT)  # stale: answered from the old copy, starts the read
    result.add(time.perf_counter() - started, terms[0].kind)
    index = 1
    while not copy.wait_idle(gap):
        term = terms[index % len(terms)]
        began = time.perf_counter()
        copy.search(term.term, LIMIT)
        result.add(time.perf_counter() - began, term.kind)
        index += 1
    return result, time.perf_counter() - started


def copy_memory_mb(engine: Engine, table: Table) -> tuple[float, float]:
    """What a copy keeps in memory (its byte strings and arrays), and the most a read of it
    took at once (rows on their way, the parts before they are joined), traced."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        copy = SearchCopy(lambda: load_lines(engine, search_select(table)), 30.0)
        assert copy.reload()
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del copy
    return round((held - before) / MB, 1), round((peak - before) / MB, 1)


def direct_sql(engine: Engine, table: Table) -> Callable[[str], object]:
    """The search as SQL on the directory's own table, which has no index for it."""
    c = table.c
    columns = (c.userid, c.cardnumber, c.firstname, c.surname, c.email)
    username = func.coalesce(func.nullif(c.userid, ""), c.cardnumber)

    def search(term: str) -> object:
        escaped = term.strip().lower().replace("\\", "\\\\").replace("%", "\\%")
        pattern = "%" + escaped.replace("_", "\\_") + "%"
        matches = or_(*(func.lower(column).like(pattern, escape="\\") for column in columns))
        query = search_select(table).where(matches).order_by(username).limit(LIMIT)
        with engine.connect() as connection:
            return connection.execute(query).all()

    return search


def measure_koha(kind: str, size: int, terms: list[PickerTerm], direct_queries: int,
                 log: Callable[[str], None]) -> tuple[list[Row], Row]:
    max_age = 30.0
    rows: list[Row] = []
    with koha_engine(kind, size) as (engine, table, populated):
        log(f"picker: {size:,} Koha borrowers on {kind} (populated in {populated:.1f}s)")
        clock = Clock()
        copy = SearchCopy(lambda: load_lines(engine, search_select(table)), max_age, clock)
        started, cpu_started = time.perf_counter(), time.process_time()
        assert copy.reload() and len(copy) == size
        build_s = time.perf_counter() - started
        build_cpu_s = time.process_time() - cpu_started  # this process's share, no other
        time_searches(lambda term: copy.search(term, LIMIT), terms[:20])  # warm
        steady_cpu = Latencies()
        steady = time_searches(lambda term: copy.search(term, LIMIT), terms, steady_cpu)
        during, reload_s = searches_during_reload(copy, clock, terms, max_age)
        paced, paced_reload_s = searches_during_reload(copy, clock, terms, max_age, gap=0.02)
        memory, memory_peak = copy_memory_mb(engine, table)
        direct = time_searches(direct_sql(engine, table), terms[:direct_queries])
        for via, measured in (("copy", steady), ("copy, cpu time", steady_cpu),
                              ("copy during reload", during),
                              ("copy reload, 20ms apart", paced), ("direct sql", direct)):
            rows.append({"size": size, "db": kind, "table": "koha borrowers", "via": via,
                         "search": measured.summary()})
        summary = {"size": size, "db": kind, "rows": len(copy), "build_s": round(build_s, 3),
                   "build_cpu_s": round(build_cpu_s, 3),
                   "reload_s": round(reload_s, 3), "reload_paced_s": round(paced_reload_s, 3),
                   "memory_mb": memory, "memory_peak_mb": memory_peak,
                   "populate_s": round(populated, 1)}
        log(f"  copy: built in {build_s:.2f}s ({build_cpu_s:.2f}s of CPU), "
            f"reloaded in {reload_s:.2f}s, {memory} MB "
            f"(peak while read {memory_peak} MB); "
            f"search p50 {steady.summary()['p50_ms']} p99 {steady.summary()['p99_ms']} ms, "
            f"during reload p99 {during.summary()['p99_ms']} ms (back to back), "
            f"{paced.summary()['p99_ms']} ms (20 ms apart); "
            f"direct SQL p99 {direct.summary()['p99_ms']} ms")
    return rows, summary


def measure_own(kind: str, size: int, terms: list[PickerTerm], settings: Settings,
                log: Callable[[str], None], direct_queries: int) -> list[Row]:
    as_search_terms = [SearchTerm(term.term, term.kind) for term in terms]
    rows: list[Row] = []
    with database(kind, size, settings) as db:
        via, built = "sql (trigram index)", None
        copy = attach_search_copy(replace(settings, database_url=db.url), db.directory)
        if copy is not None:  # no index here (MariaDB): what the table's LIKE costs, for scale
            db.directory.use_search(None)
            plain = search_latency_core(db.sessions, db.directory,
                                        as_search_terms[:direct_queries])
            rows.append({"size": size, "db": kind, "table": "own users",
                         "via": "sql (plain LIKE, no index)", "search": plain.summary()})
            log(f"picker: own table on {kind}, plain LIKE: p50 {plain.summary()['p50_ms']} "
                f"p99 {plain.summary()['p99_ms']} ms")
            db.directory.use_search(CopySearch(copy))
            started = time.perf_counter()
            assert copy.reload() and len(copy) == size
            via = "search copy"
            built = round(time.perf_counter() - started, 3)
        search_latency_core(db.sessions, db.directory, as_search_terms[:20])  # warm
        cpu = Latencies()
        measured = search_latency_core(db.sessions, db.directory, as_search_terms, cpu)
        rows.append({"size": size, "db": kind, "table": "own users", "via": via + ", cpu time",
                     "search": cpu.summary(), "copy_build_s": built})
    log(f"picker: {size:,} users in resetbot's own table on {kind} via {via}"
        f"{f' (built in {built} s)' if built is not None else ''}: search p50 "
        f"{measured.summary()['p50_ms']} p99 {measured.summary()['p99_ms']} ms; "
        f"{measured.summary()}")
    rows.append({"size": size, "db": kind, "table": "own users", "via": via,
                 "search": measured.summary(), "copy_build_s": built})
    return rows


def picker(size: int, kinds: list[str], queries: int, settings: Settings,
           log: Callable[[str], None], notes: list[str],
           tables: frozenset[str] = frozenset({"own", "koha"})) -> PickerResult:
    terms = picker_terms(size, total=queries)
    direct_queries = max(10, queries // 10)
    result = PickerResult([], [])
    for kind in kinds:
        if kind == "mariadb" and not mariadb_available():
            notes.append("picker: MariaDB on 127.0.0.1:3306 not reachable, skipped")
            log("picker: MariaDB not reachable on 127.0.0.1:3306, skipped")
            continue
        if "own" in tables:
            result.latency.extend(measure_own(kind, size, terms, settings, log, direct_queries))
        if "koha" not in tables:
            continue
        rows, copy = measure_koha(kind, size, terms, direct_queries, log)
        result.latency.extend(rows)
        result.copies.append(copy)
    notes.append(
        f"picker: {queries} terms as typed (name fragments of 2-5 letters, whole usernames, "
        f"card number prefixes, e-mail fragments, misses), the same on every table; "
        f"direct SQL timed on the first {direct_queries}; copy = SearchCopy.search in the "
        "process holding the copy (no HTTP)"
    )
    return result
