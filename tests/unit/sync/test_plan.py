"""sync.plan.next_step on its own: snapshot when there is no slot or when asked, wait when ready, a lost slot fails."""

from __future__ import annotations

import psycopg
import pytest

from airflow_pg_replication.errors import SlotLostError
from airflow_pg_replication.source.database import SourceDatabase
from airflow_pg_replication.sync.cdc_run import apply_changes
from airflow_pg_replication.sync.plan import NextStep, next_step
from airflow_pg_replication.sync.snapshot import snapshot_table
from airflow_pg_replication.table_state import TablePhase, full_copy_state
from airflow_pg_replication.testing.throwaway_cluster import ThrowawayCluster
from tests.unit.sync.conftest import items_table, libpq_params, make_items


def test_no_slot_means_a_snapshot(source, duck):
    make_items(source, rows=3)
    assert next_step(source.database, items_table(duck)) is NextStep.SNAPSHOT


def test_a_ready_copy_waits_for_changes_unless_a_full_refresh_is_asked(source, duck):
    make_items(source, rows=3)
    table = items_table(duck)
    snapshot_table(source.database, table, with_slot=True)
    assert next_step(source.database, table) is NextStep.WAIT_FOR_CHANGES
    assert next_step(source.database, table, full_refresh_asked=True) is NextStep.SNAPSHOT
    source.execute("UPDATE items SET name = 'x' WHERE id = 1")
    apply_changes(source.database, table)
    assert next_step(source.database, table) is NextStep.WAIT_FOR_CHANGES  # still ready after applying


def test_a_slot_without_a_loaded_snapshot_for_it_means_a_snapshot(source, duck):
    make_items(source, rows=3)
    table = items_table(duck)
    with source.database.connect() as conn:
        source.database.create_slot(conn, table.slot)
    assert next_step(source.database, table) is NextStep.SNAPSHOT  # the destination holds nothing
    with table.open_destination() as dest:  # a snapshot that never finished
        dest.write_state(full_copy_state(table.qualified_name, TablePhase.SNAPSHOTTING, slot=table.slot))
    assert next_step(source.database, table) is NextStep.SNAPSHOT
    with table.open_destination() as dest:  # a copy loaded for another slot
        dest.write_state(full_copy_state(table.qualified_name, TablePhase.READY, slot="another_slot", snapshot_lsn=1))
    assert next_step(source.database, table) is NextStep.SNAPSHOT
    with table.open_destination() as dest:  # and for this one
        dest.write_state(full_copy_state(table.qualified_name, TablePhase.READY, slot=table.slot, snapshot_lsn=1))
    assert next_step(source.database, table) is NextStep.WAIT_FOR_CHANGES


@pytest.fixture(scope="module")
def small_wal_cluster():
    """A cluster of its own that invalidates a slot past 1 MB of retained WAL (the session's must not)."""
    with ThrowawayCluster(
        settings={"max_slot_wal_keep_size": "1MB", "wal_keep_size": "0", "max_wal_size": "32MB", "min_wal_size": "32MB"}
    ) as cluster:
        yield cluster


def invalidate_slot(conn: psycopg.Connection, slot: str) -> None:
    """Write WAL well past max_slot_wal_keep_size and checkpoint until PostgreSQL invalidates the slot."""
    conn.execute("CREATE TABLE IF NOT EXISTS filler (v text)")
    status = None
    for _ in range(30):
        conn.execute("INSERT INTO filler SELECT repeat('w', 1000) FROM generate_series(1, 3000)")
        conn.execute("SELECT pg_switch_wal()")
        conn.execute("CHECKPOINT")
        status = conn.execute("SELECT wal_status FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone()[0]
        if status == "lost":
            return
    raise AssertionError(f"slot not invalidated (wal_status={status})")


def test_a_lost_slot_fails_with_the_fix_or_resyncs(small_wal_cluster, duck, monkeypatch):
    monkeypatch.delenv("AIRFLOW_CONN_PG_SOURCE", raising=False)
    small_wal_cluster.create_database("lost_slot")
    params = libpq_params(small_wal_cluster.dsn("lost_slot"))
    database = SourceDatabase(params)  # plain libpq parameters: no Airflow connection
    with psycopg.connect(**params, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE items (id bigint PRIMARY KEY, name text, amount numeric(10,2), updated_at timestamptz)"
        )
        conn.execute("INSERT INTO items SELECT g, 'n' || g, g, now() FROM generate_series(1, 10) g")
        table = items_table(duck)
        snapshot_table(database, table, with_slot=True)
        assert next_step(database, table) is NextStep.WAIT_FOR_CHANGES
        conn.execute("UPDATE items SET name = 'lost change' WHERE id = 1")
        invalidate_slot(conn, table.slot)

        with pytest.raises(SlotLostError, match=r"invalidated \(wal_status=lost\).*full_refresh=true"):
            next_step(database, table, on_slot_lost="fail")
        with pytest.raises(SlotLostError, match="invalidated"):
            apply_changes(database, table)  # the changes are gone: nothing is applied
        assert next_step(database, table, full_refresh_asked=True) is NextStep.SNAPSHOT
        assert next_step(database, table, on_slot_lost="resync") is NextStep.SNAPSHOT
        # the fix: a new snapshot drops the dead slot and takes a fresh one
        snapshot_table(database, table, with_slot=True)
        assert next_step(database, table) is NextStep.WAIT_FOR_CHANGES
        assert duck.query("SELECT name FROM replica.items WHERE id = 1") == [("lost change",)]
