"""The TableDestination contract, checked alike on every implementation against a real DuckDB file.

* ``duckdb_native``: :class:`DuckDbTableDestination` as it runs (Arrow straight into the file);
* ``duckdb_generic``: the same class with ``native = False``: every load takes dlt's generic path,
  as any other destination would;
* ``dlt``: :class:`DltTableDestination` on dlt's own ``duckdb`` destination (no file lock, dlt's clients).

The generic variants run with the native writer made to fail, so they prove the generic path.
Inputs are small Arrow tables built by hand, typed and hinted from :mod:`source.type_map` columns.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pytest

from airflow_pg_replication.destination.base import TableDestination
from airflow_pg_replication.destination.columns import destination_columns
from airflow_pg_replication.destination.dlt_table import DltTableDestination
from airflow_pg_replication.destination.duckdb.native import NativeDuckDb
from airflow_pg_replication.destination.duckdb.table import DuckDbTableDestination
from airflow_pg_replication.destination.state_table import STATE_TABLE
from airflow_pg_replication.replica_columns import DELETED_AT_COLUMN, LSN_COLUMN
from airflow_pg_replication.source.type_map import PgColumn, PgType, arrow_type
from airflow_pg_replication.table_state import ReplicationState, TablePhase, full_copy_state
from tests.integration.conftest import DuckDest

TABLE = "public.items"
KEY = ["id"]
COLUMNS = [
    PgColumn("id", PgType(20, "int8"), nullable=False),
    PgColumn("name", PgType(25, "text")),
    PgColumn("amount", PgType(1700, "numeric"), typmod=((10 << 16) | 2) + 4),  # numeric(10,2)
    PgColumn("doc", PgType(3802, "jsonb")),
]
NAMES = [c.name for c in COLUMNS]
HINTS = destination_columns(COLUMNS, soft_deletes=True)  # the source's, then _pg_lsn and _pg_deleted_at
UTC = dt.timezone.utc
T1 = dt.datetime(2024, 1, 1, 12, 0, tzinfo=UTC)
T2 = dt.datetime(2024, 2, 1, 12, 0, tzinfo=UTC)
#: A snapshot's batches: the source columns and _pg_lsn (as source.snapshot_reads.snapshot_schema).
SNAPSHOT_SCHEMA = pa.schema([(c.name, arrow_type(c)) for c in COLUMNS] + [(LSN_COLUMN, pa.int64())])
#: A CDC batch's upserts with soft deletes: _pg_deleted_at too (as sync.batch_write makes them).
UPSERT_SCHEMA = SNAPSHOT_SCHEMA.append(pa.field(DELETED_AT_COLUMN, pa.timestamp("us", tz="UTC")))

IMPLEMENTATIONS = ["duckdb_native", "duckdb_generic", "dlt"]


def snapshot_rows(rows: list[tuple], lsn: int) -> pa.Table:
    """(id, name, amount, doc) tuples as a snapshot table read at ``lsn``."""
    return pa.Table.from_pylist([dict(zip(NAMES, r), **{LSN_COLUMN: lsn}) for r in rows], schema=SNAPSHOT_SCHEMA)


def upserts(rows: list[tuple], lsn: int, deleted_at: dt.datetime | None = None) -> pa.Table:
    return pa.Table.from_pylist(
        [dict(zip(NAMES, r), **{LSN_COLUMN: lsn, DELETED_AT_COLUMN: deleted_at}) for r in rows], schema=UPSERT_SCHEMA
    )


def keys(*ids: int) -> pa.Table:
    return pa.table({"id": pa.array(ids, pa.int64())})


ROWS = [
    (1, "one", Decimal("1.50"), '{"a": 1}'),
    (2, "two", None, None),
    (3, None, Decimal("-3.25"), '[1, "x", null]'),
]


@pytest.fixture(params=IMPLEMENTATIONS)
def implementation(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param != "duckdb_native":
        monkeypatch.setattr(DuckDbTableDestination, "native", False)

        def forbidden(*args, **kwargs):
            raise AssertionError("the generic path used the native DuckDB writer")

        for name in ("merge", "replace", "fits"):
            monkeypatch.setattr(NativeDuckDb, name, forbidden)
    return request.param


@pytest.fixture
def duck(tmp_path: Path) -> DuckDest:
    return DuckDest(tmp_path / "warehouse.duckdb")


@pytest.fixture
def open_dest(implementation: str, duck: DuckDest) -> Callable[..., TableDestination]:
    """A new unit of work on the test's DuckDB file (not entered), of the implementation under test."""

    def make(*, read_only: bool = False, table_name: str = TABLE, destination_table: str = "items") -> TableDestination:
        kind = DltTableDestination if implementation == "dlt" else DuckDbTableDestination
        return kind(
            duck.spec,
            table_name=table_name,
            destination_table=destination_table,
            pipeline_name="test_interface",
            read_only=read_only,
        )

    return make


