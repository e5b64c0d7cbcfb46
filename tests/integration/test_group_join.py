"""A table joins a running slot group exactly, under concurrent writes and a transaction open across the join.

The group ``default`` already serves table ``other`` (its slot ``pgrepl_default`` exists, its change
log has segments); table ``t`` is outside the group with rows. A writer thread inserts, updates and
deletes rows of both tables, each transaction committed, all through the join and the applies. A
second connection opens a transaction that changes ``t`` and ``other`` before the join starts and
keeps it open: the join's temporary slot cannot reach its consistent point X while it runs, so the
join waits. Then the open transaction commits (or rolls back), the join finishes, the capture and
the applies run a few times while the writer goes on, and at the end the destination equals the
source row for row: nothing lost, nothing doubled.

A re-snapshot of a table already in the group (``full_refresh`` param) under the same writes is
exact too, and never drops or re-creates the group's slot.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from airflow_pg_replication import PgCdcApplyOperator, PgFullRefreshOperator
from airflow_pg_replication.operators.capture import PgCaptureOperator
from airflow_pg_replication.source.database import SourceDatabase
from tests.integration.conftest import source_rows

COLS = ["id", "v", "note"]
KEY = ["id"]
TABLES = ("public.t", "public.other")
GROUP_SLOT = "pgrepl_default"
PROTECTED = 20  # ids 1..PROTECTED are left to the open transaction (the writer never locks them)
FIRST_NEW_KEY = 1_000_000
#: Where a slot stands: (restart_lsn as a number, catalog_xmin).
SLOT_POSITION = (
    "SELECT (restart_lsn - '0/0')::bigint, catalog_xmin::text::bigint FROM pg_replication_slots WHERE slot_name = %s"
)

#: Regression (fixed in 6d5823a): ChangeLog.read dropped the Relation message of the transactions at or below
#: after_lsn; pgoutput sends it once per peek, so when one capture batch spans a join's consistent point X the
#: table's later transactions in that segment were not applied. These tests failed (NotExact) before the fix.


def make_table(db: Any, name: str, rows: int) -> None:
    # no autovacuum: its analyze invalidates the relcache, and pgoutput then re-sends the Relation message
    db.execute(
        f"CREATE TABLE {name} (id bigint PRIMARY KEY, v int NOT NULL, note text) WITH (autovacuum_enabled = false)"
    )
    db.execute(
        f"INSERT INTO {name} SELECT g, g, 'row ' || g FROM generate_series(1, %s) g",
        (rows,),
    )


class Writer(threading.Thread):
    """Inserts, updates and deletes rows of the tables, in small committed transactions, until stopped.

    Rows 1..PROTECTED are never touched (the open transaction holds them); new rows get keys from
    FIRST_NEW_KEY on. ``transactions`` counts the committed ones; an error is kept and re-raised by
    :meth:`finish`.
    """

    def __init__(self, dsn: str, rows: dict[str, int], seed: int = 13, pause: float = 0.003) -> None:
        super().__init__(daemon=True, name="writer")
        self.dsn = dsn
        self.live = {name: list(range(PROTECTED + 1, n + 1)) for name, n in rows.items()}
        self.next_key = FIRST_NEW_KEY
        self.rng = random.Random(seed)
        self.pause = pause
        self.stopping = threading.Event()
        self.transactions = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                while not self.stopping.is_set():
                    with conn.transaction():
                        for _ in range(self.rng.randint(1, 4)):
                            self._one_change(conn)
                    self.transactions += 1
                    time.sleep(self.pause)
        except BaseException as exc:
            self.error = exc

    def _one_change(self, conn: psycopg.Connection) -> None:
        name = self.rng.choice(sorted(self.live))
        live = self.live[name]
        op = self.rng.random()
        if op < 0.35 or len(live) < 10:
            self.next_key += 1
            conn.execute(
                f"INSERT INTO {name} (id, v, note) VALUES (%s, %s, %s)",
                (self.next_key, self.rng.randrange(10**6), f"ins {self.next_key}"),
            )
            live.append(self.next_key)
        elif op < 0.8:
            key = self.rng.choice(live)
            conn.execute(f"UPDATE {name} SET v = v + 1, note = %s WHERE id = %s", (f"upd {self.transactions}", key))
        else:
            key = live.pop(self.rng.randrange(len(live)))
            conn.execute(f"DELETE FROM {name} WHERE id = %s", (key,))

    def finish(self) -> None:
        self.stopping.set()
        self.join(30)
        assert not self.is_alive(), "the writer did not stop"
        if self.error is not None:
            raise self.error
        assert self.transactions > 20, f"the writer committed only {self.transactions} transaction(s)"


class Group:
    """The operators of group ``default`` for one test: the capture of both tables, each table's join and apply."""

    def __init__(self, duck: Any, tmp_path: Path) -> None:
        self.common = dict(source_conn_id="pg_source", destination=duck.spec, change_log=str(tmp_path / "changes"))
        self.capture_op = PgCaptureOperator(
            task_id="capture_changes",
            tables=list(TABLES),
            source_conn_id="pg_source",
            change_log=self.common["change_log"],
        )

    def full_refresh(self, table: str) -> PgFullRefreshOperator:
        return PgFullRefreshOperator(task_id=f"full_refresh_{table}", table=table, **self.common)

    def apply(self, table: str, max_batch_changes: int = 500) -> dict:
        op = PgCdcApplyOperator(
            task_id=f"apply_{table}", table=table, max_batch_changes=max_batch_changes, **self.common
        )
        return op.execute({})

    def capture(self) -> dict:
        return self.capture_op.execute({})

    def round(self) -> None:
        """One capture, then both tables' applies."""
        self.capture()
        for table in TABLES:
            self.apply(table)


