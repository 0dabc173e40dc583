"""Which directories the picker searches through a copy, and the copy's columns from a profile."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import text

from core.db import make_engine
from core.directory import Directory
from core.directory.picker import attach_search_copy, needs_search_copy, search_select
from core.search_copy import SearchRow, load_rows
from core.settings import Settings
from tests.support.koha import BORROWERS, create_borrowers, koha_profile_text

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@sqlite_only
def test_resetbot_s_own_table_beside_its_state_is_searched_in_place(
    settings: Settings, directory: Directory
) -> None:
    assert not needs_search_copy(settings, directory)
    assert attach_search_copy(settings, directory) is None
    assert directory.search_source is None


@sqlite_only
def test_a_profile_file_on_sqlite_gives_the_copy_koha_s_columns(
    settings: Settings, tmp_path: Path
) -> None:
    profile = tmp_path / "library.toml"
    profile.write_text(koha_profile_text(), encoding="utf-8")
    url = f"sqlite:///{tmp_path / 'koha.db'}"
    engine = make_engine(url)
    create_borrowers(engine)
    configured = replace(settings, directory_url=url, directory_profile=str(profile),
                         password_rounds=4, password_allow_weak_rounds=True)
    directory = Directory.from_settings(configured)
    try:
        assert needs_search_copy(configured, directory)
        rows = {int(row.id): row
                for row in load_rows(directory.engine, search_select(directory))}
        assert len(rows) == len(BORROWERS)
        for b in BORROWERS:
            assert rows[b.number] == SearchRow(
                str(b.number), b.username, f"{b.firstname} {b.surname}", b.cardnumber,
                b.email or None, b.is_staff,
            )
        copy = attach_search_copy(configured, directory)
        assert copy is not None and copy.reload()
        with engine.begin() as connection:  # gone from the table: the copy still has it
            connection.execute(text("DELETE FROM borrowers WHERE borrowernumber = 2"))
        [bob] = directory.search("binder")
        assert (bob.id, bob.username, bob.full_name, bob.role) == (2, "C0002", "Bob Binder", None)
        assert [u.role for u in directory.search("carol")] == ["staff"]
        assert directory.missing_ids([1, 2]) == [2]  # the preview asks the table itself
    finally:
        directory.dispose()
        engine.dispose()
