"""Importing and exporting the directory as CSV: `username,full_name,email,role`.

An import's header names the columns in any order and any case; `role` may be left out, and
then every user keeps the role they have (new users get none).

An import is all or nothing: every row is checked first and, if any is bad, nothing is written and
each problem is reported with its line number. Cells that a spreadsheet would run as a formula
(starting with = + - @) are refused, not rewritten: resetbot puts these values into mails and Slack
messages, so it will not guess what a cell was meant to say. Exports go through
`core.csvsafe.to_csv` and are safe to open in a spreadsheet.
"""

from __future__ import annotations

import csv
import io
import re
import secrets
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import (
    Column,
    Connection,
    MetaData,
    String,
    Table,
    exists,
    false,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session

from core import audit
from core.controls import has_unsafe
from core.csvsafe import to_csv
from core.directory import Directory
from core.directory.protocol import Directory as AnyDirectory
from core.directory.sql import SqlDirectory, as_protocol
from core.errors import InputError
from core.passwords import normalised

T = TypeVar("T")
HEADER = ("username", "full_name", "email", "role")
#: Columns an import may leave out; their values in the directory are then left as they are.
OPTIONAL_COLUMNS = frozenset({"role"})
#: Problems listed in one refusal; the rest are counted.
MAX_REPORTED_PROBLEMS = 20
#: Rows per SELECT / executemany round trip.
BATCH_SIZE = 1000
FORMULA_STARTS = ("=", "+", "-", "@")
_SPACE = re.compile(r"\s")
_EMAIL = re.compile(
    r"[^\s@<>()\[\],;:\"\\]+"  # local part: no spaces, no characters that need quoting
    r"@(?:[^\W_](?:[\w-]*[^\W_])?\.)+[^\W\d_]{2,}",  # domain: dotted labels, alphabetic TLD
)


@dataclass(frozen=True)
class UserRow:
    username: str
    full_name: str
    email: str | None
    role: str | None  # None also when the file has no role column (see UsersFile.columns)


class UsersFile(list[UserRow]):
    """The checked rows of an import file, and which columns the file gave."""

    def __init__(self, rows: Sequence[UserRow] = (), columns: Sequence[str] = HEADER) -> None:
        super().__init__(rows)
        self.columns = tuple(columns)


@dataclass(frozen=True)
class RowProblem:
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}" if self.line else self.message


class ImportRefused(InputError):
    """The file was refused as a whole; `problems` says where and why (the first ones)."""

    def __init__(self, problems: Sequence[RowProblem], total: int | None = None) -> None:
        self.problems = list(problems)[:MAX_REPORTED_PROBLEMS]
        self.total = len(problems) if total is None else total
        lines = [str(problem) for problem in self.problems]
        if self.total > len(self.problems):
            lines.append(f"... and {self.total - len(self.problems)} more")
        noun = "problem" if self.total == 1 else "problems"
        super().__init__(
            f"Nothing was imported: {self.total} {noun} in the file.\n" + "\n".join(lines),
            field="file",
        )


@dataclass(frozen=True)
class ImportResult:
    created: int
    updated: int
    unchanged: int

    @property
    def total(self) -> int:
        return self.created + self.updated + self.unchanged


# -- reading and checking -----------------------------------------------------------------------


