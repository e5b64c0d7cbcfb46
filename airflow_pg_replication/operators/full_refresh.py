"""PgFullRefreshOperator: snapshot one table into the destination; for CDC tables at the slot's consistent point."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow_pg_replication.operators.base import PgTableOperator, table_task


class PgFullRefreshOperator(PgTableOperator):
    """Copy a whole table, replacing its destination copy.

    ``mode="cdc"`` (the default): drop and re-create the table's slot with an exported snapshot,
    copy the table under that snapshot and record the slot's consistent LSN with the data, so
    :class:`PgCdcApplyOperator` goes on exactly where the copy ends. ``mode="full_refresh"``:
    copy without a slot. Memory is bounded by ``chunk_bytes``, not by the table's size.
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

    @table_task
    def execute(self, context: Any) -> dict[str, Any]:
        from airflow_pg_replication.sync.snapshot import snapshot_table

        return snapshot_table(
            self.source_hook(), self.target, with_slot=self.mode == "cdc", chunk_bytes=self.chunk_bytes
        )
