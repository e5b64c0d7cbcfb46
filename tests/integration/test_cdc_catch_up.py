"""One CDC run catches up batch after batch, each committed then acknowledged (real PostgreSQL, real DuckDB)."""

from __future__ import annotations

import pytest

import airflow_pg_replication.sync.batch_write as write_module
from airflow_pg_replication.source.pgoutput import parse_lsn
from tests.integration.conftest import source_rows
from tests.integration.test_cdc_end_to_end import COLS, DEDICATED, assert_same, make_customers, ops

BATCH = 500


def confirmed_flush(pg_db, slot: str = "pgrepl_public_customers") -> int:
    return parse_lsn(
        str(pg_db.query("SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = %s", (slot,))[0][0])
    )


def applied_lsn(duck) -> int:
    rows = duck.query("SELECT applied_lsn FROM replica._pg_replication_state WHERE table_name = 'public.customers'")
    return rows[0][0]


def write_changes(pg_db, transactions: int) -> None:
    """``transactions`` transactions of 10 updates each, committed one by one (server side)."""
    pg_db.execute(f"""
        DO $$ BEGIN FOR i IN 1 .. {transactions} LOOP
          UPDATE customers SET email = 'run' || i || '.' || customer_id || '@x' WHERE customer_id % 100 = i % 100
                                                                              AND customer_id <= 1000;
          COMMIT;
        END LOOP; END $$""")


def test_one_run_applies_many_batches_and_catches_up(pg_db, duck):
    make_customers(pg_db, rows=1000)
    full, apply = ops(duck, max_batch_changes=BATCH, **DEDICATED)
    full.execute({})
    write_changes(pg_db, 200)  # 2,000 changes: more than 3 batches of 500
    target = parse_lsn(pg_db.query("SELECT pg_current_wal_lsn()")[0][0])
    out = apply.execute({})
    assert out["changes"] == 2000 and out["transactions"] == 200
    assert out["batches"] >= 3 and out["more"] is False
    assert set(out) >= {"table", "changes", "lsn", "transactions", "more", "seconds", "batches"}
    assert_same(pg_db, duck)
    assert confirmed_flush(pg_db) >= target and parse_lsn(out["lsn"]) == confirmed_flush(pg_db)
    again = apply.execute({})
    assert again["changes"] == 0 and again["batches"] == 1


def test_a_time_budget_stops_after_a_batch_and_the_next_run_goes_on(pg_db, duck):
    make_customers(pg_db, rows=1000)
    full, apply = ops(duck, max_batch_changes=BATCH, **DEDICATED)
    apply.max_run_seconds = 0  # the budget is looked at after each batch: one batch, then stop
    full.execute({})
    write_changes(pg_db, 200)
    first = apply.execute({})
    assert first["batches"] == 1 and first["more"] is True and 0 < first["changes"] < 2000
    assert confirmed_flush(pg_db) == parse_lsn(first["lsn"])  # the batch was acknowledged
    apply.max_run_seconds = 600
    rest = apply.execute({})
    assert rest["more"] is False and first["changes"] + rest["changes"] == 2000  # nothing twice, nothing lost
    assert_same(pg_db, duck)


def test_a_crash_between_batches_keeps_the_first_and_the_rerun_is_exact(pg_db, duck, monkeypatch):
    make_customers(pg_db, rows=1000)
    full, apply = ops(duck, max_batch_changes=BATCH, **DEDICATED)
    full.execute({})
    start = confirmed_flush(pg_db)
    write_changes(pg_db, 200)
    real_write_typed, calls = write_module.write_typed_batch, []

    def second_write_fails(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("worker died while writing the second batch")
        return real_write_typed(*args, **kwargs)

    monkeypatch.setattr(write_module, "write_typed_batch", second_write_fails)
    with pytest.raises(RuntimeError, match="second batch"):
        apply.execute({})
    monkeypatch.setattr(write_module, "write_typed_batch", real_write_typed)
    # the first batch is applied, recorded and acknowledged; the second is not
    first_end = confirmed_flush(pg_db)
    assert first_end > start and applied_lsn(duck) < first_end
    applied = duck.query("SELECT count(*) FROM replica.customers WHERE email LIKE 'run%'")[0][0]
    assert 0 < applied < 1000
    rest = apply.execute({})
    assert rest["more"] is False and rest["changes"] < 2000
    assert_same(pg_db, duck)
    assert duck.rows("customers", COLS, ["customer_id"]) == source_rows(
        pg_db, "public.customers", COLS, ["customer_id"]
    )


def test_a_state_changed_while_the_file_was_let_go_fails_the_batch_unwritten(pg_db, duck, monkeypatch):
    import duckdb

    import airflow_pg_replication.sync.cdc_batch as cdc_batch
    from airflow_pg_replication.destination.opening import DestinationOpening
    from airflow_pg_replication.errors import TransientError

    make_customers(pg_db, rows=100)
    full, apply = ops(duck, **DEDICATED)
    full.execute({})
    before = duck.rows("customers", COLS, ["customer_id"])
    slot_before = confirmed_flush(pg_db)
    pg_db.execute("UPDATE customers SET email = 'changed@x' WHERE customer_id <= 10")
    real_result = DestinationOpening.result

    def another_task_writes_meanwhile(self):
        self._join()
        if self._let_go_of_file:  # the file is free: say a new snapshot starts
            with duckdb.connect(str(duck.path)) as con:
                con.execute("UPDATE replica._pg_replication_state SET status = 'snapshotting'")
        return real_result(self)

    monkeypatch.setattr(cdc_batch, "let_go_while_folding", lambda dest: True)
    monkeypatch.setattr(DestinationOpening, "result", another_task_writes_meanwhile)
    with pytest.raises(TransientError, match="changed while this batch was folded"):
        apply.execute({})
    monkeypatch.setattr(DestinationOpening, "result", real_result)
    assert duck.rows("customers", COLS, ["customer_id"]) == before and confirmed_flush(pg_db) == slot_before
    with duckdb.connect(str(duck.path)) as con:
        con.execute("UPDATE replica._pg_replication_state SET status = 'ready'")
    assert apply.execute({})["changes"] == 10
    assert_same(pg_db, duck)
