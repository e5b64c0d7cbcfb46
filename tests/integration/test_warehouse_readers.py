"""Reading the DuckDB warehouse while replication runs: readers and tasks take turns, nobody fails.

Real PostgreSQL, real DuckDB files, readers in separate processes.
"""

from __future__ import annotations

import fcntl
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from airflow_pg_replication import PgCdcApplyOperator, PgFullRefreshOperator, query_warehouse
from airflow_pg_replication.destination.duckdb.file_lock import BUSY_TIMEOUT_ENV
from airflow_pg_replication.errors import TransientError
from airflow_pg_replication.operators.plan import WAIT_TASK, choose_next_task
from tests.integration.conftest import source_rows
from tests.integration.test_cdc_end_to_end import assert_same, make_customers, ops

pytestmark = pytest.mark.timeout(300)

ACCOUNTS, TOTAL = 200, 200 * 1000


def make_accounts(pg_db) -> None:
    pg_db.execute("CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL)")
    pg_db.execute(f"INSERT INTO accounts SELECT g, 1000 FROM generate_series(1, {ACCOUNTS}) g")


def transfers(pg_db, count: int, seed: int) -> None:
    """``count`` transactions, each moving money between two accounts: every commit keeps the total."""
    pg_db.execute(f"""
        DO $$ DECLARE a int; b int; BEGIN FOR i IN 1 .. {count} LOOP
          a := 1 + (i * 7 + {seed}) % {ACCOUNTS}; b := 1 + (i * 13 + {seed} + 1) % {ACCOUNTS};
          IF a <> b THEN
            UPDATE accounts SET balance = balance - i % 50 WHERE id = a;
            UPDATE accounts SET balance = balance + i % 50 WHERE id = b;
          END IF;
          COMMIT;
        END LOOP; END $$""")


READER = """
import json, sys, time
from pathlib import Path
from airflow_pg_replication import query_warehouse
path, stop = sys.argv[1], Path(sys.argv[2])
print("ready", flush=True)
while not stop.exists():
    try:
        row = query_warehouse("SELECT count(*), sum(balance), max(_pg_lsn) FROM replica.accounts", path=path,
                              timeout=120)
        print(json.dumps([int(v) for v in row[0]]), flush=True)
    except Exception as exc:
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
"""


