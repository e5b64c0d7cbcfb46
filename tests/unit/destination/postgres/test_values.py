"""The PostgreSQL destination's pure parts: credentials to libpq parameters, Arrow values to PostgreSQL input
text (and CSV), and the column types of replica columns."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pyarrow as pa
import pytest

from airflow_pg_replication.destination.columns import destination_columns
from airflow_pg_replication.destination.postgres.connection import connect_kwargs, describe
from airflow_pg_replication.destination.postgres.types import hint_type
from airflow_pg_replication.destination.postgres.values import pg_text, to_csv
from airflow_pg_replication.source.text_values import (
    DATE_INFINITY,
    DATE_NEG_INFINITY,
    TIMESTAMP_INFINITY,
    TIMESTAMP_NEG_INFINITY,
)
from airflow_pg_replication.source.type_map import PgColumn, PgType


@pytest.mark.parametrize(
    ("credentials", "want"),
    [
        ("postgres://u@h:5433/db", {"host": "h", "port": 5433, "user": "u", "dbname": "db"}),
        (
            "postgresql://pw%20user:p%40ss%3Aw%2F@127.0.0.1:5555/ware%20house?sslmode=disable&__extra__=%7B%7D&x=1",
            {
                "host": "127.0.0.1",
                "port": 5555,
                "user": "pw user",
                "password": "p@ss:w/",
                "dbname": "ware house",
                "sslmode": "disable",
            },
        ),
        (
            {"host": "h", "username": "u", "database": "d", "password": None, "port": 6},
            {"host": "h", "user": "u", "dbname": "d", "port": 6},
        ),
    ],
)
def test_credentials_with_or_without_a_password(credentials, want):
    assert connect_kwargs(credentials) == want
    assert "p@ss" not in describe(credentials)


def test_credentials_must_be_postgres():
    with pytest.raises(ValueError, match="PostgreSQL URI"):
        connect_kwargs("mysql://u@h/db")


def test_values_as_postgres_input_text():
    assert pg_text(pa.array([[1, None, 3], None, []], pa.list_(pa.int32()))).to_pylist() == [
        '{"1",NULL,"3"}',
        None,
        "{}",
    ]
    assert pg_text(pa.array([["a b", 'c"d', None, "NULL", "x\\y"]], pa.list_(pa.string()))).to_pylist() == [
        '{"a b","c\\"d",NULL,"NULL","x\\\\y"}'
    ]
    sliced = pa.array([[1], [2, 3], None, [4]], pa.list_(pa.int64())).slice(1)
    assert pg_text(sliced).to_pylist() == ['{"2","3"}', None, '{"4"}']
    assert pg_text(pa.array([b"\x00\xff", None, b""]).slice(1)).to_pylist() == [None, "\\x"]
    assert pg_text(pa.array([[b"\x01"]], pa.list_(pa.binary()))).to_pylist() == ['{"\\\\x01"}']
    assert pg_text(pa.array([0.1, float("nan"), float("-inf"), -0.0])).to_pylist() == ["0.1", "nan", "-inf", "-0"]
    assert pg_text(pa.array([Decimal("1.50")], pa.decimal128(20, 5))).to_pylist() == ["1.50000"]
    assert pg_text(pa.array([True, None])).to_pylist() == ["true", None]


def test_dates_and_timestamps_past_arrow_and_iso_range():
    stamps = pa.array(
        [0, TIMESTAMP_INFINITY, TIMESTAMP_NEG_INFINITY, -62_135_596_800_000_001, 253_402_300_800_000_000, None],
        pa.int64(),
    )
    assert pg_text(stamps.view(pa.timestamp("us", tz="UTC"))).to_pylist() == [
        "1970-01-01 00:00:00.000000Z",
        "infinity",
        "-infinity",
        "0001-12-31 23:59:59.999999+00 BC",
        "10000-01-01 00:00:00.000000+00",
        None,
    ]
    assert pg_text(pa.array([dt.datetime(2024, 1, 2, 3, 4, 5, 6)], pa.timestamp("us"))).to_pylist() == [
        "2024-01-02 03:04:05.000006"
    ]
    ordinary = pa.array([dt.datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=dt.timezone.utc), None], pa.timestamp("us", "UTC"))
    assert pg_text(ordinary).to_pylist() == ["2024-01-02 03:04:05.000006Z", None]  # UTC: the fast path
    days = pa.array([0, DATE_INFINITY, DATE_NEG_INFINITY, -719_163, 2_932_897], pa.int32()).view(pa.date32())
    assert pg_text(days).to_pylist() == ["1970-01-01", "infinity", "-infinity", "0001-12-31 BC", "10000-01-01"]


def test_csv_quotes_every_value_and_leaves_null_empty():
    table = pa.table({"a": [1, None], "b": ["", None], "c": ['say "hi"\n', "x"]})
    assert bytes(to_csv(table)) == b'"1","","say ""hi""\n"\n,,"x"\n'


NUMERIC_12_2 = ((12 << 16) | 2) + 4


@pytest.mark.parametrize(
    ("column", "want"),
    [
        (PgColumn("a", PgType(1700, "numeric"), NUMERIC_12_2), '"pg_catalog"."numeric"(12, 2)'),
        (PgColumn("a", PgType(1700, "numeric")), '"pg_catalog"."numeric"'),
        (PgColumn("a", PgType(1009, "_text", element=PgType(25, "text"))), '"pg_catalog"."text"[]'),
        (PgColumn("a", PgType(1015, "_varchar", element=PgType(1043, "varchar")), 14), '"pg_catalog"."varchar"(10)[]'),
        (PgColumn("a", PgType(1184, "timestamptz"), 3), '"pg_catalog"."timestamptz"(3)'),
        (PgColumn("a", PgType(3802, "jsonb")), '"pg_catalog"."jsonb"'),
        (PgColumn("a", PgType(9000, "mood", is_enum=True, schema="public")), '"pg_catalog"."text"'),
        (PgColumn("a", PgType(790, "money")), '"pg_catalog"."text"'),
    ],
)
def test_replica_columns_keep_the_source_type(column, want):
    hints = destination_columns([column], soft_deletes=True)
    assert [hint_type(h).as_string(None) for h in hints] == [want, '"pg_catalog"."int8"', '"pg_catalog"."timestamptz"']
