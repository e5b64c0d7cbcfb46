"""What a CDC table's run does next: take a snapshot (first, or again), or wait for changes."""

from __future__ import annotations

import enum
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from airflow_pg_replication.source.database import SourceDatabase
    from airflow_pg_replication.sync.replicated_table import ReplicatedTable

log = logging.getLogger(__name__)


class NextStep(enum.Enum):
    """The branch a CDC run takes."""

    SNAPSHOT = "snapshot"
    WAIT_FOR_CHANGES = "wait_for_changes"


def next_step(
    source: SourceDatabase, table: ReplicatedTable, *, on_slot_lost: str = "fail", full_refresh_asked: bool = False
) -> NextStep:
    """Say what the run does next, and why in the log.

    Snapshot when asked, when the table has no slot, or when the destination holds no snapshot
    loaded for that slot. An invalidated slot fails with the fix (:class:`.SlotLostError`), or
    with ``on_slot_lost="resync"`` leads to a new snapshot. The destination is only read: under
    a shared lock, so readers of a DuckDB warehouse need not wait.
    """
    from airflow_pg_replication.source.slot_health import judge_slot

    t = table
    if full_refresh_asked:
        log.info("%s: full refresh asked for by the run's full_refresh param", t.qualified_name)
        return NextStep.SNAPSHOT
    with source.connect() as conn:
        info = source.slot_info(conn, t.slot)
    if info is None:
        log.info("%s: no replication slot %s yet: taking a snapshot", t.qualified_name, t.slot)
        return NextStep.SNAPSHOT
    if info.lost:
        if on_slot_lost == "resync":
            log.warning(
                "%s: slot %s was invalidated (wal_status=lost); on_slot_lost=resync: taking a new snapshot",
                t.qualified_name,
                t.slot,
            )
            return NextStep.SNAPSHOT
        judge_slot(info, slot_name=t.slot, table=t.qualified_name, min_lag_bytes=0, max_lag_bytes=2**63 - 1)
    with t.open_destination(read_only=True) as dest:
        state = dest.read_state()
    if state is None or not state.applies_changes or state.slot != t.slot:
        log.info(
            "%s: no snapshot loaded for slot %s in %s (state: %s): taking a snapshot",
            t.qualified_name,
            t.slot,
            dest.describe(),
            state.status if state else "none",
        )
        return NextStep.SNAPSHOT
    if t.change_log is not None and _fell_behind_the_log(t, state.applied_lsn, on_slot_lost):
        return NextStep.SNAPSHOT
    log.info(
        "%s: snapshot loaded, slot %s healthy (lag %s bytes): waiting for changes",
        t.qualified_name,
        t.slot,
        f"{info.lag_bytes or 0:,}",
    )
    return NextStep.WAIT_FOR_CHANGES


def _fell_behind_the_log(table: ReplicatedTable, applied_lsn: int | None, on_slot_lost: str) -> bool:
    """A group's table whose changes the capture dropped (it fell too far behind, or the group's slot was
    lost): a new snapshot with ``on_slot_lost: resync``, else a failure with the fix."""
    from airflow_pg_replication.changelog.resync_markers import ResyncRequiredError

    assert table.change_log is not None
    marker = table.change_log.resync_marker(table.qualified_name)
    if marker is None or not marker.leaves_gap_after(applied_lsn):
        return False
    if on_slot_lost == "resync":
        log.warning(
            "%s: its pending changes were dropped from the change log (%s); on_slot_lost=resync: taking a new snapshot",
            table.qualified_name,
            marker.reason,
        )
        return True
    raise ResyncRequiredError(table.qualified_name, table.change_log.describe(), marker)
