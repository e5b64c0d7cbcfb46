"""PgFullRefreshOperator: snapshot one table into the destination; for CDC tables at the slot's consistent point."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow_pg_replication.operators.base import PgTableOperator, table_task

if TYPE_CHECKING:
    from airflow_pg_replication.sync.table_copy import CopyOptions

#: A worker's defaults for the operator's knobs of the same names (MB, MB, seconds).
RANGE_MB_ENV = "PG_REPLICATION_SNAPSHOT_RANGE_MB"
MIN_RANGED_MB_ENV = "PG_REPLICATION_SNAPSHOT_MIN_RANGED_MB"
HOLD_SECONDS_ENV = "PG_REPLICATION_SNAPSHOT_HOLD_SECONDS"


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

    A table of ``snapshot_min_ranged_mb`` or more of heap (default 256) is read in page ranges of
    ``snapshot_range_mb`` (default 64) on ``snapshot_parallelism`` connections at once (default:
    half the machine's CPUs, 1 to 4) under one snapshot. For CDC into DuckDB that copy is
    resumable: a keeper process holds the snapshot for ``snapshot_hold_seconds`` (default 900)
    after the task dies, and the retry goes on from the last committed rows. The environment
    variables ``PG_REPLICATION_SNAPSHOT_RANGE_MB``, ``…_MIN_RANGED_MB`` and ``…_HOLD_SECONDS`` set
    a worker's defaults for those three.
    """

    template_fields: Sequence[str] = (*PgTableOperator.template_fields, "mode", "snapshot_parallelism")

    def __init__(
        self,
        *,
        mode: str = "cdc",
        chunk_bytes: int = 8 << 20,
        snapshot_parallelism: int | None = None,
        snapshot_range_mb: float | None = None,
        snapshot_min_ranged_mb: float | None = None,
        snapshot_hold_seconds: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if mode not in ("cdc", "full_refresh"):
            raise ValueError(
                f"PgFullRefreshOperator mode must be 'cdc' or 'full_refresh', not {mode!r} "
                "(incremental tables use PgIncrementalOperator)"
            )
        self.mode = mode
        self.chunk_bytes = chunk_bytes
        self.snapshot_parallelism = snapshot_parallelism
        self.snapshot_range_mb = snapshot_range_mb
        self.snapshot_min_ranged_mb = snapshot_min_ranged_mb
        self.snapshot_hold_seconds = snapshot_hold_seconds

    def copy_options(self) -> CopyOptions:
        """How the snapshot is read (see :class:`.sync.table_copy.CopyOptions`)."""
        from airflow_pg_replication.sync.table_copy import CopyOptions

        def pages(mb: float | None) -> int | None:
            return None if mb is None else max(1, int(float(mb) * (1 << 20) / 8192))  # 8 kB pages

        def setting(value: float | None, env: str) -> float | None:
            if value is not None:
                return float(value)
            text = os.environ.get(env)
            try:
                return float(text) if text else None
            except ValueError:
                raise ValueError(f"{env}={text!r} is not a number of MB (or seconds): unset it or give one") from None

        return CopyOptions(
            chunk_bytes=int(self.chunk_bytes),
            parallelism=int(self.snapshot_parallelism) if self.snapshot_parallelism else None,
            range_pages=pages(setting(self.snapshot_range_mb, RANGE_MB_ENV)),
            min_ranged_pages=pages(setting(self.snapshot_min_ranged_mb, MIN_RANGED_MB_ENV)),
            hold_seconds=setting(self.snapshot_hold_seconds, HOLD_SECONDS_ENV),
        )

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
                full_refresh_asked=bool(params and params.get("full_refresh")),
                options=self.copy_options(),
            )
        from airflow_pg_replication.sync.snapshot import snapshot_table

        return snapshot_table(self.source_hook(), target, with_slot=self.mode == "cdc", options=self.copy_options())
