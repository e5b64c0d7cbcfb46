"""Crashes of a slot group's capture and apply, and a lost group slot: nothing lost, nothing applied twice.

The capture writes a batch's segments, durable, and only then advances the group's slot; the apply
commits a batch with its applied LSN, and only then deletes the segments. Each test stops one of
them at the worst moment (an exception there, or SIGKILL of a process writing a segment) and checks
the state left behind and that the rerun gives the source row for row:

(a) after the change log write, before the slot advance: the rerun writes the same transactions
    again (overlapping segments), read once;
(b) after the slot advance, before the Asset events;
(c) killed while writing a segment: a half-written temp file is never read as a segment;
(d) an apply after its destination commit, before its segment deletion.

And a group slot invalidated by PostgreSQL (``max_slot_wal_keep_size``): with ``on_slot_lost="fail"``
the capture fails with the fix; with ``"resync"`` it re-creates the slot, every table is marked for
resync, each table's plan then says ``full_refresh``, and after the new snapshots all is exact.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import psycopg
import pytest

from airflow_pg_replication import PgFullRefreshOperator
from airflow_pg_replication.changelog.resync_markers import ResyncRequiredError
from airflow_pg_replication.changelog.store import ChangeLog
from airflow_pg_replication.errors import SlotLostError
from airflow_pg_replication.operators import capture as capture_operator
from airflow_pg_replication.operators.capture import PgCaptureOperator, group_changes_alias
from airflow_pg_replication.operators.plan import choose_next_task
from airflow_pg_replication.source.database import SourceDatabase
from tests.integration.test_group_join import TABLES, Group, assert_exact, make_table
from tests.unit.sync.test_plan import invalidate_slot, small_wal_cluster  # noqa: F401  (a fixture)

GROUP_SLOT = "pgrepl_default"
REPO = Path(__file__).resolve().parents[2]


def confirmed_flush(db: Any) -> int:
    return db.query(
        "SELECT (confirmed_flush_lsn - '0/0')::bigint FROM pg_replication_slots WHERE slot_name = %s", (GROUP_SLOT,)
    )[0][0]


def change_log(tmp_path: Path) -> ChangeLog:
    return ChangeLog(str(tmp_path / "changes"), "default")


def writes(db: Any, tag: str, base: int) -> dict[str, int]:
    """A few transactions of row changes on both tables (inserts, updates, deletes, a key change); the row
    changes made, by table."""
    made = {}
    with db.connect() as conn:
        for name in ("t", "other"):
            statements = [
                (f"INSERT INTO {name} SELECT g, g, %s FROM generate_series(%s::int, %s::int) g", (tag, base, base + 9)),
                (f"UPDATE {name} SET v = v + 1, note = %s WHERE id %% 13 = %s", (tag, base % 13)),
                (f"DELETE FROM {name} WHERE id IN (%s, %s)", (base + 3, base % 200 + 21)),
                (f"UPDATE {name} SET id = %s WHERE id = %s", (base + 5000, base + 4)),
            ]
            made[f"public.{name}"] = sum(conn.execute(sql, params).rowcount for sql, params in statements)
    return made


def joined_group(db: Any, duck: Any, group: Group) -> None:
    """Tables t and other in group default, snapshotted, some changes captured and applied."""
    make_table(db, "t", 300)
    make_table(db, "other", 300)
    for table in TABLES:
        assert group.full_refresh(table).execute({})["joined"] == "snapshot"
    writes(db, "first", 1000)
    group.round()
    for table in TABLES:
        assert_exact(db, duck, table)


@pytest.fixture
def group(duck, tmp_path) -> Group:
    return Group(duck, tmp_path)


# -- (a) after the log write, before the slot advance --------------------------------------------------


@pytest.mark.parametrize(
    "max_batch_changes",
    [
        100_000,  # the apply reads the crashed capture's segment and the rerun's in one batch
        # the apply's batch ends between the two: the second batch reads the rerun's segment past its duplicates
        10,
    ],
)
def test_capture_dies_before_the_slot_advance(pg_db, duck, group, tmp_path, monkeypatch, max_batch_changes):
    joined_group(pg_db, duck, group)
    writes(pg_db, "captured twice", 2000)
    before = confirmed_flush(pg_db)
    log = change_log(tmp_path)
    segments_before = {table: log.segments(table) for table in TABLES}
    real = SourceDatabase.advance_slot
    advances: list[str] = []

    def dies_once(self: SourceDatabase, conn: Any, slot: str, lsn: int) -> None:
        advances.append(slot)
        if len(advances) == 1:
            raise RuntimeError("worker died after the log write, before the slot advance")
        real(self, conn, slot, lsn)

    monkeypatch.setattr(SourceDatabase, "advance_slot", dies_once)
    with pytest.raises(RuntimeError, match="before the slot advance"):
        group.capture()
    assert confirmed_flush(pg_db) == before  # the slot did not move
    first_write = {table: set(log.segments(table)) - set(segments_before[table]) for table in TABLES}
    assert all(first_write.values()), "the crashed capture's segments are not in the log"

    writes(pg_db, "after the crash", 3000)  # the rerun reads these too, in the same peek
    group.capture()
    assert confirmed_flush(pg_db) > before
    for table in TABLES:
        (crashed,) = first_write[table]
        again = [s for s in log.segments(table) if s not in first_write[table] and s not in segments_before[table]]
        assert again, f"{table}: the rerun wrote nothing"
        # the rerun wrote the same transactions again, and more: its segment overlaps the crashed one
        assert again[0].first_commit_lsn == crashed.first_commit_lsn
        assert again[0].last_commit_lsn > crashed.last_commit_lsn
    for table in TABLES:
        out = group.apply(table, max_batch_changes=max_batch_changes)
        assert out["changes"] > 0
        assert_exact(pg_db, duck, table)
        assert log.segments(table) == []  # every applied segment, duplicates included, is deleted
    for table in TABLES:
        assert group.apply(table)["changes"] == 0
        assert_exact(pg_db, duck, table)


# -- (b) after the slot advance, before the Asset events ----------------------------------------------


class OutletEvents:
    """Airflow's ``outlet_events`` as a capture sees it: events added through the group's alias, recorded."""

    def __init__(self) -> None:
        self.added: list[tuple[Any, dict]] = []

    def __getitem__(self, alias: Any) -> OutletEvents:
        assert alias == group_changes_alias("default")
        return self

    def add(self, asset: Any, extra: dict | None = None) -> None:
        self.added.append((asset, extra or {}))


def test_capture_dies_after_the_slot_advance_before_the_asset_events(pg_db, duck, group, tmp_path, monkeypatch):
    joined_group(pg_db, duck, group)
    writes(pg_db, "before the events", 2000)
    before = confirmed_flush(pg_db)

    def dies(group_name: str, table: str) -> Any:
        raise RuntimeError("worker died before emitting the Asset events")

    real = capture_operator.table_changes_asset
    monkeypatch.setattr(capture_operator, "table_changes_asset", dies)
    events = OutletEvents()
    with pytest.raises(RuntimeError, match="Asset events"):
        group.capture_op.execute({"outlet_events": events})
    assert confirmed_flush(pg_db) > before  # the slot advanced: the batch is in the log
    assert events.added == []
    monkeypatch.setattr(capture_operator, "table_changes_asset", real)
    made = writes(pg_db, "after the crash", 3000)
    events = OutletEvents()
    out = group.capture_op.execute({"outlet_events": events})
    assert out["tables"] == made  # only what came after the crash: nothing captured twice
    assert sorted(a.uri for a, _ in events.added) == [
        "pg-replication://changes/default/public/other",
        "pg-replication://changes/default/public/t",
    ]
    for table in TABLES:
        group.apply(table)
        assert_exact(pg_db, duck, table)
        assert group.apply(table)["changes"] == 0


# -- (c) a capture killed while it writes a segment ---------------------------------------------------

# Runs capture_changes in its own process; the Nth os.write of the change log writes half its bytes,
# says so, and waits to be killed.
KILLED_CAPTURE = textwrap.dedent(
    """
    import os, sys, time, types
    from psycopg.conninfo import conninfo_to_dict
    from airflow_pg_replication.changelog import files
    from airflow_pg_replication.changelog.store import ChangeLog
    from airflow_pg_replication.source.database import SourceDatabase
    from airflow_pg_replication.sync.capture import SlotGroupTarget, capture_changes

    dsn, root, stop_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
    real_write, calls = os.write, [0]

    def write(fd, data):
        calls[0] += 1
        if calls[0] == stop_at:
            half = len(data) // 2
            real_write(fd, bytes(data[:half]))
            print("HALF", half, flush=True)
            time.sleep(600)
        return real_write(fd, data)

    shim = types.ModuleType("os")
    shim.__dict__.update(os.__dict__)
    shim.write = write
    files.os = shim
    log = ChangeLog(root, "default")
    target = SlotGroupTarget("default", "pgrepl_default", "pgrepl_default", ("public.t", "public.other"), log)
    capture_changes(SourceDatabase(conninfo_to_dict(dsn)), target, max_batch_changes=1_000_000)
    print("FINISHED", flush=True)
    """
)


def test_capture_killed_while_writing_a_segment(pg_db, duck, group, tmp_path):
    joined_group(pg_db, duck, group)
    for name in ("t", "other"):  # a big batch: ~40k changes, MBs of segments
        pg_db.execute(f"INSERT INTO {name} SELECT g, g, repeat('big ', 20) || g FROM generate_series(100000, 115000) g")
        pg_db.execute(f"UPDATE {name} SET v = v + 7 WHERE id BETWEEN 100000 AND 110000")
        pg_db.execute(f"DELETE FROM {name} WHERE id BETWEEN 110000 AND 112000")
    before = confirmed_flush(pg_db)
    log = change_log(tmp_path)
    segments_before = {table: log.segments(table) for table in TABLES}
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_CAPTURE, pg_db.dsn, str(tmp_path / "changes"), "2"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("HALF"), f"the capture did not reach its second segment: {line!r} {proc.stderr.read()}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    assert confirmed_flush(pg_db) == before  # killed before the advance
    # one table's segment is whole, the other's a half-written temp file that no listing shows
    temp_files = [p for p in (tmp_path / "changes" / "default").rglob(".*.tmp") if p.stat().st_size > 0]
    assert len(temp_files) == 1
    new = {table: [s for s in log.segments(table) if s not in segments_before[table]] for table in TABLES}
    assert sorted(len(v) for v in new.values()) == [0, 1]
    for table in TABLES:  # every listed segment reads whole
        log.read(table, after_lsn=None, max_messages=10**9)

    group.capture()  # the rerun writes both again (the whole one under the same name)
    assert confirmed_flush(pg_db) > before
    for table in TABLES:
        assert len([s for s in log.segments(table) if s not in segments_before[table]]) == 1
        group.apply(table)
        assert_exact(pg_db, duck, table)
    assert len(temp_files) == 1 and temp_files[0].exists()  # left for the stale-temp sweep; never read


# -- (d) an apply after its destination commit, before its segment deletion ----------------------------


def test_apply_dies_between_its_commit_and_the_segment_deletion(pg_db, duck, group, tmp_path, monkeypatch):
    joined_group(pg_db, duck, group)
    writes(pg_db, "applied, segments kept", 2000)
    group.capture()
    log = change_log(tmp_path)
    kept = log.segments("public.t")
    assert kept
    calls: list[int] = []

    def dies(self: ChangeLog, table: str, applied_lsn: int) -> int:
        calls.append(applied_lsn)
        raise RuntimeError("worker died after the destination commit, before deleting the segments")

    real = ChangeLog.delete_applied
    monkeypatch.setattr(ChangeLog, "delete_applied", dies)
    with pytest.raises(RuntimeError, match="before deleting"):
        group.apply("public.t")
    monkeypatch.setattr(ChangeLog, "delete_applied", real)
    assert calls and log.segments("public.t") == kept  # the segments are still there ...
    assert_exact(pg_db, duck, "public.t")  # ... and their changes are in the destination
    applied = duck.query("SELECT applied_lsn FROM replica._pg_replication_state WHERE table_name = 'public.t'")
    assert applied == [(calls[0],)]
    assert group.apply("public.t")["changes"] == 0  # the rerun skips them and deletes them
    assert log.segments("public.t") == []
    writes(pg_db, "after the crash", 3000)
    group.round()
    for table in TABLES:
        assert_exact(pg_db, duck, table)


# -- a group slot invalidated by PostgreSQL -----------------------------------------------------------


class ClusterDb:
    """A database of the small-WAL cluster, as the helpers of these tests use a database."""

    def __init__(self, cluster: Any, name: str) -> None:
        self.dsn = cluster.dsn(name)

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(self.dsn, autocommit=True)

    def execute(self, sql: Any, params: Any = None) -> None:
        with self.connect() as conn:
            conn.execute(sql, params)

    def query(self, sql: Any, params: Any = None) -> list[tuple]:
        with self.connect() as conn:
            return conn.execute(sql, params).fetchall()


@pytest.fixture
def lost_slot_db(small_wal_cluster, monkeypatch):  # noqa: F811
    name = "group_slot_lost"
    small_wal_cluster.create_database(name)
    monkeypatch.setenv("AIRFLOW_CONN_PG_SOURCE", small_wal_cluster.conn_uri(name))
    yield ClusterDb(small_wal_cluster, name)
    small_wal_cluster.drop_replication_slots(name)
    small_wal_cluster.drop_database(name)


@pytest.mark.parametrize(
    "writes_before_the_snapshots",
    [False, True],
)
def test_a_lost_group_slot_fails_with_the_fix_or_resyncs_every_table(
    lost_slot_db, duck, group, tmp_path, writes_before_the_snapshots
):
    """With ``writes_before_the_snapshots``, rows change between the slot's re-creation and the tables' new
    snapshots: the first capture after the snapshots then reads transactions on both sides of their X."""
    db = lost_slot_db
    joined_group(db, duck, group)
    writes(db, "never captured", 2000)  # its changes go with the slot
    with db.connect() as conn:
        invalidate_slot(conn, GROUP_SLOT)
    common = dict(source_conn_id="pg_source", change_log=str(tmp_path / "changes"))

    failing = PgCaptureOperator(task_id="capture_changes", tables=list(TABLES), on_slot_lost="fail", **common)
    with pytest.raises(SlotLostError, match=r"invalidated \(wal_status=lost\)") as err:
        failing.execute({})
    assert "on_slot_lost: resync" in str(err.value) and "pg_drop_replication_slot('pgrepl_default')" in str(err.value)
    assert db.query("SELECT wal_status FROM pg_replication_slots WHERE slot_name = %s", (GROUP_SLOT,)) == [("lost",)]

    resync = PgCaptureOperator(task_id="capture_changes", tables=list(TABLES), on_slot_lost="resync", **common)
    resync.execute({})
    status = db.query("SELECT wal_status FROM pg_replication_slots WHERE slot_name = %s", (GROUP_SLOT,))
    assert status and status[0][0] != "lost"  # re-created
    log = change_log(tmp_path)
    for table in TABLES:
        assert log.resync_marker(table) is not None, f"{table} is not marked for resync"
        with pytest.raises(ResyncRequiredError, match="full_refresh"):  # no silent skip over the gap
            group.apply(table)
        plan = dict(table=table, destination=duck.spec, **common)
        assert choose_next_task(on_slot_lost="resync", **plan) == "full_refresh"
        with pytest.raises(ResyncRequiredError, match="full_refresh"):  # a table that does not resync: the fix
            choose_next_task(on_slot_lost="fail", **plan)
    if writes_before_the_snapshots:
        writes(db, "after the new slot", 3000)
    for table in TABLES:
        out = PgFullRefreshOperator(task_id="full_refresh", table=table, destination=duck.spec, **common).execute({})
        assert out["joined"] == "snapshot"
        assert log.resync_marker(table) is None
        assert choose_next_task(table=table, destination=duck.spec, on_slot_lost="resync", **common) == (
            "wait_for_changes"
        )
        assert_exact(db, duck, table)
    writes(db, "after the new snapshots", 4000)
    group.round()
    for table in TABLES:
        assert_exact(db, duck, table)
