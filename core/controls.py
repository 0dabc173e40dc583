"""What resetbot calls a control character: one definition for importing, mailing and showing.

Two kinds, kept apart because a password may hold the second but never the first:

- *line-breaking controls*: C0 and C1 controls, DEL, and Unicode's line and paragraph
  separators. Any of them can start a new line in a mail header, a CSV cell, a log line or a
  terminal, and nobody can type one at a sign-in prompt.
- *bidirectional controls*: the overrides and isolates (U+202A to U+202E, U+2066 to U+2069)
  that make a name render differently from what it says.

Text from the directory (names, usernames, addresses) may hold neither.
"""

from __future__ import annotations

import re

_LINE_BREAKING = "\x00-\x1f\x7f-\x9f\u2028\u2029"
_BIDIRECTIONAL = "\u202a-\u202e\u2066-\u2069"

LINE_BREAKING = re.compile(f"[{_LINE_BREAKING}]")
#: Everything that may not stand in text shown to people: both kinds, runs matched whole.
UNSAFE_IN_TEXT = re.compile(f"[{_LINE_BREAKING}{_BIDIRECTIONAL}]+")


def is_line_breaking(character: str) -> bool:
    return LINE_BREAKING.fullmatch(character) is not None


def has_unsafe(text: str) -> bool:
    """True if `text` holds a control character of either kind."""
    return UNSAFE_IN_TEXT.search(text) is not None


def blank_unsafe(text: str) -> str:
    """Each run of control characters becomes one space (for one-line display)."""
    return UNSAFE_IN_TEXT.sub(" ", text)


def single_line(text: str, limit: int) -> str:
    """`text` as one tidy line of at most `limit` characters: control characters and runs of
    white space become single spaces (a display name in a header or a greeting)."""
    return " ".join(blank_unsafe(text).split())[:limit]


_SHORT_ESCAPES = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def visible(text: str) -> str:
    """Each control character of either kind written as an escape (`\\x1b`, `\\u202e`).

    For a terminal: an escape sequence in a name must not move the cursor, recolour or hide
    what follows, and a bidi override must not reorder it; the reader still sees it is there.
    """
    return UNSAFE_IN_TEXT.sub(lambda run: "".join(map(_escape, run.group())), text)


def _escape(character: str) -> str:
    code = ord(character)
    if character in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[character]
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"
