"""The binary (ADBC) snapshot read gives exactly what the text path gives, column by column."""

from __future__ import annotations

import pyarrow as pa
import pytest
from psycopg.types.string import TextLoader

from airflow_pg_replication.hooks.replication import PgReplicationHook
from airflow_pg_replication.source.snapshot_reads import begin_snapshot, copy_batches
from airflow_pg_replication.source.text_values import TextParseError
from airflow_pg_replication.source.type_map import text_to_arrow

DDL = """
CREATE DOMAIN small_pos AS smallint CHECK (VALUE > 0);
CREATE DOMAIN money2 AS numeric(10,2);
CREATE TABLE edge (
  id int PRIMARY KEY,
  c_ts timestamp, c_tstz timestamptz, c_date date,
  c_dom small_pos, c_money money2, c_char char(4), c_inet inet, c_cidr cidr,
  c_int_arr int8[], c_text_arr varchar[], c_bool_arr bool[], c_float_arr float8[], c_char_arr char(3)[],
  c_date_arr date[], c_json_arr jsonb[], c_bytea bytea, c_json json
)
"""

ROWS = """
INSERT INTO edge VALUES
 (1, 'infinity', '-infinity', 'infinity', 1, 12345678.91, 'a', '10.0.0.1/32', '10.1.0.0/16',
  '{1,NULL,-9223372036854775808}', '{"x,y",NULL,""}', '{t,NULL,f}', '{NaN,-Infinity,1.5e300}', '{a,bc}',
  '{2024-02-29,infinity,NULL}', ARRAY['{"k": null}'::jsonb, 'null'::jsonb], '\\x00ff', '{"a" : 1}'),
 (2, '-infinity', 'infinity', '-infinity', NULL, NULL, NULL, '::1', '::/0', '{}', '{}', NULL, '{}', NULL,
  '{}', '{}', '\\x', 'null'),
 (3, '4713-01-01 00:00:00 BC', '4713-01-01 00:00:00+00 BC', '4713-01-01 BC', 32767, -0.01, 'abcd', '192.168.0.1/24',
  '192.168.0.0/24', NULL, '{"Zoë 美咲"}', '{f}', '{-0.0}', '{"x  "}', NULL, NULL, NULL, NULL),
 (4, '294246-12-31 23:59:59.999999', '2000-01-01 00:00:00+00', '5874897-12-31', 2, 0, 'ab  ', NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)
"""


def _read(hook: PgReplicationHook, table: str):
    with hook.connect() as conn:
        info = hook.table_info(conn, "public", table)
    with hook.connect(autocommit=False) as conn:
        begin_snapshot(conn, None)
        return info, pa.Table.from_batches(list(copy_batches(conn, info, lsn=7, block_bytes=1 << 10)))


def _text_output(hook: PgReplicationHook, info) -> dict[str, list[str | None]]:
    """Every column's values as PostgreSQL's output function writes them (the text path's input)."""
    from psycopg import sql

    with hook.connect() as conn:
        query = sql.SQL("SELECT {} FROM {} ORDER BY id").format(
            sql.SQL(", ").join(sql.Identifier(c.name) for c in info.columns), sql.Identifier(info.name)
        )
        cur = conn.cursor()
        cur.execute(query)
        for d in cur.description:  # every type loaded as its text
            cur.adapters.register_loader(d.type_code, TextLoader)
        rows = cur.execute(query).fetchall()
    return {c.name: [r[i] for r in rows] for i, c in enumerate(info.columns)}


def test_binary_read_equals_text_path_for_every_column(pg_db):
    pg_db.execute(DDL)
    pg_db.execute(ROWS)
    hook = PgReplicationHook()
    info, table = _read(hook, "edge")
    table = table.sort_by("id")
    assert table.num_rows == 4 and table.column("_pg_lsn").to_pylist() == [7] * 4
    texts = _text_output(hook, info)
    for col in info.columns:
        expected = text_to_arrow(texts[col.name], col)
        got = table.column(col.name).combine_chunks()
        assert got.type == expected.type, col.name
        # equals() takes NaN != NaN; float columns are compared by their Python reprs instead
        assert got.equals(expected) or repr(got.to_pylist()) == repr(expected.to_pylist()), (col.name, got, expected)
    # the rules, spelled out for the cases binary reading changes
    ts = table.column("c_ts").combine_chunks().view(pa.int64()).to_pylist()
    assert ts[0] == 2**63 - 1 and ts[1] == -(2**63 - 1)
    assert table.column("c_date").combine_chunks().view(pa.int32()).to_pylist()[:2] == [2**31 - 1, -(2**31 - 1)]
    assert table.column("c_char").to_pylist()[3] == "ab  " and table.column("c_inet").to_pylist()[0] == "10.0.0.1"


def test_multidimensional_array_is_refused_by_name(pg_db):
    pg_db.execute("CREATE TABLE grid (id int PRIMARY KEY, cells int[])")
    pg_db.execute("INSERT INTO grid VALUES (1, '{1,2}'), (2, '{{1,2},{3,4}}')")
    with pytest.raises(TextParseError, match=r"cells.*multi-dimensional"):
        _read(PgReplicationHook(), "grid")


def test_timestamp_past_arrow_range_is_refused(pg_db):
    pg_db.execute("CREATE TABLE far (id int PRIMARY KEY, at timestamp)")
    pg_db.execute("INSERT INTO far VALUES (1, '294270-01-01 00:00:00')")
    with pytest.raises(TextParseError, match="at"):
        _read(PgReplicationHook(), "far")


def test_snapshot_is_the_callers(pg_db):
    """Rows committed after the caller's snapshot began are not read."""
    pg_db.execute("CREATE TABLE snap (id int PRIMARY KEY)")
    pg_db.execute("INSERT INTO snap SELECT generate_series(1, 100)")
    hook = PgReplicationHook()
    with hook.connect() as conn:
        info = hook.table_info(conn, "public", "snap")
    with hook.connect(autocommit=False) as conn:
        begin_snapshot(conn, None)
        pg_db.execute("INSERT INTO snap SELECT generate_series(101, 200)")
        rows = sum(b.num_rows for b in copy_batches(conn, info, lsn=None))
    assert rows == 100


def test_estimated_rows_is_the_planners_count(pg_db):
    from airflow_pg_replication.source.snapshot_reads import estimated_rows

    pg_db.execute("CREATE TABLE est (id int PRIMARY KEY)")
    with pg_db.connect() as conn:
        assert estimated_rows(conn, "public", "est") is None  # never analyzed
        assert estimated_rows(conn, "public", "no_such_table") is None
    pg_db.execute("INSERT INTO est SELECT generate_series(1, 5000)")
    pg_db.execute("ANALYZE est")
    with pg_db.connect() as conn:
        assert estimated_rows(conn, "public", "est") == 5000