def table_rows(duck: DuckDest, table: str = "items") -> list[tuple]:
    """The destination table's rows, every column, by key; JSON compared as parsed values."""
    columns = f"id, name, amount, json(doc)::VARCHAR, {LSN_COLUMN}, {DELETED_AT_COLUMN}"
    return duck.query(f"SELECT {columns} FROM replica.{table} ORDER BY id")


def as_rows(rows: list[tuple], lsn: int, deleted_at: dt.datetime | None = None) -> list[tuple]:
    """What ``table_rows`` reads for rows written with ``lsn`` (JSON text as DuckDB renders it)."""

    def doc(v):
        return None if v is None else json.dumps(json.loads(v), separators=(",", ":"))

    return [(i, n, a, doc(d), lsn, deleted_at) for i, n, a, d in rows]


def load(dest: TableDestination, rows: list[tuple], lsn: int = 10) -> ReplicationState:
    """A snapshot as sync.snapshot loads it: snapshotting first, then the rows with ``ready(lsn)``."""
    dest.prepare_replace(
        full_copy_state(TABLE, TablePhase.SNAPSHOTTING, slot="the_slot"),
        schema=SNAPSHOT_SCHEMA,
        columns=HINTS,
        primary_key=KEY,
    )
    ready = full_copy_state(TABLE, TablePhase.READY, slot="the_slot", snapshot_lsn=lsn)
    dest.replace(snapshot_rows(rows, lsn).to_batches(max_chunksize=2), HINTS, KEY, schema=SNAPSHOT_SCHEMA, state=ready)
    return ready


def state_rows(duck: DuckDest) -> list[tuple]:
    return duck.query(f"SELECT table_name, status FROM replica.{STATE_TABLE} ORDER BY table_name")


# -- replace and the state ------------------------------------------------------------------------


def test_prepare_replace_then_replace_records_the_state(open_dest, duck):
    with open_dest() as dest:
        assert dest.read_state() is None
        snapshotting = full_copy_state(TABLE, TablePhase.SNAPSHOTTING, slot="the_slot")
        dest.prepare_replace(snapshotting, schema=SNAPSHOT_SCHEMA, columns=HINTS, primary_key=KEY)
        assert dest.read_state() == snapshotting  # the copy is not usable yet, and says so
        ready = full_copy_state(TABLE, TablePhase.READY, slot="the_slot", snapshot_lsn=10)
        dest.replace(
            snapshot_rows(ROWS, 10).to_batches(max_chunksize=2), HINTS, KEY, schema=SNAPSHOT_SCHEMA, state=ready
        )
        got = dest.read_state()
        assert got == ready and got.status is TablePhase.READY and got.updated_at is not None
    assert table_rows(duck) == as_rows(ROWS, 10)
    assert state_rows(duck) == [(TABLE, "ready")]
    with open_dest() as dest:  # kept with the data: a later unit reads it back
        assert dest.read_state() == ready

    # a second snapshot swaps the content; without a state the state row stays as it was
    with open_dest() as dest:
        dest.replace(snapshot_rows(ROWS[1:], 20).to_batches(), HINTS, KEY, schema=SNAPSHOT_SCHEMA)
        assert dest.read_state() == ready
    assert table_rows(duck) == as_rows(ROWS[1:], 20)


def test_a_second_full_copy_replaces_the_rows_and_the_state(open_dest, duck):
    with open_dest() as dest:
        load(dest, ROWS, lsn=10)
    with open_dest() as dest:
        again = load(dest, [(9, "nine", Decimal("9.00"), "{}")], lsn=30)
        assert dest.read_state() == again
    assert table_rows(duck) == as_rows([(9, "nine", Decimal("9.00"), "{}")], 30)
    assert state_rows(duck) == [(TABLE, "ready")]


# -- apply_batch ------------------------------------------------------------------------------------


def test_apply_batch_deletes_keys_upserts_rows_and_records_the_state(open_dest, duck):
    with open_dest() as dest:
        ready = load(dest, ROWS)
        applied = ready.moved_to(TablePhase.READY, applied_lsn=20)
        dest.apply_batch(
            upserts=upserts([(2, "TWO", Decimal("2.00"), '{"b": 2}'), (4, "four", None, None)], 20),
            delete_keys=keys(1, 99),  # a key not in the table is no error
            truncate=None,
            columns=HINTS,
            key_columns=KEY,
            state=applied,
        )
        assert dest.read_state() == applied
        # a batch with only deletes, and no state: the state stays
        dest.apply_batch(upserts=None, delete_keys=keys(3), truncate=None, columns=HINTS, key_columns=KEY, state=None)
        assert dest.read_state() == applied
    assert table_rows(duck) == as_rows([(2, "TWO", Decimal("2.00"), '{"b": 2}'), (4, "four", None, None)], 20)


