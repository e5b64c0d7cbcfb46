"""PgFullRefreshOperator: snapshot one table into the destination; for CDC tables at the slot's consistent point."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from airflow_pg_replication.operators.base import PgTableOperator, table_task


class PgFullRefreshOperator(PgTableOperator):
    """Copy a whole table, replacing its destination copy.

    ``mode="cdc"`` (the default), a table of a slot group (no ``slot`` given): join the group
    exactly: copy under a temporary slot's snapshot and apply the group's change log from its
    consistent point on, or move from the table's old dedicated slot without a copy (see
    :mod:`airflow_pg_replication.sync.group_join`); the group's slot is never dropped. With a
    dedicated ``slot``: drop and re-create it with an exported snapshot, copy under it, and record
    its consistent point with the data. ``mode="full_refresh"``: copy without a slot. Either way
    :class:`PgCdcApplyOperator` goes on exactly where the copy ends. Memory is bounded by
    ``chunk_bytes``, not by the table's size.
    """

    template_fields: Sequence[str] = (*PgTableOperator.template_fields, "mode")

    def __init__(self, *, mode: str = "cdc", chunk_bytes: int = 8 << 20, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if mode not in ("cdc", "full_refresh"):
            raise ValueError(
                f"PgFullRefreshOperator mode must be 'cdc' or 'full_refresh', not {mode!r} "
                "(incremental tables use PgIncrementalOperator)"
            )
        self.mode = mode
        self.chunk_bytes = chunk_bytes

    @property
    def uses_a_slot(self) -> bool:  # type: ignore[override]
        return self.mode == "cdc"

    @table_task
    def execute(self, context: Any) -> dict[str, Any]:
        target = self.target
        if target.group is not None:
            from airflow_pg_replication.sync.group_join import join_group

            params = context.get("params") if isinstance(context, Mapping) else None
            return join_group(
                self.source_hook(),
                target,
                chunk_bytes=self.chunk_bytes,
                full_refresh_asked=bool(params and params.get("full_refresh")),
            )
        from airflow_pg_replication.sync.snapshot import snapshot_table

        return snapshot_table(self.source_hook(), target, with_slot=self.mode == "cdc", chunk_bytes=self.chunk_bytes)
