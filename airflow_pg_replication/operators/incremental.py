"""PgIncrementalOperator: copy the rows whose cursor column reached the last high-water mark, merged by key."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

from airflow_pg_replication.operators.base import PgTableOperator, table_task
from airflow_pg_replication.registry import names as naming


def parse_lookback(value: str | None) -> datetime.timedelta | None:
    """``cursor_lookback`` as a timedelta (None when unset); a bad interval is a ValueError."""
    from airflow_pg_replication.registry.models import parse_interval

    if value is None:
        return None
    try:
        return parse_interval(value)
    except ValueError as exc:
        raise ValueError(f"cursor_lookback: {exc}") from None


class PgIncrementalOperator(PgTableOperator):
    """Copy the rows of a table whose ``cursor_column`` (e.g. ``updated_at``) reached the high-water mark.

    See :class:`airflow_pg_replication.sync.incremental.IncrementalRefresh` for what a run does and
    what this mode cannot see (hard deletes, late commits older than the lookback, updates that do
    not move the cursor, NULL cursors). The DAG param ``full_refresh=true`` makes one run copy the
    whole table with *replace*.
    """

    uses_a_slot = False  # reads the table, not its changes

    def __init__(
        self,
        *,
        cursor_column: str,
        cursor_lookback: str | None = None,
        chunk_bytes: int = 8 << 20,
        **kwargs: Any,
    ) -> None:
        mode = kwargs.pop("mode", "incremental")
        if mode != "incremental":
            raise ValueError(
                f"PgIncrementalOperator mode must be 'incremental', not {mode!r} (cdc and "
                "full_refresh tables use PgFullRefreshOperator and PgCdcApplyOperator)"
            )
        super().__init__(**kwargs)
        self.cursor_column = naming.check_name(cursor_column, "cursor_column")
        self.cursor_lookback = cursor_lookback
        self.lookback = parse_lookback(cursor_lookback)
        if self.columns is not None and cursor_column not in self.columns:
            raise ValueError(f"cursor_column {cursor_column!r} is not in columns {self.columns}; add it to columns")
        self.chunk_bytes = chunk_bytes

    @table_task
    def execute(self, context: Any) -> dict[str, Any]:
        from airflow_pg_replication.sync.incremental import IncrementalRefresh

        params = context.get("params") if isinstance(context, Mapping) else None
        refresh = IncrementalRefresh(
            self.source_hook(),
            self.target,
            cursor_column=self.cursor_column,
            lookback=self.lookback,
            lookback_text=self.cursor_lookback,
            chunk_bytes=self.chunk_bytes,
        )
        return refresh.run(full_refresh_asked=bool(params and params.get("full_refresh")))
