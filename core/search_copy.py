"""The user picker's search over a directory resetbot does not own, held in the app's memory.

A library system's users table (Koha's `borrowers`) may get no index, trigger or table from
resetbot, and a `LIKE '%term%'` over four columns of 100,000 rows takes far longer than an
options request may. So the app keeps a copy of just what the picker shows and searches, folded
for matching, and reads the table again in the background once the copy is older than
`DIRECTORY_SEARCH_REFRESH`. The copy only ever suggests ids: whatever a reset acts on is checked
against the directory itself when the preview is made. It also keeps what a preview counts per
user (core/copy_counts.py), so that the Slack app's preview of a copy that is not old is counted
here, and says so; the task itself is counted from the directory.

How a search runs: every user's folded text (username, name, card number, e-mail) sits in one
string, in the order the directory gave them, each field and each user ended by a separator no
search term holds. An index (core.gram_index) names the blocks of that string that hold every
trigram of the term; `bytes.find` walks just those at C speed (the whole string for a term of
one or two letters, which matches early); the offset of a hit names its user (a binary search
over where each user's text starts), and the walk goes on from the next user. The first `limit`
hits are shown by username. At a million users a miss or a rare username costs well under a
millisecond, where one pass over the 70 MB string took 30-60 ms.

How a read again shares the process with searches: both need the interpreter, and a search is
one long call into C (`bytes.find`) that does not give it back, while the read gives it back at
every row a driver fetches (SQLite's at each row, a socket read per batch). Left to the
interpreter, every such row then waits for the search in progress to end: at 100,000 users a
read under back-to-back searches took 144 s on SQLite (0.7 s alone). So they take turns
(`Turns`): the read runs in slices during which new searches wait (never longer than a slice
and a little), and between slices every search that waited goes first.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import unicodedata
from array import array
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from sqlalchemy import ColumnElement, Engine, Integer, Select, String, case, cast, func, literal
from sqlalchemy.exc import SQLAlchemyError

from core.errors import ResetbotError

if TYPE_CHECKING:  # numpy is imported only by an app that keeps a copy
    from core.copy_counts import UserFacts
    from core.gram_index import GramIndex

logger = logging.getLogger(__name__)

#: Ends each field and each user in the searched text; removed from terms and from the fields.
#: The ASCII unit separator, not NUL, which PostgreSQL's text cannot hold (see line_select).
SEPARATOR = "\x1f"  # core.gram_index.SEPARATOR_BYTE
#: What a failed read of the directory may raise and still leave the old copy in use.
LOAD_ERRORS: tuple[type[BaseException], ...] = (SQLAlchemyError, OSError)
#: Rows fetched per round trip while the copy is read (a driver decoding a batch in C holds the
#: interpreter meanwhile: small batches keep searches answered during a reload).
FETCH_BATCH = 1000
#: Rows handled by one call into C while a copy is built (sorted, joined), for the same reason.
STEP = 4096
DEFAULT_LIMIT = 100
#: A copy is read again once it is `max_age` old, or READ_SHARE times as old as its last read
#: took if that is longer: reading a million users takes seconds of the app's CPU, and with
#: 30 s between reads the app would do little else (at 100,000 users, 0.5-0.8 s: no change).
READ_SHARE = 10
#: How long the read runs before it lets the searches that waited go (at least: a slice is as
#: long as the searches let in before it took, so the read keeps about half the time).
TURN_SECONDS = 0.01
#: Beyond its slice, how long a search waits for the read at most (a read stuck on the network
#: must not stop the picker: after this, searches go ahead without waiting).
TURN_GRACE = 0.03
#: Rows or items handled between two looks at the clock by the read.
PACE = 256
#: After a failed read, seconds before a search may start another (a directory that is down
#: is not asked again at every keystroke).
RETRY_AFTER = 5.0


class SearchRow(NamedTuple):
    """One user as the picker shows and searches it."""

    id: str
    username: str
    display_name: str
    card_number: str | None
    email: str | None
    is_staff: bool


class SearchUnavailable(ResetbotError):
    """No copy of the directory could be read yet, so nothing can be searched."""


def fold(text: str) -> str:
    """The form both the searched text and the term take: NFC, accents dropped, casefolded.

    "Müller", "MULLER" and "muller" all fold to "muller"; "Straße" to "strasse". Folding both
    sides the same way is what makes the match insensitive to case and accents, as MariaDB's
    default collation is.
    """
    if text.isascii():
        return text.lower()
    decomposed = unicodedata.normalize("NFKD", text)
    bare = "".join(char for char in decomposed if not unicodedata.combining(char))
    return unicodedata.normalize("NFC", bare.casefold())


def _shown_text(username: str, name: str, card: str | None, email: str | None) -> str:
    """A user's fields as read, each one ended by the separator (which no field may hold)."""
    parts = (username, name, card or "", email or "")
    joined = SEPARATOR.join(parts)
    if joined.count(SEPARATOR) != len(parts) - 1:  # a NUL inside a field: never, really
        joined = SEPARATOR.join(part.replace(SEPARATOR, "") for part in parts)
    return joined + SEPARATOR


