"""CSV import and export of the directory: all or nothing, line numbers, spreadsheet safety."""

from __future__ import annotations

import csv
import io
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy import Engine, delete, insert, select
from sqlalchemy.orm import Session, sessionmaker

from core.directory import Directory
from core.models import AuditEntry
from core.userio import (
    HEADER,
    MAX_REPORTED_PROBLEMS,
    ImportRefused,
    UserRow,
    column_limits,
    decode,
    export_users,
    import_users,
    parse_users_csv,
)

# Claims, locks and DDL differ between databases: these run on MariaDB too.
pytestmark = pytest.mark.every_database

CSV_HEADER = "username,full_name,email,role\r\n"


def _users(engine: Engine, directory: Directory) -> list[tuple[Any, ...]]:
    """Everything an import could change, to prove a refused one changed nothing."""
    c = directory.table.c
    query = select(
        c.id, c.username, c.full_name, c.email, c.role, c.password_hash, c.must_change_password
    ).order_by(c.id)
    with engine.connect() as connection:
        return [tuple(row) for row in connection.execute(query)]


def _import(sessions: sessionmaker[Session], directory: Directory, data: bytes) -> Any:
    with sessions.begin() as session:
        return import_users(session, directory, data, actor="cli:tester")


def _refusal(
    sessions: sessionmaker[Session], engine: Engine, directory: Directory, data: bytes
) -> ImportRefused:
    before = _users(engine, directory)
    with pytest.raises(ImportRefused) as refused:
        _import(sessions, directory, data)
    assert _users(engine, directory) == before, "a refused import must change nothing"
    return refused.value


# -- importing --------------------------------------------------------------------------------


def test_import_creates_new_users_and_updates_known_ones_without_touching_passwords(
    engine: Engine, sessions: sessionmaker[Session], directory: Directory, sample_users: Any
) -> None:
    data = (
        CSV_HEADER
        + "alice,Alice A. Archer,alice@example.org,\r\n"  # name changed
        + "bob,Bob Binder,bob@example.org,\r\n"  # unchanged ("" role is no role)
        + "dave,Dave Dewey,dave@example.org,librarian\r\n"  # gains an address and a role
        + "zoe,Zoë Zeller,zoe@example.org,\r\n"  # new
        + "\r\n"  # a blank line is skipped
        + ",,,\r\n"  # and so is a row of empty cells, as spreadsheets write them
    ).encode()
    result = _import(sessions, directory, data)
    assert (result.created, result.updated, result.unchanged) == (1, 2, 1)
    rows = {row[1]: row for row in _users(engine, directory)}
    assert rows["alice"][2] == "Alice A. Archer"
    assert rows["alice"][5] == "old-hash" and rows["alice"][6] is False
    assert rows["dave"][3:5] == ("dave@example.org", "librarian")
    assert rows["zoe"][2:6] == ("Zoë Zeller", "zoe@example.org", None, None)
    assert len(rows) == 8
    with sessions() as session:
        entry = session.scalars(select(AuditEntry)).one()
    assert (entry.actor, entry.action) == ("cli:tester", "users_import")
    assert entry.detail == {"created": 1, "updated": 2, "unchanged": 1}


def test_the_header_may_come_in_any_order_and_case_and_leave_out_role(
    engine: Engine, sessions: sessionmaker[Session], directory: Directory, sample_users: Any
) -> None:
    data = (
        b"EMAIL, Username ,Full_Name\r\n"
        b"carol@example.org,carol,Carol C. Cataloguer\r\n"  # staff: her role must stay
        b"yan@example.org,yan,Yan Young\r\n"
    )
    result = _import(sessions, directory, data)
    assert (result.created, result.updated, result.unchanged) == (1, 1, 0)
    rows = {row[1]: row for row in _users(engine, directory)}
    assert rows["carol"][2:5] == ("Carol C. Cataloguer", "carol@example.org", "librarian")
    assert rows["yan"][2:5] == ("Yan Young", "yan@example.org", None)
    reordered = "role,email,full_name,username\r\nadmin,yan@example.org,Yan Young,yan\r\n"
    assert _import(sessions, directory, reordered.encode()).updated == 1
    assert {row[1]: row for row in _users(engine, directory)}["yan"][4] == "admin"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("username,full_name,role", "no email column"),
        ("username,full_name,email,e-mail", "unknown column 'e-mail'"),
        ("username,Email,full_name,EMAIL", "email more than once"),
    ],
)
def test_a_header_missing_doubling_or_inventing_a_column_is_refused(
    engine: Engine, sessions: sessionmaker[Session], directory: Directory, sample_users: Any,
    header: str, expected: str,
) -> None:
    data = f"{header}\r\nalice,Alice,alice@example.org,\r\n".encode()
    refused = _refusal(sessions, engine, directory, data)
    assert refused.problems[0].line == 1 and expected in refused.problems[0].message


