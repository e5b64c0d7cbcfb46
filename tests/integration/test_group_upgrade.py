"""An upgrade from per-table slots to a slot group: each table moves without a copy, exactly.

A deployment from before slot groups replicates ``public.t`` (and ``public.u``) on dedicated slots
``pgrepl_public_<table>``, with changes still waiting on those slots. Switched to the group (the
same operators, without ``slot``), the table's full refresh moves it: it joins the group's
publication, takes a consistent point X, drains its old slot up to X into the destination, drops
the old slot and its publication, and goes on from the group's change log above X - 1. No row is
copied, none lost, none applied twice. Where the old slot is gone (dropped by hand) or lost
(invalidated), the join takes a snapshot instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from airflow_pg_replication import PgCdcApplyOperator, PgFullRefreshOperator
from airflow_pg_replication.operators.capture import PgCaptureOperator
from airflow_pg_replication.source import snapshot_reads
from airflow_pg_replication.source.database import SourceDatabase
from tests.integration.conftest import DuckDest, source_rows
from tests.integration.test_group_join import assert_exact
from tests.unit.sync.test_plan import invalidate_slot, small_wal_cluster  # noqa: F401  (a fixture)

COLS = ["id", "v", "note"]
KEY = ["id"]
GROUP_SLOT = "pgrepl_default"


def make_table(db: Any, name: str, rows: int = 200) -> None:
    db.execute(f"CREATE TABLE {name} (id bigint PRIMARY KEY, v int NOT NULL, note text)")
    db.execute(f"INSERT INTO {name} SELECT g, g, 'row ' || g FROM generate_series(1, %s::int) g", (rows,))


def write_some(db: Any, name: str, tag: str, base: int) -> int:
    """Inserts, updates, deletes and a key change of ``name`` in four transactions; the row changes made."""
    statements = [
        (f"INSERT INTO {name} SELECT g, g, %s FROM generate_series(%s::int, %s::int) g", (tag, base, base + 4)),
        (f"UPDATE {name} SET v = v + 1, note = %s WHERE id %% 17 = %s", (tag, base % 17)),
        (f"DELETE FROM {name} WHERE id IN (%s, %s)", (base + 1, base % 150 + 3)),
        (f"UPDATE {name} SET id = %s WHERE id = %s", (base + 1000, base + 2)),
    ]
    changes = 0
    with db.connect() as conn:
        for sql, params in statements:
            changes += conn.execute(sql, params).rowcount
    return changes


class Tables:
    """One test's operators: dedicated (the old way) or in group ``default`` (the new way)."""

    def __init__(self, duck: DuckDest, tmp_path: Path, conn_id: str = "pg_source") -> None:
        self.duck = duck
        self.conn_id = conn_id
        self.change_log = str(tmp_path / "changes")

    def old(self, table: str) -> tuple[PgFullRefreshOperator, PgCdcApplyOperator]:
        slot = "pgrepl_" + table.replace(".", "_")
        common = dict(table=table, source_conn_id=self.conn_id, destination=self.duck.spec, slot=slot)
        return PgFullRefreshOperator(task_id="full_refresh", **common), PgCdcApplyOperator(task_id="apply", **common)

    def new(self, table: str) -> tuple[PgFullRefreshOperator, PgCdcApplyOperator]:
        common = dict(table=table, source_conn_id=self.conn_id, destination=self.duck.spec, change_log=self.change_log)
        return PgFullRefreshOperator(task_id="full_refresh", **common), PgCdcApplyOperator(task_id="apply", **common)

    def capture(self, tables: list[str]) -> dict:
        op = PgCaptureOperator(
            task_id="capture_changes", tables=tables, source_conn_id=self.conn_id, change_log=self.change_log
        )
        return op.execute({})

    def state(self, table: str) -> tuple:
        return self.duck.query(
            "SELECT status, slot, snapshot_lsn, applied_lsn FROM replica._pg_replication_state WHERE table_name = ?",
            [table],
        )[0]


