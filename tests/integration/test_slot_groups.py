"""Slot groups on a real PostgreSQL with real DuckDB files (issue 13): many tables share one slot per group.

One capture per group drains the group's slot into the group's change log; each table's apply
reads its own segments from the log. Every scenario ends with the destination equal to the
source row for row (all columns) and no row doubled.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from airflow_pg_replication import (
    PgCaptureOperator,
    PgCdcApplyOperator,
    PgFullRefreshOperator,
)
from airflow_pg_replication.changelog.resync_markers import ResyncRequiredError
from airflow_pg_replication.changelog.store import ChangeLog
from airflow_pg_replication.errors import NeedsAttentionError
from airflow_pg_replication.operators.change_log_storage import open_change_log
from airflow_pg_replication.source.pgoutput import parse_lsn
from airflow_pg_replication.sync.group_join import MAX_PARALLEL_SNAPSHOTS
from airflow_pg_replication.testing.throwaway_cluster import ThrowawayCluster
from tests.conftest import PgDatabase
from tests.integration.conftest import DuckDest, source_rows

COLS = ["id", "name", "amount", "updated_at"]
MB = 1024 * 1024


# -- helpers ------------------------------------------------------------------------------------


def create_table(db: PgDatabase, name: str, rows: int = 50) -> None:
    """``public.<name>``: id, name, amount (numeric), updated_at (timestamptz); ``rows`` rows."""
    ident = sql.Identifier(name)
    db.execute(
        sql.SQL(
            "CREATE TABLE {} (id bigint PRIMARY KEY, name text NOT NULL, amount numeric(12,2), "
            "updated_at timestamptz NOT NULL)"
        ).format(ident)
    )
    db.execute(
        sql.SQL(
            "INSERT INTO {} SELECT g, 'row ' || g, g * 1.25, "
            "timestamptz '2024-01-01 00:00:00+00' + g * interval '1 minute' FROM generate_series(1, %s) g"
        ).format(ident),
        (rows,),
    )


def write_mix(db: PgDatabase, name: str, salt: int = 0) -> int:
    """Inserts, updates, deletes, a key change, a row born and gone; returns the row changes written."""
    t = sql.Identifier(name)
    base = 100_000 * (salt + 1)
    with db.connect() as conn:
        conn.execute(
            sql.SQL(
                "INSERT INTO {} SELECT g, 'new ' || g, g * 0.5, timestamptz '2024-06-01 00:00:00+00' "
                "FROM generate_series(%s, %s) g"
            ).format(t),
            (base + 1, base + 5),
        )
        conn.execute(
            sql.SQL("UPDATE {} SET name = name || ' upd', amount = NULL, updated_at = now() WHERE id <= 3").format(t)
        )
        conn.execute(
            sql.SQL("DELETE FROM {} WHERE id IN (SELECT id FROM {} WHERE id > 3 ORDER BY id LIMIT 2)").format(t, t)
        )
        conn.execute(
            sql.SQL("UPDATE {} SET id = %s WHERE id = (SELECT max(id) FROM {} WHERE id < 100000)").format(t, t),
            (base + 50_000,),
        )
        with conn.transaction():
            conn.execute(sql.SQL("INSERT INTO {} VALUES (%s, 'brief', 1, now())").format(t), (base + 90_000,))
            conn.execute(sql.SQL("DELETE FROM {} WHERE id = %s").format(t), (base + 90_000,))
    return 5 + 3 + 2 + 1 + 2


def assert_exact(db: PgDatabase, duck: DuckDest, name: str, cols: list[str] = COLS) -> None:
    """Destination == source row for row on every column, and no key twice."""
    want = source_rows(db, f"public.{name}", cols, ["id"])
    assert duck.rows(name, cols, ["id"]) == want, f"{name}: destination differs from the source"
    count, distinct = duck.query(f'SELECT count(*), count(DISTINCT id) FROM "{duck.dataset}"."{name}"')[0]
    assert count == distinct == len(want), f"{name}: {count} rows, {distinct} distinct keys, source {len(want)}"


def slot_row(db: PgDatabase, slot: str) -> tuple | None:
    got = db.query(
        "SELECT confirmed_flush_lsn::text, pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint "
        "FROM pg_replication_slots WHERE slot_name = %s",
        (slot,),
    )
    return got[0] if got else None


def published(db: PgDatabase, publication: str) -> set[str]:
    rows = db.query("SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s", (publication,))
    return {f"{s}.{t}" for s, t in rows}


def segment_files(change_log: Path, group: str, name: str) -> list[Path]:
    return sorted((change_log / group / f"public.{name}").glob("*.arrow"))


@dataclass
class Group:
    """One slot group's operators for a test: tables of ``public``, DuckDB warehouses, a local change log."""

    duck: DuckDest
    change_log: Path | str  # a local directory, or an object-storage URL (str)
    name: str | None = None  # None: the operators are given no slot_group (so group "default")
    change_log_conn_id: str | None = None
    own_warehouse: dict[str, DuckDest] = field(default_factory=dict)  # table -> its own DuckDB file

    @property
    def group(self) -> str:
        return self.name or "default"

    @property
    def slot(self) -> str:
        return f"pgrepl_{self.group}"

    def dest(self, name: str) -> DuckDest:
        return self.own_warehouse.get(name, self.duck)

    def kw(self, name: str) -> dict[str, Any]:
        kw: dict[str, Any] = {
            "table": f"public.{name}",
            "source_conn_id": "pg_source",
            "destination": self.dest(name).spec,
            "change_log": str(self.change_log),
            "change_log_conn_id": self.change_log_conn_id,
        }
        if self.name is not None:
            kw["slot_group"] = self.name
        return kw

    def join(self, name: str) -> dict[str, Any]:
        return PgFullRefreshOperator(task_id="full_refresh", **self.kw(name)).execute({})

    def apply(self, name: str, **kw: Any) -> dict[str, Any]:
        return PgCdcApplyOperator(task_id="apply_changes", **self.kw(name), **kw).execute({})

    def capture(self, names: list[str], context: Any = None, **kw: Any) -> dict[str, Any]:
        op = PgCaptureOperator(
            task_id="capture_changes",
            slot_group=self.group,
            tables=[f"public.{n}" for n in names],
            source_conn_id="pg_source",
            change_log=str(self.change_log),
            change_log_conn_id=self.change_log_conn_id,
            **kw,
        )
        return op.execute({} if context is None else context)

    def log(self) -> ChangeLog:
        return open_change_log(str(self.change_log), self.group, self.change_log_conn_id)

    def assert_exact(self, db: PgDatabase, name: str, cols: list[str] = COLS) -> None:
        assert_exact(db, self.dest(name), name, cols)


