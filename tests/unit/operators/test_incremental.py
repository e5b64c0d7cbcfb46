"""PgIncrementalOperator's argument checks (no database)."""

from __future__ import annotations

import datetime

import pytest

from airflow_pg_replication import PgIncrementalOperator


def make(**kw) -> PgIncrementalOperator:
    kw.setdefault("cursor_column", "updated_at")
    return PgIncrementalOperator(
        task_id="incremental_refresh",
        table="sales.events",
        source_conn_id="pg_source",
        destination={"type": "duckdb", "credentials": "/tmp/x.duckdb"},
        **kw,
    )


def test_defaults_and_lookback():
    op = make()
    assert op.cursor_column == "updated_at" and op.cursor_lookback is None and op.lookback is None
    assert op.target.destination_table == "sales__events"
    op = make(cursor_lookback="5 minutes", mode="incremental")
    assert op.lookback == datetime.timedelta(minutes=5)
    assert make(cursor_lookback="1.5 hours").lookback == datetime.timedelta(minutes=90)


@pytest.mark.parametrize("bad", ["5", "five minutes", "5 fortnights", "-5 minutes", "5 minutes; DROP TABLE x", ""])
def test_bad_lookback_is_rejected(bad):
    with pytest.raises(ValueError, match=r"cursor_lookback: invalid interval .*e\.g\. '5 minutes'"):
        make(cursor_lookback=bad)


def test_cursor_column_is_required_and_must_be_a_plain_name():
    with pytest.raises(TypeError, match="cursor_column"):
        PgIncrementalOperator(task_id="t", table="public.events")
    with pytest.raises(ValueError, match="invalid cursor_column 'updated at'"):
        make(cursor_column="updated at")
    with pytest.raises(ValueError, match=r"invalid cursor_column 'x\"; drop'"):
        make(cursor_column='x"; drop')


def test_cursor_column_must_be_among_the_columns():
    assert make(columns=["id", "updated_at"]).columns == ["id", "updated_at"]
    with pytest.raises(ValueError, match="cursor_column 'updated_at' is not in columns"):
        make(columns=["id", "payload"])


def test_other_modes_are_rejected():
    with pytest.raises(ValueError, match="mode must be 'incremental', not 'cdc'"):
        make(mode="cdc")


def test_lower_bound_is_a_typed_literal():
    from psycopg import sql

    from airflow_pg_replication.source.type_map import PgColumn, PgType
    from airflow_pg_replication.sync.incremental import IncrementalRefresh

    def refresh(op: PgIncrementalOperator) -> IncrementalRefresh:
        return IncrementalRefresh(None, op.target, cursor_column=op.cursor_column, lookback=op.lookback)

    col = PgColumn("updated_at", PgType(1184, "timestamptz"))
    assert (
        refresh(make())._lower_bound(col, "2024-01-01 00:00:00+00").as_string(None)
        == '\'2024-01-01 00:00:00+00\'::"pg_catalog"."timestamptz"'
    )
    bound = refresh(make(cursor_lookback="5 minutes"))._lower_bound(col, "x' OR true --")
    assert bound.as_string(None) == "('x'' OR true --'::\"pg_catalog\".\"timestamptz\" - '0:05:00'::interval)"
    assert isinstance(bound, sql.Composable)