def decode(data: bytes) -> str:
    """UTF-8 text (a leading BOM is fine); anything else is refused with where it went wrong."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ImportRefused(
            [RowProblem(0, "The file is UTF-16; save it as CSV in UTF-8 and import it again.")]
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ImportRefused(
            [
                RowProblem(
                    line,
                    f"byte 0x{data[error.start]:02x} is not UTF-8; save the file as CSV in "
                    "UTF-8 (\"CSV UTF-8\" in Excel) and import it again.",
                )
            ]
        ) from None


def parse_users_csv(text: str, limits: dict[str, int | None]) -> UsersFile:
    """Every row of the file, checked; raises ImportRefused listing each bad row."""
    problems: list[RowProblem] = []
    rows: list[UserRow] = []
    first_line_of: dict[str, int] = {}
    records = _records(text, problems)
    header = next(records, None)
    if header is None:
        raise ImportRefused(
            [RowProblem(0, f"The file is empty; expected the header {','.join(HEADER)}.")]
        )
    columns = _columns(*header)
    for line, fields in records:
        if not any(field.strip() for field in fields):  # a blank line, or one of empty cells
            continue
        row = _check_row(line, columns, fields, limits, problems)
        if row is None:
            continue
        seen_on = first_line_of.setdefault(row.username, line)
        if seen_on != line:
            message = f"username {_shown(row.username)} is also on line {seen_on}"
            problems.append(RowProblem(line, message))
            continue
        rows.append(row)
    if problems:
        raise ImportRefused(problems)
    return UsersFile(rows, columns)


def _columns(line: int, fields: list[str]) -> tuple[str, ...]:
    """The header's column names, lower-cased, in the file's order; refused unless they are
    username, full_name and email, and perhaps role, each once."""
    names = tuple(field.strip().lower() for field in fields)
    required = [name for name in HEADER if name not in OPTIONAL_COLUMNS]
    unknown = [name for name in names if name not in HEADER]
    twice = sorted({name for name in names if names.count(name) > 1})
    missing = [name for name in required if name not in names]
    if not (unknown or twice or missing):
        return names
    reasons = []
    if missing:
        reasons.append(f"no {' or '.join(missing)} column")
    if unknown:
        reasons.append(f"unknown {'column' if len(unknown) == 1 else 'columns'} "
                       + ", ".join(_shown(name) for name in unknown))
    if twice:
        reasons.append(f"{', '.join(twice)} more than once")
    hint = "; separate the columns with commas" if ";" in ",".join(fields) else ""
    raise ImportRefused([RowProblem(line, (
        f"the header must name the columns {', '.join(required)} and, if you like, "
        f"{', '.join(sorted(OPTIONAL_COLUMNS))}, in any order ({'; '.join(reasons)} in "
        f"{_shown(','.join(fields))}){hint}"
    ))])


def _records(
    text: str, problems: list[RowProblem], delimiter: str = ","
) -> Iterator[tuple[int, list[str]]]:
    """(first physical line, fields) per record; a broken quote ends the file with a problem."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True, delimiter=delimiter)
    line = 1
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            problems.append(RowProblem(line, f"the CSV cannot be read here ({error})"))
            raise ImportRefused(problems) from None
        yield line, fields
        line = reader.line_num + 1


def _check_row(
    line: int, columns: tuple[str, ...], fields: list[str], limits: dict[str, int | None],
    problems: list[RowProblem],
) -> UserRow | None:
    if len(fields) != len(columns):
        problems.append(RowProblem(line, f"expected {len(columns)} fields, found {len(fields)}"))
        return None
    reasons: dict[str, str] = {}
    values = dict.fromkeys(HEADER, "")
    for name, raw in zip(columns, fields, strict=True):
        value, reason = _check_cell(name, raw, limits.get(name))
        if reason:
            reasons[name] = reason
        values[name] = value
    if not values["username"]:
        reasons.setdefault("username", "username is missing")
    if values["email"] and "email" not in reasons and not _EMAIL.fullmatch(values["email"]):
        reasons["email"] = f"email {_shown(values['email'])} is not a valid e-mail address"
    if reasons:
        problems.append(RowProblem(line, "; ".join(reasons.values())))
        return None
    return UserRow(
        username=values["username"],
        full_name=values["full_name"],
        email=values["email"] or None,
        role=values["role"] or None,
    )


