"""sync.incremental.IncrementalRefresh on its own: the first run copies all, later runs only past the mark."""

from __future__ import annotations

import datetime

from airflow_pg_replication.sync.incremental import IncrementalRefresh
from airflow_pg_replication.table_state import TablePhase
from tests.unit.sync.conftest import ITEM_COLS, items_table, make_items


def read_state(table):
    with table.open_destination(read_only=True) as dest:
        return dest.read_state()


def test_runs_copy_past_the_mark_and_merge_by_key(source, duck):
    make_items(source, rows=20)  # updated_at: 2024-01-01 00:01 .. 00:20
    table = items_table(duck)
    refresh = IncrementalRefresh(source.database, table, cursor_column="updated_at")

    first = refresh.run()
    assert first["full_copy"] and first["rows"] == 20 and first["cursor_from"] is None
    assert first["cursor_to"] == "2024-01-01 00:20:00+00"
    assert duck.rows("items", ITEM_COLS, ["id"]) == source.rows()
    state = read_state(table)
    assert state.status is TablePhase.LOADED and state.cursor_value == first["cursor_to"] and state.slot is None

    # an update that moves the cursor, a new row, and an update that does not move it (not seen, by design)
    source.execute("UPDATE items SET name = 'moved', updated_at = '2024-02-01 00:00:00+00' WHERE id = 3")
    source.execute("INSERT INTO items VALUES (21, 'new', 5, '2024-02-02 00:00:00+00')")
    source.execute("UPDATE items SET name = 'unseen' WHERE id = 4")
    second = refresh.run()
    assert not second["full_copy"] and second["cursor_from"] == "2024-01-01 00:20:00+00"
    assert second["rows"] == 3  # id 20 (at the mark: ties are re-read), 3 and 21
    assert second["cursor_to"] == "2024-02-02 00:00:00+00" == read_state(table).cursor_value
    expected = [r if r[0] != 4 else (4, "item 4", *r[2:]) for r in source.rows()]
    assert duck.rows("items", ITEM_COLS, ["id"]) == expected

    # nothing newer: the rows at the mark are re-read, merged idempotently, and the mark is kept
    third = refresh.run()
    assert third["rows"] == 1 and third["cursor_to"] == second["cursor_to"]
    assert duck.rows("items", ITEM_COLS, ["id"]) == expected

    # a full refresh asked for replaces the copy: the unseen update and a hard delete show up
    source.execute("DELETE FROM items WHERE id = 5")
    forced = refresh.run(full_refresh_asked=True)
    assert forced["full_copy"] and forced["rows"] == 20
    assert duck.rows("items", ITEM_COLS, ["id"]) == source.rows()
    assert read_state(table).cursor_value == "2024-02-02 00:00:00+00"


def test_a_lookback_re_reads_a_window_before_the_mark(source, duck):
    make_items(source, rows=10)  # 00:01 .. 00:10
    table = items_table(duck)
    refresh = IncrementalRefresh(
        source.database, table, cursor_column="updated_at", lookback=datetime.timedelta(minutes=3)
    )
    refresh.run()
    # committed late with an older cursor value, inside the lookback window: still seen
    source.execute("UPDATE items SET name = 'late' WHERE id = 8")
    out = refresh.run()
    assert out["cursor_from"] == "2024-01-01 00:07:00+00" and out["rows"] == 4  # ids 7..10
    assert duck.rows("items", ITEM_COLS, ["id"]) == source.rows()