def slots(db: Any) -> set[str]:
    return {r[0] for r in db.query("SELECT slot_name FROM pg_replication_slots WHERE database = current_database()")}


def publications(db: Any) -> set[str]:
    return {r[0] for r in db.query("SELECT pubname FROM pg_publication")}


class NoCopy:
    """Once armed, fails any snapshot copy (a move must not copy) and counts the copies tried."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.monkeypatch = monkeypatch
        self.tried = 0

    def arm(self) -> None:
        def refuse(*args: Any, **kwargs: Any) -> Iterator[Any]:
            self.tried += 1
            raise AssertionError("a move copied the table")

        self.monkeypatch.setattr(snapshot_reads, "copy_batches", refuse)


@pytest.fixture
def no_copy(monkeypatch) -> NoCopy:
    return NoCopy(monkeypatch)


@pytest.fixture
def tables(duck, tmp_path) -> Tables:
    return Tables(duck, tmp_path)


def run_the_old_way(db: Any, tables: Tables, table: str, base: int) -> int:
    """Snapshot and CDC on the table's dedicated slot; leaves changes waiting on it. Returns how many."""
    full, apply = tables.old(table)
    assert full.execute({})["rows"] == 200
    write_some(db, table.split(".")[1], "applied the old way", base)
    assert apply.execute({})["changes"] > 0
    assert_exact(db, tables.duck, table)
    pending = write_some(db, table.split(".")[1], "pending on the old slot", base + 10)
    return pending


def test_upgrade_moves_each_table_without_a_copy(pg_db, tables, duck, no_copy):
    make_table(pg_db, "t")
    make_table(pg_db, "u")
    pending = {"public.t": run_the_old_way(pg_db, tables, "public.t", 500)}
    pending["public.u"] = run_the_old_way(pg_db, tables, "public.u", 700)
    assert slots(pg_db) == {"pgrepl_public_t", "pgrepl_public_u"}
    assert duck.query("SELECT count(*) FROM replica.t WHERE note = 'pending on the old slot'") == [(0,)]
    before = dict(duck.query("SELECT id, _pg_lsn FROM replica.t"))
    no_copy.arm()

    # the same tables, now in group default: the first move creates the group's slot
    full_t, apply_t = tables.new("public.t")
    out = full_t.execute({})
    assert out["joined"] == "moved" and out["rows"] == 0 and out["slot_group"] == "default"
    assert out["drained_changes"] == pending["public.t"]
    assert_exact(pg_db, duck, "public.t")  # the old slot's pending changes are in
    assert slots(pg_db) == {GROUP_SLOT, "pgrepl_public_u"}
    assert "pgrepl_public_t" not in publications(pg_db)
    status, slot, _, applied = tables.state("public.t")
    assert (status, slot) == ("ready", GROUP_SLOT) and applied is not None
    # rows the drain did not touch keep the LSN they had: nothing was copied again
    after = dict(duck.query("SELECT id, _pg_lsn FROM replica.t"))
    untouched = [k for k, lsn in before.items() if after.get(k) == lsn]
    assert len(untouched) > 150

    write_some(pg_db, "t", "after t moved", 900)  # t is in the group's log now; u still on its own slot
    pending["public.u"] += write_some(pg_db, "u", "u before its move", 1100)
    full_u, apply_u = tables.new("public.u")
    out_u = full_u.execute({})
    assert out_u["joined"] == "moved" and out_u["rows"] == 0
    assert out_u["drained_changes"] == pending["public.u"]
    assert slots(pg_db) == {GROUP_SLOT} and not publications(pg_db) & {"pgrepl_public_t", "pgrepl_public_u"}
    assert no_copy.tried == 0

    for table, base in (("t", 1300), ("u", 1500)):
        write_some(pg_db, table, f"{table} in the group", base)
    tables.capture(["public.t", "public.u"])
    for apply in (apply_t, apply_u):
        apply.execute({})
    for table in ("public.t", "public.u"):
        assert_exact(pg_db, duck, table)
    # nothing new: the applies change nothing, the moves are not done again
    assert apply_t.execute({})["changes"] == 0 and apply_u.execute({})["changes"] == 0
    assert tables.state("public.u")[1] == GROUP_SLOT