def _check_cell(name: str, raw: str, limit: int | None) -> tuple[str, str | None]:
    if has_unsafe(raw):
        return raw, f"{name} contains a line break, tab or other control character"
    value = raw.strip()
    if value.startswith(FORMULA_STARTS):
        return value, (
            f"{name} {_shown(value)} starts with {value[0]!r}, which a spreadsheet runs as a "
            "formula; fix the cell"
        )
    if limit is not None and len(value) > limit:
        return value, f"{name} is {len(value)} characters long; at most {limit} fit"
    if name == "username" and _SPACE.search(value):
        return value, f"username {_shown(value)} contains a space"
    return value, None


def _shown(value: str) -> str:
    return repr(value if len(value) <= 40 else value[:37] + "...")


def column_limits(directory: Directory) -> dict[str, int | None]:
    """The longest value each column takes, from the table definition."""
    return {
        name: getattr(directory.table.c[name].type, "length", None) for name in HEADER
    }


# -- writing ------------------------------------------------------------------------------------


def upsert_users(
    connection: Connection, directory: Directory, rows: Sequence[UserRow],
    columns: Sequence[str] = HEADER,
) -> ImportResult:
    """Insert new usernames, update changed ones; passwords, and columns not given, left alone.

    The rows go into a temporary table in batched executemany round trips; two set-based
    statements then insert and update, so 100,000 rows cost a few statements, not 100,000.
    """
    staging = _staging_table(directory)
    staging.create(connection)
    try:
        _stage(connection, staging, rows)
        updated = _update_changed(connection, directory, staging, columns)
        created = _insert_new(connection, directory, staging)
    except BaseException:
        # PostgreSQL drops it with the transaction (ON COMMIT DROP); SQLite created it outside
        # the transaction, on a connection that goes back to the pool.
        if connection.dialect.name != "postgresql":
            staging.drop(connection)
        raise
    staging.drop(connection)
    return ImportResult(created=created, updated=updated, unchanged=len(rows) - created - updated)


def _staging_table(directory: Directory) -> Table:
    lengths = column_limits(directory)
    return Table(
        f"resetbot_import_{secrets.token_hex(4)}",
        MetaData(),
        *(Column(name, String(lengths[name]), nullable=name != "username") for name in HEADER),
        prefixes=["TEMPORARY"],
        postgresql_on_commit="DROP",
    )


def _stage(connection: Connection, staging: Table, rows: Sequence[UserRow]) -> None:
    if connection.dialect.name == "postgresql" and connection.dialect.driver == "psycopg":
        # COPY is some twenty times faster than an executemany of the same rows on PostgreSQL.
        _copy_into(connection, staging, rows)
        return
    for batch in _batches([_staged(row) for row in rows]):
        connection.execute(insert(staging), batch)


def _copy_into(connection: Connection, staging: Table, rows: Sequence[UserRow]) -> None:
    from psycopg import sql

    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(staging.name), sql.SQL(", ").join(map(sql.Identifier, HEADER))
    )
    driver_connection: Any = connection.connection.driver_connection
    with driver_connection.cursor() as cursor, cursor.copy(statement) as copy:
        for row in rows:
            copy.write_row((row.username, row.full_name, row.email, row.role))


def _staged(row: UserRow) -> dict[str, Any]:
    return {"username": row.username, "full_name": row.full_name, "email": row.email,
            "role": row.role}


def _update_changed(
    connection: Connection, directory: Directory, staging: Table, columns: Sequence[str]
) -> int:
    users, new = directory.table.c, staging.c
    given = [name for name in ("full_name", "email", "role") if name in columns]
    # Empty and NULL mean the same here: no name, no address, no role.
    differs = or_(
        *(
            func.coalesce(users[name], "").is_distinct_from(func.coalesce(new[name], ""))
            for name in given
        )
    )
    statement = (
        update(directory.table)
        .where(users.username == new.username, differs)
        .values({name: new[name] for name in given})
    )
    return int(connection.execute(statement).rowcount)


def _insert_new(connection: Connection, directory: Directory, staging: Table) -> int:
    users, new = directory.table.c, staging.c
    unknown = (
        select(new.username, new.full_name, new.email, new.role, false())
        .where(~exists().where(users.username == new.username))
    )
    statement = insert(directory.table).from_select(
        ["username", "full_name", "email", "role", "must_change_password"], unknown
    )
    result = connection.execute(statement.execution_options(preserve_rowcount=True))
    return int(result.rowcount)


