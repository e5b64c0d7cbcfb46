"""NativeDuckDb writes: JSON text stored as it came, the state with the data, in one transaction."""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pytest

from airflow_pg_replication.destination.duckdb.native import NativeDuckDb
from airflow_pg_replication.destination.duckdb.session import DuckDbSession


@pytest.fixture
def native() -> NativeDuckDb:
    session = DuckDbSession(duckdb.connect(), "ds")
    session.execute_sql("CREATE SCHEMA ds")
    session.execute_sql("CREATE TABLE ds.t (id BIGINT, doc JSON, tags JSON, note VARCHAR, was_json JSON)")
    return NativeDuckDb(session, "t", json_columns=["doc", "tags"])


def test_json_text_goes_in_unchanged_and_unparsed(native: NativeDuckDb) -> None:
    docs = ['{"a" : 1,  "b": [1, 2]}', "null", '"ünï\\u00e9"', None]
    batch = pa.table(
        {
            "id": pa.array([1, 2, 3, 4], pa.int64()),
            "doc": pa.array(docs),
            "tags": pa.array([["x", "y z"], [], None, ["q"]], pa.list_(pa.string())),
            "note": pa.array(["{not json", None, "", "n"]),
        }
    )
    assert native.fits(batch.schema)
    if hasattr(pa, "json_"):  # what DuckDB receives: JSON-bound text marked as JSON, other text as it is
        sent = native._json_as_is(batch)
        assert sent.schema.field("doc").type == pa.json_()
        assert sent.schema.field("note").type == pa.string()
        assert sent.schema.field("tags").type == batch.schema.field("tags").type
    native.merge(batch, ["id"], None, None, [])
    rows = native.con.execute("SELECT id, doc, tags, note, typeof(doc) FROM ds.t ORDER BY id").fetchall()
    assert rows == [
        (1, '{"a" : 1,  "b": [1, 2]}', '["x","y z"]', "{not json", "JSON"),
        (2, "null", "[]", None, "JSON"),
        (3, '"ünï\\u00e9"', None, "", "JSON"),
        (4, None, '["q"]', "n", "JSON"),
    ]


def test_merge_replaces_keys_and_deletes_in_one_transaction(native: NativeDuckDb) -> None:
    first = pa.table({"id": pa.array([1, 2, 3], pa.int64()), "doc": pa.array(['{"v": 1}', '{"v": 2}', '{"v": 3}'])})
    native.merge(first, ["id"], None, None, [])
    second = pa.table({"id": pa.array([2], pa.int64()), "doc": pa.array(['{"v": 22}'])})
    native.merge(
        second,
        ["id"],
        pa.table({"id": pa.array([3], pa.int64())}),
        None,
        [("INSERT INTO ds.t (id, note) VALUES (?, ?)", [99, "state row"])],
    )
    assert native.con.execute("SELECT id, doc, note FROM ds.t ORDER BY id").fetchall() == [
        (1, '{"v": 1}', None),
        (2, '{"v": 22}', None),
        (99, None, "state row"),
    ]


def test_text_that_is_not_from_json_is_still_validated_into_a_json_column(native: NativeDuckDb) -> None:
    # a source column retyped from jsonb to text keeps its JSON destination column (dlt does not narrow)
    batch = pa.table({"id": pa.array([1], pa.int64()), "was_json": pa.array(["not json"])})
    assert native.fits(batch.schema)
    if hasattr(pa, "json_"):
        assert native._json_as_is(batch).schema.field("was_json").type == pa.string()
    with pytest.raises(duckdb.ConversionException):
        native.merge(batch, ["id"], None, None, [])
    assert native.con.execute("SELECT count(*) FROM ds.t").fetchone()[0] == 0  # nothing half-applied
