"""The picker's in-memory search copy of a directory resetbot does not own."""

from __future__ import annotations

import logging
import threading
import unicodedata
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, inspect, select, update
from sqlalchemy.exc import OperationalError

from bench.koha import borrowers_table, populate_borrowers, search_select
from core.errors import ResetbotError
from core.gram_index import BLOCK, SEPARATOR_BYTE
from core.search_copy import (
    SEPARATOR,
    SearchCopy,
    SearchRow,
    SearchUnavailable,
    Snapshot,
    fold,
    load_lines,
    load_rows,
)
from tests.support.databases import mariadb_database, postgres_database

ROWS = [
    SearchRow("1", "amueller", "Anna Müller", "23019000000001", "anna.mueller@example.org", False),
    SearchRow("2", "bsmith", "Ben Smith", "23019000000002", None, True),
    SearchRow("3", "cdubois", "Chloé Dubois", None, "chloe@library.example.net", False),
    SearchRow("4", "23019000000004", "Dario Straße", "23019000000004", "", False),
    SearchRow("5", "Eve", "Eve Ångström", "5550004", "EVE@Students.Example.edu", True),
]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeDirectory:
    """Rows a test changes, read by the copy; a read can be made to fail or to wait."""

    def __init__(self, rows: list[SearchRow]) -> None:
        self.rows = list(rows)
        self.reads = 0
        self.failing: BaseException | None = None
        self.gate: threading.Event | None = None  # set: a read may finish
        self.reading = threading.Event()  # set once a read has begun

    def __call__(self) -> Iterator[SearchRow]:
        self.reads += 1
        self.reading.set()
        if self.gate is not None:
            assert self.gate.wait(10), "the test never let the read finish"
        if self.failing is not None:
            raise self.failing
        yield from list(self.rows)


def ids(rows: list[SearchRow]) -> list[int]:
    """The rows' ids as numbers (every directory in these tests numbers its users)."""
    return [int(row.id) for row in rows]


def down(secret: str = "hunter2-in-the-url") -> OperationalError:
    return OperationalError(f"SELECT ... password={secret}", {}, ConnectionRefusedError(secret))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def directory() -> FakeDirectory:
    return FakeDirectory(ROWS)


@pytest.fixture
def copy(directory: FakeDirectory, clock: Clock) -> SearchCopy:
    return SearchCopy(directory, max_age=30.0, clock=clock)


# -- matching -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("term", "expected"), [
    ("bsmi", [2]),                      # username
    ("ben s", [2]),                     # display name, across first name and surname
    ("dubois", [3]),                    # surname
    ("000000001", [1]),                 # card number
    ("5550004", [5]),                   # card number that is not a barcode
    ("@library.example", [3]),          # e-mail domain
    ("anna.mue", [1]),                  # e-mail local part
    ("2301900000000", [4, 1, 2]),       # a card number prefix: also a username here; by username
    ("nobody", []),
])
def test_a_term_matches_username_name_card_number_and_email(
    copy: SearchCopy, term: str, expected: list[int]
) -> None:
    assert ids(copy.search(term, 100)) == expected


@pytest.mark.parametrize(("term", "expected"), [
    ("MÜLLER", [1]), ("muller", [1]), ("Muller", [1]),
    ("chloe", [3]), ("CHLOÉ", [3]), ("Chlo\u0065\u0301", [3]),  # decomposed é
    ("strasse", [4]), ("STRASSE", [4]), ("straße", [4]),
    ("angstrom", [5]), ("ÅNGSTRÖM", [5]), ("students.EXAMPLE", [5]), ("eve@", [5]),
])
def test_case_and_accents_do_not_matter(copy: SearchCopy, term: str, expected: list[int]) -> None:
    assert ids(copy.search(term, 100)) == expected


def test_stored_text_in_decomposed_form_is_found_by_a_composed_term(clock: Clock) -> None:
    decomposed = unicodedata.normalize("NFD", "Zoë Ñúñez")
    copy = SearchCopy(
        lambda: [SearchRow("7", "znunez", decomposed, None, None, False)], 30.0, clock
    )
    assert ids(copy.search("zoë ñú", 10)) == [7]
    assert ids(copy.search("ZOE NUN", 10)) == [7]