def _batches(items: list[T]) -> Iterator[list[T]]:
    for start in range(0, len(items), BATCH_SIZE):
        yield items[start : start + BATCH_SIZE]


def import_users(
    session: Session, directory: Directory, data: bytes, actor: str
) -> ImportResult:
    """Check the whole file, upsert it in the directory's own transaction, and audit it in the
    session (the state database's; the caller commits).

    On ImportRefused nothing has been written.
    """
    rows = parse_users_csv(decode(data), column_limits(directory))
    with directory.engine.begin() as connection:
        result = upsert_users(connection, directory, rows, rows.columns)
    audit.record(
        session, actor, "users_import",
        created=result.created, updated=result.updated, unchanged=result.unchanged,
    )
    return result


def export_users(directory: Directory) -> str:
    """The directory in the import format, ordered by username, safe for spreadsheets."""
    c = directory.table.c
    query = select(c.username, c.full_name, c.email, c.role).order_by(c.username)
    with directory.engine.connect() as connection:
        return to_csv(HEADER, connection.execute(query))


# -- a list of usernames (`resetbot reset --users-file`) ----------------------------------------


def usernames_from_file(data: bytes, source: str) -> list[str]:
    """The usernames in a file: one per line, or a CSV whose header has a `username` column.

    Refused as a whole, naming each bad line, when a line holds more than one word (a CSV
    without its header, say) or a control character: guessing would reset the wrong people.
    """
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise InputError(
            f"{source}, line {line}: not UTF-8; save it as text or CSV in UTF-8 "
            "(nothing was changed)", field="users",
        ) from None
    problems: list[RowProblem] = []
    names: list[str] = []
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    first = next((number for number, line in enumerate(lines, 1) if line.strip()), None)
    header = [] if first is None else next(csv.reader([lines[first - 1]]), [])
    column = [cell.strip().lower() for cell in header]
    if "username" in column:
        try:
            records = list(_records(text, problems))
        except ImportRefused as refused:
            problems = refused.problems
            records = []
        filled = [(line, fields) for line, fields in records if any(f.strip() for f in fields)]
        for line, fields in filled[1:]:  # after the header
            raw = fields[column.index("username")] if len(fields) == len(column) else None
            _take_username(line, raw, names, problems)
    else:
        for number, content in enumerate(lines, 1):
            if content.strip():
                _take_username(number, content, names, problems)
    if problems:
        listed = [f"  {source}, {problem}" for problem in problems[:MAX_REPORTED_PROBLEMS]]
        more = len(problems) - len(listed)
        raise InputError(
            f"{source} is not a list of usernames (one per line, or a CSV with a username "
            "column); nothing was changed:\n" + "\n".join(listed)
            + (f"\n  ... and {more} more" if more else ""),
            field="users",
        )
    if not names:
        raise InputError(f"{source} holds no usernames (nothing was changed)", field="users")
    return names


def _take_username(
    line: int, raw: str | None, names: list[str], problems: list[RowProblem]
) -> None:
    if raw is None:
        problems.append(RowProblem(line, "this row has a different number of fields"))
    elif has_unsafe(raw):
        problems.append(RowProblem(line, "a control character (tab, line break...) in the name"))
    elif not raw.strip():
        problems.append(RowProblem(line, "no username in this row"))
    elif _SPACE.search(raw.strip()) or "," in raw:
        problems.append(RowProblem(line, f"{_shown(raw.strip())} is more than one username"))
    else:
        names.append(raw.strip())


# -- matching names against the directory (`--users-file`, `--user`, a file given in Slack) ------

#: Names looked up per query: well below every database's limit on bound parameters.
LOOKUP_BATCH = 5000


