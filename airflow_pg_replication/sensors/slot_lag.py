"""PgSlotLagSensor: wait until a table's slot holds changes of that table; fail loudly on a lost or overfull slot."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from airflow.sdk import conf
from airflow.sdk.bases.sensor import BaseSensorOperator

from airflow_pg_replication.operators.base import replicated_table


class PgSlotLagSensor(BaseSensorOperator):
    """Succeed when the table's slot holds at least ``min_lag_bytes`` of the table's own change data.

    WAL of other tables and of PostgreSQL itself never counts: each poke peeks the slot with the
    table's publication (see :mod:`airflow_pg_replication.source.table_changes`), and when it found no
    change of the table it advances the slot past that WAL, so later pokes do not count it again.
    Fails (not skips) when the slot is missing, invalidated (``wal_status = lost``) or holds
    more than ``max_lag_bytes`` of WAL. With ``deferrable=True`` the wait runs in the triggerer.
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
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.table = table
        self.source_conn_id = source_conn_id
        self.slot = slot
        self.min_lag_bytes = min_lag_bytes
        self.max_lag_bytes = max_lag_bytes
        self.deferrable = deferrable

    @property
    def slot_name(self) -> str:
        return replicated_table(self.table, slot=self.slot).slot

    @property
    def publication(self) -> str:
        return replicated_table(self.table, slot=self.slot).publication

    def poke(self, context: Any) -> bool:
        from airflow_pg_replication.hooks.replication import PgReplicationHook
        from airflow_pg_replication.source.table_changes import poke_sync
        from airflow_pg_replication.triggers.slot_lag import poke_target

        target = poke_target(
            self.table,
            slot=self.slot_name,
            publication=self.publication,
            min_lag_bytes=self.min_lag_bytes,
            max_lag_bytes=self.max_lag_bytes,
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

        self.defer(
            trigger=SlotLagTrigger(
                source_conn_id=self.source_conn_id,
                slot=self.slot_name,
                table=self.table,
                min_lag_bytes=self.min_lag_bytes,
                max_lag_bytes=self.max_lag_bytes,
                poke_interval=float(self.poke_interval),
                publication=self.publication,
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
