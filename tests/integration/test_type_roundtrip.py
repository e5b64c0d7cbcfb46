"""Every supported type with edge values survives a full refresh and CDC, checked value by value."""

from __future__ import annotations

import json
import math
from datetime import timezone
from decimal import Decimal

import pytest

from airflow_pg_replication import PgCdcApplyOperator, PgFullRefreshOperator

DDL = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN positive_int AS integer CHECK (VALUE > 0);
CREATE TABLE every_type (
  id int PRIMARY KEY,
  c_int2 smallint, c_int4 integer, c_int8 bigint,
  c_float4 real, c_float8 double precision,
  c_num numeric(20,5), c_num_free numeric,
  c_bool boolean, c_text text, c_varchar varchar(10), c_char char(5),
  c_bytea bytea, c_date date, c_time time, c_ts timestamp, c_tstz timestamptz,
  c_interval interval, c_uuid uuid, c_json json, c_jsonb jsonb,
  c_int_arr int[], c_text_arr text[], c_enum mood, c_domain positive_int, c_inet inet
)
"""

ROWS = """
INSERT INTO every_type VALUES
 ({id}, -32768, 2147483647, -9223372036854775808, 1.5, 'NaN', 123456789012345.12345, 12345678901234567890.123456789,
  true, 'Zoë 美咲 "quoted", back\\slash', 'ten chars!', 'ab', '\\x00ff10', '2024-02-29',
  '23:59:59.999999', '2024-01-01 12:34:56.789', '2024-06-01 10:00:00.5+02', '1 year 2 months 3 days 04:05:06.7',
  'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{{"a": [1, null]}}', '{{"nested": {{"k": "v"}}, "n": 1.50}}',
  '{{1,NULL,3}}', '{{"a b","c\\"d",NULL,"NULL"}}', 'happy', 7, '192.168.0.1/24'),
 ({id2}, NULL, NULL, NULL, '-Infinity', 'Infinity', NULL, NULL, NULL, '', NULL, NULL, '\\x', '0001-01-01', '00:00',
  NULL, '1999-12-31 23:59:59+00', NULL, NULL, 'null', 'null', '{{}}', '{{}}', NULL, NULL, NULL),
 ({id3}, 0, 0, 0, 0, -0.0, -0.00001, 0, false, NULL, 'x', 'abcde', NULL, NULL, NULL, '1970-01-01 00:00:00', NULL,
  '-1 days +00:00:01', NULL, NULL, NULL, NULL, NULL, 'sad', 1, '::1')
"""

COLS = [
    "id",
    "c_int2",
    "c_int4",
    "c_int8",
    "c_float4",
    "c_float8",
    "c_num",
    "c_num_free",
    "c_bool",
    "c_text",
    "c_varchar",
    "c_char",
    "c_bytea",
    "c_date",
    "c_time",
    "c_ts",
    "c_tstz",
    "c_interval",
    "c_uuid",
    "c_json",
    "c_jsonb",
    "c_int_arr",
    "c_text_arr",
    "c_enum",
    "c_domain",
    "c_inet",
]
TEXT_FORM = {"c_interval", "c_uuid", "c_enum", "c_inet"}  # compared as text (ISO 8601 interval)
CAST_TEXT = {"c_interval", "c_uuid", "c_enum"}  # read from the source as ::text (inet's output form is str())
JSON_FORM = {"c_json", "c_jsonb", "c_int_arr", "c_text_arr"}  # JSON documents / lists


def norm(col: str, v):
    """One comparable form for a value from either side."""
    if v is None:
        return None
    if col in JSON_FORM:
        return json.loads(v) if isinstance(v, str) else v
    if isinstance(v, float):
        return "nan" if math.isnan(v) else v
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v)
    if hasattr(v, "tzinfo") and getattr(v, "tzinfo", None) is not None and hasattr(v, "astimezone"):
        return v.astimezone(timezone.utc)
    if isinstance(v, Decimal):
        return v
    return v if col not in TEXT_FORM else str(v)


def source_values(pg_db) -> list[tuple]:
    select = ", ".join(f"{c}::text" if c in CAST_TEXT | JSON_FORM else c for c in COLS)
    with pg_db.connect() as conn:
        conn.execute("SET TimeZone = 'UTC'; SET IntervalStyle = iso_8601")
        rows = conn.execute(f"SELECT {select} FROM every_type ORDER BY id").fetchall()
    out = []
    for row in rows:
        vals = []
        for c, v in zip(COLS, row):
            if c in ("c_int_arr", "c_text_arr") and v is not None:  # PostgreSQL array text -> list via SQL
                with pg_db.connect() as conn:
                    v = conn.execute(
                        f"SELECT array_to_json(%s::{'int' if c == 'c_int_arr' else 'text'}[])::text", (v,)
                    ).fetchone()[0]
            vals.append(norm(c, v))
        out.append(tuple(vals))
    return out


def dest_values(duck) -> list[tuple]:
    rows = duck.query("SELECT " + ", ".join(f'"{c}"' for c in COLS) + " FROM replica.every_type ORDER BY id")
    return [tuple(norm(c, v) for c, v in zip(COLS, row)) for row in rows]


def assert_equal_values(pg_db, duck):
    src, dst = source_values(pg_db), dest_values(duck)
    assert len(src) == len(dst)
    for s_row, d_row in zip(src, dst):
        for c, s, d in zip(COLS, s_row, d_row):
            assert s == d, f"id={s_row[0]} column {c}: source {s!r} != destination {d!r}"


def test_every_type_through_full_refresh_and_cdc(pg_db, duck):
    pg_db.execute(DDL)
    pg_db.execute(ROWS.format(id=1, id2=2, id3=3))
    common = dict(table="every_type", destination=duck.spec)
    PgFullRefreshOperator(task_id="f", **common).execute({})
    types = duck.columns("every_type")
    assert types["c_num"] == "DECIMAL(20,5)" and types["c_tstz"] == "TIMESTAMP WITH TIME ZONE"
    assert types["c_jsonb"] == "JSON" and types["c_bytea"] == "BLOB" and types["c_int8"] == "BIGINT"
    assert_equal_values(pg_db, duck)
    # the same rows again through CDC (inserts), plus updates and a delete
    pg_db.execute(ROWS.format(id=11, id2=12, id3=13))
    pg_db.execute("UPDATE every_type SET c_jsonb = '{\"changed\": true}', c_text_arr = '{x}' WHERE id = 1")
    pg_db.execute("DELETE FROM every_type WHERE id = 3")
    assert PgCdcApplyOperator(task_id="a", **common).execute({})["changes"] == 5
    assert_equal_values(pg_db, duck)


@pytest.mark.parametrize("value", ["'NaN'", "'Infinity'"])
def test_numeric_nan_is_a_clear_error(pg_db, duck, value):
    pg_db.execute("CREATE TABLE odd (id int PRIMARY KEY, n numeric)")
    pg_db.execute(f"INSERT INTO odd VALUES (1, {value})")
    with pytest.raises(Exception, match=r"(?i)n\b.*(nan|infinity)|(nan|infinity).*float8"):
        PgFullRefreshOperator(task_id="f", table="odd", destination=duck.spec).execute({})
