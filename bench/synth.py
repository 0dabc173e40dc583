"""A synthetic library directory of any size, written in bulk, and the search terms to try on it.

Deterministic for a given seed, so every run (and every database) holds the same users:
20 % have no e-mail (half NULL, half empty, as real exports mix both), 30 % are staff.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from sqlalchemy import Engine, insert, text

from core.directory import Directory


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


FIRST_NAMES = _words(
    "Ada Alan Alice Amara Anna Arjun Beatrix Ben Bruno Carla Chen Chloe Dario Diego Elena Emil "
    "Erin Esther Farah Felix Fiona Gabriel Greta Hana Hugo Ida Igor Ines Ivan Jonas Julia Kai "
    "Karin Lars Lea Leon Lina Luca Maja Marco Maria Mateo Mia Nadia Nils Noah Nora Olga Omar "
    "Oskar Paula Pedro Priya Rafael Rosa Ruth Sami Sara Sofia Tariq Teresa Tom Ugo Uma Vera "
    "Victor Wanda Yara Yusuf Zoe"
)
LAST_NAMES = _words(
    "Abbott Alvarez Andersen Baker Bauer Becker Bianchi Brown Castro Chowdhury Costa Cruz Dahl "
    "Davies Diaz Dubois Eriksson Evans Fischer Fontaine Garcia Greco Hansen Hartmann Hughes "
    "Ivanova Jansen Johansson Jones Kaur Keller Khan Kim Kowalski Kruger Larsen Laurent Lee "
    "Lopez Marino Martin Meyer Moreau Muller Nakamura Nguyen Novak Olsen Papadopoulos Patel "
    "Perez Petrov Quinn Rossi Russo Sanchez Santos Schmidt Schneider Silva Smith Sousa Suzuki "
    "Tanaka Taylor Thomas Torres Varga Walker Wagner Weber Williams Wilson Wong Young Zimmermann"
)
DOMAINS = ("example.org", "mail.example.com", "students.example.edu", "library.example.net")
ROLES = ("librarian", "circulation", "cataloguer", "admin", "archivist")
OLD_HASH = "!synthetic-old-hash"


@dataclass(frozen=True)
class SynthUser:
    id: int
    username: str
    full_name: str
    email: str | None
    role: str | None


def synth_users(count: int, seed: int = 4) -> Iterator[SynthUser]:
    """`count` users with ids 1..count; usernames are unique because they end in the id."""
    rng = random.Random(seed)
    for user_id in range(1, count + 1):
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        username = f"{first[0]}{last}{user_id}".lower()
        roll = rng.random()
        if roll < 0.10:
            email: str | None = None
        elif roll < 0.20:
            email = ""
        else:
            email = f"{first}.{last}.{user_id}@{rng.choice(DOMAINS)}".lower()
        role = rng.choice(ROLES) if rng.random() < 0.30 else None
        yield SynthUser(user_id, username, f"{first} {last}", email, role)


def populate(engine: Engine, directory: Directory, count: int, seed: int = 4) -> float:
    """Write `count` synthetic users (the schema must exist); returns the seconds it took."""
    import time

    started = time.perf_counter()
    if engine.dialect.name == "postgresql":
        _copy_postgres(engine, directory, count, seed)
    else:
        _insert_batches(engine, directory, count, seed)
    return time.perf_counter() - started


def _insert_batches(engine: Engine, directory: Directory, count: int, seed: int) -> None:
    batch: list[dict[str, object]] = []
    with engine.begin() as connection:
        for user in synth_users(count, seed):
            batch.append(
                {"id": user.id, "username": user.username, "full_name": user.full_name,
                 "email": user.email, "role": user.role, "password_hash": OLD_HASH,
                 "must_change_password": False}
            )
            if len(batch) == 5000:
                connection.execute(insert(directory.table), batch)
                batch = []
        if batch:
            connection.execute(insert(directory.table), batch)


def _copy_postgres(engine: Engine, directory: Directory, count: int, seed: int) -> None:
    """COPY is an order of magnitude faster than INSERT for a directory this size."""
    col = directory.names.column
    columns = ", ".join(
        col(key) for key in
        ("id", "username", "full_name", "email", "role", "password_hash", "must_change_password")
    )
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        with cursor.copy(
            f"COPY {directory.names.table} ({columns}) FROM STDIN"
        ) as copy:
            for user in synth_users(count, seed):
                copy.write_row(
                    (user.id, user.username, user.full_name, user.email, user.role, OLD_HASH,
                     False)
                )
        raw.commit()
        cursor.close()
    finally:
        raw.close()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text(f"ANALYZE {directory.names.table}"))


@dataclass(frozen=True)
class SearchTerm:
    term: str
    kind: str  # "rare" (a handful of hits) or "common" (thousands of hits)


def search_terms(count: int, total: int = 200, seed: int = 7) -> list[SearchTerm]:
    """Half rare terms (a username, an e-mail local part, a name with its id), half common ones
    (a first name, a surname, a domain, a three-letter fragment), as staff type them."""
    users = {user.id: user for user in synth_users(count)}
    rng = random.Random(seed)
    common_pool = [
        *(name.lower() for name in FIRST_NAMES[:20]),
        *(name.lower() for name in LAST_NAMES[:20]),
        "example", "example.org", "son", "mar", "ann", "er", "lee", "Smith", "MARIA", "students",
    ]
    terms: list[SearchTerm] = []
    for index in range(total // 2):
        user = users[rng.randint(1, count)]
        rare_choices = [user.username, user.username.upper(), f"{user.id}@"]
        if user.email:
            rare_choices.append(user.email.split("@")[0])
        terms.append(SearchTerm(rare_choices[index % len(rare_choices)], "rare"))
        terms.append(SearchTerm(common_pool[index % len(common_pool)], "common"))
    return terms
