"""`core.controls.visible`: control characters written as escapes, for a terminal."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from core.controls import has_unsafe, visible


def test_each_kind_of_control_character_becomes_an_escape() -> None:
    assert visible("eve\x1b[2J") == "eve\\x1b[2J"
    assert visible("a\tb\r\nc\x00\x7f\x9b") == "a\\tb\\r\\nc\\x00\\x7f\\x9b"
    assert visible("Eve \u202eevil\u202c \u2028 \u2066x\u2069") == (
        "Eve \\u202eevil\\u202c \\u2028 \\u2066x\\u2069"
    )
    assert visible("Zoë Ñúñez, 山田") == "Zoë Ñúñez, 山田"


@given(st.text())
def test_nothing_unsafe_is_left_and_safe_text_is_unchanged(text: str) -> None:
    shown = visible(text)
    assert not has_unsafe(shown)
    if not has_unsafe(text):
        assert shown == text