def test_a_term_never_matches_across_two_fields_or_two_users(copy: SearchCopy) -> None:
    # "bsmith" + "Ben Smith": the end of one field and the start of the next
    assert copy.search("smithben", 100) == []
    # the last field of user 1 and the first of user 2
    assert copy.search("example.orgbsmith", 100) == []
    assert copy.search(f"smith{SEPARATOR}ben", 100) == []  # the separator is no way across


def test_surrounding_blanks_are_ignored_and_inner_ones_kept(copy: SearchCopy) -> None:
    assert ids(copy.search("  Ben Smith \n", 100)) == [2]
    assert copy.search("Ben  Smith", 100) == []


def test_at_most_limit_results_the_first_in_the_directory_shown_by_username(
    clock: Clock,
) -> None:
    rows = [SearchRow(str(i), f"user{i:03d}", f"Maria {i}", None, None, False)
            for i in range(300, 0, -1)]
    copy = SearchCopy(lambda: rows, 30.0, clock)
    found = copy.search("maria", 5)
    assert [r.username for r in found] == ["user296", "user297", "user298", "user299", "user300"]
    assert len(copy.search("maria", 100)) == 100
    assert copy.search("maria", 0) == []


def test_an_empty_term_gives_the_first_users_by_username_ignoring_case(
    copy: SearchCopy,
) -> None:
    assert [r.username for r in copy.search("", 3)] == ["amueller", "bsmith", "cdubois"]
    assert [r.username for r in copy.search("   ", 100)][-1] == "Eve"
    assert [r.username for r in copy.search("", 100)][-2:] == ["cdubois", "Eve"]
    assert copy.search("", 100)[0].username == "23019000000004"


def test_a_username_sorts_before_the_longer_ones_it_begins(clock: Clock) -> None:
    rows = [SearchRow("1", "anna", "", None, None, False),
            SearchRow("2", "ann", "", None, None, False),
            SearchRow("3", "Anne", "", None, None, False),
            SearchRow("4", "an", "", None, None, False)]
    copy = SearchCopy(lambda: rows, 30.0, clock)
    assert [r.username for r in copy.search("an", 10)] == ["an", "ann", "anna", "Anne"]


usernames = st.text(alphabet="abAB éÉeßsS", min_size=1, max_size=6)
texts = st.text(alphabet="abAB éÉeßsS@.1", max_size=8)


@settings(max_examples=200, deadline=None)
@given(
    people=st.lists(st.tuples(usernames, texts, st.none() | texts, st.none() | texts),
                    max_size=25, unique_by=lambda p: fold(p[0])),
    term=st.text(alphabet="abAB éÉeßsS@.1", max_size=6),
    limit=st.integers(min_value=1, max_value=30),
    block=st.sampled_from([3, 5, 8, 16, 4096]),
)
def test_search_equals_a_plain_filter_over_every_field(
    people: list[tuple[str, str, str | None, str | None]], term: str, limit: int, block: int
) -> None:
    """Whatever the index's block size (tiny ones put every term across blocks)."""
    rows = [SearchRow(str(i), username, name, card or None, email or None, i % 3 == 0)
            for i, (username, name, card, email) in enumerate(people)]
    snapshot = Snapshot.build(rows, loaded_at=0.0, block=block)
    needle = fold(term.strip())
    expected = [
        row for row in rows if any(needle in fold(field or "") for field in row[1:5])
    ][:limit]
    expected.sort(key=lambda r: (fold(r.username), r.username))
    assert snapshot.search(term, limit) == expected


# -- refreshing ---------------------------------------------------------------------------------


