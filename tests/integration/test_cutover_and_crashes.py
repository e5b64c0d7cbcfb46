"""Cutover without loss or double apply, crash safety at every step, and one clear error per misconfiguration."""

from __future__ import annotations

import threading

import psycopg
import pytest

from airflow_pg_replication import PgFullRefreshOperator
from airflow_pg_replication.destination.dlt_table import DltTableDestination as TableDestination
from airflow_pg_replication.destination.duckdb.table import DuckDbTableDestination
from airflow_pg_replication.errors import ReplicationError
from airflow_pg_replication.hooks.replication import PgReplicationHook
from airflow_pg_replication.operators.plan import choose_next_task
from airflow_pg_replication.source import snapshot_reads as snapshot_module
from airflow_pg_replication.testing.throwaway_cluster import ThrowawayCluster
from tests.integration.test_cdc_end_to_end import COLS, DEDICATED, assert_same, make_customers, ops


def _copy_with_hook(monkeypatch, after_first_batch):
    """Run ``after_first_batch()`` once the copy has produced its first batch (the copy is under way)."""
    real = snapshot_module.copy_batches

    def copy_batches(*args, **kwargs):
        for i, batch in enumerate(real(*args, **kwargs)):
            yield batch
            if i == 0:
                after_first_batch()

    monkeypatch.setattr(snapshot_module, "copy_batches", copy_batches)


def test_transaction_committing_during_copy_is_applied_once(pg_db, duck, monkeypatch):
    make_customers(pg_db, rows=3000)
    full, apply = ops(duck)
    full.chunk_bytes = 16 << 10  # many small batches, so the copy is really in progress
    late = psycopg.connect(pg_db.dsn)  # a transaction open before the snapshot, writing only during the copy
    late.execute("SELECT count(*) FROM customers")

    def commit_late():
        late.execute("UPDATE customers SET first_name = 'during copy' WHERE customer_id <= 10")
        late.execute("DELETE FROM customers WHERE customer_id BETWEEN 11 AND 20")
        late.execute("INSERT INTO customers (customer_id, first_name, last_name) VALUES (5000, 'late', 'insert')")
        late.commit()

    _copy_with_hook(monkeypatch, commit_late)
    full.execute({})
    late.close()
    # the snapshot does not see the late transaction ...
    assert duck.query("SELECT count(*) FROM replica.customers WHERE first_name = 'during copy'") == [(0,)]
    # ... and CDC applies it exactly once
    res = apply.execute({})
    assert res["changes"] == 21 and res["transactions"] == 1
    assert_same(pg_db, duck)
    assert apply.execute({})["changes"] == 0
    assert_same(pg_db, duck)


def test_transaction_open_with_writes_when_slot_is_created(pg_db, duck):
    """A writing transaction open at slot creation: the slot waits for it, and it lands in the snapshot only."""
    make_customers(pg_db, rows=100)
    full, apply = ops(duck)
    early = psycopg.connect(pg_db.dsn)
    early.execute("UPDATE customers SET last_name = 'early' WHERE customer_id <= 5")
    committer = threading.Timer(1.0, early.commit)
    committer.start()
    full.execute({})
    committer.join()
    early.close()
    pg_db.execute("UPDATE customers SET last_name = 'after' WHERE customer_id = 1")
    res = apply.execute({})
    assert res["changes"] == 1
    assert_same(pg_db, duck)


def test_writes_between_snapshot_and_first_cdc_run_apply_once(pg_db, duck):
    make_customers(pg_db, rows=100)
    full, apply = ops(duck)
    full.execute({})
    for i in range(5):
        pg_db.execute("UPDATE customers SET email = %s WHERE customer_id = 7", (f"v{i}@x",))
    pg_db.execute("INSERT INTO customers (customer_id, first_name, last_name) VALUES (101, 'a', 'b')")
    assert apply.execute({})["changes"] == 6
    assert_same(pg_db, duck)
    assert apply.execute({})["changes"] == 0


def test_cdc_crash_after_load_before_slot_advance(pg_db, duck, monkeypatch):
    make_customers(pg_db, rows=100)
    full, apply = ops(duck, **DEDICATED)
    full.execute({})
    pg_db.execute("DELETE FROM customers WHERE customer_id <= 10")
    pg_db.execute("INSERT INTO customers (customer_id, first_name, last_name) VALUES (10, 'again', 'x')")
    pg_db.execute("UPDATE customers SET first_name = first_name || '!' WHERE customer_id > 90")

    def crash(*args, **kwargs):
        raise RuntimeError("worker died before advancing the slot")

    real_advance = PgReplicationHook.advance_slot
    monkeypatch.setattr(PgReplicationHook, "advance_slot", crash)
    with pytest.raises(RuntimeError, match="worker died"):
        apply.execute({})
    assert_same(pg_db, duck)  # the destination committed the batch
    monkeypatch.setattr(PgReplicationHook, "advance_slot", real_advance)
    pg_db.execute("UPDATE customers SET email = 'after crash' WHERE customer_id = 50")
    res = apply.execute({})
    assert res["changes"] == 1  # the three already-applied transactions are skipped, not re-applied
    assert_same(pg_db, duck)
    assert duck.query("SELECT count(*), count(DISTINCT customer_id) FROM replica.customers") == [(91, 91)]


