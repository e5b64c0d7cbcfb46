"""sync.snapshot.snapshot_table on its own: SourceDatabase(params) in, a DuckDB file out, with and without a slot."""

from __future__ import annotations

from airflow_pg_replication.destination.factory import table_destination
from airflow_pg_replication.source.pgoutput import format_lsn, parse_lsn
from airflow_pg_replication.sync.snapshot import snapshot_table
from airflow_pg_replication.table_state import TablePhase
from tests.unit.sync.conftest import ITEM_COLS, items_table, make_items


def read_state(table):
    with table.open_destination(read_only=True) as dest:
        return dest.read_state()


def test_snapshot_without_slot_copies_the_table_and_records_loaded(source, duck):
    make_items(source, rows=50)
    table = items_table(duck)
    out = snapshot_table(source.database, table, with_slot=False)
    assert out["table"] == "public.items" and out["rows"] == 50 and out["destination_table"] == "items"
    assert duck.rows("items", ITEM_COLS, ["id"]) == source.rows()
    state = read_state(table)
    assert state.status is TablePhase.LOADED and state.slot is None and state.applied_lsn is None
    assert format_lsn(state.snapshot_lsn) == out["lsn"]
    # every row carries the LSN it was read at; no slot and no publication were made
    assert duck.query("SELECT DISTINCT _pg_lsn FROM replica.items") == [(state.snapshot_lsn,)]
    assert source.slot(table.slot) is None
    assert source.query("SELECT count(*) FROM pg_publication") == [(0,)]

    # again, after changes: the copy is replaced, not appended to
    source.execute("DELETE FROM items WHERE id > 40")
    source.execute("UPDATE items SET name = 'renamed' WHERE id = 1")
    again = snapshot_table(source.database, table, with_slot=False)
    assert again["rows"] == 40 and parse_lsn(again["lsn"]) > state.snapshot_lsn
    assert duck.rows("items", ITEM_COLS, ["id"]) == source.rows()


def test_snapshot_with_slot_copies_at_the_slots_consistent_point(source, duck):
    make_items(source, rows=30)
    table = items_table(duck)
    out = snapshot_table(source.database, table, with_slot=True)
    assert out["rows"] == 30
    assert duck.rows("items", ITEM_COLS, ["id"]) == source.rows()
    state = read_state(table)
    assert state.status is TablePhase.READY and state.applies_changes
    assert state.slot == table.slot and state.applied_lsn is None
    # the snapshot's LSN is the slot's consistent point: the slot decodes exactly what the copy lacks
    wal_status, confirmed = source.slot(table.slot)
    assert wal_status in ("reserved", "extended") and parse_lsn(confirmed) == state.snapshot_lsn
    assert format_lsn(state.snapshot_lsn) == out["lsn"]
    assert source.query(
        "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s", (table.publication,)
    ) == [("public", "items")]

    # a second snapshot drops the slot and makes it anew, later, with the copy replaced
    source.execute("INSERT INTO items VALUES (100, 'late', 1, now())")
    again = snapshot_table(source.database, table, with_slot=True)
    assert again["rows"] == 31
    assert duck.rows("items", ITEM_COLS, ["id"]) == source.rows()
    new_state = read_state(table)
    assert new_state.snapshot_lsn > state.snapshot_lsn
    assert parse_lsn(source.slot(table.slot)[1]) == new_state.snapshot_lsn


def test_snapshot_of_an_empty_table_creates_the_destination_table(source, duck):
    source.execute(
        "CREATE TABLE items (id bigint PRIMARY KEY, name text, amount numeric(10,2), updated_at timestamptz)"
    )
    table = items_table(duck)
    assert snapshot_table(source.database, table, with_slot=True)["rows"] == 0
    assert duck.query("SELECT count(*) FROM replica.items") == [(0,)]
    assert set(duck.columns("items")) == {*ITEM_COLS, "_pg_lsn"}
    with table_destination(
        duck.spec, table_name="public.items", destination_table="items", pipeline_name="p", read_only=True
    ) as dest:
        assert not dest.has_rows() and dest.read_state().status is TablePhase.READY
