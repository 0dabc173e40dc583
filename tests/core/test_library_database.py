"""resetbot never writes its tables into the library system's database: `db upgrade` (and
`create_schema`) refuse a DATABASE_URL that is DIRECTORY_URL's database or holds a library
system's users table, naming both settings, and create nothing."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import Engine

from core.db import make_engine
from core.directory import Directory
from core.errors import ConfigError
from core.migrate import same_database, upgrade
from core.schema import create_schema
from core.settings import Settings
from tests.support.databases import mariadb_database
from tests.support.koha import create_borrowers, schema_objects

SCRIPT = Path(sys.executable).parent / "resetbot"
state_on_sqlite = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def resetbot(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), *args], env={"PATH": str(SCRIPT.parent), **env},
                          capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path)


@pytest.fixture(params=[pytest.param("mariadb", marks=pytest.mark.mariadb), "sqlite"])
def koha(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Engine]]:
    """A library system's database: Koha's borrowers (Koha's own tables on MariaDB)."""
    if request.param == "mariadb":
        with mariadb_database() as url:
            engine = make_engine(url)
            create_borrowers(engine)
            yield url, engine
            engine.dispose()
    else:
        url = f"sqlite:///{tmp_path / 'koha.db'}"
        engine = make_engine(url)
        create_borrowers(engine)
        yield url, engine
        engine.dispose()


def test_db_upgrade_refuses_the_directory_database_itself(
    koha: tuple[str, Engine], tmp_path: Path
) -> None:
    url, engine = koha
    schema = schema_objects(engine)
    done = resetbot(tmp_path, {"DIRECTORY_URL": url, "DIRECTORY_PROFILE": "koha",
                               "DATABASE_URL": url}, "db", "upgrade")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    line = done.stderr.strip()
    assert line.startswith("resetbot: DATABASE_URL: ") and "DIRECTORY_URL" in line
    assert line.endswith("(nothing was created)")
    assert schema_objects(engine) == schema


@pytest.mark.parametrize("profile", ["koha", "resetbot"])
def test_db_upgrade_refuses_a_database_holding_a_library_systems_users_table(
    koha: tuple[str, Engine], tmp_path: Path, profile: str
) -> None:
    """DIRECTORY_URL forgotten (the users would be looked for beside the state), or everything
    left at the defaults but DATABASE_URL pointed at Koha: the same refusal."""
    url, engine = koha
    schema = schema_objects(engine)
    done = resetbot(tmp_path, {"DIRECTORY_PROFILE": profile, "DATABASE_URL": url},
                    "db", "upgrade")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    shown = engine.url.render_as_string(hide_password=True)
    assert done.stderr == (
        f"resetbot: DATABASE_URL: {shown} holds 'borrowers', the users table of "
        "DIRECTORY_PROFILE=koha (a library system's database): resetbot never writes its "
        "tables there; set DATABASE_URL to a database of resetbot's own, and DIRECTORY_URL to "
        "this one (nothing was created)\n")
    assert schema_objects(engine) == schema


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
@pytest.mark.postgres
def test_db_upgrade_beside_a_library_directory_still_works(
    koha: tuple[str, Engine], settings: Settings
) -> None:
    url, _ = koha
    library = replace(settings, directory_url=url, directory_profile="koha")
    assert upgrade(library) is not None  # resetbot's own database: made as before


def test_the_same_database_is_recognised_however_it_is_written(tmp_path: Path) -> None:
    assert same_database("mysql://root@localhost/koha", "mysql+pymysql://rb:x@127.0.0.1:3306/koha")
    assert same_database("mariadb://rb@127.0.0.1/koha", "mysql+pymysql://rb@127.0.0.1/koha")
    assert same_database("postgresql://a@db.example/koha", "postgresql+psycopg://b@db.example:5432/koha")
    assert same_database(f"sqlite:///{tmp_path}/k.db", f"sqlite:///{tmp_path}/../{tmp_path.name}/k.db")
    assert not same_database("mysql://rb@127.0.0.1/koha", "mysql://rb@127.0.0.1/resetbot")
    assert not same_database("mysql://rb@127.0.0.1/koha", "mysql://rb@127.0.0.1:3307/koha")
    assert not same_database("mysql://rb@db1/koha", "mysql://rb@db2/koha")


@state_on_sqlite
def test_create_schema_refuses_a_library_directory_sharing_its_engine(
    settings: Settings, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'koha.db'}"
    engine = make_engine(url)
    create_borrowers(engine)
    schema = schema_objects(engine)
    library = replace(settings, database_url=url, directory_profile="koha", password_rounds=4,
                      password_allow_weak_rounds=True)
    directory = Directory.from_settings(library, engine)
    with pytest.raises(ConfigError, match=r"^DATABASE_URL: .* holds 'borrowers'"):
        create_schema(engine, directory)
    assert schema_objects(engine) == schema
    engine.dispose()