@pytest.mark.parametrize("path", ["duckdb_one_transaction", "generic_dlt_steps"])
def test_cdc_crash_when_recording_state(pg_db, duck, monkeypatch, path):
    """DuckDB commits data and state together (a crash rolls both back); the generic path loads the data,
    then records the state, so a crash between them re-applies the batch: idempotent either way."""
    import airflow_pg_replication.destination.duckdb.table as loading

    make_customers(pg_db, rows=50)
    full, apply = ops(duck)
    full.execute({})
    before = duck.rows("customers", COLS, ["customer_id"])
    pg_db.execute("DELETE FROM customers WHERE customer_id <= 5")
    pg_db.execute("UPDATE customers SET customer_id = customer_id + 1000 WHERE customer_id > 45")
    if path == "generic_dlt_steps":
        monkeypatch.setattr(DuckDbTableDestination, "native", False)
    real_statements, real_write = loading.state_statements, TableDestination.write_state

    def crash(*args, **kwargs):
        raise RuntimeError("worker died while recording the applied LSN")

    monkeypatch.setattr(loading, "state_statements", crash)
    monkeypatch.setattr(TableDestination, "write_state", crash)
    with pytest.raises(RuntimeError, match="worker died"):
        apply.execute({})
    if path == "duckdb_one_transaction":
        assert duck.rows("customers", COLS, ["customer_id"]) == before  # rolled back with the state
    else:
        assert_same(pg_db, duck)  # the data committed, the state did not
    monkeypatch.setattr(loading, "state_statements", real_statements)
    monkeypatch.setattr(TableDestination, "write_state", real_write)
    res = apply.execute({})  # re-reads the whole batch
    assert res["changes"] == 10
    assert_same(pg_db, duck)
    assert apply.execute({})["changes"] == 0


def test_full_refresh_crash_mid_copy_then_rerun(pg_db, duck, monkeypatch):
    make_customers(pg_db, rows=3000)
    full, apply = ops(duck)
    full.execute({})
    pg_db.execute("UPDATE customers SET first_name = 'changed' WHERE customer_id <= 100")
    full.chunk_bytes = 16 << 10

    def crash():
        raise RuntimeError("worker died mid-copy")

    real_copy = snapshot_module.copy_batches
    _copy_with_hook(monkeypatch, crash)
    with pytest.raises(RuntimeError, match="mid-copy"):
        full.execute({})
    monkeypatch.setattr(snapshot_module, "copy_batches", real_copy)
    # the old copy is intact (the replace never committed) but no longer claims to be usable for CDC
    assert duck.query("SELECT count(*) FROM replica.customers") == [(3000,)]
    with pytest.raises(ReplicationError, match="no loaded snapshot"):
        apply.execute({})
    nxt = choose_next_task(table="public.customers", source_conn_id="pg_source", destination=duck.spec)
    assert nxt == "full_refresh"
    full.execute({})
    assert_same(pg_db, duck)
    pg_db.execute("DELETE FROM customers WHERE customer_id > 2990")
    assert apply.execute({})["changes"] == 10
    assert_same(pg_db, duck)
    assert (
        choose_next_task(table="public.customers", source_conn_id="pg_source", destination=duck.spec)
        == "wait_for_changes"
    )


def test_missing_table_is_one_clear_error(pg_db, duck):
    full, _ = ops(duck)
    with pytest.raises(ReplicationError, match=r"table public\.customers does not exist"):
        full.execute({})


def test_table_without_primary_key_is_one_clear_error(pg_db, duck):
    pg_db.execute("CREATE TABLE customers (customer_id bigint, first_name text)")
    full, _ = ops(duck)
    with pytest.raises(ReplicationError, match="no primary key") as err:
        full.execute({})
    assert "REPLICA IDENTITY FULL" in str(err.value) and "primary_key" in str(err.value)


def test_wal_level_replica_is_one_clear_error(duck, monkeypatch, tmp_path):
    with ThrowawayCluster(settings={"wal_level": "replica"}) as cluster:
        cluster.create_database("src")
        with psycopg.connect(cluster.dsn("src"), autocommit=True) as conn:
            conn.execute("CREATE TABLE customers (customer_id bigint PRIMARY KEY, first_name text)")
        monkeypatch.setenv("AIRFLOW_CONN_PG_SOURCE", cluster.conn_uri("src"))
        full, _ = ops(duck)
        with pytest.raises(ReplicationError, match="wal_level=replica") as err:
            full.execute({})
        assert "wal_level = logical" in str(err.value)
        # a plain full refresh needs no logical decoding
        plain = PgFullRefreshOperator(task_id="f", table="customers", destination=duck.spec, mode="full_refresh")
        assert plain.execute({})["rows"] == 0
