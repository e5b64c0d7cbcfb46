"""sync.cdc_run.apply_changes on its own: after inserts, updates and deletes the destination equals the source."""

from __future__ import annotations

import pytest

from airflow_pg_replication.errors import NeedsAttentionError, SlotLostError
from airflow_pg_replication.source.pgoutput import parse_lsn
from airflow_pg_replication.sync.cdc_run import apply_changes
from airflow_pg_replication.sync.snapshot import snapshot_table
from airflow_pg_replication.table_state import TablePhase
from tests.unit.sync.conftest import ITEM_COLS, items_table, make_items


def read_state(table):
    with table.open_destination(read_only=True) as dest:
        return dest.read_state()


def test_inserts_updates_deletes_leave_the_destination_equal_to_the_source(source, duck):
    make_items(source, rows=50)
    table = items_table(duck)
    snapshot_table(source.database, table, with_slot=True)
    snap = read_state(table)

    source.execute("INSERT INTO items VALUES (100, 'new', 9.99, '2024-06-01 00:00:00+00'), (101, NULL, NULL, now())")
    source.execute("UPDATE items SET name = 'changed', amount = amount * 2 WHERE id <= 5")
    source.execute("UPDATE items SET name = NULL WHERE id = 6")
    source.execute("DELETE FROM items WHERE id BETWEEN 10 AND 12")
    source.execute("INSERT INTO items VALUES (200, 'brief', 1, now())")  # inserted and deleted in one batch
    source.execute("DELETE FROM items WHERE id = 200")
    source.execute("UPDATE items SET id = 1000 WHERE id = 20")  # a key change: a delete and an insert
    out = apply_changes(source.database, table)

    assert out["table"] == "public.items" and out["changes"] == 2 + 5 + 1 + 3 + 2 + 1 and not out["more"]
    assert duck.rows("items", ITEM_COLS, ["id"]) == source.rows()
    assert duck.query("SELECT count(*) FROM replica.items WHERE id IN (20, 200)") == [(0,)]
    state = read_state(table)
    assert state.status is TablePhase.READY and state.slot == table.slot
    assert state.snapshot_lsn == snap.snapshot_lsn and state.applied_lsn > snap.snapshot_lsn
    # the slot was acknowledged past what was applied; changed rows carry their commit's LSN
    assert parse_lsn(source.slot(table.slot)[1]) >= state.applied_lsn
    lsns = dict(duck.query("SELECT id, _pg_lsn FROM replica.items WHERE id IN (1, 30)"))
    assert lsns[30] == snap.snapshot_lsn < lsns[1] <= state.applied_lsn

    # nothing new: nothing applied, the copy and the state stay as they are
    again = apply_changes(source.database, table)
    assert again["changes"] == 0
    assert duck.rows("items", ITEM_COLS, ["id"]) == source.rows()
    assert read_state(table).applied_lsn == state.applied_lsn


def test_small_batches_catch_up_batch_after_batch(source, duck):
    make_items(source, rows=10)
    table = items_table(duck)
    snapshot_table(source.database, table, with_slot=True)
    for i in range(1, 11):  # ten transactions of five changes each
        source.execute(f"UPDATE items SET amount = amount + {i} WHERE id <= 5")
    out = apply_changes(source.database, table, max_batch_changes=12)
    assert out["changes"] == 50 and out["batches"] > 1 and not out["more"]
    assert duck.rows("items", ITEM_COLS, ["id"]) == source.rows()


def test_soft_deletes_keep_the_row_marked_deleted(source, duck):
    make_items(source, rows=5)
    table = items_table(duck, soft_deletes=True)
    snapshot_table(source.database, table, with_slot=True)
    source.execute("DELETE FROM items WHERE id IN (2, 4)")
    source.execute("UPDATE items SET name = 'kept' WHERE id = 1")
    assert apply_changes(source.database, table)["changes"] == 3
    live = duck.rows("items", ITEM_COLS, ["id"])
    assert [r for r in live if r[0] not in (2, 4)] == source.rows()
    deleted = duck.query("SELECT id, name FROM replica.items WHERE _pg_deleted_at IS NOT NULL ORDER BY id")
    assert deleted == [(2, "item 2"), (4, "item 4")]  # the row's last values are kept


def test_without_a_snapshot_there_is_nothing_to_apply_onto(source, duck):
    make_items(source, rows=3)
    table = items_table(duck)
    with pytest.raises(SlotLostError, match="does not exist"):
        apply_changes(source.database, table)  # no slot yet
    # a slot, but no snapshot loaded for it in the destination: a person must run the full refresh
    with source.database.connect() as conn:
        source.database.ensure_publication(conn, table.publication, "public", "items")
        source.database.create_slot(conn, table.slot)
    with pytest.raises(NeedsAttentionError, match=r"no loaded snapshot.*full_refresh"):
        apply_changes(source.database, table)


def test_a_configured_column_list_stays_the_column_list_after_changes(source, duck):
    make_items(source, rows=5)
    table = items_table(duck, columns=("id", "name"))
    snapshot_table(source.database, table, with_slot=True)
    assert set(duck.columns("items")) == {"id", "name", "_pg_lsn"}
    source.execute("UPDATE items SET name = 'x', amount = 99 WHERE id = 1")
    source.execute("INSERT INTO items VALUES (10, 'ten', 10, now())")
    assert apply_changes(source.database, table)["changes"] == 2
    assert duck.rows("items", ["id", "name"], ["id"]) == source.rows(cols=["id", "name"])
    assert set(duck.columns("items")) == {"id", "name", "_pg_lsn"}  # amount and updated_at were not asked for
    source.execute("UPDATE items SET id = 100, amount = 1 WHERE id = 2")  # a key change: the per-message fold
    assert apply_changes(source.database, table)["changes"] == 1
    assert duck.rows("items", ["id", "name"], ["id"]) == source.rows(cols=["id", "name"])
    assert set(duck.columns("items")) == {"id", "name", "_pg_lsn"}