def test_apply_batch_hard_truncate_empties_the_table_before_its_upserts(open_dest, duck):
    with open_dest() as dest:
        ready = load(dest, ROWS)
        applied = ready.moved_to(TablePhase.READY, applied_lsn=40)
        dest.apply_batch(
            upserts=upserts([(7, "after", None, None)], 40),
            delete_keys=None,
            truncate=(T1, 40, False),
            columns=HINTS,
            key_columns=KEY,
            state=applied,
        )
        assert dest.read_state() == applied
        assert dest.has_rows()
    assert table_rows(duck) == as_rows([(7, "after", None, None)], 40)
    with open_dest() as dest:
        dest.apply_batch(
            upserts=None, delete_keys=None, truncate=(T1, 41, False), columns=HINTS, key_columns=KEY, state=None
        )
        assert not dest.has_rows()


def test_apply_batch_soft_truncate_marks_the_live_rows_deleted(open_dest, duck):
    with open_dest() as dest:
        ready = load(dest, ROWS)
        # row 3 soft-deleted earlier (as a CDC batch writes a soft delete): it keeps its own time and LSN
        dest.apply_batch(
            upserts=upserts([ROWS[2]], 25, deleted_at=T1),
            delete_keys=None,
            truncate=None,
            columns=HINTS,
            key_columns=KEY,
            state=ready.moved_to(TablePhase.READY, applied_lsn=25),
        )
        applied = ready.moved_to(TablePhase.READY, applied_lsn=30)
        dest.apply_batch(
            upserts=upserts([(5, "five", None, None)], 30),
            delete_keys=None,
            truncate=(T2, 30, True),
            columns=HINTS,
            key_columns=KEY,
            state=applied,
        )
        assert dest.read_state() == applied
    assert table_rows(duck) == [
        *as_rows(ROWS[:2], 30, deleted_at=T2),
        *as_rows(ROWS[2:], 25, deleted_at=T1),
        *as_rows([(5, "five", None, None)], 30),
    ]


def test_the_same_batch_applied_twice_gives_the_same_table(open_dest, duck):
    with open_dest() as dest:
        ready = load(dest, ROWS)
    batches = [
        dict(
            upserts=upserts([(2, "TWO", Decimal("2.00"), None), (4, "four", None, "[]")], 20),
            delete_keys=keys(1),
            truncate=None,
            state=ready.moved_to(TablePhase.READY, applied_lsn=20),
        ),
        dict(
            upserts=upserts([(5, "five", Decimal("5.55"), None)], 30),
            delete_keys=keys(4),
            truncate=(T2, 30, True),
            state=ready.moved_to(TablePhase.READY, applied_lsn=30),
        ),
    ]
    for batch in batches:
        with open_dest() as dest:
            dest.apply_batch(columns=HINTS, key_columns=KEY, **batch)
        once = table_rows(duck)
        with open_dest() as dest:  # replayed, as after a crash before the slot advanced
            dest.apply_batch(columns=HINTS, key_columns=KEY, **batch)
            assert dest.read_state() == batch["state"]
        assert table_rows(duck) == once
        assert state_rows(duck) == [(TABLE, "ready")]
    assert table_rows(duck) == [
        *as_rows([(2, "TWO", Decimal("2.00"), None)], 30, deleted_at=T2),
        *as_rows([(3, None, Decimal("-3.25"), '[1, "x", null]')], 30, deleted_at=T2),
        *as_rows([(5, "five", Decimal("5.55"), None)], 30),
    ]


# -- reads ------------------------------------------------------------------------------------------


def test_fetch_rows_returns_the_current_values_of_the_keys_asked_for(open_dest):
    with open_dest() as dest:
        load(dest, ROWS)
        got = dest.fetch_rows(KEY, [(1,), (3,), (404,)], ["name", "amount", LSN_COLUMN])
        assert got == {
            (1,): {"name": "one", "amount": Decimal("1.50"), LSN_COLUMN: 10},
            (3,): {"name": None, "amount": Decimal("-3.25"), LSN_COLUMN: 10},
        }
        assert dest.fetch_rows(KEY, [(2,)], ["name"]) == {(2,): {"name": "two"}}
        dest.apply_batch(
            upserts=upserts([(2, "changed", None, None)], 20),
            delete_keys=keys(1),
            truncate=None,
            columns=HINTS,
            key_columns=KEY,
            state=None,
        )
        assert dest.fetch_rows(KEY, [(1,), (2,)], ["name", LSN_COLUMN]) == {(2,): {"name": "changed", LSN_COLUMN: 20}}