class Turns:
    """A read of the directory and the searches, taking turns at the interpreter.

    Outside a read, searches never wait. During one, the read holds the turn for a slice
    (`TURN_SECONDS`, or as long as the searches it last let in took); a search that arrives
    meanwhile waits for the slice's end, but never past `TURN_GRACE` after it. When the slice
    is over (`pause`), the read lets every waiting search in, waits for the searches running
    to end, and takes the next slice.
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._changed = threading.Condition()
        self._reading = False  # a read is running: searches wait for its slice to end
        self._blocked_until = -math.inf  # no search waits past this
        self._waiting = 0  # searches waiting for the slice to end
        self._let_in = 0  # of those, how many may still go before the next slice
        self._searching = 0  # searches running
        self._slice_ends = -math.inf
        self._slice = TURN_SECONDS

    @contextmanager
    def searching(self) -> Iterator[None]:
        """Around one search: waits while the read holds its slice (never long)."""
        with self._changed:
            while self._reading and not self._let_in:
                remaining = self._blocked_until - self._clock()
                if remaining <= 0:
                    break
                self._waiting += 1
                try:
                    self._changed.wait(remaining)
                finally:
                    self._waiting -= 1
            if self._let_in:
                self._let_in -= 1
            self._searching += 1
        try:
            yield
        finally:
            with self._changed:
                self._searching -= 1
                if not self._searching:
                    self._changed.notify_all()

    @contextmanager
    def reading(self) -> Iterator[None]:
        """Around a whole read: it takes its first slice (once the searches running end)."""
        with self._changed:
            self._reading = True
            self._slice = TURN_SECONDS
            self._take_turn()
        try:
            yield
        finally:
            with self._changed:
                self._reading = False
                self._let_in = 0
                self._changed.notify_all()

    def pause(self) -> None:
        """Called by the read every so often: once its slice is over, the searches that
        waited go first, then it takes the next slice."""
        if not self._reading or self._clock() < self._slice_ends:
            return
        with self._changed:
            began = self._clock()
            self._let_in = self._waiting
            self._changed.notify_all()
            self._take_turn()
            # The read's next slice is as long as the searches just let in took.
            self._slice = max(TURN_SECONDS, self._clock() - began)
            self._slice_ends = self._clock() + self._slice

    def _take_turn(self) -> None:
        """Wait (holding the condition) until the let-in and the running searches are done;
        new searches wait meanwhile (up to a bound, should a search never end)."""
        self._blocked_until = self._clock() + 1.0
        while self._let_in or self._searching:
            remaining = self._blocked_until - self._clock()
            if remaining <= 0:
                break
            self._changed.wait(remaining)
        self._let_in = 0
        now = self._clock()
        self._slice_ends = now + self._slice
        self._blocked_until = self._slice_ends + TURN_GRACE


def _no_pause() -> None:
    return None


class _Joiner:
    """Byte strings appended one by one, joined every STEP of them (a list of a million small
    bytes objects would hold ~100 MB more than their text), with where each one begins."""

    def __init__(self) -> None:
        self.starts = array("q")
        self._position = 0
        self._step: list[bytes] = []
        self._pieces: list[bytes] = []

    def append(self, part: bytes) -> None:
        self.starts.append(self._position)
        self._position += len(part)
        self._step.append(part)
        if len(self._step) == STEP:
            self._pieces.append(b"".join(self._step))
            self._step = []

    def joined(self) -> tuple[bytes, array[int]]:
        """The whole text, and where each part begins (plus where the last one ends)."""
        self.starts.append(self._position)
        self._pieces.append(b"".join(self._step))
        self._step = []
        text = b"".join(self._pieces)
        self._pieces = []
        return text, self.starts


@dataclass(frozen=True)
class Snapshot:
    """One complete, immutable copy: searched by many threads, replaced whole, never changed.

    No object per user: the users' fields as read (their id first) and as folded sit in two
    UTF-8 byte strings (one byte per character of a Latin name, where a str holding one emoji
    would take four), with arrays of where each user begins and a byte of staff flag each, in
    the order the directory gave them; and an index of which blocks of the folded text hold
    which trigrams (core.gram_index), so that a rare term or a miss is looked for in a few
    blocks rather than the whole text. Nothing for the garbage collector to walk: 100,000
    tracked tuples made each full collection (which a reload sets off) stop every thread for
    ~150 ms. A UTF-8 needle can only match a UTF-8 text at a character's start, so searching
    the bytes is searching the characters.
    """

    staff: bytes  # 1 for staff, per user
    shown: bytes  # each user's id and fields as read
    shown_starts: array[int]  # where each user begins in `shown`, then where it ends
    text: bytes  # each user's fields folded (not the id)
    starts: array[int]  # where each user begins in `text`, then where it ends
    index: GramIndex  # which blocks of `text` hold which trigrams
    loaded_at: float  # the clock when the read that made it began
    #: What the preview counts, per user (read from a table only: core.copy_counts).
    facts: UserFacts | None = None

    @classmethod
    def build(
        cls, rows: Iterable[SearchRow | str], loaded_at: float,
        pause: Callable[[], None] = _no_pause, block: int = 0,
    ) -> Snapshot:
        """From SearchRows, or lines as `load_lines` reads them. `pause()` is called every few
        hundred rows or steps (see `Turns`); `block`: the index's block size (0: its own; tests
        make it tiny)."""
        from core.copy_counts import FactsBuilder
        from core.gram_index import GramIndex
        facts: FactsBuilder | None = FactsBuilder()
        staff = bytearray()
        shown = _Joiner()
        texts = _Joiner()
        for count, row in enumerate(rows):
            if not count % PACE:
                pause()
            if isinstance(row, str):  # a line: see line_select
                marks, _, line = row.partition(SEPARATOR)
                staff.append(0 if marks[:1] == "0" else 1)
                shown.append(line.encode())
                texts.append(fold(line[line.index(SEPARATOR) + 1:]).encode())
                if facts is not None:
                    fields_read = line.split(SEPARATOR)
                    try:
                        facts.add(marks, fields_read[0], fields_read[1], fields_read[4])
                    except (ValueError, OverflowError):
                        # An id that is not a number (or past 64 bits), over 65,535
                        # categories: no counts in the copy, the table counts.
                        facts = None
                continue
            facts = None  # rows of an LDAP directory: the preview asks the directory
            user_id, username, name, card, email, is_staff = row
            fields = _shown_text(username, name, card, email)
            staff.append(1 if is_staff else 0)
            shown.append(f"{_text(user_id).replace(SEPARATOR, '')}{SEPARATOR}{fields}".encode())
            texts.append(fold(fields).encode())
        shown_text, shown_starts = shown.joined()
        text, starts = texts.joined()
        return cls(
            staff=bytes(staff),
            shown=shown_text, shown_starts=shown_starts,
            text=text, starts=starts,
            index=GramIndex.build(text, pause, block),
            loaded_at=loaded_at,
            facts=None if facts is None or not len(staff) else facts.build(),
        )

    def __len__(self) -> int:
        return len(self.staff)

    @property
    def nbytes(self) -> int:
        """What the copy's arrays and strings hold, roughly."""
        return (len(self.staff) + len(self.shown) + len(self.text) + self.index.nbytes
                + self.starts.itemsize * (len(self.starts) + len(self.shown_starts))
                + (0 if self.facts is None else self.facts.nbytes))

    def username(self, index: int) -> str:
        """The username of the user at `index` (in the directory's order)."""
        start = self.shown_starts[index]
        return self.shown[start:self.shown_starts[index + 1]].decode().split(SEPARATOR)[1]

    def row(self, index: int) -> SearchRow:
        start, end = self.shown_starts[index], self.shown_starts[index + 1]
        user_id, username, name, card, email, _end = (
            self.shown[start:end].decode().split(SEPARATOR)
        )
        return SearchRow(user_id, username, name, card or None, email or None,
                         self.staff[index] == 1)

    def search(self, term: str, limit: int) -> list[SearchRow]:
        """The first `limit` users holding `term`, in the directory's order, shown by
        username."""
        if limit <= 0:
            return []
        needle = fold(term.replace(SEPARATOR, "").strip()).encode()
        if not needle:
            found = list(range(min(limit, len(self))))
        else:
            spans = self.index.spans(needle)
            found = self._found(needle, limit, [(0, len(self.text))] if spans is None
                                else spans)
        rows = [self.row(index) for index in found]
        rows.sort(key=lambda row: (fold(row.username), row.username))
        return rows

    def _found(self, needle: bytes, limit: int, spans: Iterable[tuple[int, int]]) -> list[int]:
        """Users holding `needle` in the spans of the text (in order), at most `limit`: after
        a hit, the search goes on at the next user's start."""
        text, starts = self.text, self.starts
        found: list[int] = []
        resume = 0
        for start, end in spans:
            at = text.find(needle, max(start, resume), end)
            while at >= 0:
                index = bisect_right(starts, at) - 1
                found.append(index)
                if len(found) == limit:
                    return found
                resume = starts[index + 1]
                at = text.find(needle, resume, end)
        return found



