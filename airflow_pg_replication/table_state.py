"""Where a table's copy stands: an explicit phase machine, and the state row kept with the data (stated once).

::

    (none) ──► snapshotting ──► ready(applied_lsn) ──► ready(applied_lsn') ...
                    ▲   │            │
                    │   ▼            ▼
                    └── resync ◄─────┘        (slot lost, fell behind the change log, asked for)
    (none) ──► loaded(cursor_value)           (full_refresh and incremental tables)
    (none) ──► adding ──► snapshotting        (a table joining a slot group's publication)

A full copy (``snapshotting``, or ``loaded`` for a table without CDC) may start from any phase: a
person may always ask for one, and a table may change mode. Everything else follows the arrows. The row is written
only after the data it describes has committed (with it, where the destination allows).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any


class TablePhase(str, enum.Enum):
    """The phase of one table's copy."""

    ADDING = "adding"  # joining its slot group's publication; no copy yet
    SNAPSHOTTING = "snapshotting"  # a snapshot is being copied: the copy is not usable
    READY = "ready"  # snapshot loaded; CDC applies transactions committed after applied_lsn
    RESYNC = "resync"  # the copy can no longer follow its changes: a new snapshot is needed
    LOADED = "loaded"  # full_refresh / incremental: loaded, no CDC

    def __str__(self) -> str:
        return self.value


_FULL_COPY = frozenset({TablePhase.SNAPSHOTTING, TablePhase.LOADED})  # reachable from every phase

#: The arrows of the machine (a full copy may always start, see above).
TRANSITIONS: dict[TablePhase | None, frozenset[TablePhase]] = {
    None: _FULL_COPY | {TablePhase.ADDING},
    TablePhase.ADDING: _FULL_COPY | {TablePhase.ADDING, TablePhase.RESYNC},
    TablePhase.SNAPSHOTTING: _FULL_COPY | {TablePhase.READY, TablePhase.RESYNC},
    TablePhase.READY: _FULL_COPY | {TablePhase.READY, TablePhase.RESYNC, TablePhase.ADDING},
    TablePhase.RESYNC: _FULL_COPY | {TablePhase.RESYNC, TablePhase.ADDING},
    TablePhase.LOADED: _FULL_COPY | {TablePhase.ADDING},
}


class PhaseError(ValueError):
    """A move the phase machine does not have (a bug, or a state row written by hand)."""


@dataclass(frozen=True)
class StateColumn:
    """One column of the state table: its name, its type (as dlt names it) and whether it is the key."""

    name: str
    dlt_type: str
    nullable: bool = True
    primary_key: bool = False


#: The state table's columns, in order: the one statement of its schema (dlt hints and Arrow derive from it).
STATE_COLUMNS: tuple[StateColumn, ...] = (
    StateColumn("table_name", "text", nullable=False, primary_key=True),
    StateColumn("status", "text", nullable=False),
    StateColumn("slot", "text"),
    StateColumn("snapshot_lsn", "bigint"),
    StateColumn("applied_lsn", "bigint"),
    StateColumn("cursor_value", "text"),
    StateColumn("updated_at", "timestamp"),
)


@dataclass
class ReplicationState:
    """One table's state row: its phase, its slot, the LSNs its copy is at, its incremental mark."""

    table_name: str  # source schema.table
    status: TablePhase
    slot: str | None = None
    snapshot_lsn: int | None = None  # the consistent point the snapshot was read at
    applied_lsn: int | None = None  # commit LSN of the last applied transaction
    cursor_value: str | None = None  # incremental: the high-water mark, as text
    updated_at: datetime | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        self.status = TablePhase(self.status)

    @property
    def applies_changes(self) -> bool:
        """True when CDC may apply changes on top of this copy."""
        return self.status is TablePhase.READY

    def moved_to(self, phase: TablePhase, **changes: Any) -> ReplicationState:
        """This state in ``phase`` (with ``changes``); raises :class:`PhaseError` for a move the machine lacks."""
        check_move(self.status, phase, self.table_name)
        return replace(self, status=phase, **changes)

    def as_row(self) -> dict[str, Any]:
        """The row to write, in :data:`STATE_COLUMNS` order, stamped with the time."""
        row = {c.name: getattr(self, c.name) for c in STATE_COLUMNS}
        row["status"] = self.status.value
        row["updated_at"] = datetime.now(timezone.utc)
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> ReplicationState:
        values: dict[str, Any] = {c.name: row.get(c.name) for c in STATE_COLUMNS}  # a row read back: as written
        return cls(**values)


def check_move(before: TablePhase | None, after: TablePhase, table_name: str = "the table") -> None:
    """Raise :class:`PhaseError` unless the machine has the move ``before`` -> ``after``."""
    if after not in TRANSITIONS[before]:
        raise PhaseError(
            f"{table_name}: cannot move from {before or 'no state'} to {after}; the phases are "
            f"{' -> '.join(p.value for p in TablePhase)} (see airflow_pg_replication/table_state.py)"
        )


def full_copy_state(table_name: str, phase: TablePhase, **fields: Any) -> ReplicationState:
    """The state a full copy writes, whatever was there before (``snapshotting``, ``ready`` after a
    snapshot, or ``loaded``)."""
    if phase is TablePhase.READY:
        return ReplicationState(table_name, TablePhase.SNAPSHOTTING, **fields).moved_to(phase)
    if phase not in _FULL_COPY:
        raise PhaseError(f"{table_name}: a full copy ends in snapshotting, ready or loaded, not {phase}")
    return ReplicationState(table_name, phase, **fields)
