"""Whole tasks against a Koha directory: `borrowers` on MariaDB (the `koha` profile), resetbot's
own state on PostgreSQL, as a library runs it. See the `koha` phase in bench/run.py.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from bench.harness import Database
from bench.koha import populate_borrowers
from bench.services import mariadb_database, postgres_database
from core.db import make_engine, make_sessionmaker
from core.directory import Directory
from core.migrate import upgrade
from core.settings import Settings

#: Koha's own hash: bcrypt $2a$ at cost 8 (the profile's), which the floor is measured with.
KOHA_ROUNDS = 8


@dataclass
class KohaDatabase(Database):
    """resetbot's state database (PostgreSQL) and the Koha directory it resets (MariaDB)."""

    directory_url: str = ""

    def directory_env(self) -> dict[str, str]:
        return {"DIRECTORY_URL": self.directory_url, "DIRECTORY_PROFILE": "koha"}


@contextmanager
def koha_database(size: int, settings: Settings) -> Iterator[KohaDatabase]:
    """A throw-away PostgreSQL state database and a MariaDB one holding `size` borrowers."""
    with postgres_database() as state_url, mariadb_database() as koha_url:
        populate_engine = make_engine(koha_url)
        try:
            _table, seconds = populate_borrowers(populate_engine, size, koha_ddl=True)
        finally:
            populate_engine.dispose()
        configured = replace(settings, database_url=state_url, directory_url=koha_url,
                             directory_profile="koha", password_rounds=None)
        upgrade(configured)
        engine = make_engine(state_url)
        directory = Directory.from_settings(configured, engine)
        try:
            yield KohaDatabase(state_url, engine, make_sessionmaker(engine), directory, size,
                               seconds, directory_url=koha_url)
        finally:
            directory.dispose()
            engine.dispose()


def koha_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median over repeats of each (directory, size, mode, workers)."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in rows:
        key = (row["directory"], row["size"], row["mode"], row["workers"])
        groups.setdefault(key, []).append(row)
    summary = []
    for (directory, size, mode, workers), runs in sorted(groups.items()):
        summary.append({
            "directory": directory, "size": size, "mode": mode, "workers": workers,
            "runs": len(runs),
            "hash_ms": round(statistics.median(r["hash_median_s"] for r in runs) * 1000, 2),
            "floor_s": round(statistics.median(r["floor_s"] for r in runs), 2),
            "wall_s": round(statistics.median(r["wall_s"] for r in runs), 2),
            "ratio": round(statistics.median(r["ratio"] for r in runs), 3),
            "ratios": [round(r["ratio"], 3) for r in runs],
            "users_per_s": round(statistics.median(r["users_per_s"] for r in runs), 1),
            # The workers' whole CPU over their hashing CPU: resetbot's own cost per user,
            # whatever else the machine runs meanwhile (which the wall-time ratio includes).
            "cpu_ratio": round(statistics.median(
                r["worker_cpu_s"] / r["hash_cpu_s"] for r in runs if r["hash_cpu_s"]
            ), 3) if any(r["hash_cpu_s"] for r in runs) else None,
            "foreign_max": max(r["foreign_load"] for r in runs),
        })
    return summary
