"""PgReconcileOperator: compare a table's source and destination copies at a known LSN (see :mod:`.sync.reconcile`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow_pg_replication.operators.base import PgTableOperator, table_task


class PgReconcileOperator(PgTableOperator):
    """Compare source and destination row by row (count + content hash per key range) at a known LSN.

    Returns ``{"table", "rows", "lsn", "ranges", "mismatched_ranges", "ok", ...}``. When the copies
    differ it fails (no retries) naming the differing key ranges and, for small ranges, the
    differing keys (with ``fail_on_mismatch=False`` it returns ``ok: False`` instead). For CDC
    tables the comparison only runs when the destination has applied every change up to the
    source snapshot; otherwise the task is skipped (``when_behind="skip"``) or fails (``"fail"``).
    """

    template_fields: Sequence[str] = (*PgTableOperator.template_fields, "ranges", "when_behind")
    ui_color = "#e8f4d9"

    def __init__(
        self,
        *,
        ranges: int = 16,
        when_behind: str = "skip",
        detail_rows: int = 1000,
        fail_on_mismatch: bool = True,
        max_pending_scan: int = 100_000,
        chunk_rows: int = 50_000,
        chunk_bytes: int = 4 << 20,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if when_behind not in ("skip", "fail"):
            raise ValueError(f"when_behind must be 'skip' or 'fail', not {when_behind!r}")
        self.ranges = ranges
        self.when_behind = when_behind
        self.detail_rows = detail_rows
        self.fail_on_mismatch = fail_on_mismatch
        self.max_pending_scan = max_pending_scan
        self.chunk_rows = chunk_rows
        self.chunk_bytes = chunk_bytes

    @table_task
    def execute(self, context: Any) -> dict[str, Any]:
        from airflow_pg_replication.sync.reconcile import DestinationBehind, Reconciliation

        reconciliation = Reconciliation(
            self.source_hook(),
            self.target,
            ranges=self.ranges,
            detail_rows=self.detail_rows,
            fail_on_mismatch=self.fail_on_mismatch,
            max_pending_scan=self.max_pending_scan,
            chunk_rows=self.chunk_rows,
            chunk_bytes=self.chunk_bytes,
        )
        try:
            return reconciliation.run()
        except DestinationBehind as exc:
            if self.when_behind == "fail":
                raise
            from airflow.sdk.exceptions import AirflowSkipException

            raise AirflowSkipException(str(exc)) from exc