@pytest.fixture
def group_of(duck: DuckDest, tmp_path: Path) -> Callable[[str | None], Group]:
    """Make the Group named so (None: operators given no slot_group), its change log under tmp_path."""

    def make(name: str | None) -> Group:
        return Group(duck, tmp_path / "changes", name)

    return make


# -- 1. many tables, few slots ------------------------------------------------------------------


@pytest.fixture(scope="module")
def ten_slot_cluster() -> Iterator[ThrowawayCluster]:
    """A server that allows only 10 replication slots (PostgreSQL's default)."""
    with ThrowawayCluster(settings={"max_replication_slots": 10, "max_wal_senders": 10}) as cluster:
        yield cluster


@pytest.fixture
def ten_slot_db(ten_slot_cluster: ThrowawayCluster, monkeypatch: pytest.MonkeyPatch) -> Iterator[PgDatabase]:
    name = "many_tables"
    ten_slot_cluster.create_database(name)
    db = PgDatabase(name, ten_slot_cluster.dsn(name), ten_slot_cluster.conn_uri(name), ten_slot_cluster)
    monkeypatch.setenv("AIRFLOW_CONN_PG_SOURCE", db.conn_uri)
    yield db
    ten_slot_cluster.drop_database(name)


class SlotSampler:
    """Counts the server's replication slots every ~20 ms on a thread; keeps the maximum."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.max_slots = 0
        self.max_temporary = 0
        self.samples = 0
        self.seen: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slot_sampler", daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                while not self._stop.is_set():
                    rows = conn.execute("SELECT slot_name, temporary FROM pg_replication_slots").fetchall()
                    self.samples += 1
                    self.max_slots = max(self.max_slots, len(rows))
                    self.max_temporary = max(self.max_temporary, sum(1 for _, tmp in rows if tmp))
                    self.seen.update(r[0] for r in rows)
                    self._stop.wait(0.02)
        except BaseException as exc:  # surfaced by stop()
            self.error = exc

    def __enter__(self) -> SlotSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        if self.error is not None:
            raise self.error


class Writer:
    """Small transactions on the tables, round robin, on a thread: an insert, an update, now and then a delete."""

    def __init__(self, db: PgDatabase, names: list[str]) -> None:
        self.db = db
        self.names = names
        self.transactions = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="writer", daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            with self.db.connect() as conn:
                i = 0
                while not self._stop.is_set():
                    t = sql.Identifier(self.names[i % len(self.names)])
                    with conn.transaction():
                        conn.execute(sql.SQL("INSERT INTO {} VALUES (%s, 'w', 1, now())").format(t), (5_000_000 + i,))
                        conn.execute(
                            sql.SQL("UPDATE {} SET amount = amount + 1 WHERE id = %s").format(t), (i % 50 + 1,)
                        )
                        if i % 3 == 0:  # the row this table got one round before
                            conn.execute(
                                sql.SQL("DELETE FROM {} WHERE id = %s").format(t), (5_000_000 + i - len(self.names),)
                            )
                    self.transactions += 1
                    i += 1
                    self._stop.wait(0.005)
        except BaseException as exc:  # surfaced by __exit__
            self.error = exc

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        if self.error is not None:
            raise self.error


def test_fifteen_tables_share_one_slot_on_a_ten_slot_server(ten_slot_db: PgDatabase, group_of, tmp_path: Path) -> None:
    db = ten_slot_db
    assert db.query("SHOW max_replication_slots") == [("10",)]
    g = group_of(None)  # operators given neither slot nor slot_group: group "default"
    names = [f"t{i:02d}" for i in range(15)]
    # The threaded half writes each into a DuckDB file of its own: threads of one process cannot share
    # a warehouse file (see test_threads_of_one_process_share_a_warehouse_file below).
    g.own_warehouse = {name: DuckDest(tmp_path / f"{name}.duckdb") for name in names[8:]}
    for i, name in enumerate(names):
        create_table(db, name, rows=3000 + 100 * i)

    with SlotSampler(db.cluster.dsn("postgres")) as sampler:
        # 8 tables one after the other (the first creates the group's slot and publication) ...
        for name in names[:8]:
            out = g.join(name)
            assert out["joined"] == "snapshot" and out["slot_group"] == "default"
        # ... and 7 from 6 threads at once: the snapshot semaphore lets MAX_PARALLEL_SNAPSHOTS run
        with ThreadPoolExecutor(6) as pool:
            outs = list(pool.map(g.join, names[8:]))
        assert [o["rows"] for o in outs] == [3000 + 100 * i for i in range(8, 15)]
        for name in names:
            g.assert_exact(db, name)
        assert published(db, "pgrepl_default") == {f"public.{n}" for n in names}

        written = {name: write_mix(db, name, salt=i) for i, name in enumerate(names)}
        captured = g.capture(names)
        assert captured["tables"] == {f"public.{n}": written[n] for n in names}
        for name in names:
            assert segment_files(g.change_log, "default", name), f"{name}: nothing in the change log"
            assert g.apply(name)["changes"] == written[name]
            assert segment_files(g.change_log, "default", name) == []
            g.assert_exact(db, name)

    assert sampler.samples > 20
    assert any(s.startswith("pgrepl_tmp_") for s in sampler.seen), "no temporary snapshot slot was ever seen"
    assert sampler.max_slots <= 1 + MAX_PARALLEL_SNAPSHOTS, (
        f"{sampler.max_slots} slots in use at once (seen: {sorted(sampler.seen)})"
    )
    assert sampler.max_slots < 10
    slots = db.query("SELECT slot_name, temporary FROM pg_replication_slots")
    assert slots == [("pgrepl_default", False)]


def test_a_new_snapshot_while_changes_wait_in_the_slot_loses_nothing(pg_db: PgDatabase, group_of) -> None:
    """A table snapshotted again (full_refresh=true, a resync) while its changes wait in the group's slot:
    one capture then writes a segment holding changes from before the new consistent point X and after it.

    The apply reads that segment from X on; the table's Relation message came in a transaction before X,
    and the read must keep it (at e87c07f it did not, and the change after X was lost silently)."""
    db = pg_db
    g = group_of("again")
    create_table(db, "b")
    g.join("b")
    db.execute("INSERT INTO b VALUES (900001, 'before the new snapshot', 1, now())")
    x = g.join("b")["lsn"]  # a new snapshot; the insert above is in it
    db.execute("INSERT INTO b VALUES (900002, 'after the new snapshot', 1, now())")
    assert g.capture(["b"])["tables"] == {"public.b": 2}
    (segment,) = g.log().segments("public.b")
    assert segment.first_commit_lsn < parse_lsn(x) <= segment.last_commit_lsn
    out = g.apply("b")
    g.assert_exact(db, "b")  # 900002 lands
    assert out["changes"] == 1


def test_tables_joining_while_written_lose_nothing(pg_db: PgDatabase, group_of, tmp_path: Path) -> None:
    """Tables join (3 of them from threads at once) while a writer keeps changing every table: each join's
    publication change comes before its consistent point, so the group's slot captures the table's changes
    from before and after that point into one segment."""
    db = pg_db
    g = group_of("busy")
    names = [f"w{i}" for i in range(5)]
    g.own_warehouse = {name: DuckDest(tmp_path / f"{name}.duckdb") for name in names[2:]}
    for name in names:
        create_table(db, name, rows=2000)
    g.join(names[0])
    with Writer(db, names) as writer:
        g.join(names[1])
        with ThreadPoolExecutor(3) as pool:
            outs = list(pool.map(g.join, names[2:]))
    assert writer.transactions > 30 and all(o["joined"] == "snapshot" for o in outs)
    g.capture(names)
    for name in names:
        g.apply(name)
    for name in names:
        g.assert_exact(db, name)


def test_threads_of_one_process_share_a_warehouse_file(pg_db: PgDatabase, group_of) -> None:
    """Two tables of a group snapshotted by two threads into one warehouse: the writer waits for the reader."""
    db = pg_db
    g = group_of("threads")
    create_table(db, "a")
    create_table(db, "b")
    g.join("a")
    reader = PgFullRefreshOperator(task_id="full_refresh", **g.kw("a")).target
    with ThreadPoolExecutor(1) as pool, reader.open_destination(read_only=True) as dest:
        assert dest.read_state() is not None
        joining = pool.submit(g.join, "b")  # another thread writes while this one reads
        time.sleep(0.5)
    assert joining.result(timeout=60)["rows"] == 50
    g.assert_exact(db, "a")
    g.assert_exact(db, "b")


# -- 2. a paused table does not pin WAL ---------------------------------------------------------


def test_a_paused_table_does_not_pin_wal(pg_db: PgDatabase, group_of) -> None:
    db = pg_db
    g = group_of("paused")
    create_table(db, "a", rows=100)
    create_table(db, "b", rows=100)
    db.execute("ALTER TABLE a ADD COLUMN payload text")
    g.join("a")
    g.join("b")
    start = db.query("SELECT pg_current_wal_lsn()::text")[0][0]
    b_segments = []
    for round_ in range(5):
        with db.connect() as conn:
            # ~22 MB of WAL in A: 20k rows of 1000 uncompressed characters (under the TOAST threshold)
            conn.execute(
                "INSERT INTO a (id, name, amount, updated_at, payload) SELECT g, 'big ' || g, g, now(), "
                "repeat(md5(g::text), 31) || 'xxxxxxxx' FROM generate_series(%s, %s) g",
                (1_000_000 * (round_ + 1), 1_000_000 * (round_ + 1) + 19_999),
            )
            conn.execute("DELETE FROM a WHERE id >= %s", (1_000_000 * (round_ + 1) + 10_000,))
            conn.execute("UPDATE b SET amount = amount + 1, name = name || '+' WHERE id %% 5 = %s", (round_,))
            conn.execute("INSERT INTO b VALUES (%s, 'b new', 2, now())", (1000 + round_,))
        captured = g.capture(["a", "b"])
        assert captured["tables"]["public.a"] == 30_000 and captured["tables"]["public.b"] == 21
        assert g.apply("a")["changes"] == 30_000
        _, lag = slot_row(db, g.slot)
        assert lag < 16 * MB, f"round {round_}: the group slot holds {lag / MB:.1f} MB of WAL"
        b_segments.append(len(g.log().segments("public.b")))
        assert segment_files(g.change_log, "paused", "a") == []
    written = db.query("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s::pg_lsn)::bigint", (start,))[0][0]
    assert written > 100 * MB, f"only {written / MB:.0f} MB of WAL written"
    assert b_segments == [1, 2, 3, 4, 5], "B's changes should wait in the log, one segment per capture"
    g.assert_exact(db, "a", [*COLS, "payload"])

    # B comes back: one run catches it up exactly, and its segments go
    out = g.apply("b", max_batch_changes=50)  # a few segments a batch: several batches, one run
    assert out["changes"] == 5 * 21 and not out["more"] and out["batches"] >= 2
    g.assert_exact(db, "b")
    assert g.log().segments("public.b") == []
    assert [
        r[0] for r in db.query("SELECT slot_name FROM pg_replication_slots WHERE database = current_database()")
    ] == [g.slot]


# -- 3. a dedicated slot beside a group ---------------------------------------------------------


def test_a_dedicated_slot_table_works_beside_a_group(pg_db: PgDatabase, group_of, tmp_path: Path) -> None:
    db = pg_db
    g = group_of("mixed")
    create_table(db, "a")
    create_table(db, "c")
    g.join("a")
    c_kw = {"table": "public.c", "source_conn_id": "pg_source", "destination": g.duck.spec, "slot": "c_slot"}
    assert PgFullRefreshOperator(task_id="full_refresh", **c_kw).execute({})["rows"] == 50
    g.assert_exact(db, "c")

    a_written = write_mix(db, "a")
    c_written = write_mix(db, "c")
    c_before = slot_row(db, "c_slot")[0]
    captured = g.capture(["a"])
    assert set(captured["tables"]) == {"public.a"}
    assert slot_row(db, "c_slot")[0] == c_before, "the group's capture moved the dedicated slot"
    assert published(db, "c_slot") == {"public.c"}
    assert published(db, g.slot) == {"public.a"}
    assert not list((tmp_path / "changes").glob("*/public.c")), "a dedicated-slot table got a change log"

    assert PgCdcApplyOperator(task_id="apply_changes", **c_kw).execute({})["changes"] == c_written
    assert g.apply("a")["changes"] == a_written
    assert not list((tmp_path / "changes").glob("*/public.c"))
    g.assert_exact(db, "a")
    g.assert_exact(db, "c")
    slots = db.query("SELECT slot_name FROM pg_replication_slots WHERE database = current_database() ORDER BY 1")
    assert slots == [("c_slot",), (g.slot,)]


# -- 4. a table that leaves the registry --------------------------------------------------------


def test_a_table_removed_from_the_registry_leaves_the_publication(pg_db: PgDatabase, group_of) -> None:
    db = pg_db
    g = group_of("shrinking")
    for name in ("a", "b", "r"):
        create_table(db, name)
        g.join(name)
    written = {name: write_mix(db, name) for name in ("a", "b", "r")}
    assert g.capture(["a", "b", "r"])["tables"] == {f"public.{n}": written[n] for n in written}
    assert segment_files(g.change_log, "shrinking", "r")
    # more changes on every table, r among them; then r leaves the registry
    more = {name: write_mix(db, name, salt=1) for name in ("a", "b", "r")}
    captured = g.capture(["a", "b"])
    assert set(captured["tables"]) == {"public.a", "public.b"}
    assert published(db, g.slot) == {"public.a", "public.b"}
    assert not (g.change_log / "shrinking" / "public.r").exists()
    assert "public.r" not in g.log().tables()
    # r's later changes are not captured either
    write_mix(db, "r", salt=2)
    assert set(g.capture(["a", "b"])["tables"]) <= {"public.a", "public.b"}
    assert not (g.change_log / "shrinking" / "public.r").exists()
    for name in ("a", "b"):
        assert g.apply(name)["changes"] == written[name] + more[name]
        g.assert_exact(db, name)
    # a capture with nothing new writes nothing
    before = sorted(p.name for p in g.change_log.rglob("*"))
    assert g.capture(["a", "b"])["tables"] == {}
    assert sorted(p.name for p in g.change_log.rglob("*")) == before

    # r comes back to the registry: it joins again (a new snapshot) and goes on exactly
    assert g.join("r")["joined"] == "snapshot"
    assert published(db, g.slot) == {"public.a", "public.b", "public.r"}
    back = write_mix(db, "r", salt=3)
    assert g.capture(["a", "b", "r"])["tables"] == {"public.r": back}
    assert g.apply("r")["changes"] == back
    for name in ("a", "b", "r"):
        g.assert_exact(db, name)


# -- 5. the log is bounded ----------------------------------------------------------------------


def test_a_table_that_falls_behind_max_log_bytes_is_put_to_resync(pg_db: PgDatabase, group_of) -> None:
    from airflow_pg_replication.operators.plan import FULL_REFRESH_TASK, PgPlanOperator, choose_next_task

    db = pg_db
    g = group_of("bounded")
    create_table(db, "a")
    create_table(db, "b", rows=200)
    g.join("a")
    g.join("b")
    b_snapshot = g.duck.rows("b", COLS, ["id"])
    b_lsns = g.duck.query("SELECT max(_pg_lsn), count(*) FROM replica.b")
    db.execute("UPDATE b SET name = name || repeat('-', 200)")  # 200 changes, ~50 kB of pgoutput
    captured = g.capture(["a", "b"], max_log_bytes=4096)
    assert captured["resynced"] == ["public.b"]
    b_dir = g.change_log / "bounded" / "public.b"
    assert [p.name for p in b_dir.iterdir() if p.name.startswith("RESYNC-") and p.suffix == ".json"]
    assert segment_files(g.change_log, "bounded", "b") == []

    plan_kw = {
        "table": "public.b",
        "source_conn_id": "pg_source",
        "destination": g.duck.spec,
        "slot_group": "bounded",
        "change_log": str(g.change_log),
    }
    assert choose_next_task(**plan_kw, on_slot_lost="resync") == FULL_REFRESH_TASK
    with pytest.raises(NeedsAttentionError) as failed:
        choose_next_task(**plan_kw, on_slot_lost="fail")
    assert isinstance(failed.value, ResyncRequiredError) and "full_refresh" in str(failed.value)
    with pytest.raises(NeedsAttentionError):  # the plan task as Airflow runs it fails without retries too
        PgPlanOperator(task_id="plan", on_slot_lost="fail", **plan_kw).choose_branch({})

    # the apply refuses to skip the gap, and writes nothing
    with pytest.raises(NeedsAttentionError) as refused:
        g.apply("b")
    assert isinstance(refused.value, ResyncRequiredError)
    assert g.duck.rows("b", COLS, ["id"]) == b_snapshot
    assert g.duck.query("SELECT max(_pg_lsn), count(*) FROM replica.b") == b_lsns

    # B's sensor fires, so its DAG run goes on to the plan's verdict
    from airflow_pg_replication import PgSlotLagSensor

    sensor_kw = {k: v for k, v in plan_kw.items() if k != "destination"}
    assert PgSlotLagSensor(task_id="wait_for_changes", **sensor_kw).poke({}) is True

    # A is untouched by B's resync
    a_written = write_mix(db, "a")
    assert g.apply("a")["changes"] == a_written  # captures first: the log is behind
    g.assert_exact(db, "a")

    # B's changes after the marker are captured (B is still published); they do not close the gap
    db.execute("UPDATE b SET amount = amount * 2 WHERE id <= 20")
    assert g.capture(["a", "b"])["tables"] == {"public.b": 20}
    assert g.log().segments("public.b")
    with pytest.raises(NeedsAttentionError):
        g.apply("b")
    assert g.duck.query("SELECT max(_pg_lsn), count(*) FROM replica.b") == b_lsns

    # a new snapshot of B fixes it and clears the marker (and drops the segments it holds); B goes on from the log
    assert g.join("b")["joined"] == "snapshot"
    assert not (b_dir.exists() and [p for p in b_dir.iterdir() if p.name.startswith("RESYNC-")])
    assert g.log().resync_marker("public.b") is None
    assert g.log().segments("public.b") == []
    g.assert_exact(db, "b")
    assert choose_next_task(**plan_kw, on_slot_lost="fail") == "wait_for_changes"
    b_written = write_mix(db, "b")
    g.capture(["a", "b"])
    assert g.apply("b")["changes"] == b_written
    g.assert_exact(db, "b")


# -- 8. the capture DAG and its Asset events ----------------------------------------------------


REGISTRY = """\
source:
  conn_id: pg_source
