"""The planner's order of a selection of text ids (core/directory/ids.py `id_order`)."""

from __future__ import annotations

from bisect import bisect_right

from core.directory.ids import id_order, user_ids


def test_integer_ids_as_text_sort_by_number_and_other_ids_after_them() -> None:
    uuid = "9b2f6c1e-5a1d-4c3e-8f0a-0c1d2e3f4a5b"
    ids = sorted(user_ids([10, "9", uuid, 100_000, "2"]), key=id_order)
    assert ids == ["2", "9", "10", "100000", uuid]


def test_a_cursor_finds_the_next_page_of_a_100000_id_selection() -> None:
    selection = sorted(user_ids(range(100_000, 0, -1)), key=id_order)
    start = bisect_right(selection, id_order("99999"), key=id_order)
    assert selection[start:start + 3] == ["100000"]
    start = bisect_right(selection, id_order("9"), key=id_order)
    assert selection[start:start + 3] == ["10", "11", "12"]