class NotExact(AssertionError):
    """The destination differs from the source."""


def assert_exact(pg_db: Any, duck: Any, table: str) -> None:
    name = table.split(".")[1]
    want = source_rows(pg_db, table, COLS, KEY)
    got = duck.rows(name, COLS, KEY)
    if len(got) != len({r[0] for r in got}):
        raise NotExact(f"{table}: a key landed twice")
    if got != want:
        missing = sorted(set(want) - set(got))[:5]
        extra = sorted(set(got) - set(want))[:5]
        raise NotExact(f"{table}: {len(got)} rows, source {len(want)}; missing {missing}; extra {extra}")


def slot_exists(pg_db: Any, slot: str = GROUP_SLOT) -> bool:
    return bool(pg_db.query("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (slot,)))


@pytest.fixture
def group(duck, tmp_path) -> Group:
    return Group(duck, tmp_path)


def start_group_with_other(pg_db: Any, group: Group) -> None:
    """Group ``default`` running with ``other`` in it (slot, publication, a change log), ``t`` outside it."""
    make_table(pg_db, "other", 300)
    make_table(pg_db, "t", 400)
    assert group.full_refresh("public.other").execute({})["joined"] == "snapshot"
    pg_db.execute("UPDATE other SET note = 'before t joins' WHERE id BETWEEN 21 AND 30")
    group.capture()
    assert slot_exists(pg_db)
    published = pg_db.query("SELECT tablename FROM pg_publication_tables WHERE pubname = %s", (GROUP_SLOT,))
    assert published == [("other",)]


@pytest.mark.parametrize("ending", ["commit", "rollback"])
def test_join_waits_for_a_transaction_open_across_it_then_is_exact(pg_db, duck, group, ending):
    start_group_with_other(pg_db, group)
    writer = Writer(pg_db.dsn, {"t": 400, "other": 300})
    writer.start()
    # A transaction that changes t (and other) before the join starts, and stays open across it.
    open_tx = psycopg.connect(pg_db.dsn)
    open_tx.execute("UPDATE t SET note = 'open tx', v = -1 WHERE id <= 10")
    open_tx.execute("DELETE FROM t WHERE id = 11")
    open_tx.execute("INSERT INTO t (id, v, note) VALUES (999999, 1, 'open tx insert')")
    open_tx.execute("UPDATE other SET note = 'open tx' WHERE id <= 5")
    late_tx = psycopg.connect(pg_db.dsn)
    result: dict[str, Any] = {}

    def join() -> None:
        try:
            result["out"] = group.full_refresh("public.t").execute({})
        except BaseException as exc:
            result["error"] = exc

    joiner = threading.Thread(target=join, name="join")
    try:
        joiner.start()
        time.sleep(2.0)
        # its temporary slot waits for the open transaction: no consistent point yet
        assert joiner.is_alive(), f"the join finished while a transaction was open across it: {result}"
        assert "error" not in result
        # t is in the group's publication already (before X), and the copy has not started
        published = {
            r[0] for r in pg_db.query("SELECT tablename FROM pg_publication_tables WHERE pubname = %s", (GROUP_SLOT,))
        }
        assert published == {"other", "t"}
        # A late transaction starts while the join waits, changes t, and is still open when the first one ends.
        late_tx.execute("UPDATE t SET note = 'late tx', v = -2 WHERE id BETWEEN 12 AND 15")
        getattr(open_tx, ending)()
        time.sleep(0.5)
        # the consistent point also waits for what ran when the open transaction ended
        assert joiner.is_alive(), f"the join finished while a late transaction was open: {result}"
        late_tx.commit()
        joiner.join(120)
        assert not joiner.is_alive(), "the join did not finish after the open transactions ended"
    finally:
        open_tx.close()
        late_tx.close()
        if joiner.is_alive():
            writer.finish()
    if "error" in result:
        writer.finish()
        raise result["error"]
    out = result["out"]
    assert out["joined"] == "snapshot" and out["slot_group"] == "default"
    assert slot_exists(pg_db)
    for _ in range(3):  # the capture and the applies while the writer goes on
        group.round()
        time.sleep(0.3)
    writer.finish()
    group.round()
    for table in TABLES:
        assert_exact(pg_db, duck, table)
    if ending == "commit":
        assert duck.query("SELECT count(*) FROM replica.t WHERE note = 'open tx'") == [(10,)]
        assert duck.query("SELECT count(*) FROM replica.t WHERE id IN (11, 999999)") == [(1,)]
    else:
        assert duck.query("SELECT count(*) FROM replica.t WHERE note = 'open tx' OR id = 999999") == [(0,)]
    assert duck.query("SELECT count(*) FROM replica.t WHERE note = 'late tx'") == [(4,)]
    # a last round with nothing new changes nothing
    group.round()
    for table in TABLES:
        assert_exact(pg_db, duck, table)


def test_resnapshot_in_the_group_under_writes_keeps_the_group_slot(pg_db, duck, group, monkeypatch):
    start_group_with_other(pg_db, group)
    assert group.full_refresh("public.t").execute({})["joined"] == "snapshot"
    group.round()
    created_at = pg_db.query(
        SLOT_POSITION,
        (GROUP_SLOT,),
    )[0]
    # every drop and creation of a slot, by name
    calls: list[tuple[str, str]] = []
    for method in ("drop_slot", "create_slot"):
        real = getattr(SourceDatabase, method)

        def spy(self, conn, slot, *args, _real=real, _method=method, **kwargs):
            calls.append((_method, slot))
            return _real(self, conn, slot, *args, **kwargs)

        monkeypatch.setattr(SourceDatabase, method, spy)
    # pg_replication_slots, sampled all along
    samples: list[tuple] = []
    sampling = threading.Event()

    def sample() -> None:
        with psycopg.connect(pg_db.dsn, autocommit=True) as conn:
            while not sampling.is_set():
                row = conn.execute(
                    SLOT_POSITION,
                    (GROUP_SLOT,),
                ).fetchone()
                samples.append(row)
                time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    writer = Writer(pg_db.dsn, {"t": 400, "other": 300}, seed=7)
    writer.start()
    try:
        time.sleep(0.5)
        group.round()
        out = group.full_refresh("public.t").execute({"params": {"full_refresh": True}})
        assert out["joined"] == "snapshot" and out["rows"] > 0
        for _ in range(2):
            group.round()
            time.sleep(0.3)
    finally:
        writer.finish()
        group.round()
        sampling.set()
        sampler.join(10)
    assert not [c for c in calls if c[1] == GROUP_SLOT], f"the group's slot was dropped or created: {calls}"
    assert len(samples) > 20 and all(s is not None for s in samples), "pg_replication_slots lost the group's slot"
    # never re-created: its restart_lsn and catalog_xmin only move forward from where they were
    assert all(s[0] >= created_at[0] and s[1] >= created_at[1] for s in samples)
    for table in TABLES:
        assert_exact(pg_db, duck, table)