def _lock_is_free(path: Path) -> bool:
    with open(str(path) + ".lock", "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(fh, fcntl.LOCK_UN)
        return True


def _start(code: str, *args: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    line = proc.stdout.readline()
    assert line.strip() == "ready", line + proc.stderr.read()
    return proc


def _hold_plainly(path: Path, seconds: float) -> subprocess.Popen:
    """A person's plain read-only DuckDB connection, held open in another process (no package lock)."""
    return _start(f"""
        import time, duckdb
        con = duckdb.connect({str(path)!r}, read_only=True)
        print("ready", flush=True)
        time.sleep({seconds})
    """)


def test_a_reader_that_loops_during_applies_and_a_snapshot_never_fails_nor_makes_a_task_fail(pg_db, duck, tmp_path):
    make_accounts(pg_db)
    common = dict(table="public.accounts", source_conn_id="pg_source", destination=duck.spec)
    full = PgFullRefreshOperator(task_id="full_refresh", **common)
    apply = PgCdcApplyOperator(task_id="apply_changes", max_batch_changes=400, **common)
    full.execute({})
    stop = tmp_path / "stop"
    reader = _start(READER, str(duck.path), str(stop))
    try:
        for round_ in range(4):
            transfers(pg_db, 300, seed=round_)  # 600 changes: a few batches of 400 per apply
            assert (
                choose_next_task(table="public.accounts", source_conn_id="pg_source", destination=duck.spec)
                == WAIT_TASK
            )
            out = apply.execute({})
            assert out["batches"] >= 2 and not out["more"]
            if round_ == 1:
                transfers(pg_db, 100, seed=99)
                assert full.execute({})["rows"] == ACCOUNTS  # a new snapshot while the reader reads
        time.sleep(0.5)
    finally:
        stop.touch()
        out_text, err_text = reader.communicate(timeout=120)
    seen = [json.loads(line) for line in out_text.splitlines() if line.strip()]
    errors = [s for s in seen if isinstance(s, dict)]
    assert not errors, errors[:3]
    assert reader.returncode == 0, err_text
    assert len(seen) >= 10
    # every read saw a committed state: whole transactions only, so the total never moves
    assert all(count == ACCOUNTS and total == TOTAL for count, total, _lsn in seen)
    assert len({lsn for _c, _t, lsn in seen}) >= 3  # it read while the applies went on
    want = source_rows(pg_db, "public.accounts", ["id", "balance"], ["id"])
    assert query_warehouse("SELECT id, balance FROM replica.accounts ORDER BY id", path=duck.path) == want


def test_a_plain_read_only_connection_is_waited_for(pg_db, duck, monkeypatch):
    make_customers(pg_db)
    full, apply = ops(duck)
    full.execute({})
    pg_db.execute("UPDATE customers SET email = 'waited@x' WHERE customer_id <= 3")
    monkeypatch.setenv(BUSY_TIMEOUT_ENV, "60")
    holder = _hold_plainly(duck.path, 3)
    try:
        t0 = time.monotonic()
        assert apply.execute({})["changes"] == 3
        assert time.monotonic() - t0 > 1.5  # it waited for the holder, then went on
    finally:
        holder.communicate(timeout=30)
    assert_same(pg_db, duck)


def test_a_plain_connection_held_too_long_fails_transiently_lets_go_and_the_retry_succeeds(pg_db, duck, monkeypatch):
    make_customers(pg_db)
    full, apply = ops(duck)
    full.execute({})
    pg_db.execute("DELETE FROM customers WHERE customer_id > 40")
    monkeypatch.setenv(BUSY_TIMEOUT_ENV, "2")
    holder = _hold_plainly(duck.path, 120)
    try:
        with pytest.raises(TransientError) as failed:
            apply.execute({})
        message = str(failed.value)
        assert f"(PID {holder.pid})" in message and "Close that connection" in message
        assert "read_warehouse" in message
        assert _lock_is_free(duck.path)  # the package's lock was let go with the failure
    finally:
        holder.kill()
        holder.communicate(timeout=30)
    t0 = time.monotonic()
    assert apply.execute({})["changes"] == 10  # same process, at once: it does not wait on itself
    assert time.monotonic() - t0 < 30
    assert_same(pg_db, duck)
    assert _lock_is_free(duck.path)


ONE_READ = """
import json, sys, time
from pathlib import Path
from airflow_pg_replication import query_warehouse
path, go = sys.argv[1], Path(sys.argv[2])
print("ready", flush=True)
while not go.exists():
    time.sleep(0.01)
asked = time.time()
row = query_warehouse("SELECT count(*), sum(balance) FROM replica.accounts", path=path, timeout=120)
print(json.dumps({"asked": asked, "answered": time.time(), "row": [int(v) for v in row[0]]}), flush=True)
"""


def test_a_reader_gets_its_turn_between_the_batches_of_a_long_run_from_the_change_log(pg_db, duck, tmp_path):
    """A slot group's table keeps the destination open from batch to batch: a reader who asks meanwhile
    is let in at the next batch, not at the run's end."""
    make_accounts(pg_db)
    common = dict(table="public.accounts", source_conn_id="pg_source", destination=duck.spec)
    PgFullRefreshOperator(task_id="full_refresh", **common).execute({})
    transfers(pg_db, 3000, seed=5)  # ~6000 changes: 30 batches of 200
    apply = PgCdcApplyOperator(task_id="apply_changes", max_batch_changes=200, **common)
    go = tmp_path / "go"
    reader = _start(ONE_READ, str(duck.path), str(go))
    import threading

    from airflow_pg_replication.sync import cdc_batch

    first_batch_done = threading.Event()
    real_fold = cdc_batch.CdcBatch._fold_and_apply

    def fold_then_signal(self, *args, **kwargs):  # the reader asks once the run holds the file
        out = real_fold(self, *args, **kwargs)
        if not first_batch_done.is_set():
            first_batch_done.set()
            go.touch()
            time.sleep(0.3)  # the reader is now waiting for the file
        return out

    cdc_batch.CdcBatch._fold_and_apply = fold_then_signal
    try:
        out = apply.execute({})
        ended = time.time()
    finally:
        cdc_batch.CdcBatch._fold_and_apply = real_fold
        go.touch()
    out_text, err_text = reader.communicate(timeout=120)
    assert reader.returncode == 0, err_text
    seen = json.loads(out_text.splitlines()[-1])
    assert out["batches"] >= 10 and not out["more"]
    assert seen["answered"] < ended - 0.5, (seen, ended)  # answered while the run went on
    assert seen["row"] == [ACCOUNTS, TOTAL]  # a committed state: whole transactions only
    want = source_rows(pg_db, "public.accounts", ["id", "balance"], ["id"])
    assert query_warehouse("SELECT id, balance FROM replica.accounts ORDER BY id", path=duck.path) == want
