"""PgSlotLagSensor: wait until a table's slot holds changes of that table; fail loudly on a lost or overfull slot."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from airflow.sdk import conf
from airflow.sdk.bases.sensor import BaseSensorOperator

from airflow_pg_replication.operators.base import replicated_table


class PgSlotLagSensor(BaseSensorOperator):
    """Succeed when at least ``min_lag_bytes`` of the table's own change data waits to be applied.

    WAL of other tables and of PostgreSQL itself never counts. A table with a dedicated slot:
    each poke peeks the slot with the table's publication (see
    :mod:`airflow_pg_replication.source.table_changes`), and when it found no change of the table it
    advances the slot past that WAL, so later pokes do not count it again. A table of a slot
    group: it fires when the group's change log holds segments of the table, or when the group's
    slot holds changes of the table (peeked, never advanced: the capture owns the slot). Fails
    (not skips) when the slot is missing, invalidated (``wal_status = lost``) or holds more than
    ``max_lag_bytes`` of WAL. With ``deferrable=True`` the wait runs in the triggerer.
    """

    template_fields: Sequence[str] = ("table", "source_conn_id", "slot")
    ui_color = "#f6e7c1"

    def __init__(
        self,
        *,
        table: str,
        source_conn_id: str = "pg_source",
        slot: str | None = None,
        min_lag_bytes: int = 1,
        max_lag_bytes: int = 10 * 1024**3,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        slot_group: str | None = None,
        group_slot: str | None = None,
        change_log: str | None = None,
        change_log_conn_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.table = table
        self.source_conn_id = source_conn_id
        self.slot = slot
        self.min_lag_bytes = min_lag_bytes
        self.max_lag_bytes = max_lag_bytes
        self.deferrable = deferrable
        self.slot_group = slot_group
        self.group_slot = group_slot
        self.change_log = change_log
        self.change_log_conn_id = change_log_conn_id

    def _target(self) -> Any:
        return replicated_table(
            self.table,
            slot=self.slot,
            slot_group=self.slot_group,
            group_slot=self.group_slot,
            change_log=self.change_log,
            change_log_conn_id=self.change_log_conn_id,
            in_a_group=True,
        )

    @property
    def slot_name(self) -> str:
        return self._target().slot

    @property
    def publication(self) -> str:
        return self._target().publication

    def poke(self, context: Any) -> bool:
        from airflow_pg_replication.hooks.replication import PgReplicationHook
        from airflow_pg_replication.source.table_changes import poke_sync
        from airflow_pg_replication.triggers.slot_lag import changes_in_the_log, poke_target

        table = self._target()
        waiting = changes_in_the_log(table)
        if waiting is not None:
            self.log.info("%s", waiting)
            return True
        target = poke_target(
            self.table,
            slot=table.slot,
            publication=table.publication,
            min_lag_bytes=self.min_lag_bytes,
            max_lag_bytes=self.max_lag_bytes,
            may_advance=table.group is None,
        )
        hook = PgReplicationHook(postgres_conn_id=self.source_conn_id)
        with hook.connect() as conn:
            result = poke_sync(conn, target)
        (self.log.warning if result.warn else self.log.info)("%s", result.message)
        return result.ready

    def execute(self, context: Any) -> Any:
        if not self.deferrable:
            return super().execute(context)
        if self.poke(context):
            return None
        from airflow_pg_replication.triggers.slot_lag import SlotLagTrigger

        table = self._target()
        self.defer(
            trigger=SlotLagTrigger(
                source_conn_id=self.source_conn_id,
                slot=table.slot,
                table=self.table,
                min_lag_bytes=self.min_lag_bytes,
                max_lag_bytes=self.max_lag_bytes,
                poke_interval=float(self.poke_interval),
                publication=table.publication,
                slot_group=table.group,
                change_log=self.change_log,
                change_log_conn_id=self.change_log_conn_id,
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=self.timeout),
        )

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> None:
        """Resume after the trigger: succeed on lag, fail with the trigger's message otherwise."""
        from airflow_pg_replication.errors import ReplicationError

        event = event or {}
        if event.get("status") != "ready":
            raise ReplicationError(event.get("message") or f"slot {self.slot_name} check failed")
        self.log.info("%s", event.get("message"))