def test_utf8_bom_and_lf_line_ends_are_accepted(
    engine: Engine, sessions: sessionmaker[Session], directory: Directory
) -> None:
    data = "\ufeffusername,full_name,email,role\nana,Ana Ñúñez,,\n".encode()
    assert _import(sessions, directory, data).created == 1
    assert _users(engine, directory)[0][1:5] == ("ana", "Ana Ñúñez", None, None)


def test_every_bad_row_is_reported_with_its_line_and_nothing_is_imported(
    engine: Engine, sessions: sessionmaker[Session], directory: Directory, sample_users: Any
) -> None:
    data = (
        CSV_HEADER
        + "newbie,New Bie,newbie@example.org,\r\n"  # line 2: fine, but must not be imported
        + ",No Name,nn@example.org,\r\n"  # 3: missing username
        + "mal,Mal Formed,not-an-address,\r\n"  # 4: malformed e-mail
        + "newbie,Again,again@example.org,\r\n"  # 5: duplicate of line 2
        + "short,Too Few\r\n"  # 6: wrong column count
        + '"multi","Two\r\nLines",ml@example.org,\r\n'  # 7-8: a line break inside a field
        + "long," + "x" * 300 + ",long@example.org,\r\n"  # 9: over-long name
        + "formula,=HYPERLINK(\"http://evil\"),f@example.org,\r\n"  # 10: formula
        + "tabby,Tab\tBy,tab@example.org,\r\n"  # 11: control character
    ).encode()
    refused = _refusal(sessions, engine, directory, data)
    by_line = {problem.line: problem.message for problem in refused.problems}
    assert sorted(by_line) == [3, 4, 5, 6, 7, 9, 10, 11]
    assert "username is missing" in by_line[3]
    assert "not a valid e-mail address" in by_line[4]
    assert "also on line 2" in by_line[5]
    assert "expected 4 fields, found 2" in by_line[6]
    assert "line break" in by_line[7]
    assert "at most 255" in by_line[9]
    assert "formula" in by_line[10]
    assert "control character" in by_line[11]
    assert str(refused).startswith("Nothing was imported: 8 problems in the file.")
    assert "line 10: full_name" in str(refused)


def test_many_bad_rows_are_listed_up_to_a_cap(
    engine: Engine, sessions: sessionmaker[Session], directory: Directory
) -> None:
    data = (CSV_HEADER + "".join(f",nameless {i},,\r\n" for i in range(50))).encode()
    refused = _refusal(sessions, engine, directory, data)
    assert refused.total == 50
    assert len(refused.problems) == MAX_REPORTED_PROBLEMS
    assert str(refused).endswith(f"... and {50 - MAX_REPORTED_PROBLEMS} more")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (CSV_HEADER.encode() + b"rene,Ren\xe9 L,,\r\n", "line 2: byte 0xe9 is not UTF-8"),
        ("username,full_name,email,role\r\n".encode("utf-16"), "UTF-16"),
        (b"", "The file is empty"),
        (b"user,name,mail,role\r\n",
         "line 1: the header must name the columns username, full_name, email and, if you like, "
         "role, in any order (no username or full_name or email column; unknown columns 'user', "
         "'name', 'mail' in 'user,name,mail,role')"),
        (b"username;full_name;email;role\r\n", "separate the columns with commas"),
        (b'username,full_name,email,role\r\nq,"bad"quote,,\r\n', "line 2: the CSV cannot be read"),
    ],
    ids=["latin-1", "utf-16", "empty", "wrong-header", "semicolons", "broken-quote"],
)
def test_unreadable_files_are_refused_clearly(
    engine: Engine, sessions: sessionmaker[Session], directory: Directory, sample_users: Any,
    data: bytes, expected: str,
) -> None:
    refused = _refusal(sessions, engine, directory, data)
    assert expected in str(refused)