def test_has_rows_says_whether_the_table_exists_and_holds_a_row(open_dest):
    with open_dest() as dest:
        assert not dest.has_rows()  # no table
        dest.prepare_replace(
            full_copy_state(TABLE, TablePhase.SNAPSHOTTING, slot="s"),
            schema=SNAPSHOT_SCHEMA,
            columns=HINTS,
            primary_key=KEY,
        )
        empty = [pa.RecordBatch.from_pylist([], schema=SNAPSHOT_SCHEMA)]  # as an empty source table's snapshot
        ready = full_copy_state(TABLE, TablePhase.READY, slot="s", snapshot_lsn=1)
        dest.replace(empty, HINTS, KEY, schema=SNAPSHOT_SCHEMA, state=ready)
        assert not dest.has_rows()  # a table, empty
        dest.apply_batch(
            upserts=upserts([ROWS[0]], 2), delete_keys=None, truncate=None, columns=HINTS, key_columns=KEY, state=None
        )
        assert dest.has_rows()
        dest.apply_batch(upserts=None, delete_keys=keys(1), truncate=None, columns=HINTS, key_columns=KEY, state=None)
        assert not dest.has_rows()


def test_write_state_after_reading_none_creates_the_state_row(open_dest, duck):
    loaded = full_copy_state(TABLE, TablePhase.LOADED, snapshot_lsn=5, cursor_value="2024-01-01 00:00:00+00")
    with open_dest() as dest:
        assert dest.read_state() is None  # nothing at all in the file yet
        dest.write_state(loaded)
        assert dest.read_state() == loaded
        later = loaded.moved_to(TablePhase.LOADED, snapshot_lsn=6, cursor_value="2024-01-02 00:00:00+00")
        dest.write_state(later)  # an upsert: still one row for the table
        assert dest.read_state() == later
    with open_dest(table_name="public.other", destination_table="other") as other:  # rows are per table
        assert other.read_state() is None
        other.write_state(ReplicationState("public.other", TablePhase.ADDING))
        assert other.read_state().status is TablePhase.ADDING
    with open_dest() as dest:
        assert dest.read_state() == later
    assert state_rows(duck) == [("public.items", "loaded"), ("public.other", "adding")]


def test_a_read_only_unit_reads_what_was_written(open_dest, implementation, duck):
    if implementation != "dlt":  # DuckDB: a read-only unit opens no file that is not there
        with open_dest(read_only=True) as reader:
            assert reader.read_state() is None
        assert not os.path.exists(duck.path)
    with open_dest() as dest:
        ready = load(dest, ROWS)
    with open_dest(read_only=True) as reader, open_dest(read_only=True) as another:  # readers share the file
        assert reader.read_state() == ready and another.read_state() == ready
        assert reader.has_rows()
        assert reader.fetch_rows(KEY, [(2,)], ["name"]) == {(2,): {"name": "two"}}
    assert table_rows(duck) == as_rows(ROWS, 10)


def test_a_read_only_unit_on_no_file_has_no_rows_and_makes_no_file(open_dest, implementation, duck, request):
    """Nothing loaded yet: a reader sees no state and no rows; the native one leaves no file behind
    (dlt's own duckdb destination has no read-only mode: it opens, and so makes, the file to read)."""
    with open_dest(read_only=True) as reader:
        assert reader.read_state() is None
        assert not reader.has_rows()
    assert os.path.exists(duck.path) == (implementation == "dlt")


# -- which path ran ---------------------------------------------------------------------------------


@pytest.fixture
def dlt_runs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list]:
    """Every dlt pipeline run of a destination, recorded (the run itself goes on)."""
    runs: list = []
    real = DltTableDestination.run

    def recorded(self, resource):
        runs.append(getattr(resource, "name", resource))
        return real(self, resource)

    monkeypatch.setattr(DltTableDestination, "run", recorded)
    yield runs


def test_once_the_table_exists_loads_run_without_dlt_on_the_native_path(open_dest, implementation, dlt_runs):
    with open_dest() as dest:
        ready = load(dest, ROWS)
        made = len(dlt_runs)
        dest.apply_batch(
            upserts=upserts([(4, "four", None, None)], 20),
            delete_keys=keys(1),
            truncate=(T1, 20, True),
            columns=HINTS,
            key_columns=KEY,
            state=ready.moved_to(TablePhase.READY, applied_lsn=20),
        )
        load(dest, ROWS, lsn=30)
        if implementation == "duckdb_native":
            assert made == 1  # one dlt run created the table and the state table together
            assert len(dlt_runs) == made  # then Arrow straight into the file
        else:
            assert len(dlt_runs) > made  # dlt loads every batch
