"""The phase machine of table_state.py: its arrows, the moves it lacks, full copies, the state row and its schema."""

from __future__ import annotations

import itertools
from datetime import datetime, timezone

import pyarrow as pa
import pytest

from airflow_pg_replication.destination.state_table import _dlt_columns, _state_schema
from airflow_pg_replication.table_state import (
    STATE_COLUMNS,
    TRANSITIONS,
    PhaseError,
    ReplicationState,
    TablePhase,
    check_move,
    full_copy_state,
)

BEFORE = [None, *TablePhase]
ARROWS = [
    (before, after) for before, afters in TRANSITIONS.items() for after in sorted(afters, key=list(TablePhase).index)
]
LACKING = [
    (before, after) for before, after in itertools.product(BEFORE, TablePhase) if after not in TRANSITIONS[before]
]
FULL_COPY = (TablePhase.SNAPSHOTTING, TablePhase.LOADED)


def _id(move: tuple) -> str:
    before, after = move
    return f"{before or 'none'}->{after}"


def test_the_machine_has_a_row_for_no_state_and_every_phase() -> None:
    assert set(TRANSITIONS) == set(BEFORE)
    assert all(isinstance(after, TablePhase) for afters in TRANSITIONS.values() for after in afters)


def test_the_moves_it_lacks_are_the_ones_the_diagram_lacks() -> None:
    S, R, Y, A, L = (
        TablePhase.SNAPSHOTTING,
        TablePhase.READY,
        TablePhase.RESYNC,
        TablePhase.ADDING,
        TablePhase.LOADED,
    )
    assert set(LACKING) == {(None, R), (None, Y), (A, R), (S, A), (Y, R), (L, R), (L, Y)}
    # the safety of CDC: a copy becomes ready only from a snapshot (or stays ready)
    assert {before for before, afters in TRANSITIONS.items() if R in afters} == {S, R}


@pytest.mark.parametrize("move", ARROWS, ids=_id)
def test_every_arrow_is_allowed(move: tuple) -> None:
    before, after = move
    check_move(before, after, "public.t")
    if before is not None:
        state = ReplicationState("public.t", before, slot="s", snapshot_lsn=7)
        moved = state.moved_to(after, applied_lsn=9)
        assert moved.status is after and moved.applied_lsn == 9
        assert (moved.table_name, moved.slot, moved.snapshot_lsn) == ("public.t", "s", 7)
        assert state.status is before  # a new state; the old one is left as it was


@pytest.mark.parametrize("move", LACKING, ids=_id)
def test_a_move_the_machine_lacks_raises_naming_both_phases(move: tuple) -> None:
    before, after = move
    with pytest.raises(PhaseError) as err:
        check_move(before, after, "public.t")
    msg = str(err.value)
    assert msg.startswith("public.t: ")
    assert f"from {before.value if before else 'no state'} to {after.value}" in msg
    assert isinstance(err.value, ValueError)
    if before is not None:
        state = ReplicationState("public.t", before)
        with pytest.raises(PhaseError, match=f"from {before.value} to {after.value}"):
            state.moved_to(after)
        assert state.status is before


@pytest.mark.parametrize("before", BEFORE, ids=lambda b: str(b or "none"))
@pytest.mark.parametrize("phase", FULL_COPY, ids=str)
def test_a_full_copy_may_start_from_any_phase(before: TablePhase | None, phase: TablePhase) -> None:
    check_move(before, phase)
    if before is not None:
        assert ReplicationState("public.t", before).moved_to(phase).status is phase


@pytest.mark.parametrize(
    ("phase", "fields"),
    [
        (TablePhase.SNAPSHOTTING, {"slot": "s"}),
        (TablePhase.READY, {"slot": "s", "snapshot_lsn": 42}),
        (TablePhase.LOADED, {"snapshot_lsn": 42, "cursor_value": "2024-01-01"}),
    ],
    ids=str,
)
def test_full_copy_state_is_the_state_a_full_copy_writes(phase: TablePhase, fields: dict) -> None:
    state = full_copy_state("public.t", phase, **fields)
    assert state == ReplicationState("public.t", phase, **fields)
    assert state.status is phase and state.applies_changes is (phase is TablePhase.READY)


@pytest.mark.parametrize("phase", [TablePhase.ADDING, TablePhase.RESYNC], ids=str)
def test_a_full_copy_does_not_end_in_adding_or_resync(phase: TablePhase) -> None:
    with pytest.raises(PhaseError, match=f"public.t: a full copy ends in snapshotting, ready or loaded, not {phase}"):
        full_copy_state("public.t", phase)


@pytest.mark.parametrize("phase", list(TablePhase), ids=str)
def test_the_row_round_trips_and_its_status_becomes_a_phase(phase: TablePhase) -> None:
    state = ReplicationState(
        "public.t",
        phase,
        slot="s",
        snapshot_lsn=1,
        applied_lsn=2 if phase is TablePhase.READY else None,
        cursor_value="c",
    )
    before = datetime.now(timezone.utc)
    row = state.as_row()
    assert list(row) == [c.name for c in STATE_COLUMNS]
    assert row["status"] == phase.value and type(row["status"]) is str  # plain text in the row
    assert row["updated_at"].tzinfo is not None and row["updated_at"] >= before  # stamped when written
    back = ReplicationState.from_row(row)
    assert back == state and back.status is phase and back.updated_at == row["updated_at"]
    assert ReplicationState.from_row(dict(row, status=phase.value)).status is phase


def test_a_row_missing_optional_columns_and_an_unknown_status() -> None:
    assert ReplicationState.from_row({"table_name": "public.t", "status": "ready"}) == ReplicationState(
        "public.t", TablePhase.READY
    )
    with pytest.raises(ValueError, match="'done' is not a valid TablePhase"):
        ReplicationState.from_row({"table_name": "public.t", "status": "done"})


def test_the_state_tables_dlt_hints_derive_from_state_columns() -> None:
    hints = _dlt_columns()
    assert [h["name"] for h in hints] == [c.name for c in STATE_COLUMNS]
    for hint, col in zip(hints, STATE_COLUMNS):
        assert hint["data_type"] == col.dlt_type
        assert hint.get("nullable", True) is col.nullable
        assert hint.get("primary_key", False) is col.primary_key
        assert hint.get("timezone", False) is (col.dlt_type == "timestamp")
    assert [h["name"] for h in hints if h.get("primary_key")] == ["table_name"]


def test_the_state_tables_arrow_schema_derives_from_state_columns() -> None:
    schema = _state_schema()
    assert schema.names == [c.name for c in STATE_COLUMNS]
    arrow_of = {"text": pa.string(), "bigint": pa.int64(), "timestamp": pa.timestamp("us", tz="UTC")}
    assert [schema.field(c.name).type for c in STATE_COLUMNS] == [arrow_of[c.dlt_type] for c in STATE_COLUMNS]
    # a state row fits it as it is (how the state table is first written through dlt)
    row = ReplicationState("public.t", TablePhase.READY, slot="s", snapshot_lsn=1, applied_lsn=2).as_row()
    table = pa.Table.from_pylist([row], schema=schema)
    assert ReplicationState.from_row(table.to_pylist()[0]) == ReplicationState.from_row(row)