def test_a_change_shows_once_the_copy_is_older_than_max_age(
    copy: SearchCopy, directory: FakeDirectory, clock: Clock
) -> None:
    assert ids(copy.search("ben smith", 100)) == [2]
    directory.rows[1] = ROWS[1]._replace(display_name="Ben Jones")
    clock.now += 29.9
    assert ids(copy.search("ben smith", 100)) == [2]  # young enough: not read again
    assert directory.reads == 1
    clock.now += 0.1
    assert ids(copy.search("ben smith", 100)) == [2]  # old: this search still gets the old copy...
    assert copy.wait_idle(10)
    assert directory.reads == 2  # ...while the directory is read again in the background
    assert copy.search("ben smith", 100) == []
    assert ids(copy.search("ben jones", 100)) == [2]
    assert copy.loaded_at == clock.now


def test_age_counts_from_when_the_read_began(directory: FakeDirectory, clock: Clock) -> None:
    def slow_read() -> Iterator[SearchRow]:
        clock.now += 2.0  # the read itself takes 2 s (ten times that is under max_age)
        yield from directory()

    copy = SearchCopy(slow_read, 30.0, clock)
    assert copy.reload()
    assert copy.loaded_at == 1000.0
    clock.now = 1030.0
    copy.search("x", 1)
    assert copy.wait_idle(10)
    assert directory.reads == 2


def test_refresh_if_stale_reads_in_the_background_only_when_old(
    copy: SearchCopy, directory: FakeDirectory, clock: Clock
) -> None:
    copy.refresh_if_stale()  # no copy yet: the first read starts without waiting
    assert copy.wait_idle(10)
    assert directory.reads == 1 and len(copy) == 5
    copy.refresh_if_stale()
    assert copy.wait_idle(10)
    assert directory.reads == 1
    clock.now += 31
    copy.refresh_if_stale()
    assert copy.wait_idle(10)
    assert directory.reads == 2


def test_a_search_during_the_first_read_waits_for_it_rather_than_reading_again(
    copy: SearchCopy, directory: FakeDirectory
) -> None:
    directory.gate = threading.Event()
    copy.refresh_if_stale()  # at start: the first read, in the background
    assert directory.reading.wait(10)
    with ThreadPoolExecutor(1) as pool:
        searching = pool.submit(copy.search, "smith", 100)
        directory.gate.set()
        assert ids(searching.result(10)) == [2]
    assert directory.reads == 1


def test_a_failed_read_keeps_the_old_copy_and_is_logged_once_per_streak(
    copy: SearchCopy, directory: FakeDirectory, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="core.search_copy")
    assert copy.reload()
    directory.failing = down()
    for _ in range(3):
        clock.now += 31
        assert ids(copy.search("smith", 100)) == [2]
        assert copy.wait_idle(10)
    assert directory.reads == 4
    failures = [r for r in caplog.records if "failed" in r.getMessage()]
    assert len(failures) == 1
    assert "OperationalError from ConnectionRefusedError" in failures[0].getMessage()
    assert "previous copy" in failures[0].getMessage()
    assert "hunter2" not in caplog.text

    directory.failing = None
    directory.rows.append(SearchRow("6", "fnew", "Fay New", None, None, False))
    clock.now += 5  # past the pause after a failed read
    assert ids(copy.search("fay", 100)) == []  # still stale: this one starts the read
    assert copy.wait_idle(10)
    assert ids(copy.search("fay", 100)) == [6]
    assert "after 3 failed attempt(s)" in caplog.text

    directory.failing = down()  # a new streak is told again
    clock.now += 31
    copy.search("x", 1)
    assert copy.wait_idle(10)
    assert len([r for r in caplog.records if "reading the directory failed" in r.getMessage()]) == 2


def test_a_search_before_any_read_succeeded_says_search_is_unavailable(
    copy: SearchCopy, directory: FakeDirectory, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="core.search_copy")
    directory.failing = down()
    with pytest.raises(SearchUnavailable, match="not available") as raised:
        copy.search("smith", 100)  # the very first read, made while this search waits
    assert isinstance(raised.value, ResetbotError)
    assert "hunter2" not in str(raised.value) and "hunter2" not in caplog.text
    assert "not available until a read succeeds" in caplog.text
    assert directory.reads == 1
    directory.failing = None
    with pytest.raises(SearchUnavailable):
        copy.search("smith", 100)  # within the pause after a failure: not even tried
    assert copy.wait_idle(0) and directory.reads == 1
    clock.now += 5
    with pytest.raises(SearchUnavailable):
        copy.search("smith", 100)  # no longer waits: starts a read in the background
    assert copy.wait_idle(10)
    assert directory.reads == 2
    assert ids(copy.search("smith", 100)) == [2]  # the directory is back: so is search