def test_writes_during_and_after_the_move_are_applied_exactly(pg_db, tables, duck, no_copy, monkeypatch):
    """Writes between the publication change and X (drained from the old slot, skipped in the log), during the
    drain (after X: from the log) and after the move: each applied once."""
    make_table(pg_db, "t")
    run_the_old_way(pg_db, tables, "public.t", 500)
    no_copy.arm()
    real = SourceDatabase.consistent_point_now
    moments: list[str] = []

    def with_writes_around(self: SourceDatabase, slot: str) -> int:
        write_some(pg_db, "t", "between the publication change and X", 2000)
        moments.append("before X")
        x = real(self, slot)
        write_some(pg_db, "t", "during the drain", 2100)  # after X: the group's log has it
        moments.append("after X")
        return x

    monkeypatch.setattr(SourceDatabase, "consistent_point_now", with_writes_around)
    full, apply = tables.new("public.t")
    out = full.execute({})
    assert out["joined"] == "moved" and moments == ["before X", "after X"]
    assert duck.query("SELECT count(*) FROM replica.t WHERE note = 'during the drain'") == [(0,)]
    write_some(pg_db, "t", "after the move", 2200)
    apply.execute({})
    assert_exact(pg_db, duck, "public.t")
    assert apply.execute({})["changes"] == 0
    assert_exact(pg_db, duck, "public.t")


def test_old_slot_dropped_by_hand_means_a_snapshot(pg_db, tables, duck):
    make_table(pg_db, "t")
    run_the_old_way(pg_db, tables, "public.t", 500)
    pg_db.execute("SELECT pg_drop_replication_slot('pgrepl_public_t')")  # its pending changes are gone
    full, apply = tables.new("public.t")
    out = full.execute({})
    assert out["joined"] == "snapshot" and out["rows"] == len(source_rows(pg_db, "public.t", KEY, KEY))
    assert_exact(pg_db, duck, "public.t")
    assert slots(pg_db) == {GROUP_SLOT} and "pgrepl_public_t" not in publications(pg_db)
    assert tables.state("public.t")[:2] == ("ready", GROUP_SLOT)
    write_some(pg_db, "t", "after the snapshot", 900)
    apply.execute({})
    assert_exact(pg_db, duck, "public.t")


def test_old_slot_lost_means_a_snapshot(small_wal_cluster, duck, tmp_path, monkeypatch):  # noqa: F811
    name = "upgrade_lost_slot"
    small_wal_cluster.create_database(name)
    monkeypatch.setenv("AIRFLOW_CONN_PG_SOURCE", small_wal_cluster.conn_uri(name))

    class Db:
        dsn = small_wal_cluster.dsn(name)

        def connect(self) -> psycopg.Connection:
            return psycopg.connect(self.dsn, autocommit=True)

        def execute(self, sql: Any, params: Any = None) -> None:
            with self.connect() as conn:
                conn.execute(sql, params)

        def query(self, sql: Any, params: Any = None) -> list[tuple]:
            with self.connect() as conn:
                return conn.execute(sql, params).fetchall()

    db = Db()
    tables = Tables(duck, tmp_path)
    try:
        make_table(db, "t")
        run_the_old_way(db, tables, "public.t", 500)
        with db.connect() as conn:
            invalidate_slot(conn, "pgrepl_public_t")
        full, apply = tables.new("public.t")
        out = full.execute({})
        assert out["joined"] == "snapshot"
        assert_exact(db, duck, "public.t")
        assert slots(db) == {GROUP_SLOT} and "pgrepl_public_t" not in publications(db)
        write_some(db, "t", "after the snapshot", 900)
        apply.execute({})
        assert_exact(db, duck, "public.t")
    finally:
        small_wal_cluster.drop_replication_slots(name)
        small_wal_cluster.drop_database(name)
