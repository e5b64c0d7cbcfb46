"""Big snapshots (issue 15): page ranges read at once under one snapshot, resumable after a kill.

The tables here are small; the operators are told to cut them into ranges of a few pages and to
commit every 500 rows, so every path of a big table's copy runs: several readers, commits
in the middle of ranges, a task killed at several points and its retry going on under the same
snapshot, a snapshot gone (start over), a reader's connection ended by the server. Every scenario
ends with the destination equal to the source, no key twice, and CDC going on exactly from there.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import psycopg
import pytest

from airflow_pg_replication import PgCdcApplyOperator, PgFullRefreshOperator
from airflow_pg_replication.source import binary_copy, snapshot_keeper
from tests.integration.test_cdc_end_to_end import COLS, DEDICATED, make_customers
from tests.integration.test_slot_groups import Group

ROWS = 6000
#: 8 pages of ``customers`` a range (~100 rows a page): 6,000 rows make 8 ranges.
RANGED = {"snapshot_min_ranged_mb": 0, "snapshot_range_mb": 8 * 8192 / (1 << 20)}
KEY = ("customer_id",)


def full_refresh(duck: Any, parallelism: int = 3, **kw: Any) -> PgFullRefreshOperator:
    return PgFullRefreshOperator(
        task_id="full_refresh",
        table="public.customers",
        source_conn_id="pg_source",
        destination=duck.spec,
        snapshot_parallelism=parallelism,
        **RANGED,
        **kw,
    )


def apply(duck: Any, **kw: Any) -> dict[str, Any]:
    op = PgCdcApplyOperator(
        task_id="apply_changes", table="public.customers", source_conn_id="pg_source", destination=duck.spec, **kw
    )
    return op.execute({})


def assert_copy_exact(pg_db: Any, duck: Any) -> None:
    """Destination == source on every column in key order, and no key twice."""
    from tests.integration.conftest import source_rows

    want = source_rows(pg_db, "public.customers", COLS, KEY)
    assert duck.rows("customers", COLS, KEY) == want
    count, distinct = duck.query("SELECT count(*), count(DISTINCT customer_id) FROM replica.customers")[0]
    assert count == distinct == len(want)


def expected_ranges(pg_db: Any) -> int:
    """Ranges of 8 pages the table cuts into (the last one open-ended)."""
    pages = pg_db.query("SELECT pg_relation_size('customers') / 8192")[0][0]
    return max(1, -(-pages // 8))


def keepers(pg_db: Any) -> list[tuple[int, str]]:
    return pg_db.query(
        "SELECT pid, application_name FROM pg_stat_activity WHERE application_name LIKE %s",
        (snapshot_keeper.KEEPER_APP + "%",),
    )


def wait_no_keepers(pg_db: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while keepers(pg_db) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert keepers(pg_db) == []


# -- parallel ranges ------------------------------------------------------------------------------


@pytest.mark.parametrize("parallelism", [1, 3])
def test_ranged_snapshot_equals_source_and_cdc_goes_on(pg_db, duck, caplog, parallelism):
    make_customers(pg_db, rows=ROWS)
    caplog.set_level(logging.INFO)
    out = full_refresh(duck, parallelism, **DEDICATED).execute({})
    assert out["rows"] == ROWS
    n = expected_ranges(pg_db)
    assert n > 4 and f"reading {n} of {n} page ranges on {parallelism} connection(s)" in caplog.text
    assert_copy_exact(pg_db, duck)
    # the copy is done: its positions are gone and its keeper released the snapshot
    assert duck.query("SELECT count(*) FROM replica._pg_replication_snapshot_progress") == [(0,)]
    wait_no_keepers(pg_db)
    pg_db.execute("UPDATE customers SET first_name = 'after' WHERE customer_id % 7 = 0")
    pg_db.execute("DELETE FROM customers WHERE customer_id BETWEEN 100 AND 140")
    assert apply(duck, **DEDICATED)["changes"] == ROWS // 7 + 41
    assert_copy_exact(pg_db, duck)


def test_ranged_snapshot_of_a_group_table_joins_exactly(pg_db, duck, tmp_path, caplog):
    """A table of a slot group: the ranges are read under a temporary slot's snapshot held by a keeper."""
    make_customers(pg_db, rows=ROWS)
    group = Group(duck, tmp_path / "changes", None)
    caplog.set_level(logging.INFO)
    kw = {**group.kw("customers"), "destination": duck.spec}
    out = PgFullRefreshOperator(task_id="full_refresh", snapshot_parallelism=2, **RANGED, **kw).execute({})
    assert out["rows"] == ROWS and "page ranges on 2 connection(s)" in caplog.text
    wait_no_keepers(pg_db)  # and with it the temporary slot
    deadline = time.monotonic() + 15
    while pg_db.query("SELECT count(*) FROM pg_replication_slots WHERE temporary") != [(0,)]:
        assert time.monotonic() < deadline, "the temporary slot outlived its keeper"
        time.sleep(0.2)
    pg_db.execute("UPDATE customers SET email = NULL WHERE customer_id <= 300")
    pg_db.execute("INSERT INTO customers (customer_id, first_name, last_name) VALUES (9001, 'new', 'row')")
    group.capture(["customers"])
    assert group.apply("customers")["changes"] == 301
    assert_copy_exact(pg_db, duck)


