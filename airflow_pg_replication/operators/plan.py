"""The `plan` branch of a CDC table's DAG: snapshot first (or again), or wait for changes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from airflow.sdk import BaseBranchOperator

from airflow_pg_replication.operators.base import (
    BacksOffAfterFailedRuns,
    failing_fast_when_a_person_must_act,
    replicated_table,
)

FULL_REFRESH_TASK = "full_refresh"
WAIT_TASK = "wait_for_changes"


def choose_next_task(
    *,
    table: str,
    source_conn_id: str,
    destination: Mapping[str, Any] | None,
    slot: str | None = None,
    destination_table: str | None = None,
    on_slot_lost: str = "fail",
    params: Mapping[str, Any] | None = None,
    slot_group: str | None = None,
    group_slot: str | None = None,
    change_log: str | None = None,
    change_log_conn_id: str | None = None,
    **_context: Any,
) -> str:
    """The task id to run next: ``full_refresh`` or ``wait_for_changes`` (see :func:`.sync.plan.next_step`)."""
    from airflow_pg_replication.hooks.replication import PgReplicationHook
    from airflow_pg_replication.sync.plan import NextStep, next_step

    t = replicated_table(
        table,
        slot=slot,
        destination_table=destination_table,
        destination=destination,
        slot_group=slot_group,
        group_slot=group_slot,
        change_log=change_log,
        change_log_conn_id=change_log_conn_id,
        in_a_group=True,
    )
    step = next_step(
        PgReplicationHook(postgres_conn_id=source_conn_id),
        t,
        on_slot_lost=on_slot_lost,
        full_refresh_asked=bool(params and params.get("full_refresh")),
    )
    return FULL_REFRESH_TASK if step is NextStep.SNAPSHOT else WAIT_TASK


class PgPlanOperator(BacksOffAfterFailedRuns, BaseBranchOperator):
    """The ``plan`` task: branch to ``full_refresh`` or ``wait_for_changes`` (see :func:`choose_next_task`).

    As the first task of a CDC table's DAG it backs off after failed runs (so a table that keeps
    failing for a reason only a person can fix does not spin under ``@continuous``), and fails
    without retries when a person must act.
    """

    template_fields = ("table", "source_conn_id", "destination", "destination_table", "slot")
    ui_color = "#dbe9f6"

    def __init__(
        self,
        *,
        table: str,
        source_conn_id: str = "pg_source",
        destination: Mapping[str, Any] | None = None,
        slot: str | None = None,
        destination_table: str | None = None,
        on_slot_lost: str = "fail",
        back_off_after_failed_runs: bool = True,
        slot_group: str | None = None,
        group_slot: str | None = None,
        change_log: str | None = None,
        change_log_conn_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.slot_group = slot_group
        self.group_slot = group_slot
        self.change_log = change_log
        self.change_log_conn_id = change_log_conn_id
        self.table = table
        self.source_conn_id = source_conn_id
        self.destination = dict(destination or {})
        self.slot = slot
        self.destination_table = destination_table
        self.on_slot_lost = on_slot_lost
        self.back_off_after_failed_runs = back_off_after_failed_runs

    def choose_branch(self, context: Any) -> str:
        params = context.get("params") if isinstance(context, Mapping) else None
        return choose_next_task(
            table=self.table,
            source_conn_id=self.source_conn_id,
            destination=self.destination,
            slot=self.slot,
            destination_table=self.destination_table,
            on_slot_lost=self.on_slot_lost,
            params=params,
            slot_group=self.slot_group,
            group_slot=self.group_slot,
            change_log=self.change_log,
            change_log_conn_id=self.change_log_conn_id,
        )

    def execute(self, context: Any) -> Any:
        self.wait_out_failed_runs(context)
        with failing_fast_when_a_person_must_act():
            return super().execute(context)