class SearchCopy:
    """An in-memory copy of a directory for the user picker, refreshed in the background.

    `load_rows` reads the whole directory (any iterable of SearchRow, or of lines as
    `load_lines` below reads them from a table).
    Only the very first read may keep a search waiting (unless `reload()` or
    `refresh_if_stale()` made it at start); after that no search waits: a copy older than
    `max_age` seconds is read again in a background thread while searches go on with the old
    one, and a failed read keeps it (and is tried again `retry_after` seconds later at the
    soonest). Without any copy yet, a search raises SearchUnavailable.
    """

    def __init__(
        self,
        load_rows: Callable[[], Iterable[SearchRow | str]],
        max_age: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        retry_after: float = RETRY_AFTER,
        errors: tuple[type[BaseException], ...] = LOAD_ERRORS,
    ) -> None:
        # What a build needs (numpy) is imported now, not timed as part of the first read,
        # whose duration sets how soon the copy is read again (READ_SHARE).
        import core.copy_counts
        import core.gram_index  # noqa: F401

        self._load_rows = load_rows
        self._max_age = max_age
        self._clock = clock
        self._retry_after = retry_after
        self._errors = errors
        self._snapshot: Snapshot | None = None
        self._reading = threading.Lock()  # one read of the directory at a time
        self._state = threading.Lock()  # guards the fields below
        self._reloading = False
        self._attempts = 0
        self._failures = 0  # reads failed in a row; the first of a streak is logged
        self._retry_at = -math.inf  # no background read starts before this (after a failure)
        self._idle = threading.Event()
        self._idle.set()
        self._turns = Turns()
        self._last_read_seconds = 0.0  # how long the last successful read took

    # -- what the picker calls -----------------------------------------------------------------

    def search(self, term: str, limit: int = DEFAULT_LIMIT) -> list[SearchRow]:
        """Users whose username, name, card number or e-mail holds `term` (case and accents
        aside): the first `limit` in the directory's order, shown by username. An empty term:
        the first `limit`.

        Raises SearchUnavailable while no copy could be read yet.
        """
        snapshot = self._snapshot
        if snapshot is None:
            snapshot = self._first_snapshot()
        elif self._is_stale(snapshot):
            self._reload_in_background()
        with self._turns.searching():
            return snapshot.search(term, limit)

    def current(self) -> Snapshot | None:
        """The copy as it is now (None before the first read succeeded), never waiting; an old
        one starts a read in the background, as a search does."""
        snapshot = self._snapshot
        if snapshot is not None and self._is_stale(snapshot):
            self._reload_in_background()
        return snapshot

    def fresh(self) -> Snapshot | None:
        """The copy if it is not old, else None. Never waits.

        Not old: younger than a search would take it as it is (`_is_stale`), or than that and
        twice as long as a read takes. Opening the form starts a read of an old copy; a
        preview submitted before that read ends (seconds, at a million users) still counts in
        the copy it replaces, a read's time older, rather than in the table. An older copy
        (the reads fail) is None, and a read starts in the background."""
        snapshot = self._snapshot
        if snapshot is None:
            self._reload_in_background()
            return None
        age = self._clock() - snapshot.loaded_at
        stale_after = self._stale_after()
        if age < stale_after:
            return snapshot
        self._reload_in_background()
        return snapshot if age < stale_after + 2 * self._last_read_seconds else None

    def age(self, snapshot: Snapshot) -> float:
        """Seconds since the read that made `snapshot` began."""
        return max(0.0, self._clock() - snapshot.loaded_at)

    def refresh_if_stale(self) -> None:
        """Start a background read if the copy is old (e.g. when the picker's form opens, so
        the person's first keystrokes already search fresh data). Never waits."""
        snapshot = self._snapshot
        if snapshot is None or self._is_stale(snapshot):
            self._reload_in_background()

    # -- reading the directory -----------------------------------------------------------------

    def reload(self) -> bool:
        """Read the directory now, in this thread (at start). False: the read failed (logged)
        and the old copy, if any, stays."""
        with self._reading:
            return self._read()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no background read is running; False if `timeout` passed first."""
        return self._idle.wait(timeout)

    @property
    def loaded_at(self) -> float | None:
        """The clock when the current copy's read began; None before the first."""
        snapshot = self._snapshot
        return None if snapshot is None else snapshot.loaded_at

    def __len__(self) -> int:
        snapshot = self._snapshot
        return 0 if snapshot is None else len(snapshot)

    def _stale_after(self) -> float:
        return max(self._max_age, self._last_read_seconds * READ_SHARE)

    def _is_stale(self, snapshot: Snapshot) -> bool:
        return self._clock() - snapshot.loaded_at >= self._stale_after()

    def _first_snapshot(self) -> Snapshot:
        """The very first copy, read while the request waits (requests arriving meanwhile wait
        for that same read). Once a read has failed, no request waits for another: it starts
        one in the background and is told search is not available."""
        if self._attempts == 0:
            with self._reading:
                if self._snapshot is None and self._attempts == 0:
                    self._read()
        snapshot = self._snapshot
        if snapshot is None:
            self._reload_in_background()
            raise SearchUnavailable(
                "The user search is not available: the directory could not be read. "
                "Try again in a moment."
            )
        return snapshot

    def _reload_in_background(self) -> None:
        with self._state:
            if self._reloading or self._clock() < self._retry_at:
                return
            self._reloading = True
            self._idle.clear()
        thread = threading.Thread(
            target=self._background_reload, name="resetbot-search-copy", daemon=True
        )
        try:
            thread.start()
        except RuntimeError:  # no thread to be had: the next search asks again
            self._background_done()
            raise

    def _background_reload(self) -> None:
        try:
            self.reload()
        finally:
            self._background_done()

    def _background_done(self) -> None:
        with self._state:
            self._reloading = False
            self._idle.set()

    def _read(self) -> bool:
        """One read of the whole directory into a new copy; the caller holds `_reading`."""
        started = self._clock()
        try:
            with self._turns.reading():
                snapshot = Snapshot.build(self._load_rows(), started, self._turns.pause)
        except self._errors as error:
            self._failed(error)
            return False
        self._snapshot = snapshot  # one reference swap: searches see the old or the new copy
        self._last_read_seconds = self._clock() - started
        self._succeeded(len(snapshot), self._last_read_seconds)
        return True

    def _failed(self, error: BaseException) -> None:
        with self._state:
            self._attempts += 1
            self._failures += 1
            self._retry_at = self._clock() + self._retry_after
            first_of_streak = self._failures == 1
        if first_of_streak:
            # The class names only: a driver's message may quote a URL or a statement.
            logger.warning(
                "directory search copy: reading the directory failed (%s); %s",
                _error_name(error),
                "searches use the previous copy" if self._snapshot is not None
                else "the user search is not available until a read succeeds",
            )

    def _succeeded(self, users: int, seconds: float) -> None:
        with self._state:
            self._attempts += 1
            failures, self._failures = self._failures, 0
            self._retry_at = -math.inf
        if failures:
            logger.warning("directory search copy: read again after %d failed attempt(s)",
                           failures)
        logger.debug("directory search copy: %d users read in %.2f s", users, seconds)


