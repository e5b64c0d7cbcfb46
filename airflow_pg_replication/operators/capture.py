"""PgCaptureOperator: drain a slot group's slot into the group's change log (see :mod:`.sync.capture`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from airflow.sdk import Asset, AssetAlias, BaseOperator

from airflow_pg_replication.operators.base import BacksOffAfterFailedRuns, failing_fast_when_a_person_must_act
from airflow_pg_replication.registry import names as naming
from airflow_pg_replication.registry.models import DEFAULT_GROUP, default_change_log


def table_changes_asset(group: str, table: str) -> Asset:
    """The Asset a capture updates when ``table`` (schema.table) received changes: schedule a DAG on it."""
    schema, name = naming.parse_table_name(table)
    return Asset(
        name=f"pg_replication.changes.{group}.{schema}.{name}", uri=f"pg-replication://changes/{group}/{schema}/{name}"
    )


def group_changes_alias(group: str) -> AssetAlias:
    """The alias through which a group's capture emits one Asset event per table that received changes."""
    return AssetAlias(name=f"pg_replication.changes.{group}")


class PgCaptureOperator(BacksOffAfterFailedRuns, BaseOperator):
    """The only reader of a slot group's slot: captures its changes into the change log, per table.

    Bounded batches of whole transactions, split by table, written to the change log and durable
    before the slot advances; one capture per group runs at a time (others wait). Emits an Asset
    event (:func:`table_changes_asset`) for each table that received changes. ``tables``: the
    group's registry tables (``schema.table``); a table left out leaves the group's publication
    and its part of the log. Returns ``{group, changes, transactions, batches, tables, lsn, more}``.
    """

    template_fields: Sequence[str] = ("slot_group", "slot", "source_conn_id", "change_log")
    ui_color = "#e4dcf3"

    def __init__(
        self,
        *,
        slot_group: str = DEFAULT_GROUP,
        tables: Sequence[str],
        source_conn_id: str = "pg_source",
        slot: str | None = None,
        change_log: str | None = None,
        change_log_conn_id: str | None = None,
        max_batch_changes: int = 100_000,
        max_run_seconds: float | None = None,
        max_log_bytes: int | None = None,
        on_slot_lost: str = "fail",
        back_off_after_failed_runs: bool = True,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("outlets", [group_changes_alias(slot_group)])
        super().__init__(**kwargs)
        self.slot_group = slot_group
        self.tables = ["{}.{}".format(*naming.parse_table_name(t)) for t in tables]
        self.source_conn_id = source_conn_id
        self.slot = slot or naming.group_slot_name(slot_group)
        self.change_log = change_log
        self.change_log_conn_id = change_log_conn_id
        self.max_batch_changes = max_batch_changes
        self.max_run_seconds = max_run_seconds
        self.max_log_bytes = max_log_bytes
        self.on_slot_lost = on_slot_lost
        self.back_off_after_failed_runs = back_off_after_failed_runs

    def execute(self, context: Any) -> dict[str, Any]:
        from airflow_pg_replication.hooks.replication import PgReplicationHook
        from airflow_pg_replication.operators.change_log_storage import open_change_log
        from airflow_pg_replication.sync import capture

        self.wait_out_failed_runs(context)
        with failing_fast_when_a_person_must_act():
            group = capture.SlotGroupTarget(
                self.slot_group,
                self.slot,
                self.slot,
                tuple(self.tables),
                open_change_log(self.change_log or default_change_log(), self.slot_group, self.change_log_conn_id),
                on_slot_lost=self.on_slot_lost,
            )
            limits: dict[str, Any] = {}
            if self.max_run_seconds is not None:
                limits["max_run_seconds"] = float(self.max_run_seconds)
            if self.max_log_bytes is not None:
                limits["max_log_bytes"] = int(self.max_log_bytes)
            result = capture.capture_changes(
                PgReplicationHook(postgres_conn_id=self.source_conn_id),
                group,
                max_batch_changes=int(self.max_batch_changes),
                **limits,
            )
        events = context.get("outlet_events") if isinstance(context, Mapping) else None
        if events is not None:
            # Every table with changes waiting, not only this run's: a capture that died after the slot
            # advanced and before its events leaves them unannounced otherwise (events are at least once).
            waiting = {t for t in self.tables if t not in result.tables and group.change_log.segments(t)}
            alias = events[group_changes_alias(self.slot_group)]
            for table in sorted({*result.tables, *waiting}):
                alias.add(
                    table_changes_asset(self.slot_group, table),
                    extra={"changes": result.tables.get(table, 0), "lsn": result.lsn},
                )
        return result.as_dict()
