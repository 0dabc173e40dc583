"""Which directories the picker searches through a copy, and the copy's columns from a profile."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

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


@pytest.mark.parametrize("database_url", ["sqlite", pytest.param("postgresql",
                         marks=pytest.mark.postgres), pytest.param("mariadb",
                         marks=pytest.mark.mariadb)], indirect=True)
def test_resetbot_s_own_table_is_searched_through_a_copy_only_where_it_has_no_index(
    settings: Settings, directory: Directory, sample_users: list[Any]
) -> None:
    """MariaDB gets no search index from resetbot, and a LIKE over its own table walks every
    row: there, as on a library system's table, the picker searches the copy."""
    copy = attach_search_copy(settings, directory)
    if directory.engine.dialect.name in ("postgresql", "sqlite"):
        assert copy is None and directory.search_source is None
        return
    assert copy is not None and directory.search_source is not None
    assert copy.reload() and len(copy) == len(sample_users)
    [erin] = directory.search("EDITOR")
    assert (erin.id, erin.username, erin.full_name, erin.email, erin.role) == (
        5, "erin", "Erin Editor", "erin@example.org", "staff")
    assert [user.username for user in directory.search("example.org", 3)] == [
        "alice", "bob", "carol"]  # the first by username
    assert [user.role for user in directory.search("bob")] == [None]  # an empty role: patron
    assert directory.search("nobody here") == []


@pytest.mark.parametrize("database_url", ["sqlite", pytest.param("postgresql",
                         marks=pytest.mark.postgres), pytest.param("mariadb",
                         marks=pytest.mark.mariadb)], indirect=True)
def test_usernames_in_a_password_are_counted_per_scope_whatever_its_length(
    directory: Directory, sample_users: list[Any]
) -> None:
    """The users of the scope whose username (any case) the password holds, however long the
    password (judged in resetbot, over the scope's usernames)."""
    from core.models import Scope

    for padding in ("", "x" * 130):
        assert directory.usernames_in_password(f"{padding}ALICE-bob-{padding}", Scope.ALL,
                                               ()) == 2
        assert directory.usernames_in_password(f"{padding}carolerin", Scope.ALL, ()) == 2
        assert directory.usernames_in_password(f"{padding}carolerin", Scope.ALL_WITHOUT_ROLE,
                                               ()) == 0  # carol and erin are staff
        assert directory.usernames_in_password(f"{padding}bob+dave", Scope.SELECTED_ONLY,
                                               (4, 5)) == 1
        assert directory.usernames_in_password(f"{padding}Quiet-Harbour", Scope.ALL, ()) == 0