def test_ranged_snapshot_without_a_slot(pg_db, duck):
    make_customers(pg_db, rows=ROWS)
    out = full_refresh(duck, 2, mode="full_refresh").execute({})
    assert out["rows"] == ROWS
    assert_copy_exact(pg_db, duck)


def test_parallel_ranges_are_exact_at_the_cutover(pg_db, duck, monkeypatch):
    """A writer open when the slot is created and one committing during the copy: in the copy or in CDC, once."""
    from airflow_pg_replication.source import ranged_copy

    make_customers(pg_db, rows=ROWS)
    early = psycopg.connect(pg_db.dsn)  # writes before the slot is asked for, commits while it waits
    early.execute("UPDATE customers SET last_name = 'early' WHERE customer_id <= 50")
    threading.Timer(1.0, early.commit).start()
    late = psycopg.connect(pg_db.dsn)
    late.execute("SELECT 1")
    real = ranged_copy.ranged_batches

    def during_copy(*args: Any, **kwargs: Any):
        for i, batch in enumerate(real(*args, **kwargs)):
            yield batch
            if i == 0:  # the copy is under way: this transaction commits after the snapshot
                late.execute("UPDATE customers SET first_name = 'during copy' WHERE customer_id % 100 = 0")
                late.execute("DELETE FROM customers WHERE customer_id BETWEEN 5001 AND 5010")
                late.execute("INSERT INTO customers (customer_id, first_name, last_name) VALUES (7000, 'late', 'x')")
                late.commit()

    monkeypatch.setattr(ranged_copy, "ranged_batches", during_copy)
    full_refresh(duck, 3, **DEDICATED).execute({})
    early.close()
    late.close()
    assert duck.query("SELECT count(*) FROM replica.customers WHERE last_name = 'early'") == [(50,)]
    assert duck.query("SELECT count(*) FROM replica.customers WHERE first_name = 'during copy'") == [(0,)]
    res = apply(duck, **DEDICATED)
    assert res["changes"] == ROWS // 100 + 10 + 1 and res["transactions"] == 1
    assert_copy_exact(pg_db, duck)


def test_a_reader_whose_connection_is_ended_reads_its_range_again(pg_db, duck, monkeypatch, caplog):
    """The server ends one reader's backend in the middle of a range: that range is read again, nothing twice."""
    make_customers(pg_db, rows=60_000)  # one range of ~5 MB: the server is still sending when its backend ends
    real_iter = binary_copy.BinaryCopyReader.__iter__
    ended: list[int] = []

    def iterate(self):
        for i, batch in enumerate(real_iter(self)):
            yield batch
            if i == 0 and not ended:  # end this very COPY's backend, once
                with psycopg.connect(pg_db.dsn, autocommit=True) as admin:
                    ended.extend(
                        r[0]
                        for r in admin.execute(
                            "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE query LIKE 'COPY (SELECT%%ctid%%' AND pid <> pg_backend_pid()"
                        ).fetchall()
                    )

    monkeypatch.setattr(binary_copy.BinaryCopyReader, "__iter__", iterate)
    monkeypatch.setattr("airflow_pg_replication.destination.duckdb.native.COMMIT_ROWS", 500)
    caplog.set_level(logging.INFO)
    op = full_refresh(duck, 1, chunk_bytes=64 << 10, **DEDICATED)
    op.snapshot_range_mb = 100
    op.execute({})
    assert ended, "no reader's backend was ended"
    assert "broke after" in caplog.text and "reading it again under snapshot" in caplog.text
    assert_copy_exact(pg_db, duck)


# -- resume after a kill --------------------------------------------------------------------------

