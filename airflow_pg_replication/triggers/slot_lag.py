"""SlotLagTrigger: the deferrable wait of PgSlotLagSensor, polling the slot from the triggerer (async)."""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

from airflow.triggers.base import BaseTrigger, TriggerEvent


class SlotLagTrigger(BaseTrigger):
    """Poll a slot every ``poke_interval`` s; fire ``ready`` on lag, ``error`` on a lost or overfull slot."""

    def __init__(self, *, source_conn_id: str, slot: str, table: str, min_lag_bytes: int, max_lag_bytes: int,
                 poke_interval: float = 30.0) -> None:
        super().__init__()
        self.source_conn_id = source_conn_id
        self.slot = slot
        self.table = table
        self.min_lag_bytes = min_lag_bytes
        self.max_lag_bytes = max_lag_bytes
        self.poke_interval = poke_interval

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {"source_conn_id": self.source_conn_id, "slot": self.slot, "table": self.table,
             "min_lag_bytes": self.min_lag_bytes, "max_lag_bytes": self.max_lag_bytes,
             "poke_interval": self.poke_interval},
        )

    async def _look(self) -> Any:
        import psycopg
        from asgiref.sync import sync_to_async

        from airflow_pg_replication.hooks.replication import SESSION_OPTIONS, PgReplicationHook
        from airflow_pg_replication.source_catalog import read_slot_info_async

        hook = PgReplicationHook(postgres_conn_id=self.source_conn_id)
        params = await sync_to_async(hook.connect_params)()
        async with await psycopg.AsyncConnection.connect(**params, options=SESSION_OPTIONS, autocommit=True) as conn:
            return await read_slot_info_async(conn, self.slot)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from airflow_pg_replication.slot_health import judge_slot

        while True:
            try:
                slot = await self._look()
                verdict = judge_slot(slot, slot_name=self.slot, table=self.table,
                                     min_lag_bytes=self.min_lag_bytes, max_lag_bytes=self.max_lag_bytes)
            except Exception as exc:  # a lost slot, an overfull one, or an unreachable source
                yield TriggerEvent({"status": "error", "message": str(exc)})
                return
            (self.log.warning if verdict.warn else self.log.info)("%s", verdict.message)
            if verdict.ready:
                yield TriggerEvent({"status": "ready", "message": verdict.message})
                return
            await asyncio.sleep(self.poke_interval)