def test_after_a_failed_read_the_next_waits_retry_after(
    directory: FakeDirectory, clock: Clock
) -> None:
    copy = SearchCopy(directory, max_age=30.0, clock=clock, retry_after=10.0)
    assert copy.reload()
    directory.failing = down()
    clock.now += 30
    copy.search("x", 1)
    assert copy.wait_idle(10) and directory.reads == 2
    clock.now += 9.9
    copy.search("x", 1)
    copy.refresh_if_stale()
    assert copy.wait_idle(10) and directory.reads == 2
    clock.now += 0.1
    copy.search("x", 1)
    assert copy.wait_idle(10) and directory.reads == 3
    assert not copy.reload()  # asked for explicitly: read at once
    assert directory.reads == 4


def test_the_first_search_reads_the_directory_and_waits_for_it(
    copy: SearchCopy, directory: FakeDirectory
) -> None:
    assert copy.loaded_at is None and len(copy) == 0
    assert ids(copy.search("smith", 100)) == [2]
    assert directory.reads == 1 and len(copy) == 5


def test_first_searches_at_once_share_one_read(
    copy: SearchCopy, directory: FakeDirectory
) -> None:
    directory.gate = threading.Event()
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(copy.search, "smith", 100) for _ in range(8)]
        assert directory.reading.wait(10)
        directory.gate.set()
        results = [f.result(10) for f in futures]
    assert all(ids(r) == [2] for r in results)
    assert directory.reads == 1


def test_searches_during_a_reload_use_the_old_copy_without_waiting(
    copy: SearchCopy, directory: FakeDirectory, clock: Clock
) -> None:
    assert copy.reload()
    directory.rows[1] = ROWS[1]._replace(username="bjones")
    directory.gate = threading.Event()
    directory.reading.clear()
    clock.now += 31
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: copy.search("bsmith", 100), range(200)))
        # every search above finished while the read is still held at its gate
        assert directory.reading.wait(10) and not directory.gate.is_set()
        assert not copy.wait_idle(0)
    assert all(ids(r) == [2] for r in results)
    assert directory.reads == 2  # 200 stale searches, one background read
    directory.gate.set()
    assert copy.wait_idle(10)
    assert copy.search("bsmith", 100) == []
    assert ids(copy.search("bjones", 100)) == [2]


def test_reload_now_replaces_the_copy_in_this_thread(
    copy: SearchCopy, directory: FakeDirectory
) -> None:
    assert copy.reload()
    directory.rows = directory.rows[:2]
    assert copy.reload()
    assert len(copy) == 2
    assert ids(copy.search("", 100)) == [1, 2]


# -- reading a real table -----------------------------------------------------------------------

KOHA_ROWS: list[dict[str, object]] = [
    # a patron signing in with a userid
    {"borrowernumber": 1, "cardnumber": "23019000000001", "userid": "amueller",
     "firstname": "Anna", "surname": "Müller", "email": "anna@example.org", "flags": 0},
    # no userid: Koha signs her in with the card number; no e-mail at all
    {"borrowernumber": 2, "cardnumber": "23019000000002", "userid": None,
     "firstname": "Zoë", "surname": "Ñúñez", "email": None, "flags": None},
    # staff, empty userid, empty e-mail, no first name
    {"borrowernumber": 3, "cardnumber": "23019000000003", "userid": "",
     "firstname": None, "surname": "Okafor", "email": "", "flags": 4},
    {"borrowernumber": 4, "cardnumber": None, "userid": "library.admin",
     "firstname": "Lib", "surname": "Admin", "email": "admin@library.example", "flags": 1},
]