_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from airflow_pg_replication import PgFullRefreshOperator
    from airflow_pg_replication.destination import snapshot_progress
    from airflow_pg_replication.destination.duckdb import native

    native.COMMIT_ROWS = 500  # commits in the middle of ranges
    kill_at = int(sys.argv[1])
    real = snapshot_progress.record_statements
    calls = [0]

    def record(*args, **kwargs):  # SIGKILL once kill_at commits are in, with more rows inserted uncommitted
        if calls[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        calls[0] += 1
        return real(*args, **kwargs)

    snapshot_progress.record_statements = record
    PgFullRefreshOperator(
        task_id="full_refresh", table="public.customers", source_conn_id="pg_source",
        destination={"type": "duckdb", "credentials": sys.argv[2], "dataset": "replica"},
        snapshot_parallelism=3, chunk_bytes=16 << 10, slot="pgrepl_public_customers",
        snapshot_min_ranged_mb=0, snapshot_range_mb=8 * 8192 / (1 << 20),
    ).execute({})
    """
)


def run_killed(duck: Any, kill_at: int) -> None:
    """The full refresh in a process of its own, SIGKILLed once ``kill_at`` commits of its rows are in."""
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(kill_at), str(duck.path)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]


def progress_rows(duck: Any) -> tuple[int, int, int]:
    """(rows committed, ranges done, ranges) of the interrupted copy."""
    return duck.query(
        "SELECT sum(rows_committed)::int, count(*) FILTER (WHERE done)::int, count(*)::int "
        "FROM replica._pg_replication_snapshot_progress"
    )[0]


@pytest.mark.parametrize("kill_at", [1, 4, 9])
def test_a_killed_snapshot_resumes_under_the_same_snapshot(pg_db, duck, caplog, kill_at):
    make_customers(pg_db, rows=ROWS)
    run_killed(duck, kill_at)
    committed, done, ranges = progress_rows(duck)
    assert 500 * kill_at <= committed < ROWS  # each commit holds at least 500 more rows
    assert ranges == expected_ranges(pg_db) and done < ranges
    assert len(keepers(pg_db)) == 1  # the snapshot outlived the killed task
    # written after the snapshot: not in the copy, applied once by CDC
    pg_db.execute("UPDATE customers SET first_name = 'after kill' WHERE customer_id % 50 = 0")
    caplog.set_level(logging.INFO)
    out = full_refresh(duck, 2, **DEDICATED).execute({})
    assert "resuming the interrupted copy under snapshot" in caplog.text
    assert out["rows"] == ROWS  # the share committed before plus the rest
    assert duck.query("SELECT count(*) FROM replica.customers WHERE first_name = 'after kill'") == [(0,)]
    count, distinct = duck.query("SELECT count(*), count(DISTINCT customer_id) FROM replica.customers")[0]
    assert count == distinct == ROWS
    wait_no_keepers(pg_db)
    assert apply(duck, **DEDICATED)["changes"] == ROWS // 50
    assert_copy_exact(pg_db, duck)


def test_a_killed_snapshot_whose_snapshot_is_gone_starts_over(pg_db, duck, caplog):
    make_customers(pg_db, rows=ROWS)
    run_killed(duck, 3)
    assert progress_rows(duck)[0] >= 1500
    with psycopg.connect(pg_db.dsn, autocommit=True) as conn:  # the keeper's hold time ran out
        for _pid, app in keepers(pg_db):
            snapshot_keeper.release(conn, app.removeprefix(snapshot_keeper.KEEPER_APP).split(" ")[0])
    wait_no_keepers(pg_db)
    pg_db.execute("DELETE FROM customers WHERE customer_id <= 100")
    caplog.set_level(logging.INFO)
    out = full_refresh(duck, 3, **DEDICATED).execute({})
    assert "but that snapshot is gone" in caplog.text and "starting over" in caplog.text
    assert out["rows"] == ROWS - 100
    assert_copy_exact(pg_db, duck)
    assert apply(duck, **DEDICATED)["changes"] == 0


def test_the_keeper_lets_go_when_no_retry_comes(pg_db):
    """A killed task's snapshot is held for hold_seconds only: then the keeper ends and the snapshot with it."""
    from airflow_pg_replication.source.database import SourceDatabase

    make_customers(pg_db, rows=10)
    source = SourceDatabase(psycopg.conninfo.conninfo_to_dict(pg_db.dsn))
    held = snapshot_keeper.hold_snapshot(source, "pgrepl_keeper_test", temporary=True, hold_seconds=2)
    with psycopg.connect(pg_db.dsn, autocommit=True) as user:
        snapshot_keeper.use_snapshot(user, held.snapshot_name)
        time.sleep(3.5)  # used: held past hold_seconds
        assert snapshot_keeper.snapshot_alive(user, held.snapshot_name)
    assert held.process is not None
    held.process.wait(10)  # unused for 2 s: the keeper ends
    with psycopg.connect(pg_db.dsn, autocommit=True) as conn:
        assert not snapshot_keeper.snapshot_alive(conn, held.snapshot_name)
    assert pg_db.query("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'pgrepl_keeper_test'") == [(0,)]
