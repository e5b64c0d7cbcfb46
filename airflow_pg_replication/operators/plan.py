"""The `plan` branch of a CDC table's DAG: snapshot first (or again), or wait for changes."""

from __future__ import annotations

import logging
from typing import Any, Mapping

from airflow.sdk import BaseBranchOperator

from airflow_pg_replication.operators.base import (
    BacksOffAfterFailedRuns,
    TableTarget,
    failing_fast_when_a_person_must_act,
    resolved_destination,
)

log = logging.getLogger(__name__)

FULL_REFRESH_TASK = "full_refresh"
WAIT_TASK = "wait_for_changes"


def choose_next_task(
    *, table: str, source_conn_id: str, destination: Mapping[str, Any] | None, slot: str | None = None,
    destination_table: str | None = None, on_slot_lost: str = "fail", params: Mapping[str, Any] | None = None,
    **_context: Any,
) -> str:
    """Return the task id to run next, and say why in the log.

    Snapshot when asked (``full_refresh`` param), when the table has no slot, or when the
    destination holds no snapshot loaded for that slot. An invalidated slot fails with the fix,
    or with ``on_slot_lost="resync"`` leads to a new snapshot.
    """
    from airflow_pg_replication.hooks.replication import PgReplicationHook
    from airflow_pg_replication.destination.factory import table_destination
    from airflow_pg_replication.source.slot_health import judge_slot

    t = TableTarget.build(table, slot=slot, destination_table=destination_table)
    if params and params.get("full_refresh"):
        log.info("%s: full refresh asked for by the run's full_refresh param", t.qualified_name)
        return FULL_REFRESH_TASK
    hook = PgReplicationHook(postgres_conn_id=source_conn_id)
    with hook.connect() as conn:
        info = hook.slot_info(conn, t.slot)
    if info is None:
        log.info("%s: no replication slot %s yet: taking a snapshot", t.qualified_name, t.slot)
        return FULL_REFRESH_TASK
    if info.lost:
        if on_slot_lost == "resync":
            log.warning("%s: slot %s was invalidated (wal_status=lost); on_slot_lost=resync: taking a new snapshot",
                        t.qualified_name, t.slot)
            return FULL_REFRESH_TASK
        judge_slot(info, slot_name=t.slot, table=t.qualified_name, min_lag_bytes=0, max_lag_bytes=2**63 - 1)
    # read-only, under the shared lock: one small query, and readers of the warehouse need not wait
    dest = table_destination(resolved_destination(destination), table_name=t.qualified_name, destination_table=t.destination_table,
                            pipeline_name=t.pipeline_name, read_only=True)
    with dest:
        state = dest.read_state()
    if state is None or state.status != "ready" or state.slot != t.slot:
        log.info("%s: no snapshot loaded for slot %s in %s (state: %s): taking a snapshot", t.qualified_name,
                 t.slot, dest.describe(), state.status if state else "none")
        return FULL_REFRESH_TASK
    log.info("%s: snapshot loaded, slot %s healthy (lag %s bytes): waiting for changes", t.qualified_name,
             t.slot, f"{info.lag_bytes or 0:,}")
    return WAIT_TASK


class PgPlanOperator(BacksOffAfterFailedRuns, BaseBranchOperator):
    """The ``plan`` task: branch to ``full_refresh`` or ``wait_for_changes`` (see :func:`choose_next_task`).

    As the first task of a CDC table's DAG it backs off after failed runs (so a table that keeps
    failing for a reason only a person can fix does not spin under ``@continuous``), and fails
    without retries when a person must act.
    """

    template_fields = ("table", "source_conn_id", "destination", "destination_table", "slot")
    ui_color = "#dbe9f6"

    def __init__(self, *, table: str, source_conn_id: str = "pg_source", destination: Mapping[str, Any] | None = None,
                 slot: str | None = None, destination_table: str | None = None, on_slot_lost: str = "fail",
                 back_off_after_failed_runs: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.table = table
        self.source_conn_id = source_conn_id
        self.destination = dict(destination or {})
        self.slot = slot
        self.destination_table = destination_table
        self.on_slot_lost = on_slot_lost
        self.back_off_after_failed_runs = back_off_after_failed_runs

    def choose_branch(self, context: Any) -> str:
        params = context.get("params") if isinstance(context, Mapping) else None
        return choose_next_task(table=self.table, source_conn_id=self.source_conn_id, destination=self.destination,
                                slot=self.slot, destination_table=self.destination_table,
                                on_slot_lost=self.on_slot_lost, params=params)

    def execute(self, context: Any) -> Any:
        self.wait_out_failed_runs(context)
        with failing_fast_when_a_person_must_act():
            return super().execute(context)
