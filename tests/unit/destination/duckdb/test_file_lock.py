"""The DuckDB file's lock: readers share it, writers take it whole, nobody starves, nothing is left held."""

from __future__ import annotations

import fcntl
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import duckdb
import pytest

from airflow_pg_replication.destination.base import TableDestination
from airflow_pg_replication.destination.duckdb import file_lock as duckdb_file
from airflow_pg_replication.destination.duckdb.readers import query_warehouse, read_warehouse
from airflow_pg_replication.destination.factory import table_destination
from airflow_pg_replication.errors import ReplicationError, TransientError

pytestmark = pytest.mark.timeout(120)


def _dest(path: Path, **kw) -> TableDestination:
    return table_destination(
        {"type": "duckdb", "credentials": str(path), "dataset": "replica"},
        table_name="public.t",
        destination_table="t",
        pipeline_name="test_file_lock",
        **kw,
    )


def _lock_is_free(path: Path) -> bool:
    """True when nobody (this process included) holds the package's lock on the DuckDB file."""
    with open(str(path) + ".lock", "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(fh, fcntl.LOCK_UN)
        return True


def _warehouse(path: Path, rows: int = 3) -> None:
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE SCHEMA replica")
        con.execute("CREATE TABLE replica.t AS SELECT range AS id FROM range(?)", [rows])


class _Child:
    """A separate Python process running ``code``; it prints ``ready`` once it holds what it takes."""

    def __init__(self, code: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        line = self.proc.stdout.readline()
        assert line.strip() == "ready", line + self.proc.stderr.read()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.communicate(timeout=30)


def _hold_lock(path: Path, mode: str, seconds: float) -> _Child:
    """Another process holding the package's lock (through the turnstile) for ``seconds``."""
    return _Child(f"""
        import time
        from airflow_pg_replication.destination.duckdb import file_lock as duckdb_file
        with duckdb_file.locked({str(path)!r}, {mode!r}, timeout=60, what="test"):
            print("ready", flush=True)
            time.sleep({seconds})
    """)


def _hold_plainly(path: Path, seconds: float) -> _Child:
    """Another process holding the DuckDB file with a plain read-only connection (no package lock)."""
    return _Child(f"""
        import time, duckdb
        con = duckdb.connect({str(path)!r}, read_only=True)
        print("ready", flush=True)
        time.sleep({seconds})
    """)


def test_readers_share_and_a_writer_waits_for_them(tmp_path: Path) -> None:
    path = tmp_path / "w.duckdb"
    _warehouse(path)
    reader = _hold_lock(path, duckdb_file.SHARED, 2.0)
    try:
        t0 = time.monotonic()
        assert query_warehouse("SELECT count(*) FROM replica.t", path=path) == [(3,)]  # readers share
        assert time.monotonic() - t0 < 1.5
        with duckdb_file.locked(str(path), duckdb_file.EXCLUSIVE, timeout=30, what="test"):
            waited = time.monotonic() - t0
        assert 1.0 < waited < 10  # the writer waited for the other process's reader
    finally:
        reader.stop()
    assert _lock_is_free(path)


def test_a_writer_is_not_starved_by_readers_that_loop(tmp_path: Path) -> None:
    path = tmp_path / "w.duckdb"
    _warehouse(path)
    # two processes whose reads overlap without a gap: without the turnstile, the writer never gets in
    loops = [
        _Child(f"""
        import time
        from airflow_pg_replication.destination.duckdb import file_lock as duckdb_file
        print("ready", flush=True)
        end = time.monotonic() + 20
        while time.monotonic() < end:
            with duckdb_file.locked({str(path)!r}, "shared", timeout=60, what="test"):
                time.sleep(0.3)
    """)
        for _ in range(2)
    ]
    try:
        time.sleep(1.0)
        t0 = time.monotonic()
        for _ in range(3):
            with duckdb_file.locked(str(path), duckdb_file.EXCLUSIVE, timeout=15, what="test"):
                pass
        assert time.monotonic() - t0 < 6
    finally:
        for child in loops:
            child.stop()


def test_a_reader_is_not_starved_by_a_writer_that_loops(tmp_path: Path) -> None:
    path = tmp_path / "w.duckdb"
    _warehouse(path)
    writer = _Child(f"""
        import time
        from airflow_pg_replication.destination.duckdb import file_lock as duckdb_file
        print("ready", flush=True)
        end = time.monotonic() + 20
        while time.monotonic() < end:  # batch after batch, with almost no gap between them
            with duckdb_file.locked({str(path)!r}, "exclusive", timeout=60, what="test"):
                time.sleep(0.3)
    """)
    try:
        time.sleep(1.0)
        t0 = time.monotonic()
        for _ in range(3):
            assert query_warehouse("SELECT count(*) FROM replica.t", path=path, timeout=15) == [(3,)]
        assert time.monotonic() - t0 < 6
    finally:
        writer.stop()


def test_a_reader_gives_up_after_its_timeout_naming_the_writer(tmp_path: Path) -> None:
    path = tmp_path / "w.duckdb"
    _warehouse(path)
    writer = _hold_lock(path, duckdb_file.EXCLUSIVE, 30)
    try:
        with pytest.raises(TransientError, match=rf"PID {writer.pid} .*exclusive.*pass a longer timeout"):
            with read_warehouse(path, timeout=0.5):
                pytest.fail("the reader must not get the file while a writer holds it")
    finally:
        writer.stop()


def test_reentry_in_one_process_shares_the_lock_and_never_waits_on_itself(tmp_path: Path) -> None:
    path = tmp_path / "w.duckdb"
    t0 = time.monotonic()
    done: list = []
    with _dest(path) as outer:
        with _dest(path) as inner:  # same thread: a second flock would wait on the first for an hour
            with inner.sql_client() as client:
                client.execute_sql("CREATE TABLE x (i INT)")
        # another thread of the process that wants to write waits, in the process, for this one
        thread = threading.Thread(target=lambda: done.append(_dest(path).__enter__().__exit__(None, None, None)))
        thread.start()
        thread.join(0.5)
        assert done == [] and thread.is_alive()
        with outer.sql_client() as client:
            assert client.execute_sql("SELECT count(*) FROM x") == [(0,)]
        assert duckdb_file.held_here(str(path)) == duckdb_file.EXCLUSIVE
    thread.join(10)
    assert done == [None]  # it got the file once this thread let it go
    assert time.monotonic() - t0 < 10
    assert duckdb_file.held_here(str(path)) is None and _lock_is_free(path)


def test_readers_of_one_process_share_the_file_across_threads(tmp_path: Path) -> None:
    path = tmp_path / "w.duckdb"
    _warehouse(path)
    done: list = []
    with read_warehouse(path):
        thread = threading.Thread(target=lambda: done.append(query_warehouse("SELECT 1", path=path)))
        thread.start()
        thread.join(10)
        assert done == [[(1,)]]  # read while this thread reads: no wait
    assert _lock_is_free(path)


def test_asking_to_write_while_this_process_reads_fails_at_once(tmp_path: Path) -> None:
    path = tmp_path / "w.duckdb"
    _warehouse(path)
    with read_warehouse(path), pytest.raises(ReplicationError, match="open for reading and now asks to write"):
        with duckdb_file.locked(str(path), duckdb_file.EXCLUSIVE, timeout=60, what="write"):
            pass
    assert _lock_is_free(path)


def test_a_failed_open_lets_go_of_the_lock_and_a_retry_succeeds_at_once(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "w.duckdb"
    _warehouse(path)
    monkeypatch.setenv(duckdb_file.BUSY_TIMEOUT_ENV, "1")
    holder = _hold_plainly(path, 60)
    try:
        with pytest.raises(TransientError, match=rf"held by .*\(PID {holder.pid}\).*Close that connection"):
            with _dest(path):
                pytest.fail("the file must not open while another process holds it")
        assert _lock_is_free(path) and duckdb_file.held_here(str(path)) is None
    finally:
        holder.stop()
    t0 = time.monotonic()
    with _dest(path) as dest, dest.sql_client() as client:
        assert client.execute_sql("SELECT count(*) FROM replica.t") == [(3,)]
    assert time.monotonic() - t0 < 5


def test_a_plain_holder_is_waited_for(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "w.duckdb"
    _warehouse(path)
    monkeypatch.setenv(duckdb_file.BUSY_TIMEOUT_ENV, "30")
    holder = _hold_plainly(path, 2)
    try:
        t0 = time.monotonic()
        with _dest(path) as dest, dest.sql_client() as client:
            assert client.execute_sql("SELECT count(*) FROM replica.t") == [(3,)]
        assert 1.0 < time.monotonic() - t0 < 20
    finally:
        holder.stop()


def test_a_read_only_destination_reads_state_without_a_file_and_shares_with_readers(tmp_path: Path) -> None:
    path = tmp_path / "none.duckdb"
    with _dest(path, read_only=True) as dest:
        assert dest.read_state() is None
    assert not path.exists()
    _warehouse(path)
    with read_warehouse(path) as con, _dest(path, read_only=True) as dest:  # both read, in one process
        assert dest.read_state() is None
        assert con.execute("SELECT count(*) FROM replica.t").fetchone() == (3,)


def test_release_and_reopen_lets_another_process_in_between(tmp_path: Path) -> None:
    path = tmp_path / "w.duckdb"
    _warehouse(path)
    with _dest(path) as dest:
        dest.defer_checkpoints()
        dest.release_file()
        assert _lock_is_free(path)
        assert query_warehouse("SELECT count(*) FROM replica.t", path=path) == [(3,)]  # in the gap
        with dest.sql_client() as client:  # next use takes the file again
            client.execute_sql("INSERT INTO replica.t VALUES (3)")
            assert client.execute_sql("SELECT current_setting('wal_autocheckpoint')")[0][0] != "16.0 MiB"
        assert not _lock_is_free(path)
    assert _lock_is_free(path)
    assert query_warehouse("SELECT count(*) FROM replica.t", path=path) == [(4,)]


def test_holders_are_read_from_proc_locks() -> None:
    lines = [
        "1: FLOCK  ADVISORY  WRITE 4242 fd:01:1234 0 EOF",
        "1: -> FLOCK  ADVISORY  WRITE 77 fd:01:1234 0 EOF",
        "2: FLOCK  ADVISORY  READ 99 fd:01:1234 0 EOF",
        "3: POSIX  ADVISORY  READ 5 08:02:1234 0 EOF",
    ]
    assert duckdb_file._holders_in(lines, (0xFD, 0x01, 1234)) == [(4242, "WRITE"), (99, "READ")]


def test_no_warehouse_yet_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nothing was replicated there yet"):
        query_warehouse("SELECT 1", path=tmp_path / "nothing.duckdb")


def test_an_opening_lets_go_of_the_file_while_the_caller_folds_and_takes_it_again(tmp_path: Path) -> None:
    from dataclasses import dataclass

    from airflow_pg_replication.destination.opening import DestinationOpening

    @dataclass
    class State:
        applied_lsn: int

    path = tmp_path / "w.duckdb"
    _warehouse(path)
    rechecked = []
    with DestinationOpening(
        _dest(path),
        lambda dest: State(7),
        then=lambda dest: dest.checkpoint(),
        let_go=lambda dest: True,
        recheck=lambda dest, as_read: rechecked.append(as_read),
    ) as opening:
        state = opening.prepared()
        state.applied_lsn = 8  # the caller moves it on; recheck gets it as read
        deadline = time.monotonic() + 10
        while not _lock_is_free(path):  # the thread lets go once it has checkpointed
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert query_warehouse("SELECT count(*) FROM replica.t", path=path) == [(3,)]  # a reader gets in
        dest, value = opening.result()
        assert not _lock_is_free(path) and value is state and rechecked == [State(7)]
        with dest.sql_client() as client:
            assert client.execute_sql("SELECT count(*) FROM replica.t") == [(3,)]
        opening.result()  # taken once: no second recheck
        assert rechecked == [State(7)]
    assert _lock_is_free(path)


def test_a_forked_child_does_not_inherit_the_hold(tmp_path: Path) -> None:
    import multiprocessing

    path = tmp_path / "w.duckdb"
    with duckdb_file.locked(str(path), duckdb_file.EXCLUSIVE, timeout=10, what="test"):
        child = multiprocessing.get_context("fork").Process(
            target=lambda: sys.exit(0 if duckdb_file.held_here(str(path)) is None else 3)
        )
        child.start()
        child.join(30)
        assert child.exitcode == 0
        assert not _lock_is_free(path)  # the child closing its copy did not unlock the parent's
    assert _lock_is_free(path)


def test_someone_waits_while_a_reader_queues_for_the_file(tmp_path: Path) -> None:
    path = tmp_path / "w.duckdb"
    _warehouse(path)
    assert not duckdb_file.someone_waits(str(path))
    with _dest(path) as dest:
        assert not dest.others_wait_for_file()
        reader = subprocess.Popen(
            [
                sys.executable,
                "-c",
                textwrap.dedent(f"""
            from airflow_pg_replication import query_warehouse
            print(query_warehouse("SELECT count(*) FROM replica.t", path={str(path)!r}))
        """),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 20
        while not dest.others_wait_for_file():  # the reader queues at the turnstile
            assert time.monotonic() < deadline and reader.poll() is None
            time.sleep(0.02)
        dest.release_file()  # let it in
        assert reader.communicate(timeout=30)[0].strip() == "[(3,)]"
        with dest.sql_client() as client:
            assert client.execute_sql("SELECT count(*) FROM replica.t") == [(3,)]
    assert not duckdb_file.someone_waits(str(path))