@pytest.mark.parametrize(
    "cell", ["=1+1", "+cmd", "-2+3", "@SUM(A1)", " =HYPERLINK(\"x\")"],
)
def test_formula_looking_cells_are_refused_in_every_column(cell: str) -> None:
    limits = {name: 255 for name in HEADER}
    for column in range(4):
        fields = ["user", "Name", "u@example.org", "staff"]
        fields[column] = cell
        text = "username,full_name,email,role\n" + _csv_line(fields)
        with pytest.raises(ImportRefused) as refused:
            parse_users_csv(text, limits)
        assert refused.value.problems[0].line == 2
        assert "formula" in refused.value.problems[0].message


# -- exporting --------------------------------------------------------------------------------


def test_export_writes_the_import_format_and_neutralises_formulas(
    engine: Engine, sessions: sessionmaker[Session], directory: Directory, sample_users: Any
) -> None:
    with engine.begin() as connection:  # a value the library system itself let in
        connection.execute(
            insert(directory.table),
            [{"username": "mallory", "full_name": '=HYPERLINK("http://evil","x")',
              "email": None, "role": "@admin", "must_change_password": False}],
        )
    exported = export_users(directory)
    rows = list(csv.reader(io.StringIO(exported)))
    assert rows[0] == list(HEADER)
    assert [row[0] for row in rows[1:]] == [*sorted(u[1] for u in sample_users), "mallory"]
    assert rows[4] == ["dave", "Dave Dewey", "", ""]
    assert rows[-1] == ["mallory", "'=HYPERLINK(\"http://evil\",\"x\")", "", "'@admin"]
    assert all(not cell.startswith(("=", "+", "-", "@")) for row in rows for cell in row)
    assert "old-hash" not in exported


def test_export_then_import_changes_nothing(
    engine: Engine, sessions: sessionmaker[Session], directory: Directory, sample_users: Any
) -> None:
    before = _users(engine, directory)
    exported = export_users(directory)
    result = _import(sessions, directory, exported.encode())
    assert (result.created, result.updated, result.unchanged) == (0, 0, len(sample_users))
    assert _users(engine, directory) == before


@pytest.mark.slow
def test_a_hundred_thousand_rows_import_in_batches(
    engine: Engine, sessions: sessionmaker[Session], directory: Directory,
) -> None:
    count = 100_000
    lines = [CSV_HEADER] + [
        f"user{i:06d},User Number {i},user{i}@example.org,{'staff' if i % 50 == 0 else ''}\r\n"
        for i in range(count)
    ]
    data = "".join(lines).encode()
    started = time.perf_counter()
    assert _import(sessions, directory, data).created == count
    first = time.perf_counter() - started
    lines[1] = "user000000,Renamed,user0@example.org,\r\n"
    started = time.perf_counter()
    result = _import(sessions, directory, "".join(lines).encode())
    second = time.perf_counter() - started
    assert (result.created, result.updated, result.unchanged) == (0, 1, count - 1)
    print(f"\n{engine.dialect.name}: 100,000 new rows {first:.1f} s, re-import {second:.1f} s")
    assert [u.username for u in directory.search("renamed")] == ["user000000"]


# -- properties -------------------------------------------------------------------------------

