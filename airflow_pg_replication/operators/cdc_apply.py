"""PgCdcApplyOperator: apply a table's changes from its slot, batch by batch, each committed then acknowledged."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow_pg_replication.operators.base import PgTableOperator, table_task
from airflow_pg_replication.sync.cdc_run import MAX_RUN_SECONDS


class PgCdcApplyOperator(PgTableOperator):
    """Apply the slot's changes up to the WAL position flushed at the run's start, batch after batch.

    A batch is at most about ``max_batch_changes`` changes, whole transactions. Each batch is
    committed, then acknowledged, before the next is read: the destination commits the batch's
    data with its state row (the last applied commit LSN), and only then does the slot advance.
    A crash anywhere re-reads at most the batch in progress, and transactions at or below the
    stored LSN are skipped, so nothing is lost and nothing is applied twice.

    The run stops at that WAL position (it never chases a growing backlog), or when
    ``max_run_seconds`` (default 600: two periods of the default ``*/5`` schedule) have passed at
    the end of a batch; a batch in progress is finished, never cut. Then ``more`` is true and the
    next run goes on. See :mod:`airflow_pg_replication.sync.cdc_run`.
    """

    template_fields: Sequence[str] = (*PgTableOperator.template_fields, "max_batch_changes", "max_run_seconds")

    def __init__(
        self,
        *,
        max_batch_changes: int = 100_000,
        max_lag_bytes: int | None = None,
        max_rows_in_memory: int = 200_000,
        max_run_seconds: float = MAX_RUN_SECONDS,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.max_batch_changes = max_batch_changes
        self.max_rows_in_memory = max_rows_in_memory
        self.max_lag_bytes = max_lag_bytes
        self.max_run_seconds = max_run_seconds

    @table_task
    def execute(self, context: Any) -> dict[str, Any]:
        from airflow_pg_replication.sync.cdc_run import apply_changes

        return apply_changes(
            self.source_hook(),
            self.target,
            max_batch_changes=int(self.max_batch_changes),
            max_rows_in_memory=self.max_rows_in_memory,
            max_lag_bytes=self.max_lag_bytes,
            max_run_seconds=float(self.max_run_seconds),
        )
