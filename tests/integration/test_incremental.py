"""Incremental refresh by cursor column: the destination equals the source where this mode can see it."""

from __future__ import annotations

import logging

import psycopg
import pytest

from airflow_pg_replication import PgIncrementalOperator
from airflow_pg_replication.errors import ReplicationError
from tests.integration.conftest import source_rows

COLS = ["id", "payload", "updated_at"]
T0 = "2024-01-01 00:00:00+00"


def make_events(pg_db, rows: int = 0) -> None:
    pg_db.execute(
        "CREATE TABLE events (id bigint PRIMARY KEY, payload text, "
        "updated_at timestamptz NOT NULL DEFAULT clock_timestamp())"
    )
    if rows:
        pg_db.execute(
            "INSERT INTO events SELECT g, 'p' || g, timestamptz '2024-01-01 00:00:00+00' + g * interval "
            "'1 minute' FROM generate_series(1, %s) g",
            (rows,),
        )


def op(duck, table="public.events", **kw) -> PgIncrementalOperator:
    kw.setdefault("cursor_column", "updated_at")
    return PgIncrementalOperator(
        task_id="incremental_refresh", table=table, source_conn_id="pg_source", destination=duck.spec, **kw
    )


def assert_same(pg_db, duck, table="events", cols=COLS, key=("id",)):
    assert duck.rows(table, cols, key) == source_rows(pg_db, f"public.{table}", cols, key)


def dest_ids(duck, table="events") -> set[int]:
    return {r[0] for r in duck.query(f"SELECT id FROM replica.{table}")}


def test_empty_table_then_inserts_then_increments(pg_db, duck):
    make_events(pg_db)
    inc = op(duck)
    out = inc.execute({})
    assert out["table"] == "public.events" and out["rows"] == 0 and out["full_copy"]
    assert out["cursor_from"] is None and out["cursor_to"] is None and out["lsn"].count("/") == 1
    assert set(duck.columns("events")) >= {"id", "payload", "updated_at", "_pg_lsn"}
    assert duck.query("SELECT count(*) FROM replica.events") == [(0,)]

    pg_db.execute(
        "INSERT INTO events SELECT g, 'p' || g, timestamptz '2024-01-01 00:00:00+00' + g * interval "
        "'1 minute' FROM generate_series(1, 20) g"
    )
    out = inc.execute({})
    assert out["rows"] == 20 and out["full_copy"]  # no mark yet: everything
    assert out["cursor_to"] == "2024-01-01 00:20:00+00"
    assert_same(pg_db, duck)
    state = duck.query(
        "SELECT status, cursor_value FROM replica._pg_replication_state WHERE table_name = ?", ["public.events"]
    )
    assert state == [("loaded", "2024-01-01 00:20:00+00")]

    pg_db.execute(
        "INSERT INTO events VALUES (21, 'p21', '2024-01-01 00:21:00+00'), (22, 'p22', '2024-01-01 00:22:00+00')"
    )
    out = inc.execute({})
    assert not out["full_copy"]
    assert out["cursor_from"] == "2024-01-01 00:20:00+00" and out["cursor_to"] == "2024-01-01 00:22:00+00"
    assert out["rows"] == 3  # the row at the mark is re-read (>=), plus the two new ones
    assert_same(pg_db, duck)
    # _pg_lsn: the read's LSN; the rows of the later read carry a later LSN
    lsns = dict(duck.query("SELECT id, _pg_lsn FROM replica.events WHERE id IN (1, 22)"))
    assert lsns[22] > lsns[1] > 0


def test_ties_at_the_mark_are_not_missed(pg_db, duck):
    make_events(pg_db)
    pg_db.execute(
        "INSERT INTO events VALUES (1, 'a', '2024-01-01 00:00:00+00'), (2, 'b', '2024-01-01 00:05:00+00'), "
        "(3, 'c', '2024-01-01 00:05:00+00'), (4, 'd', '2024-01-01 00:05:00+00')"
    )
    inc = op(duck)
    assert inc.execute({})["cursor_to"] == "2024-01-01 00:05:00+00"
    # committed after the run, with exactly the mark's timestamp
    pg_db.execute("INSERT INTO events VALUES (5, 'e', '2024-01-01 00:05:00+00')")
    out = inc.execute({})
    assert out["rows"] == 4 and out["cursor_to"] == "2024-01-01 00:05:00+00"  # mark unchanged
    assert 5 in dest_ids(duck)
    assert_same(pg_db, duck)


