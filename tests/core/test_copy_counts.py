"""A preview counted in the app's search copy (core/copy_counts.py) is what the table counts:
every scope, every address reason, locked, staff, the username check; and the copy says when
it cannot count (old, a selected user it does not hold, a separator in a field)."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from core.db import make_engine
from core.directory.picker import CopyCounts, attach_search_copy, search_select
from core.directory.protocol import Counts
from core.directory.sql import SqlDirectory, sql_ids
from core.directory.sql.koha_rules import categories_in_scope
from core.directory.sql.table import Directory
from core.models import Scope
from core.search_copy import SEPARATOR, SearchCopy, SearchRow, Snapshot, fold, load_lines
from core.settings import Settings
from core.tasks import ResetRequest, validate_request
from tests.support.databases import mariadb_database
from tests.support.koha import (
    BORROWERS,
    KOHA_CASES,
    Borrower,
    create_borrowers,
    koha_profile_text,
)

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

#: Values of `email` that each take another path through the one rule (core/addresses.py).
ADDRESSES = [None, "", "   ", "n/a", "none", "-", "a b@example.org", "tab\t@example.org",
             "zoë@example.org", "@example.org", "a@", "a@@b", " pad@example.org ",
             "x@example.org\n", "ok@example.org", "Mixed.Case@Example.ORG", "q'o@example.org",
             "\"quoted\"@example.org", "bell\x07@example.org"]
USERIDS = [None, "", "ada", "ADA2", "zoë", "zoe\u0308", "josé", "mary_ann", "100%", "İstanbul",
           "ß", "a", "an"]
#: Passwords that hold some of the usernames above, in other cases and Unicode forms.
PASSWORDS = ["Ada2-and-zoë!", "ZOE\u0308-JOSE\u0301-x", "my 100% mary_ann", "ISTANBUL-ss-SS",
             "c0101C0002"]


def random_borrowers(
    count: int, seed: int, same: Callable[[str], str] = lambda userid: userid
) -> list[Borrower]:
    """Koha-like patrons over the awkward values (a seeded sample: every run the same); user
    ids unique as `same` compares them (the table's unique key: MariaDB's collation sets
    case and accents aside, SQLite's compares bytes)."""
    rng = random.Random(seed)
    found = []
    used = {same(b.userid) for b in BORROWERS + KOHA_CASES if b.userid is not None}
    for number in range(1000, 1000 + count):
        userid = rng.choice(USERIDS)
        if userid is not None and same(userid) in used:
            userid = f"{userid}{number}"
        if userid is not None:
            used.add(same(userid))
        found.append(Borrower(
            number, f"C{number:04d}", userid, "Rand", f"Om{number}", rng.choice(ADDRESSES),
            rng.choice([None, 0, 0, 0, 1, 4]), rng.choice([0, 0, 3, -1]), None,
            rng.choice([None, None, "KID"]),
        ))
    return found


def selections(ids: Sequence[int], seed: int) -> list[list[str]]:
    rng = random.Random(seed)
    return [[str(ids[0])], [str(n) for n in rng.sample(list(ids), len(ids) // 3)],
            [str(n) for n in ids]]


@pytest.fixture
def koha_sqlite(settings: Settings, tmp_path: Path) -> Iterator[tuple[Settings, Engine]]:
    """Koha's profile (as a file) over the Koha-shaped stand-in on SQLite."""
    profile = tmp_path / "koha.toml"
    profile.write_text(koha_profile_text(), encoding="utf-8")
    url = f"sqlite:///{tmp_path / 'koha.db'}"
    engine = make_engine(url)
    configured = replace(settings, directory_url=url, directory_profile=str(profile),
                         password_rounds=4, password_allow_weak_rounds=True)
    try:
        yield configured, engine
    finally:
        engine.dispose()


def with_copy(settings: Settings) -> tuple[SqlDirectory, CopyCounts]:
    directory = SqlDirectory(Directory.from_settings(settings))
    copy = attach_search_copy(settings, directory)
    assert copy is not None and copy.reload()
    return directory, CopyCounts(copy, directory.sql)


def without_notes(counts: Counts | None) -> Counts | None:
    return None if counts is None else replace(counts, notes=())


def assert_same_counts(directory: SqlDirectory, counts: CopyCounts, ids: Sequence[int]) -> int:
    """Every scope and password counted both ways; how many comparisons were made."""
    compared = 0
    for scope in Scope:
        for picked in selections(ids, 7) if scope.needs_selection else [[]]:
            table = directory.preview(scope, picked)
            assert without_notes(counts.preview(scope, picked)) == table, (scope, picked)
            categories = counts.categories(scope, picked)
            read = categories_in_scope(directory.sql, scope, sql_ids(picked))
            assert categories is not None and read is not None
            assert sorted(categories) == sorted(read), (scope, picked)
            for password in PASSWORDS:
                for no_email in (False, True):
                    assert counts.usernames_in_password(
                        password, scope, picked, without_email_only=no_email
                    ) == directory.usernames_in_password(
                        password, scope, picked, without_email_only=no_email
                    ), (scope, picked, password, no_email)
                    compared += 1
    return compared


@sqlite_only
def test_every_scope_counts_in_the_copy_as_in_the_table_on_sqlite(
    koha_sqlite: tuple[Settings, Engine]
) -> None:
    settings, engine = koha_sqlite
    people = BORROWERS + KOHA_CASES + random_borrowers(150, seed=21)
    create_borrowers(engine, people)
    directory, counts = with_copy(settings)
    try:
        whole = directory.preview(Scope.ALL, [])
        # The fixture holds every case: each reason, locked, staff, users without any address.
        assert set(whole.unusable) >= {"blank", "no_at", "spaces_or_controls", "not_ascii",
                                       "not_an_address"}
        assert whole.locked and whole.staff and whole.without_email > sum(whole.unusable.values())
        assert directory.usernames_in_password("Ada2-and-zoë!", Scope.ALL, []) >= 2
        # The NFD "zoe\u0308" and the NFC "zoë" of KOHA_CASES are two users here.
        assert directory.usernames_in_password("zoë", Scope.ALL, []) >= 2
        assert assert_same_counts(directory, counts, [b.number for b in people]) > 50
    finally:
        directory.dispose()


@sqlite_only
@pytest.mark.mariadb
def test_every_scope_counts_in_the_copy_as_in_the_table_on_koha_s_own_tables(
    settings: Settings
) -> None:
    """Koha's real `borrowers` on MariaDB, whose collation says `'ada' = 'ADA '`."""
    people = BORROWERS + KOHA_CASES + random_borrowers(60, seed=5, same=fold)
    with mariadb_database() as url:
        engine = make_engine(url)
        try:
            create_borrowers(engine, people)
        finally:
            engine.dispose()
        configured = replace(settings, directory_url=url, directory_profile="koha",
                             password_rounds=4, password_allow_weak_rounds=True)
        directory, counts = with_copy(configured)
        try:
            assert assert_same_counts(directory, counts, [b.number for b in people]) > 50
        finally:
            directory.dispose()


@sqlite_only
def test_the_preview_of_the_app_says_it_counted_in_the_copy(
    koha_sqlite: tuple[Settings, Engine]
) -> None:
    settings, engine = koha_sqlite
    create_borrowers(engine, BORROWERS + KOHA_CASES)
    directory, counts = with_copy(settings)
    try:
        request = ResetRequest("U1", Scope.ALL_WITHOUT_ROLE)
        shown = validate_request(settings, directory, request, counts)
        table = validate_request(settings, directory, request)
        assert replace(shown, notes=table.notes) == table
        assert any(note.startswith("Counted in resetbot's copy of the directory, read ")
                   for note in shown.notes)
        assert not any("copy" in note for note in table.notes)
    finally:
        directory.dispose()


@sqlite_only
def test_the_table_counts_when_the_copy_cannot(
    koha_sqlite: tuple[Settings, Engine]
) -> None:
    settings, engine = koha_sqlite
    create_borrowers(engine, BORROWERS)
    directory = SqlDirectory(Directory.from_settings(settings))
    now = [0.0]
    query = search_select(directory.sql)
    copy = SearchCopy(lambda: load_lines(directory.engine, query), 30.0, clock=lambda: now[0])
    counts = CopyCounts(copy, directory.sql)
    try:
        assert counts.preview(Scope.ALL, []) is None  # not read yet (a read starts)
        assert copy.wait_idle(10)
        assert counts.preview(Scope.ALL, []) is not None
        # A user added since the read: picked, so the table counts.
        with engine.begin() as connection:
            connection.execute(text(
                "INSERT INTO borrowers (borrowernumber, cardnumber, userid, surname, email, "
                "flags, login_attempts) VALUES (50, 'C0050', 'new', 'New', 'new@x.org', 0, 0)"))
        assert counts.preview(Scope.SELECTED_ONLY, ["1", "50"]) is None
        assert counts.usernames_in_password("new-pass", Scope.ALL_EXCEPT_SELECTED,
                                            ["50"]) is None
        assert counts.preview(Scope.SELECTED_ONLY, ["1", "3"]) is not None
        # A separator inside a username or an address: that user's facts are not the table's.
        with engine.begin() as connection:
            connection.execute(text(
                "UPDATE borrowers SET email = 'x\x1f@example.org' WHERE borrowernumber = 7"))
        now[0] = 31.0  # old: counted by the table, and read again in the background
        assert counts.preview(Scope.ALL, []) is None
        assert copy.wait_idle(10)
        assert counts.preview(Scope.ALL, []) is None
        assert counts.preview(Scope.SELECTED_ONLY, ["7"]) is None
        assert without_notes(counts.preview(Scope.SELECTED_ONLY, ["1", "50"])) == (
            directory.preview(Scope.SELECTED_ONLY, ["1", "50"]))
    finally:
        directory.dispose()


def test_a_copy_without_number_ids_or_from_rows_keeps_no_counts() -> None:
    """An LDAP directory's rows, or ids that are not numbers: the directory counts."""
    sep = SEPARATOR

    def line(user_id: str) -> str:
        return f"0000PT{sep}{user_id}{sep}ada{sep}Ada L{sep}C1{sep}ada@example.org{sep}"

    numbered = Snapshot.build([line("1"), line("2")], 0.0)
    assert numbered.facts is not None and numbered.facts.users_of([2]) is not None
    assert Snapshot.build([line("1"), line("uuid-2")], 0.0).facts is None
    assert Snapshot.build([line(str(2**70))], 0.0).facts is None
    rows = [SearchRow("1", "ada", "Ada L", None, "ada@example.org", False)]
    assert Snapshot.build(rows, 0.0).facts is None


def test_a_copy_being_read_again_still_counts_for_as_long_as_two_reads() -> None:
    """Opening the form starts a read of an old copy; a preview made meanwhile counts in the
    copy it replaces (up to two reads' time older), not in the table; past that, the table."""
    now = [0.0]
    sep = SEPARATOR
    lines = [f"0000PT{sep}{n}{sep}u{n}{sep}U{sep}C{n}{sep}u{n}@example.org{sep}"
             for n in range(1, 4)]
    reads: list[float] = []

    def read() -> Iterator[str]:
        reads.append(now[0])
        now[0] += 5.0  # a read takes 5 s: the copy is old after 50 s (READ_SHARE)
        yield from lines

    copy = SearchCopy(read, 30.0, clock=lambda: now[0])
    assert copy.reload() and reads == [0.0]
    now[0] = 55.0  # past 50 s: old, but within two reads of it
    assert copy.fresh() is not None
    assert copy.wait_idle(10) and reads == [0.0, 55.0]
    now[0] = 55.0 + 61.0  # the new copy (read at 55 s) is past 50 + 2 x 5 s old
    assert copy.fresh() is None
    assert copy.wait_idle(10) and len(reads) == 3
