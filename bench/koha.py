"""A Koha-shaped `borrowers` table of any size, the picker's select over it, and the terms a person
types into the picker.

The table has the columns resetbot reads (and a few it never does) under Koha's names and
types, with Koha's own indexes (cardnumber and userid unique, surname and firstname): what a
library's database holds, not something built for resetbot. The users are those of
bench.synth, so the own-table figures and these come from the same people:
  - card numbers are 14-digit barcodes, `23019` + the id;
  - 15 % have no `userid` (Koha then signs them in with the card number);
  - staff have permission bits in `flags` (some patrons have NULL, most 0);
  - 20 % have no e-mail (half NULL, half empty).
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import dataclass

from sqlalchemy import (
    Column,
    Date,
    DateTime,
    Engine,
    Index,
    Integer,
    MetaData,
    Select,
    SmallInteger,
    String,
    Table,
    Text,
    func,
    insert,
    select,
    text,
)

from bench.synth import DOMAINS, FIRST_NAMES, LAST_NAMES, synth_users

CARD_PREFIX = "23019"
STAFF_FLAGS = (1, 4, 16, 1024, 16384)
BATCH = 5000


def borrowers_table(metadata: MetaData | None = None) -> Table:
    table = Table(
        "borrowers", metadata or MetaData(),
        Column("borrowernumber", Integer, primary_key=True, autoincrement=True),
        Column("cardnumber", String(32), nullable=True, unique=True),
        Column("surname", Text),
        Column("firstname", Text),
        Column("othernames", Text),
        Column("address", Text),
        Column("city", Text),
        Column("zipcode", String(25)),
        Column("email", Text),
        Column("phone", Text),
        Column("branchcode", String(10), nullable=False),
        Column("categorycode", String(10), nullable=False),
        Column("dateexpiry", Date),
        Column("borrowernotes", Text),
        Column("password", String(60)),
        Column("flags", Integer, nullable=True),
        Column("userid", String(75), nullable=True, unique=True),
        Column("login_attempts", SmallInteger, nullable=False, default=0),
        Column("password_expiration_date", Date, nullable=True),
        Column("lastseen", DateTime, nullable=True),
    )
    Index("surname_idx", table.c.surname, mysql_length=191)
    Index("firstname_idx", table.c.firstname, mysql_length=191)
    return table


def search_select(table: Table) -> Select[tuple[object, ...]]:
    """The six columns the search copy reads, as Koha reads them: username = userid, else the
    card number; name = first name and surname; staff = any permission bit."""
    c = table.c
    username = func.coalesce(func.nullif(c.userid, ""), c.cardnumber, "")
    name = func.coalesce(c.firstname, "") + " " + func.coalesce(c.surname, "")
    staff = func.coalesce(c.flags, 0) != 0
    return select(c.borrowernumber, username, name, c.cardnumber, c.email, staff)


def card_number(user_id: int) -> str:
    return f"{CARD_PREFIX}{user_id:09d}"


@dataclass(frozen=True)
class Borrower:
    borrowernumber: int
    cardnumber: str
    userid: str | None
    firstname: str
    surname: str
    email: str | None
    flags: int | None


def synth_borrowers(count: int, seed: int = 4) -> Iterator[Borrower]:
    rng = random.Random(seed + 1)
    for user in synth_users(count, seed):
        first, last = user.full_name.split(" ", 1)
        roll = rng.random()
        flags = rng.choice(STAFF_FLAGS) if user.role else (None if roll < 0.1 else 0)
        userid = None if rng.random() < 0.15 else user.username
        yield Borrower(user.id, card_number(user.id), userid, first, last, user.email, flags)


def populate_borrowers(
    engine: Engine, count: int, seed: int = 4, *, koha_ddl: bool = False
) -> tuple[Table, float]:
    """Create `borrowers` and fill it with `count` patrons; returns the table and the seconds.

    `koha_ddl` (MariaDB only): Koha's own tables instead of the Koha-shaped one, as
    `installer/data/mysql/kohastructure.sql` creates them (tests/support/koha.py: `borrowers`'
    82 columns, its keys, and its foreign keys to `categories`, `branches` and `sms_providers`,
    with their rows); staff in category `S`, patrons in `PT`.
    """
    started = time.perf_counter()
    if koha_ddl:
        table = _koha_tables(engine)
        categories = ("S", "PT")
    else:
        metadata = MetaData()
        table = borrowers_table(metadata)
        metadata.create_all(engine)
        categories = ("STAFF", "PATRON")
    batch: list[dict[str, object]] = []
    with engine.begin() as connection:
        for b in synth_borrowers(count, seed):
            batch.append({
                "borrowernumber": b.borrowernumber, "cardnumber": b.cardnumber,
                "surname": b.surname, "firstname": b.firstname, "othernames": None,
                "address": f"{b.borrowernumber} Library Street", "city": "Springfield",
                "zipcode": "12345", "email": b.email, "phone": "555-0100",
                "branchcode": "MAIN", "categorycode": categories[0 if b.flags else 1],
                "dateexpiry": None, "borrowernotes": "", "password": "!synthetic-old-hash",
                "flags": b.flags, "userid": b.userid, "login_attempts": 0,
                "password_expiration_date": None, "lastseen": None,
            })
            if len(batch) == BATCH:
                connection.execute(insert(table), batch)
                batch = []
        if batch:
            connection.execute(insert(table), batch)
    return table, time.perf_counter() - started


def _koha_tables(engine: Engine) -> Table:
    """Koha's `borrowers` and the tables its foreign keys name, as Koha creates them."""
    from tests.support.koha import KOHA_DDL, KOHA_REFERENCE_ROWS  # Koha's DDL, kept once

    if engine.dialect.name != "mysql":
        raise ValueError("Koha's own tables are MariaDB's (its DDL is MariaDB's)")
    with engine.begin() as connection:
        for statement in (*KOHA_DDL, *KOHA_REFERENCE_ROWS):
            connection.execute(text(statement))
    return Table("borrowers", MetaData(), autoload_with=engine)