def _error_name(error: BaseException) -> str:
    original = getattr(error, "orig", None)
    name = type(error).__name__
    return f"{name} from {type(original).__name__}" if original is not None else name


def load_lines(engine: Engine, query: Select[Any], batch: int = FETCH_BATCH) -> Iterator[str]:
    """Stream a directory's users as lines (see `line_select`) from `query`, whose six to eight
    columns are, in order: id, username, display name, card number, e-mail, staff (anything
    true for staff, false or NULL otherwise) and, if there, locked on purpose (the same) and
    the user's category (Koha's patron category).

    The database joins each user's fields into one string and the driver's own cursor hands
    them over in batches on a server-side cursor where the driver has one: no row objects, and
    one value per user to decode rather than six. At a million Koha borrowers on MariaDB,
    PyMySQL decoding six values a row was most of the read (1.2 s of CPU per 200,000 through
    SQLAlchemy's rows, 0.4 s as one joined value straight from the cursor).
    """
    with engine.connect() as connection:
        result = connection.execution_options(stream_results=True, yield_per=batch).execute(
            line_select(query)
        )
        yield from result.scalars()


def line_select(query: Select[Any]) -> Select[Any]:
    """`query` (six or seven columns, as `load_lines` takes) as one column: the marks, id,
    username, display name (trimmed), card number, e-mail, each ended by the separator, which
    is taken out of the fields; a NULL is an empty field.

    The marks are four digits: staff, locked on purpose, and whether the username and the
    e-mail held the separator (the copy's counts then leave such a user to the table:
    core.copy_counts); then, with an eighth column, the user's category."""
    user_id, username, name, card, email, staff, *rest = query.selected_columns
    separator = literal(SEPARATOR, String)

    def field(column: ColumnElement[Any]) -> ColumnElement[Any]:
        return func.replace(func.coalesce(cast(column, String), ""), separator, "")

    def digit(column: ColumnElement[Any]) -> ColumnElement[Any]:
        return func.coalesce(cast(cast(column, Integer), String), "0")

    def holds_separator(column: ColumnElement[Any]) -> ColumnElement[Any]:
        return case((cast(column, String).contains(SEPARATOR), "1"), else_="0")

    marks = digit(staff) + (digit(rest[0]) if rest else literal("0", String))
    marks = marks + holds_separator(username) + holds_separator(email)
    if len(rest) > 1:  # the user's category (Koha's, whose password rules differ by it)
        marks = marks + field(rest[1])
    parts: list[ColumnElement[Any]] = [
        marks,
        field(user_id), field(username), func.trim(field(name)), field(card), field(email),
    ]
    line = parts[0]
    for part in parts[1:]:
        line = line + separator + part
    return query.with_only_columns((line + separator).label("line"))


def load_rows(engine: Engine, query: Select[Any], batch: int = FETCH_BATCH) -> Iterator[SearchRow]:
    """The same as `load_lines`, as SearchRows: empty card numbers and e-mails None."""
    return (_row_of_line(line) for line in load_lines(engine, query, batch))


def _row_of_line(line: str) -> SearchRow:
    marks, user_id, username, name, card, email, _end = line.split(SEPARATOR)
    return SearchRow(user_id, username, name, card or None, email or None, marks[:1] != "0")


def _text(value: object) -> str:
    return "" if value is None else value if isinstance(value, str) else str(value)
