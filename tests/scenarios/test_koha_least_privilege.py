"""Every query resetbot makes of Koha's `borrowers` runs with only docs/koha.md's column grants,
on Koha's own tables, with the tables its foreign keys name unreadable: the checks, the
previews, the picker's copy, lookups by name, the hash write. Without the optional grant the
hash survey is reported missing, not failed."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import DBAPIError

from core.db import make_engine
from core.directory import Directory
from core.directory.capabilities import optional_features
from core.directory.picker import search_select
from core.errors import ConfigError
from core.models import Scope
from core.search_copy import load_rows
from core.settings import Settings
from tests.scenarios.test_readme_directories import Names, _drop_user, _grant
from tests.support.databases import MARIADB_ADMIN_URL, mariadb_database, postgres_database
from tests.support.koha import BORROWERS, KOHA_CASES, create_borrowers, dump_tables, row

pytestmark = [pytest.mark.mariadb]
state_on_sqlite = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
def least_privilege() -> Iterator[tuple[Engine, str]]:
    """(Koha's database as root, its URL as a MariaDB user made by docs/koha.md's SQL)."""
    with mariadb_database() as url, postgres_database() as state_url:
        engine = make_engine(url)
        create_borrowers(engine, [*BORROWERS, *KOHA_CASES])
        names = Names(url, state_url)
        _grant(names)
        try:
            koha = engine.url
            yield engine, (f"mysql+pymysql://{names.user}:{names.password}@{koha.host}:"
                           f"{koha.port}/{koha.database}?charset=utf8mb4")
        finally:
            _drop_user(names)
            engine.dispose()


@state_on_sqlite
def test_every_directory_query_runs_with_the_readme_grants(
    settings: Settings, least_privilege: tuple[Engine, str]
) -> None:
    root, url = least_privilege
    others = {name: rows for name, rows in dump_tables(root).items() if name != "borrowers"}
    library = replace(settings, directory_url=url, directory_profile="koha", password_rounds=4,
                      password_allow_weak_rounds=True)
    directory = Directory.from_settings(library)
    try:
        # The tables Koha's foreign keys name cannot be read by this user at all.
        with directory.engine.connect() as connection, pytest.raises(DBAPIError):
            connection.execute(text("SELECT categorycode FROM categories"))
        everyone = len(BORROWERS) + len(KOHA_CASES)
        for scope, selection in ((Scope.ALL, ()), (Scope.ALL_WITHOUT_ROLE, ()),
                                 (Scope.SELECTED_ONLY, (1, 106)),
                                 (Scope.ALL_EXCEPT_SELECTED, (1,))):
            assert directory.preview(scope, selection).users > 0
            assert directory.scope_batch(scope, selection, 0, 1000)
        assert directory.preview(Scope.ALL, ()).users == everyone
        assert [u.id for u in directory.by_username(["zoë", "C0002"])] in ([106, 2], [2, 106])
        assert "ada" in directory.usernames_ignoring_case(["ADA"])
        assert directory.missing_ids([1, 999]) == [999]
        assert directory.patrons_among([1, 3]) == 1
        assert directory.usernames_in_password("xx-ada-xx", Scope.ALL, ()) == 1
        assert {u.username for u in directory.search("grace")} == {"grace"}
        assert len(list(load_rows(directory.engine, search_select(directory)))) == everyone
        # Each optional grant is said to be missing, none is needed.
        assert [(feature.name, feature.available) for feature in optional_features(directory)] == [
            ("hash survey", False), ("undo", False), ("Koha's password rules", False),
            ("Koha's log", False)]
        directory.write_hashes([(1, "$2a$04$least-privilege")], require_change=True,
                               changed_at=datetime(2026, 12, 7, 12, tzinfo=UTC))
    finally:
        directory.dispose()
    assert row(root, 1)["password"] == "$2a$04$least-privilege"
    assert {n: r for n, r in dump_tables(root).items() if n != "borrowers"} == others


@state_on_sqlite
def test_a_user_without_a_read_column_is_refused_naming_it(
    settings: Settings, least_privilege: tuple[Engine, str]
) -> None:
    """A grant that forgot `email`: refused at start, in one line naming the column."""
    _, url = least_privilege
    user = url.split("//")[1].split(":")[0]
    admin = create_engine(MARIADB_ADMIN_URL, isolation_level="AUTOCOMMIT")
    database = url.rsplit("/", 1)[1].split("?")[0]
    with admin.connect() as connection:
        connection.execute(text(f"REVOKE SELECT (email) ON `{database}`.borrowers "
                                f"FROM '{user}'@'127.0.0.1'"))
    admin.dispose()
    library = replace(settings, directory_url=url, directory_profile="koha", password_rounds=4,
                      password_allow_weak_rounds=True)
    with pytest.raises(ConfigError) as refused:
        Directory.from_settings(library)
    said = str(refused.value)
    assert said.startswith("koha.toml: email: there is no column 'email' in table 'borrowers' "
                           "(or the database user has no right on that column")
    assert "\n" not in said