@dataclass(frozen=True)
class PickerTerm:
    term: str
    kind: str  # name, username, card, email, miss


def picker_terms(count: int, total: int = 200, seed: int = 11) -> list[PickerTerm]:
    """What staff type into the picker, in equal shares: 2-5 letters of a first name or a
    surname (any case), a whole username, a card number prefix, an e-mail fragment (a local
    part's start or a domain), and a miss."""
    rng = random.Random(seed)
    borrowers = list(synth_borrowers(count))
    makers = (_name_term, _username_term, _card_term, _email_term, _miss_term)
    terms: list[PickerTerm] = []
    for index in range(total):
        maker = makers[index % len(makers)]
        terms.append(maker(rng, borrowers[rng.randrange(count)]))
    return terms


def _name_term(rng: random.Random, b: Borrower) -> PickerTerm:
    name = rng.choice((b.firstname, b.surname, rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)))
    length = rng.randint(2, min(5, len(name)))
    start = rng.choice((0, 0, rng.randint(0, len(name) - length)))
    fragment = name[start:start + length]
    return PickerTerm(rng.choice((fragment.lower(), fragment, fragment.upper())), "name")


def _username_term(rng: random.Random, b: Borrower) -> PickerTerm:
    return PickerTerm(b.userid or b.cardnumber, "username")


def _card_term(rng: random.Random, b: Borrower) -> PickerTerm:
    return PickerTerm(b.cardnumber[: rng.randint(6, 14)], "card")


def _email_term(rng: random.Random, b: Borrower) -> PickerTerm:
    if b.email and rng.random() < 0.6:
        local = b.email.split("@")[0]
        return PickerTerm(local[: rng.randint(3, len(local))], "email")
    return PickerTerm(rng.choice(("@", "")) + rng.choice(DOMAINS)[: rng.randint(4, 12)], "email")


def _miss_term(rng: random.Random, b: Borrower) -> PickerTerm:
    return PickerTerm("zq" + "".join(rng.choice("xjkvw") for _ in range(rng.randint(1, 3))),
                      "miss")