def test_updates_are_merged_without_duplicates(pg_db, duck):
    make_events(pg_db, rows=10)
    inc = op(duck)
    inc.execute({})
    pg_db.execute("UPDATE events SET payload = 'changed', updated_at = '2024-02-01 00:00:00+00' WHERE id IN (2, 7)")
    out = inc.execute({})
    assert out["rows"] == 3 and out["cursor_to"] == "2024-02-01 00:00:00+00"  # 2, 7 and the row at the old mark
    assert_same(pg_db, duck)
    assert duck.query("SELECT count(*), count(DISTINCT id) FROM replica.events") == [(10, 10)]
    # nothing new: only the rows at the mark are re-read, the destination does not change
    out = inc.execute({})
    assert out["rows"] == 2 and out["cursor_from"] == out["cursor_to"] == "2024-02-01 00:00:00+00"
    assert_same(pg_db, duck)


def test_late_commit_missed_without_lookback_caught_with_it(pg_db, duck):
    make_events(pg_db, rows=3)
    plain, with_lookback = op(duck), op(duck, cursor_lookback="5 minutes")
    plain.execute({})
    with psycopg.connect(pg_db.dsn) as slow:  # not autocommit: one open transaction
        # a transaction that stamps its row at its start (now()) but commits late
        slow.execute("INSERT INTO events (id, payload, updated_at) VALUES (100, 'late', now())")
        pg_db.execute("SELECT pg_sleep(0.05)")
        pg_db.execute("INSERT INTO events (id, payload, updated_at) VALUES (101, 'on time', clock_timestamp())")
        out = plain.execute({})  # reads 101, moves the mark past 100's timestamp
        assert 101 in dest_ids(duck) and out["rows"] == 2  # 101 and the row at the old mark
        slow.commit()
    assert pg_db.query("SELECT a.updated_at < b.updated_at FROM events a, events b WHERE a.id = 100 AND b.id = 101")[0][
        0
    ]
    mark = out["cursor_to"]
    out = plain.execute({})
    assert 100 not in dest_ids(duck)  # without a lookback, the late row is missed (documented)
    assert out["rows"] == 1 and out["cursor_to"] == mark

    out = with_lookback.execute({})
    assert 100 in dest_ids(duck)  # the lookback window re-reads it
    assert out["rows"] == 2 and out["cursor_to"] == mark
    assert pg_db.query("SELECT %s::timestamptz <= updated_at FROM events WHERE id = 100", (out["cursor_from"],))[0][0]
    assert_same(pg_db, duck)


def test_late_row_beyond_the_lookback_is_missed(pg_db, duck):
    make_events(pg_db, rows=3)  # mark: 00:03
    inc = op(duck, cursor_lookback="5 minutes")
    inc.execute({})
    pg_db.execute(
        "INSERT INTO events VALUES (50, 'inside', '2023-12-31 23:59:00+00'), (51, 'outside', '2023-12-31 23:50:00+00')"
    )
    out = inc.execute({})
    assert out["cursor_from"] == "2023-12-31 23:58:00+00"
    assert 50 in dest_ids(duck) and 51 not in dest_ids(duck)


@pytest.mark.parametrize(
    "pg_type, values, newer, mark",
    [
        ("timestamp", ["2024-01-01 10:00:00", "2024-01-01 10:00:00.5"], "2024-01-01 11:00:00", "2024-01-01 11:00:00"),
        ("date", ["2024-01-01", "2024-01-02"], "2024-01-03", "2024-01-03"),
        ("integer", ["1", "2"], "3", "3"),
        ("bigint", ["9000000000", "9000000001"], "9000000002", "9000000002"),
        ("numeric(12,3)", ["1.500", "2.250"], "2.251", "2.251"),
    ],
)
def test_cursor_types(pg_db, duck, pg_type, values, newer, mark):
    pg_db.execute(f"CREATE TABLE items (id int PRIMARY KEY, note text, v {pg_type})")
    for i, value in enumerate(values, 1):
        pg_db.execute("INSERT INTO items VALUES (%s, 'n', %s)", (i, value))
    inc = op(duck, table="public.items", cursor_column="v")
    assert inc.execute({})["rows"] == 2
    # one newer row, one tie with the new mark, one update of an old row to the new value
    pg_db.execute("INSERT INTO items VALUES (10, 'new', %s), (11, 'tie', %s)", (newer, newer))
    out = inc.execute({})
    assert out["cursor_from"] == pg_db.query(f"SELECT %s::{pg_type}::text", (values[-1],))[0][0]
    assert out["cursor_to"] == mark and out["rows"] == 3
    pg_db.execute("INSERT INTO items VALUES (12, 'tie2', %s)", (newer,))
    pg_db.execute("UPDATE items SET note = 'moved', v = %s WHERE id = 1", (newer,))
    out = inc.execute({})
    assert out["rows"] == 4 and out["cursor_to"] == mark
    assert_same(pg_db, duck, table="items", cols=["id", "note", "v"])