@dataclass
class NameMatch:
    """What a list of usernames found in the directory."""

    #: Each name that found exactly one user -> that user's id (text).
    ids: dict[str, str]
    #: Names found under another spelling -> (the spelling in the directory, how it matched:
    #: COMPARED or IGNORING_CASE).
    case_notes: dict[str, tuple[str, str]]
    #: Names that match several usernames (differing only in case or accents) -> those.
    ambiguous: dict[str, list[str]]
    unknown: list[str]


#: How a name found its user under another spelling (said in the CLI's note).
COMPARED = "as the directory compares names"
IGNORING_CASE = "matched ignoring case"


def match_usernames(directory: AnyDirectory | Directory, names: Sequence[str]) -> NameMatch:
    """The users these names stand for, as the directory compares usernames.

    resetbot's own table matches a name exactly first; a library system's table as its
    database compares (its collation: MariaDB's Koha ignores case and accents, as Koha's
    sign-in does), after Unicode NFC, the same spelling winning among several. Otherwise a name
    is matched ignoring case, when exactly one username in the directory matches that way.
    Several matches are ambiguous: only the exact spelling can say which one is meant.
    """
    users = as_protocol(directory)
    wanted = list(dict.fromkeys(names))
    # resetbot's own table keeps names as they were imported (and an LDAP server's matching
    # rule decides for it); a library system's table compares as its database does.
    table = users.sql if isinstance(users, SqlDirectory) else None
    as_compared = table is not None and not users.owns_users
    compared: dict[str, list[tuple[str, str]]] = {}
    if not as_compared:
        exact: dict[str, str] = {}
        for batch in _batches_of(wanted, LOOKUP_BATCH):
            exact.update((user.username, user.id) for user in users.by_username(batch))
        compared = {name: [(name, exact[name])] for name in wanted if name in exact}
    else:
        assert table is not None
        for batch in _batches_of([normalised(name) for name in wanted], LOOKUP_BATCH):
            for key, found_ids in table.usernames_as_compared(batch).items():
                compared[key] = [(found, str(number)) for found, number in found_ids]
    match = NameMatch(ids={}, case_notes={}, ambiguous={}, unknown=[])
    others: list[str] = []
    for name in wanted:
        key = normalised(name) if as_compared else name
        matches = _same_spelling_first(name, compared.get(key, []))
        if len(matches) == 1:
            _take(match, name, matches[0], COMPARED)
        elif matches:
            match.ambiguous[name] = sorted(found for found, _ in matches)
        else:
            others.append(name)
    folded: dict[str, list[tuple[str, str]]] = {}
    for batch in _batches_of(others, LOOKUP_BATCH):
        for lowered, pairs in users.usernames_ignoring_case(batch).items():
            folded.setdefault(lowered, []).extend(pairs)
    for name in others:
        matches = folded.get(name.lower(), [])
        if len(matches) == 1:
            _take(match, name, matches[0], IGNORING_CASE)
        elif matches:
            match.ambiguous[name] = sorted(found for found, _ in matches)
        else:
            match.unknown.append(name)
    return match


def _same_spelling_first(
    name: str, matches: list[tuple[str, str]]
) -> list[tuple[str, str]]:
    """One match spelled exactly as typed wins over the others the comparison finds."""
    same = [found for found in matches if normalised(found[0]) == normalised(name)]
    return same if len(same) == 1 else matches


def _take(match: NameMatch, name: str, found: tuple[str, str], how: str) -> None:
    spelling, user_id = found
    match.ids[name] = user_id
    if normalised(spelling) != normalised(name):
        match.case_notes[name] = (spelling, how)