_NAME_CHARS = st.characters(
    blacklist_categories=("Cc", "Cs", "Zl", "Zp"),
    blacklist_characters="\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069",
)
usernames = st.from_regex(r"[a-z0-9][a-z0-9._]{0,15}", fullmatch=True)
names = st.text(_NAME_CHARS, max_size=40).map(str.strip).filter(
    lambda name: not name.startswith(("=", "+", "-", "@"))
)
emails = st.one_of(
    st.none(),
    st.from_regex(r"[a-z0-9][a-z0-9.+_]{0,10}@[a-z0-9]{1,10}\.(org|net|de)", fullmatch=True),
)
roles = st.sampled_from([None, "librarian", "admin", "Circulation desk"])
user_rows = st.lists(
    st.builds(UserRow, username=usernames, full_name=names, email=emails, role=roles),
    max_size=25,
    unique_by=lambda row: row.username,
)


def _csv_line(fields: list[str]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerow(fields)
    return buffer.getvalue()


def _as_csv(rows: list[UserRow]) -> str:
    return CSV_HEADER + "".join(
        _csv_line([row.username, row.full_name, row.email or "", row.role or ""]) for row in rows
    )


LIMITS: dict[str, int | None] = {"username": 255, "full_name": 255, "email": 320, "role": 64}


PROPERTY_SETTINGS = hypothesis_settings(max_examples=40, deadline=None)


@PROPERTY_SETTINGS
@given(user_rows)
def test_property_valid_files_parse_to_exactly_their_rows(rows: list[UserRow]) -> None:
    assert parse_users_csv(decode(_as_csv(rows).encode("utf-8-sig")), LIMITS) == rows


CORRUPTIONS = {
    # (a full name kept, or the line would be all empty cells: a blank line, skipped)
    "missing username": lambda f: ["", f[1] or "Someone", *f[2:]],
    "malformed email": lambda f: [f[0], f[1], "no-at-sign.example.org", f[3]],
    "extra column": lambda f: [*f, "surplus"],
    "missing column": lambda f: f[:3],
    "line break": lambda f: [f[0], "two\nlines", f[2], f[3]],
    "formula": lambda f: [f[0], "=HYPERLINK(\"http://x\")", f[2], f[3]],
    "too long": lambda f: [f[0], "n" * 256, f[2], f[3]],
}


@PROPERTY_SETTINGS
@given(user_rows.filter(bool), st.data(), st.sampled_from(sorted(CORRUPTIONS)))
def test_property_one_bad_row_is_found_at_its_line(
    rows: list[UserRow], data: st.DataObject, corruption: str
) -> None:
    index = data.draw(st.integers(0, len(rows) - 1))
    lines = [CSV_HEADER]
    for position, row in enumerate(rows):
        fields = [row.username, row.full_name, row.email or "", row.role or ""]
        if position == index:
            fields = CORRUPTIONS[corruption](fields)
        lines.append(_csv_line(fields))
    with pytest.raises(ImportRefused) as refused:
        parse_users_csv("".join(lines), LIMITS)
    assert [problem.line for problem in refused.value.problems] == [index + 2]


@PROPERTY_SETTINGS
@given(user_rows.filter(lambda rows: len(rows) >= 2), st.data())
def test_property_a_repeated_username_is_refused(rows: list[UserRow], data: st.DataObject) -> None:
    first, second = sorted(data.draw(st.lists(st.integers(0, len(rows) - 1), min_size=2,
                                              max_size=2, unique=True)))
    rows = list(rows)
    rows[second] = UserRow(rows[first].username, "Someone else", None, None)
    with pytest.raises(ImportRefused) as refused:
        parse_users_csv(_as_csv(rows), LIMITS)
    assert [(p.line, f"line {first + 2}" in p.message) for p in refused.value.problems] == [
        (second + 2, True)
    ]


@hypothesis_settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rows=user_rows)
def test_property_import_then_export_round_trips(
    engine: Engine, sessions: sessionmaker[Session], directory: Directory, rows: list[UserRow]
) -> None:
    with engine.begin() as connection:
        connection.execute(delete(directory.table))
    _import(sessions, directory, _as_csv(rows).encode())
    exported = export_users(directory)
    # Compared in Python's order: the database's collation may sort differently.
    by_username = lambda row: row.username  # noqa: E731
    assert sorted(parse_users_csv(exported, column_limits(directory)), key=by_username) == sorted(
        rows, key=by_username
    )
