"""DuckDbSession addresses the tables dlt's DuckDB client addresses, and fails the way it does."""

from __future__ import annotations

import duckdb
import pytest
from dlt.destinations.exceptions import DatabaseUndefinedRelation

from airflow_pg_replication.destination.duckdb.session import DuckDbSession

NAMES = ["plain", "Mixed Case", 'with "quotes"', "dollar$sign", "ünïcode"]


@pytest.fixture
def dlt_client(tmp_path):
    import dlt

    dlt.config["schema.naming"] = "direct"
    pipe = dlt.pipeline(
        pipeline_name="session_test",
        pipelines_dir=str(tmp_path / "dlt"),
        destination=dlt.destinations.duckdb(str(tmp_path / "x.duckdb")),
        dataset_name='my "data"',
    )
    with pipe.sql_client() as client:
        yield client


@pytest.mark.parametrize("name", NAMES)
def test_names_match_dlt(dlt_client, name):
    session = DuckDbSession(duckdb.connect(), 'my "data"')
    assert session.make_qualified_table_name(name) == dlt_client.make_qualified_table_name(name)
    assert session.escape_column_name(name) == dlt_client.escape_column_name(name)


def test_statements_parameters_and_missing_tables():
    session = DuckDbSession(duckdb.connect(), "ds")
    with pytest.raises(DatabaseUndefinedRelation):
        session.execute_sql("SELECT * FROM " + session.make_qualified_table_name("nope"))
    session.execute_sql("CREATE SCHEMA ds")
    session.execute_sql("CREATE TABLE " + session.make_qualified_table_name('t "1"') + " (a INT, b TEXT)")
    with session.begin_transaction():
        session.execute_sql('INSERT INTO ds."t ""1""" VALUES (%s, %s)', 1, "x%s")
    with pytest.raises(RuntimeError), session.begin_transaction():
        session.execute_sql('INSERT INTO ds."t ""1""" VALUES (2, \'rolled back\')')
        raise RuntimeError("boom")
    assert session.execute_sql('SELECT a, b FROM ds."t ""1""" WHERE a = %s', 1) == [(1, "x%s")]
    assert session.execute_sql('SELECT count(*) FROM ds."t ""1"""') == [(1,)]
