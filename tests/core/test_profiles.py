"""Directory profiles: read from TOML, refused with the file, key and reason; the hash they ask."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import Engine, inspect, text
from sqlalchemy.engine import make_url

from core.db import make_engine
from core.directory import Directory, hasher_for, load_profile
from core.directory.sql.profile import parse_profile, shipped_profiles
from core.errors import ConfigError
from core.migrate import own_users_names, upgrade
from core.models import Scope
from core.settings import DirectoryNames, Settings
from tests.support.databases import mariadb_database
from tests.support.koha import create_borrowers, koha_profile_text

KOHA = koha_profile_text()
#: resetbot's own state on SQLite: what is tested here does not depend on its database.
state_on_sqlite = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def test_the_koha_profile_reads_borrowers_as_koha_does() -> None:
    profile = load_profile("koha")
    assert "koha" in shipped_profiles()
    assert (profile.table, profile.id) == ("borrowers", "borrowernumber")
    assert profile.username == ("userid", "cardnumber")
    assert profile.name_columns == ("firstname", "surname")
    assert profile.staff is not None
    assert (profile.staff.column, profile.staff.rule) == ("flags", "nonzero")
    assert (profile.hash.scheme, profile.hash.ident, profile.hash.rounds) == ("bcrypt", "2a", 8)
    assert profile.must_change is not None
    assert (profile.must_change.column, profile.must_change.kind) == (
        "password_expiration_date", "expiry"
    )
    [attempts] = profile.on_reset
    assert (attempts.column, attempts.value, attempts.unless) == ("login_attempts", 0, (-1,))
    assert not profile.owned


def test_the_resetbot_profile_is_the_configured_own_table() -> None:
    names = DirectoryNames(table="people", columns={**DirectoryNames().columns, "email": "mail"})
    profile = load_profile("resetbot", names)
    assert profile.owned
    assert (profile.table, profile.email, profile.password) == ("people", "mail", "password_hash")


def _with(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new)


@pytest.mark.parametrize(("text", "reason"), [
    (_with(KOHA, 'rule = "nonzero"', 'rule = "positive"'),
     "staff.rule: unknown rule 'positive' (expected nonzero, not_empty, in)"),
    (_with(KOHA, 'kind = "expiry"', 'kind = "sometimes"'),
     "must_change.kind: unknown kind 'sometimes' (expected flag, expiry)"),
    (_with(KOHA, 'ident = "2a"', 'ident = "2x"'),
     "password.ident: '2x': expected one of 2a, 2b, 2y with scheme 'bcrypt'"),
    (_with(KOHA, 'scheme = "bcrypt"', 'scheme = "md5_crypt"'),
     "password.scheme: 'md5_crypt' is not a password hash resetbot writes (see "
     "PASSWORD_SCHEMES)"),
    (_with(KOHA, "rounds = 8", "rounds = 99"),
     "password.rounds: 99 is too high for bcrypt (4\N{EN DASH}31)"),
    (_with(KOHA, "value = 0", 'value = 0\nset = "now"'),
     "on_reset[0]: expected exactly one of value (a literal) or set (now, today, null)"),
    (_with(KOHA, 'table = "borrowers"', 'table = "borrowers; DROP TABLE x"'),
     "table: expected a column or table name (letters, digits, _)"),
    (_with(KOHA, 'email = "email"', 'e_mail = "email"'),
     "e_mail: unknown key (expected one of change_log, description, email, id, locked, "
     "must_change, name, on_reset, password, password_rules, staff, table, username)"),
    ("table = [", "not a TOML file"),
])
def test_a_profile_file_with_an_unknown_rule_or_key_is_refused_naming_it(
    tmp_path: Path, text: str, reason: str
) -> None:
    path = tmp_path / "library.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as refused:
        load_profile(str(path))
    assert str(refused.value).startswith(f"{path}: {reason}")
    assert "\n" not in str(refused.value)


def test_a_profile_that_is_neither_shipped_nor_a_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"DIRECTORY_PROFILE: .* neither a profile resetbot"):
        load_profile(str(tmp_path / "missing.toml"))


@pytest.fixture
def koha_sqlite(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'koha.db'}"
    engine = make_engine(url)
    create_borrowers(engine)
    engine.dispose()
    return url


@state_on_sqlite
@pytest.mark.parametrize(("old", "new", "reason"), [
    ('email = "email"', 'email = "mail"',
     "email: there is no column 'mail' in table 'borrowers'"),
    ('column = "flags"', 'column = "permissions"',
     "staff.column: there is no column 'permissions' in table 'borrowers'"),
    ('column = "login_attempts"', 'column = "attempts"',
     "on_reset[0].column: there is no column 'attempts' in table 'borrowers'"),
    ('table = "borrowers"', 'table = "patrons"',
     "table: there is no table 'patrons' in the directory database {url} (DIRECTORY_URL)"),
])
def test_a_profile_naming_what_the_directory_lacks_is_refused_at_start(
    settings: Settings, koha_sqlite: str, tmp_path: Path, old: str, new: str, reason: str
) -> None:
    path = tmp_path / "library.toml"
    path.write_text(_with(KOHA, old, new), encoding="utf-8")
    library = replace(settings, directory_url=koha_sqlite, directory_profile=str(path),
                      password_rounds=4)
    with pytest.raises(ConfigError) as refused:
        Directory.from_settings(library)
    assert str(refused.value) == f"{path}: {reason.format(url=koha_sqlite)}"
    parse_profile(path.read_text("utf-8"), name="x", source="x")  # the shape itself was fine


@state_on_sqlite
def test_the_hash_is_the_one_the_profile_system_reads(settings: Settings) -> None:
    koha = load_profile("koha")
    defaults = replace(settings, password_rounds=None, password_allow_weak_rounds=False)
    assert hasher_for(koha, defaults).hash("Quiet-Harbour-73!").startswith("$2a$08$")
    chosen = replace(defaults, password_rounds=11)
    assert hasher_for(koha, chosen).hash("Quiet-Harbour-73!").startswith("$2a$11$")
    # resetbot's own table keeps PASSWORD_SCHEMES (pbkdf2 in these tests' settings).
    own = hasher_for(load_profile("resetbot"), settings)
    assert own.hash("Quiet-Harbour-73!").startswith("$pbkdf2-sha256$1000$")
    with pytest.raises(ConfigError, match=r"^PASSWORD_ROUNDS: 9 is below the safe minimum"):
        hasher_for(koha, replace(defaults, password_rounds=9))


@state_on_sqlite
def test_a_profile_file_cost_below_the_minimum_is_refused_unless_weak_rounds_are_allowed(
    settings: Settings, tmp_path: Path
) -> None:
    """`rounds = 4` in a library's own profile would write `$2b$04$` hashes: the floor of
    PASSWORD_ROUNDS applies. Only the shipped koha profile keeps its 8 (what Koha writes)."""
    path = tmp_path / "library.toml"
    path.write_text(_with(KOHA, "rounds = 8", "rounds = 4"), encoding="utf-8")
    strict = replace(settings, password_rounds=None, password_allow_weak_rounds=False)

    with pytest.raises(ConfigError) as refused:
        hasher_for(load_profile(str(path)), strict)
    assert str(refused.value) == (
        f"{path}: password.rounds: 4 is below the safe minimum for bcrypt (10\N{EN DASH}31); "
        "PASSWORD_ALLOW_WEAK_ROUNDS=true allows less, for tests and demos only"
    )
    weak = replace(strict, password_allow_weak_rounds=True)
    assert hasher_for(load_profile(str(path)), weak).hash("Quiet-Harbour-73!").startswith(
        "$2a$04$")
    path.write_text(KOHA, encoding="utf-8")  # a copy of koha's is the library's own: 8 < 10
    with pytest.raises(ConfigError, match=r"password\.rounds: 8 is below the safe minimum"):
        hasher_for(load_profile(str(path)), strict)
    assert hasher_for(load_profile("koha"), strict).hash("x").startswith("$2a$08$")


def test_mysql_and_mariadb_urls_use_the_shipped_driver() -> None:
    for url in ("mysql://koha@127.0.0.1/koha", "mariadb://koha@127.0.0.1/koha",
                "mysql+pymysql://koha@127.0.0.1/koha"):
        engine = make_engine(url)
        try:
            assert engine.dialect.driver == "pymysql"
            assert engine.pool._recycle == 3600  # type: ignore[attr-defined]
        finally:
            engine.dispose()
    with pytest.raises(ConfigError, match=r"^DIRECTORY_URL: the driver for .mysql\+mysqldb."):
        make_engine("mysql+mysqldb://koha@127.0.0.1/koha", setting="DIRECTORY_URL")


@state_on_sqlite
def test_db_upgrade_makes_resetbot_own_users_table_only_when_it_is_its_own(
    settings: Settings, koha_sqlite: str, engine: Engine
) -> None:
    assert own_users_names(settings) == settings.directory
    assert "users" in inspect(engine).get_table_names()
    elsewhere = replace(settings, directory_url=koha_sqlite)
    assert own_users_names(elsewhere) is None
    assert own_users_names(replace(settings, directory_profile="koha")) is None
    fresh = replace(settings, database_url=settings.database_url.replace(".db", "-2.db"))
    assert fresh.database_url != settings.database_url
    upgrade(replace(fresh, directory_url=koha_sqlite, directory_profile="koha"))
    state = make_engine(fresh.database_url)
    try:
        tables = set(inspect(state).get_table_names())
    finally:
        state.dispose()
    assert "reset_tasks" in tables
    assert not tables & {"users", "users_search"}


def test_settings_read_the_directory_url_and_profile(tmp_path: Path) -> None:
    settings = Settings.from_env({
        "DIRECTORY_URL": "mysql+pymysql://koha@127.0.0.1/koha", "DIRECTORY_PROFILE": "koha",
    }, env_file=None)
    assert (settings.directory_url, settings.directory_profile) == (
        "mysql+pymysql://koha@127.0.0.1/koha", "koha"
    )
    assert Settings.from_env({}, env_file=None).directory_profile == "resetbot"
    path = str(tmp_path / "library.toml")
    assert Settings.from_env({"DIRECTORY_PROFILE": path}, env_file=None).directory_profile == path


@state_on_sqlite
@pytest.mark.mariadb
def test_a_table_borrowers_points_to_is_never_read_nor_blamed(settings: Settings) -> None:
    """Koha's foreign keys name tables resetbot does not use: one missing is no concern of a
    reset (it was once reported as "there is no table 'borrowers'")."""
    with mariadb_database() as url:
        engine = make_engine(url)
        create_borrowers(engine)
        with engine.begin() as connection:
            connection.execute(text("SET foreign_key_checks = 0"))
            connection.execute(text("DROP TABLE sms_providers"))
            connection.execute(text("SET foreign_key_checks = 1"))
        library = replace(settings, directory_url=url, directory_profile="koha",
                          password_rounds=4, password_allow_weak_rounds=True)
        directory = Directory.from_settings(library)
        try:
            assert directory.preview(Scope.ALL, ()).users == 8
            assert {c.name for c in directory.table.columns} == set(
                load_profile("koha").columns().values())
        finally:
            directory.dispose()
            engine.dispose()


@state_on_sqlite
@pytest.mark.parametrize("kind", [pytest.param("mariadb", marks=pytest.mark.mariadb), "sqlite"])
def test_a_forgotten_directory_profile_names_the_setting_and_the_profile_to_set(
    settings: Settings, tmp_path: Path, kind: str
) -> None:
    with (mariadb_database() if kind == "mariadb"
          else nullcontext(f"sqlite:///{tmp_path / 'koha.db'}")) as url:
        engine = make_engine(url)
        create_borrowers(engine)
        engine.dispose()
        forgotten = replace(settings, directory_url=url)  # DIRECTORY_PROFILE left at resetbot
        assert forgotten.directory_profile == "resetbot"
        with pytest.raises(ConfigError) as refused:
            Directory.from_settings(forgotten)
    shown = make_url(url).render_as_string(hide_password=True)
    assert str(refused.value) == (
        f"DIRECTORY_PROFILE: there is no table 'users' in the directory database {shown} "
        "(DIRECTORY_URL), the users table of DIRECTORY_PROFILE=resetbot (the default); the "
        "database holds 'borrowers': set DIRECTORY_PROFILE=koha")


@state_on_sqlite
def test_a_directory_url_without_any_known_table_says_what_to_set(
    settings: Settings, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'other.db'}"
    engine = make_engine(url)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE patrons (id INTEGER PRIMARY KEY)"))
    engine.dispose()
    with pytest.raises(ConfigError) as refused:
        Directory.from_settings(replace(settings, directory_url=url))
    assert str(refused.value).startswith(
        f"DIRECTORY_PROFILE: there is no table 'users' in the directory database {url} "
        "(DIRECTORY_URL), the users table of DIRECTORY_PROFILE=resetbot (the default, named by "
        "USERS_TABLE): set DIRECTORY_PROFILE to the library system's profile (koha, or a "
        "profile file), or USERS_TABLE")
