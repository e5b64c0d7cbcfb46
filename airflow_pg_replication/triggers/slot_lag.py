"""SlotLagTrigger: the deferrable wait of PgSlotLagSensor, poking the table's slot from the triggerer (async)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

if TYPE_CHECKING:
    from airflow_pg_replication.source.table_changes import PokeResult, PokeTarget


class SlotLagTrigger(BaseTrigger):
    """Poke every ``poke_interval`` s; ``ready`` when the table's own changes reach ``min_lag_bytes``.

    The same poke as the sensor's (:func:`airflow_pg_replication.source.table_changes.poke_async`):
    other tables' WAL never counts and is advanced past. ``error`` on a lost, missing or overfull
    slot (or an unreachable source); a slot busy with ``apply_changes`` is looked at again later.
    """

    def __init__(
        self,
        *,
        source_conn_id: str,
        slot: str,
        table: str,
        min_lag_bytes: int,
        max_lag_bytes: int,
        poke_interval: float = 30.0,
        publication: str | None = None,
        slot_group: str | None = None,
        change_log: str | None = None,
        change_log_conn_id: str | None = None,
    ) -> None:
        super().__init__()
        self.source_conn_id = source_conn_id
        self.slot = slot
        self.table = table
        self.min_lag_bytes = min_lag_bytes
        self.max_lag_bytes = max_lag_bytes
        self.poke_interval = poke_interval
        # Before publications were passed, the trigger's slot name was also the publication's
        # (TableTarget: an explicit slot names both).
        self.publication = publication or slot
        self.slot_group = slot_group  # a table of a slot group: its changes may wait in the change log
        self.change_log = change_log
        self.change_log_conn_id = change_log_conn_id

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "source_conn_id": self.source_conn_id,
                "slot": self.slot,
                "table": self.table,
                "min_lag_bytes": self.min_lag_bytes,
                "max_lag_bytes": self.max_lag_bytes,
                "poke_interval": self.poke_interval,
                "publication": self.publication,
                "slot_group": self.slot_group,
                "change_log": self.change_log,
                "change_log_conn_id": self.change_log_conn_id,
            },
        )

    async def _look(self) -> PokeResult:
        import psycopg
        from asgiref.sync import sync_to_async

        from airflow_pg_replication.hooks.replication import SESSION_OPTIONS, PgReplicationHook
        from airflow_pg_replication.source.table_changes import poke_async

        if self.slot_group is not None:
            from airflow_pg_replication.operators.base import replicated_table
            from airflow_pg_replication.source.table_changes import PokeResult

            table = replicated_table(
                self.table,
                slot_group=self.slot_group,
                group_slot=self.slot,
                change_log=self.change_log,
                change_log_conn_id=self.change_log_conn_id,
                in_a_group=True,
            )
            waiting = await asyncio.to_thread(changes_in_the_log, table)  # listing a bucket may take a while
            if waiting is not None:
                return PokeResult(True, waiting)
        target = poke_target(
            self.table,
            slot=self.slot,
            publication=self.publication,
            min_lag_bytes=self.min_lag_bytes,
            max_lag_bytes=self.max_lag_bytes,
            may_advance=self.slot_group is None,
        )
        hook = PgReplicationHook(postgres_conn_id=self.source_conn_id)
        params = await sync_to_async(hook.connect_params)()
        async with await psycopg.AsyncConnection.connect(**params, options=SESSION_OPTIONS, autocommit=True) as conn:
            return await poke_async(conn, target)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        while True:
            try:
                result = await self._look()
            except Exception as exc:  # a lost slot, an overfull one, or an unreachable source
                yield TriggerEvent({"status": "error", "message": str(exc)})
                return
            (self.log.warning if result.warn else self.log.info)("%s", result.message)
            if result.ready:
                yield TriggerEvent({"status": "ready", "message": result.message})
                return
            await asyncio.sleep(self.poke_interval)


def poke_target(
    table: str, *, slot: str, publication: str, min_lag_bytes: int, max_lag_bytes: int, may_advance: bool = True
) -> PokeTarget:
    """The :class:`~airflow_pg_replication.source.table_changes.PokeTarget` of ``table`` (``schema.table``
    or ``table``, meaning schema public)."""
    from airflow_pg_replication.registry.names import parse_table_name
    from airflow_pg_replication.source.table_changes import PokeTarget

    schema, name = parse_table_name(table)
    return PokeTarget(schema, name, slot, publication, min_lag_bytes, max_lag_bytes, may_advance)


def changes_in_the_log(table: Any) -> str | None:
    """For a table of a slot group: what waits for it in the change log (a message), or None."""
    if table.change_log is None:
        return None
    segments = table.change_log.segments(table.qualified_name)
    if segments:
        return (
            f"{table.qualified_name}: {len(segments)} segment(s), {sum(s.size for s in segments) / 1e6:,.1f} MB of "
            f"the table's changes wait in the change log of slot group {table.group}: firing"
        )
    marker = table.change_log.resync_marker(table.qualified_name)
    if marker is not None:
        return (
            f"{table.qualified_name}: the change log of slot group {table.group} dropped its changes "
            f"({marker.reason}): firing, so the run resyncs or says how"
        )
    return None
