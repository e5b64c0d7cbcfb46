"""A destination opened on a thread: its value, its errors where they are awaited, and always closed."""

from __future__ import annotations

import fcntl
import threading
from pathlib import Path

import duckdb
import pytest

from airflow_pg_replication.destination.base import TableDestination
from airflow_pg_replication.destination.duckdb.table import wal_bytes
from airflow_pg_replication.destination.factory import table_destination
from airflow_pg_replication.destination.opening import DestinationOpening


def _dest(path: Path) -> TableDestination:
    return table_destination(
        {"type": "duckdb", "credentials": str(path), "dataset": "replica"},
        table_name="public.t",
        destination_table="t",
        pipeline_name="test_opening",
    )


def _file_is_free(path: Path) -> bool:
    """True when no unit of work holds the DuckDB file: its writer lock can be taken at once."""
    with open(str(path) + ".lock", "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(fh, fcntl.LOCK_UN)
        return True


def test_prepare_runs_on_another_thread_and_its_value_is_returned(tmp_path: Path) -> None:
    seen = {}

    def prepare(dest: TableDestination) -> int:
        seen["thread"] = threading.current_thread().name
        with dest.sql_client() as client:
            return client.execute_sql("SELECT 41 + 1")[0][0]

    with DestinationOpening(_dest(tmp_path / "w.duckdb"), prepare) as opening:
        dest, value = opening.result()
        assert not _file_is_free(tmp_path / "w.duckdb")
        assert value == 42
        with dest.sql_client() as client:  # the caller's thread uses the opened destination
            assert client.execute_sql("SELECT 1") == [(1,)]
    assert seen["thread"] != threading.current_thread().name
    assert _file_is_free(tmp_path / "w.duckdb")


def test_an_error_in_prepare_is_raised_by_result_and_the_destination_is_closed(tmp_path: Path) -> None:
    def prepare(dest: TableDestination) -> None:
        raise ValueError("no loaded snapshot for this slot")

    with pytest.raises(ValueError, match="no loaded snapshot"):
        with DestinationOpening(_dest(tmp_path / "w.duckdb"), prepare) as opening:
            opening.result()
    assert _file_is_free(tmp_path / "w.duckdb")


def test_the_destination_is_closed_when_the_caller_fails_first(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="source read failed"):
        with DestinationOpening(_dest(tmp_path / "w.duckdb"), lambda dest: None):
            raise RuntimeError("source read failed")
    assert _file_is_free(tmp_path / "w.duckdb")


def test_deferred_commits_stay_in_the_wal_until_the_next_unit_checkpoints_them(tmp_path: Path) -> None:
    path = tmp_path / "w.duckdb"
    with _dest(path) as dest:
        dest.defer_checkpoints()
        with dest.sql_client() as client:
            con = client.native_connection
            con.execute("CREATE SCHEMA replica")
            con.execute("CREATE TABLE replica.t (id BIGINT, v VARCHAR)")
            for start in range(0, 500000, 100000):  # commits of under a row group go to the WAL whole
                con.execute(
                    "INSERT INTO replica.t SELECT range, repeat('x', 40) || range FROM range(?, ?)",
                    [start, start + 100000],
                )
    assert wal_bytes(str(path)) > 16 << 20  # past DuckDB's default checkpoint threshold, yet not checkpointed

    with _dest(path) as dest:
        dest.checkpoint()
        assert wal_bytes(str(path)) == 0
        with dest.sql_client() as client:
            assert client.execute_sql("SELECT count(*), max(id) FROM replica.t") == [(500000, 499999)]
        dest.checkpoint()  # nothing left: a no-op
    with duckdb.connect(str(path), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM replica.t").fetchone()[0] == 500000


def test_a_dlt_destination_opens_on_the_callers_thread_and_fails_at_once(tmp_path: Path) -> None:
    dest = table_destination(
        {"type": "filesystem", "credentials": str(tmp_path), "dataset": "replica", "table_format": "parquet"},
        table_name="public.t",
        destination_table="t",
        pipeline_name="test_opening",
    )
    seen = {}

    def prepare(d: TableDestination) -> None:
        seen["thread"] = threading.current_thread().name
        raise ValueError("no loaded snapshot for this slot")

    with pytest.raises(ValueError, match="no loaded snapshot"), DestinationOpening(dest, prepare):
        pytest.fail("the block must not run when the destination cannot be prepared")
    assert seen["thread"] == threading.current_thread().name


def test_prepared_comes_before_then_finishes_and_result_waits_for_it(tmp_path: Path) -> None:
    release, done = threading.Event(), []

    def then(dest: TableDestination) -> None:
        assert release.wait(10)
        done.append(threading.current_thread().name)

    with DestinationOpening(_dest(tmp_path / "w.duckdb"), lambda dest: 7, then=then) as opening:
        assert opening.prepared() == 7  # while ``then`` is still blocked
        assert done == []
        release.set()
        _dest_open, value = opening.result()
        assert value == 7 and done and done[0] != threading.current_thread().name
    assert _file_is_free(tmp_path / "w.duckdb")


def test_an_error_in_then_is_raised_by_result_or_on_leaving(tmp_path: Path) -> None:
    def then(dest: TableDestination) -> None:
        raise OSError("checkpoint failed: disk full")

    with pytest.raises(OSError, match="disk full"):
        with DestinationOpening(_dest(tmp_path / "w.duckdb"), lambda dest: 1, then=then) as opening:
            opening.result()
    with pytest.raises(OSError, match="disk full"):  # a run that needed only the state still fails
        with DestinationOpening(_dest(tmp_path / "w.duckdb"), lambda dest: 1, then=then) as opening:
            opening.prepared()
    assert _file_is_free(tmp_path / "w.duckdb")
