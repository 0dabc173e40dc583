"""A test's PostgreSQL schema: its own namespace, for every connection given its URL, and gone
afterwards even while a session still holds locks in it."""

from __future__ import annotations

import subprocess
import sys

import pytest
from sqlalchemy import Engine, create_engine, inspect, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from tests.support.databases import PostgresSchemas

pytestmark = pytest.mark.postgres


@pytest.fixture
def schemas(postgres_test_schemas: PostgresSchemas) -> PostgresSchemas:
    return postgres_test_schemas


def schema_names(engine: Engine) -> set[str]:
    with engine.connect() as connection:
        return set(connection.execute(text("SELECT nspname FROM pg_namespace")).scalars())


def test_each_schema_is_a_namespace_of_its_own_dropped_with_its_tables(
    schemas: PostgresSchemas,
) -> None:
    with schemas.schema() as other_url:
        # A connection of its own for each look: dropping a schema ends every other session.
        other = create_engine(other_url, poolclass=NullPool)
        try:
            with schemas.schema() as url:
                own = create_engine(url)
                with own.begin() as connection:
                    connection.execute(text("CREATE TABLE t (id SERIAL PRIMARY KEY, x TEXT)"))
                    connection.execute(text("INSERT INTO t (x) VALUES ('a')"))
                    schema = connection.execute(text("SELECT current_schema()")).scalar_one()
                    sequence = connection.execute(
                        text("SELECT pg_get_serial_sequence('t', 'id')")
                    ).scalar_one()
                own.dispose()
                assert sequence == f"{schema}.t_id_seq"
                assert inspect(other).get_table_names() == []
                assert schema in schema_names(other)
            assert schema not in schema_names(other)
        finally:
            other.dispose()


def test_a_session_left_holding_a_lock_is_ended_and_the_schema_dropped(
    schemas: PostgresSchemas,
) -> None:
    with schemas.schema() as url:
        engine = create_engine(url)
        left = engine.connect()
        left.execute(text("CREATE TABLE t (id INTEGER)"))
        left.execute(text("LOCK TABLE t IN ACCESS EXCLUSIVE MODE"))  # the transaction stays open
    try:
        with pytest.raises(OperationalError):
            left.execute(text("SELECT 1"))
    finally:
        left.invalidate()
        engine.dispose()


def test_a_subprocess_given_the_url_works_in_the_same_schema(schemas: PostgresSchemas) -> None:
    with schemas.schema() as url:
        engine = create_engine(url)
        try:
            with engine.begin() as connection:
                connection.execute(text("CREATE TABLE marker (id INTEGER)"))
                schema = connection.execute(text("SELECT current_schema()")).scalar_one()
        finally:
            engine.dispose()
        seen = subprocess.run(
            [sys.executable, "-c",
             "import sys; from sqlalchemy import create_engine, inspect, text\n"
             "with create_engine(sys.argv[1]).connect() as connection:\n"
             "    schema = connection.execute(text('SELECT current_schema()')).scalar_one()\n"
             "    print(schema, *inspect(connection).get_table_names())", url],
            capture_output=True, text=True, check=True, timeout=60,
        ).stdout.split()
    assert seen == [schema, "marker"]