def _batches_of(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# -- a file of users given in Slack: usernames, card numbers or e-mail addresses ------------------

#: The most entries one file may name (a preview and its stored selection stay bounded).
MAX_LISTED_ENTRIES = 100_000
#: Header cells that name the column to read (any case, any order, among other columns).
LISTED_COLUMNS = ("username", "cardnumber", "email")
#: Control characters no text file holds (tab, line feed and carriage return are fine).
_BINARY = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_UTF16_BOMS = {b"\xff\xfe": "utf-16-le", b"\xfe\xff": "utf-16-be"}


@dataclass(frozen=True)
class ListedEntry:
    line: int
    value: str
    #: "name" (a username or card number: the directory's username comparison) or "email".
    kind: str


@dataclass(frozen=True)
class Unmatched:
    line: int
    value: str
    #: None: nobody has it; else the usernames it could be.
    could_be: tuple[str, ...] | None = None


@dataclass
class FileMatch:
    """A file's entries against the directory: who it names, and the lines that name nobody."""

    entries: int
    ids: tuple[str, ...]
    #: Lines naming a user already named on an earlier line (counted once).
    repeated: int
    #: Lines naming nobody, or several users, in line order.
    unmatched: list[Unmatched]

    @property
    def matched(self) -> int:
        return self.entries - self.repeated - len(self.unmatched)

    def report(self) -> dict[str, Any]:
        """The JSON kept with the preview: counts and every unmatched line (no secret in it:
        only what the file said, the names it could be, and line numbers)."""
        return {
            "entries": self.entries, "matched": self.matched, "repeated": self.repeated,
            "users": len(self.ids),
            "unmatched": [
                {"line": item.line, "value": item.value,
                 "could_be": list(item.could_be) if item.could_be is not None else None}
                for item in self.unmatched
            ],
        }


def decode_listed(data: bytes) -> str:
    """A text file's content: UTF-8 (with or without BOM), or UTF-16 with its BOM (Excel's
    "Unicode text"); anything else, or a binary file, is refused saying why."""
    encoding = _UTF16_BOMS.get(data[:2])
    if encoding is None and b"\x00" in data:
        raise InputError("This is not a text file (it holds binary data): give a CSV or "
                         "plain text file (nothing was changed).", field="users_file")
    try:
        text = data[2:].decode(encoding) if encoding else data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise InputError(
            f"The file is not {'UTF-16' if encoding else 'UTF-8'} text (byte {error.start + 1} "
            "cannot be read): save it as CSV UTF-8 or plain text (nothing was changed).",
            field="users_file",
        ) from None
    found = _BINARY.search(text)
    if found is not None:
        line = text.count("\n", 0, found.start()) + 1
        raise InputError(f"This is not a text file (a control character on line {line}): give "
                         "a CSV or plain text file (nothing was changed).", field="users_file")
    return text


def entries_from_file(data: bytes) -> list[ListedEntry]:
    """Each entry of a file of users: one username, card number or e-mail address per line, or
    a CSV whose header names a `username`, `cardnumber` or `email` column.

    Refused as a whole, naming the bad lines, when a line holds more than one word or a row has
    no entry: guessing would reset the wrong people. Values are taken in Unicode NFC.
    """
    text = decode_listed(data)
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    first = next((number for number, line in enumerate(lines, 1) if line.strip()), None)
    first_line = "" if first is None else lines[first - 1]
    # Excel's "Unicode text" separates its columns with tabs.
    delimiter = "\t" if "\t" in first_line and "," not in first_line else ","
    header = next(csv.reader([first_line], delimiter=delimiter), [])
    columns = [cell.strip().lower() for cell in header]
    problems: list[RowProblem] = []
    if any(name in columns for name in LISTED_COLUMNS):
        entries = _csv_entries(text, columns, problems, delimiter)
    else:
        entries = []
        for number, content in enumerate(lines, 1):
            if content.strip():
                _take_entry(number, content, "name", entries, problems)
    if problems:
        listed = [str(problem) for problem in problems[:MAX_REPORTED_PROBLEMS]]
        more = len(problems) - len(listed)
        raise InputError(
            "The file is not a list of users (one username, card number or e-mail per line, or "
            "a CSV with a username, cardnumber or email column); nothing was changed. "
            + "; ".join(listed) + (f"; and {more} more" if more else ""),
            field="users_file",
        )
    if not entries:
        raise InputError("The file names nobody (nothing was changed).", field="users_file")
    if len(entries) > MAX_LISTED_ENTRIES:
        raise InputError(f"The file names {len(entries):,} users; at most "
                         f"{MAX_LISTED_ENTRIES:,} fit in one reset (nothing was changed).",
                         field="users_file")
    return entries


def _csv_entries(
    text: str, columns: list[str], problems: list[RowProblem], delimiter: str
) -> list[ListedEntry]:
    try:
        records = list(_records(text, problems, delimiter))
    except ImportRefused as refused:
        problems[:] = refused.problems
        return []
    filled = [(line, fields) for line, fields in records if any(f.strip() for f in fields)]
    keys = [(columns.index(name), name) for name in LISTED_COLUMNS if name in columns]
    entries: list[ListedEntry] = []
    for line, fields in filled[1:]:  # after the header
        if len(fields) != len(columns):
            problems.append(RowProblem(line, "this row has a different number of fields"))
            continue
        given = [(fields[index], name) for index, name in keys if fields[index].strip()]
        if not given:
            problems.append(RowProblem(line, "no username, card number or e-mail in this row"))
            continue
        raw, name = given[0]
        _take_entry(line, raw, "email" if name == "email" else "name", entries, problems)
    return entries


def _take_entry(
    line: int, raw: str, kind: str, entries: list[ListedEntry], problems: list[RowProblem]
) -> None:
    value = raw.strip()
    if has_unsafe(value):
        problems.append(RowProblem(line, "a control character (tab, line break...)"))
    elif _SPACE.search(value) or "," in value or ";" in value:
        problems.append(RowProblem(line, f"{_shown(value)} is more than one entry"))
    else:
        entries.append(ListedEntry(line, unicodedata.normalize("NFC", value), kind))


def match_entries(
    directory: AnyDirectory | Directory, entries: Sequence[ListedEntry]
) -> FileMatch:
    """Who a file's entries name: names by the directory's username comparison (as
    `--users-file`, through `match_usernames`), e-mail addresses ignoring case; a line that is
    no username but looks like an address is tried as one. Repeated entries count once."""
    directory = as_protocol(directory)
    first_of: dict[tuple[str, str], int] = {}
    unique: list[ListedEntry] = []
    repeated = 0
    for entry in entries:
        key = (entry.kind, entry.value.lower())
        if key in first_of:
            repeated += 1
            continue
        first_of[key] = entry.line
        unique.append(entry)
    names = match_usernames(directory, [e.value for e in unique if e.kind == "name"])
    unknown = set(names.unknown)
    addresses = [e.value for e in unique
                 if e.kind == "email" or ("@" in e.value and e.value in unknown)]
    by_address: dict[str, list[tuple[str, str]]] = {}
    for batch in _batches_of(addresses, LOOKUP_BATCH):
        for lowered, pairs in directory.emails_ignoring_case(batch).items():
            by_address.setdefault(lowered, []).extend(pairs)
    ids: set[str] = set()
    unmatched: list[Unmatched] = []
    for entry in unique:
        if entry.kind == "name" and entry.value in names.ids:
            user_id = names.ids[entry.value]
        elif entry.kind == "name" and entry.value in names.ambiguous:
            unmatched.append(Unmatched(entry.line, entry.value,
                                       tuple(names.ambiguous[entry.value])))
            continue
        else:
            users = by_address.get(entry.value.lower(), [])
            if len(users) != 1:
                unmatched.append(Unmatched(entry.line, entry.value, tuple(
                    sorted(directory_name for directory_name, _ in users)) if users else None))
                continue
            user_id = users[0][1]
        if user_id in ids:
            repeated += 1  # another entry (a username, then their address) named them already
        ids.add(user_id)
    return FileMatch(entries=len(entries), ids=tuple(sorted(ids)), repeated=repeated,
                     unmatched=unmatched)