def koha_database(kind: str, tmp_path: Path) -> AbstractContextManager[str]:
    if kind == "mariadb":
        return mariadb_database()
    if kind == "postgresql":
        return postgres_database()
    return nullcontext(f"sqlite:///{tmp_path / 'koha.db'}")


@pytest.mark.parametrize("kind", [
    "sqlite",
    pytest.param("postgresql", marks=pytest.mark.postgres),
    pytest.param("mariadb", marks=pytest.mark.services),
])
def test_load_rows_reads_a_koha_borrowers_table(kind: str, tmp_path: Path) -> None:
    with koha_database(kind, tmp_path) as url:
        engine = create_engine(url)
        try:
            table, _seconds = populate_borrowers(engine, 0)
            with engine.begin() as connection:
                for row in KOHA_ROWS:
                    connection.execute(table.insert().values(
                        branchcode="MAIN", categorycode="PT", login_attempts=0, **row))
            tables_before = sorted(inspect(engine).get_table_names())
            query = search_select(table)
            rows = sorted(load_rows(engine, query, batch=2), key=lambda r: r.id)
            assert rows == [  # ids as resetbot keeps them: text
                SearchRow("1", "amueller", "Anna Müller", "23019000000001", "anna@example.org",
                          False),
                SearchRow("2", "23019000000002", "Zoë Ñúñez", "23019000000002", None, False),
                SearchRow("3", "23019000000003", "Okafor", "23019000000003", None, True),
                SearchRow("4", "library.admin", "Lib Admin", None, "admin@library.example",
                          True),
            ]

            clock = Clock()
            copy = SearchCopy(lambda: load_lines(engine, query), 30.0, clock)
            assert copy.reload()
            assert ids(copy.search("nunez", 10)) == [2]
            assert ids(copy.search("23019", 10)) == [2, 3, 1]  # shown by username
            assert ids(copy.search("MULLER", 10)) == [1]
            with engine.begin() as connection:
                connection.execute(update(table).where(table.c.borrowernumber == 1)
                                   .values(surname="Schmidt"))
            clock.now += 30
            assert ids(copy.search("muller", 10)) == [1]
            assert copy.wait_idle(10)
            assert copy.search("muller", 10) == []
            assert ids(copy.search("schmidt", 10)) == [1]
            # reading the directory changed nothing in it
            assert sorted(inspect(engine).get_table_names()) == tables_before == ["borrowers"]
            with engine.connect() as connection:
                assert connection.execute(select(table.c.surname).where(
                    table.c.borrowernumber == 2)).scalar_one() == "Ñúñez"
        finally:
            engine.dispose()


@pytest.mark.services
def test_a_directory_that_goes_away_keeps_the_copy_and_comes_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="core.search_copy")
    with mariadb_database() as url:
        engine = create_engine(url)
        table = borrowers_table()
        populate_borrowers(engine, 50)
        clock = Clock()
        engines = [engine]  # where the copy reads from: the server, then a port nobody serves
        copy = SearchCopy(lambda: load_rows(engines[0], search_select(table)), 30.0, clock)
        assert copy.reload() and len(copy) == 50
        engine.dispose()
        engines[0] = create_engine(url.replace("127.0.0.1:3306", "127.0.0.1:1"))
        clock.now += 30
        before = copy.search("", 100)
        assert copy.wait_idle(10)
        assert copy.search("", 100) == before and len(before) == 50
        assert "reading the directory failed (OperationalError from OperationalError)" in (
            caplog.text)
        assert "root" not in caplog.text and "3306" not in caplog.text
        engines[0].dispose()


