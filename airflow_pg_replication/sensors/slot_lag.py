"""PgSlotLagSensor: wait until a table's slot holds changes; fail loudly when the slot is lost or overfull."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Sequence

from airflow.sdk.bases.sensor import BaseSensorOperator

from airflow_pg_replication.operators.base import TableTarget


class PgSlotLagSensor(BaseSensorOperator):
    """Succeed when the table's slot holds at least ``min_lag_bytes`` of WAL not yet applied.

    Fails (not skips) when the slot is missing, invalidated (``wal_status = lost``) or holds more
    than ``max_lag_bytes``. With ``deferrable=True`` the wait runs in the triggerer.
    """

    template_fields: Sequence[str] = ("table", "source_conn_id", "slot")
    ui_color = "#f6e7c1"

    def __init__(
        self, *, table: str, source_conn_id: str = "pg_source", slot: str | None = None,
        min_lag_bytes: int = 1, max_lag_bytes: int = 10 * 1024**3, deferrable: bool = False, **kwargs: Any,
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
        return TableTarget.build(self.table, slot=self.slot).slot

    def poke(self, context: Any) -> bool:
        from airflow_pg_replication.hooks.replication import PgReplicationHook
        from airflow_pg_replication.slot_health import judge_slot

        hook = PgReplicationHook(postgres_conn_id=self.source_conn_id)
        with hook.connect() as conn:
            slot = hook.slot_info(conn, self.slot_name)
        verdict = judge_slot(slot, slot_name=self.slot_name, table=self.table,
                             min_lag_bytes=self.min_lag_bytes, max_lag_bytes=self.max_lag_bytes)
        (self.log.warning if verdict.warn else self.log.info)(
            "%s; %s", verdict.message,
            "changes waiting" if verdict.ready else f"waiting for at least {self.min_lag_bytes:,} bytes")
        return verdict.ready

    def execute(self, context: Any) -> Any:
        if not self.deferrable:
            return super().execute(context)
        if self.poke(context):
            return None
        from airflow_pg_replication.triggers.slot_lag import SlotLagTrigger

        self.defer(
            trigger=SlotLagTrigger(
                source_conn_id=self.source_conn_id, slot=self.slot_name, table=self.table,
                min_lag_bytes=self.min_lag_bytes, max_lag_bytes=self.max_lag_bytes,
                poke_interval=float(self.poke_interval),
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