def test_bigint_cursor_rejects_a_time_lookback(pg_db, duck):
    pg_db.execute("CREATE TABLE items (id int PRIMARY KEY, version bigint NOT NULL)")
    pg_db.execute("INSERT INTO items VALUES (1, 1)")
    inc = op(duck, table="public.items", cursor_column="version", cursor_lookback="5 minutes")
    with pytest.raises(
        ReplicationError, match=r"cursor_lookback '5 minutes' is a time interval.*items\.version is int8"
    ):
        inc.execute({})


def test_missing_cursor_column_is_a_clear_error(pg_db, duck):
    make_events(pg_db, rows=1)
    with pytest.raises(
        ReplicationError,
        match=r"cursor_column 'modified_at' does not exist in public\.events.*"
        r"its columns are: id, payload, updated_at",
    ):
        op(duck, cursor_column="modified_at").execute({})


def test_unsuitable_cursor_type_is_a_clear_error(pg_db, duck):
    pg_db.execute("CREATE TABLE items (id int PRIMARY KEY, note text)")
    with pytest.raises(ReplicationError, match=r"items\.note has type text"):
        op(duck, table="public.items", cursor_column="note").execute({})


def test_no_primary_key_is_a_clear_error(pg_db, duck):
    pg_db.execute("CREATE TABLE nokey (id int, updated_at timestamptz)")
    with pytest.raises(
        ReplicationError,
        match=r"public\.nokey has no primary key, so incremental mode cannot "
        r"merge.*primary_key entry",
    ):
        op(duck, table="public.nokey").execute({})
    # a configured primary_key is enough
    pg_db.execute("INSERT INTO nokey VALUES (1, now())")
    assert op(duck, table="public.nokey", primary_key=["id"]).execute({})["rows"] == 1


def test_null_cursor_rows_are_copied_once_and_warned_about(pg_db, duck, caplog):
    pg_db.execute("CREATE TABLE items (id int PRIMARY KEY, v bigint)")
    pg_db.execute("INSERT INTO items VALUES (1, 1), (2, NULL)")
    inc = op(duck, table="public.items", cursor_column="v")
    with caplog.at_level(logging.WARNING):
        assert inc.execute({})["rows"] == 2
    assert "1 row(s) have a NULL v" in caplog.text
    pg_db.execute("INSERT INTO items VALUES (3, NULL), (4, 2)")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        inc.execute({})
    assert "2 row(s) have a NULL v; incremental runs do not copy them" in caplog.text
    assert dest_ids(duck, "items") == {1, 2, 4}


def test_deletes_are_invisible_until_a_forced_full_refresh(pg_db, duck):
    make_events(pg_db, rows=5)
    inc = op(duck)
    inc.execute({})
    pg_db.execute("DELETE FROM events WHERE id = 2")
    inc.execute({})
    assert 2 in dest_ids(duck)  # hard deletes are not seen (documented)
    out = inc.execute({"params": {"full_refresh": True}})
    assert out["full_copy"] and out["rows"] == 4
    assert_same(pg_db, duck)
    # and increments go on from the new mark
    pg_db.execute("INSERT INTO events VALUES (6, 'p6', '2024-01-01 00:06:00+00')")
    out = inc.execute({"params": {"full_refresh": False}})
    assert out["cursor_from"] == "2024-01-01 00:05:00+00" and out["rows"] == 2
    assert_same(pg_db, duck)


def test_emptied_destination_gets_a_full_copy(pg_db, duck):
    make_events(pg_db, rows=5)
    inc = op(duck)
    inc.execute({})
    import duckdb

    with duckdb.connect(str(duck.path)) as con:
        con.execute("DELETE FROM replica.events")
    out = inc.execute({})
    assert out["full_copy"] and out["rows"] == 5
    assert_same(pg_db, duck)