destination:
  type: duckdb
  credentials: {warehouse}
  dataset: replica
{slot_groups}
tables:
  - table: public.a
  - table: public.b
  - table: c
  - table: public.d
    slot: d_slot
"""


def test_build_dags_gives_one_capture_dag_per_group_and_it_emits_asset_events(
    pg_db: PgDatabase, duck: DuckDest, tmp_path: Path
) -> None:
    from airflow.sdk import Asset
    from airflow.sdk.definitions.asset import AssetUniqueKey
    from airflow.sdk.execution_time.context import OutletEventAccessors

    from airflow_pg_replication.dag_factory import build_dags
    from airflow_pg_replication.operators.capture import group_changes_alias, table_changes_asset

    changes = tmp_path / "changes"
    plain = tmp_path / "plain.yaml"
    plain.write_text(REGISTRY.format(warehouse=duck.path, slot_groups=""))
    dags = build_dags(plain)
    assert set(dags) == {
        "pg_replication__public__a",
        "pg_replication__public__b",
        "pg_replication__public__c",
        "pg_replication__public__d",
        "pg_replication__capture__default",
    }
    capture_dag = dags["pg_replication__capture__default"]
    assert list(capture_dag.task_dict) == ["capture_changes"]
    assert "pg_replication" in capture_dag.tags
    assert capture_dag.timetable.expression == "* * * * *"
    op = capture_dag.task_dict["capture_changes"]
    assert isinstance(op, PgCaptureOperator)
    assert op.tables == ["public.a", "public.b", "public.c"] and op.slot == "pgrepl_default"

    configured = tmp_path / "tables.yaml"
    groups = f'slot_groups:\n  default:\n    schedule: "*/2 * * * *"\n    change_log: {changes}\n'
    configured.write_text(REGISTRY.format(warehouse=duck.path, slot_groups=groups))
    dags = build_dags(configured)
    capture_dag = dags["pg_replication__capture__default"]
    assert capture_dag.timetable.expression == "*/2 * * * *"
    assert [d for d in dags if "capture" in d] == ["pg_replication__capture__default"]
    capture = capture_dag.task_dict["capture_changes"]
    assert capture.change_log == str(changes)

    # The generated tasks on a real database: join, changes on a and b (none on c), capture with outlet events
    for name in ("a", "b", "c", "d"):
        create_table(pg_db, name)
        dags[f"pg_replication__public__{name}"].task_dict["full_refresh"].execute({})
    written = {name: write_mix(pg_db, name) for name in ("a", "b", "d")}
    events = OutletEventAccessors()
    out = capture.execute({"outlet_events": events})
    assert out["tables"] == {"public.a": written["a"], "public.b": written["b"]}
    alias_events = events[group_changes_alias("default")].asset_alias_events
    assert sorted(e.dest_asset_key.name for e in alias_events) == [
        "pg_replication.changes.default.public.a",
        "pg_replication.changes.default.public.b",
    ]
    by_key = {e.dest_asset_key: e for e in alias_events}
    for name in ("a", "b"):
        asset: Asset = table_changes_asset("default", f"public.{name}")
        event = by_key[AssetUniqueKey.from_asset(asset)]
        assert event.source_alias_name == group_changes_alias("default").name
        assert event.extra["changes"] == written[name] and event.extra["lsn"] == out["lsn"]
    assert AssetUniqueKey.from_asset(table_changes_asset("default", "public.c")) not in by_key
    assert not list(changes.glob("*/public.d")), "the dedicated-slot table has no change log"

    for name in ("a", "b", "c", "d"):
        dags[f"pg_replication__public__{name}"].task_dict["apply_changes"].execute({})
        assert_exact(pg_db, duck, name)