def test_a_read_again_completes_while_searches_run_back_to_back(tmp_path: Path) -> None:
    """SQLite's driver gives the interpreter back at every row it fetches, and a search holds
    it for as long as its `bytes.find` runs: left alone, each row of a read again waited for a
    search to end (144 s for 100,000 users under back-to-back searches). The read and the
    searches take turns: the read ends while a thread keeps searching without a pause, and
    every search meanwhile answers from the old or the new copy, whole."""
    engine = create_engine(f"sqlite:///{tmp_path / 'koha.db'}")
    try:
        table, _seconds = populate_borrowers(engine, 20_000)
        query = search_select(table)
        clock = Clock()
        copy = SearchCopy(lambda: load_lines(engine, query), 30.0, clock)
        assert copy.reload() and len(copy) == 20_000
        [first] = copy.search("", 1)
        first_id = int(first.id)
        with engine.begin() as connection:
            connection.execute(update(table).where(table.c.borrowernumber == first_id)
                               .values(surname="Zwiebelkuchen"))
        stop = threading.Event()
        answers: list[list[int]] = []

        def search_back_to_back() -> None:
            terms = ("zwiebelkuchen", "qqqq-a-miss", first.username, "a")
            while not stop.is_set():
                for term in terms:
                    answers.append(ids(copy.search(term, 100)))

        clock.now += 30
        assert copy.search("zwiebelkuchen") == []  # stale: answered, and read again meanwhile
        searcher = threading.Thread(target=search_back_to_back)
        searcher.start()
        try:
            read_ended = copy.wait_idle(120)
            during = len(answers)
        finally:
            stop.set()
            searcher.join(30)
        assert read_ended, "the read again never ended under back-to-back searches"
        assert not searcher.is_alive()
        assert during > 0  # the searches went on meanwhile
        assert copy.loaded_at == clock.now and len(copy) == 20_000
        assert ids(copy.search("zwiebelkuchen", 100)) == [first_id]
        # each search saw one copy whole: the old one (no match) or the new one (her alone)
        assert {tuple(answer) for answer in answers[0::4]} <= {(), (first_id,)}
        assert all(answer == [] for answer in answers[1::4])
        assert all(first_id in answer for answer in answers[2::4])
        assert all(len(answer) == 100 for answer in answers[3::4])
    finally:
        engine.dispose()


def test_a_copy_slow_to_read_is_read_again_at_most_a_tenth_of_the_time(clock: Clock) -> None:
    """A million users take seconds of the app's CPU to read: with a read every 30 s the app
    would do little else. A copy whose read took 10 s is read again once 100 s old, not 30."""
    reads = [0]

    def slow_rows() -> Iterator[SearchRow]:
        reads[0] += 1
        clock.now += 10  # the read takes 10 s
        yield from ROWS

    copy = SearchCopy(slow_rows, max_age=30.0, clock=clock)
    assert copy.reload() and reads == [1]
    loaded_at = copy.loaded_at
    assert loaded_at is not None
    clock.now = loaded_at + 31
    assert ids(copy.search("bsmith")) == [2]
    copy.refresh_if_stale()
    assert copy.wait_idle(10) and reads == [1]  # older than max_age, but not read again
    clock.now = loaded_at + 100
    assert ids(copy.search("bsmith")) == [2]
    assert copy.wait_idle(10) and reads == [2]


# -- the index ----------------------------------------------------------------------------------


def test_a_rare_term_is_looked_for_in_few_blocks_and_a_miss_in_none() -> None:
    rows = [SearchRow(str(i), f"reader{i:05d}", f"Ann Lee {i}", f"2301900{i:07d}",
                      f"reader{i}@example.org", False) for i in range(3000)]
    snapshot = Snapshot.build(rows, loaded_at=0.0)
    assert snapshot.index.block_count > 50
    spans = list(snapshot.index.spans(b"reader01234") or [])
    assert 1 <= len(spans) <= 2 and sum(end - start for start, end in spans) <= 3 * BLOCK
    assert [row.id for row in snapshot.search("READER01234", 10)] == ["1234"]
    assert list(snapshot.index.spans(b"zqxw") or ["scan"]) == []
    assert snapshot.search("zqxw", 10) == []
    assert snapshot.index.spans(b"an") is None  # shorter than a trigram: everywhere


def test_the_index_leaves_out_the_copys_separator() -> None:
    assert ord(SEPARATOR) == SEPARATOR_BYTE


def test_an_empty_directory_gives_an_empty_copy(clock: Clock) -> None:
    copy = SearchCopy(lambda: [], 30.0, clock)
    assert copy.search("anything", 10) == [] and copy.search("", 10) == []
    assert len(copy) == 0
