"""The replication state kept with the data: one row per table in ``_pg_replication_state``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable, ContextManager

from airflow_pg_replication.destination.sql import compose

if TYPE_CHECKING:
    import pyarrow as pa

STATE_TABLE = "_pg_replication_state"


@dataclass
class ReplicationState:
    """Where a table's copy stands; written only after the data it describes is committed."""

    table_name: str  # source schema.table
    status: str  # snapshotting | ready (snapshot loaded; CDC may apply) | loaded (full/incremental)
    slot: str | None = None
    snapshot_lsn: int | None = None  # the slot's consistent point the snapshot was read at
    applied_lsn: int | None = None  # commit LSN of the last applied transaction
    cursor_value: str | None = None  # incremental: the high-water mark, as text
    updated_at: datetime | None = None

    def as_row(self) -> dict[str, Any]:
        row = dict(self.__dict__)
        row["updated_at"] = datetime.now(timezone.utc)
        return row


_STATE_COLUMNS = [
    {"name": "table_name", "data_type": "text", "nullable": False, "primary_key": True},
    {"name": "status", "data_type": "text", "nullable": False},
    {"name": "slot", "data_type": "text"},
    {"name": "snapshot_lsn", "data_type": "bigint"},
    {"name": "applied_lsn", "data_type": "bigint"},
    {"name": "cursor_value", "data_type": "text"},
    {"name": "updated_at", "data_type": "timestamp", "timezone": True},
]


def _state_schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema([
        ("table_name", pa.string()), ("status", pa.string()), ("slot", pa.string()),
        ("snapshot_lsn", pa.int64()), ("applied_lsn", pa.int64()), ("cursor_value", pa.string()),
        ("updated_at", pa.timestamp("us", tz="UTC")),
    ])



def read_state(sql_client: Callable[[], ContextManager[Any]], table_name: str) -> ReplicationState | None:
    """The table's state row, or None when nothing was ever loaded for it."""
    from dlt.destinations.exceptions import DatabaseUndefinedRelation

    names = [c["name"] for c in _STATE_COLUMNS]
    try:
        with sql_client() as client:
            rows = client.execute_sql(
                compose("SELECT", ", ".join(map(client.escape_column_name, names)),
                        "FROM", client.make_qualified_table_name(STATE_TABLE),
                        "WHERE", client.escape_column_name("table_name"), "= %s"),
                table_name,
            )
    except DatabaseUndefinedRelation:
        return None
    return ReplicationState(**dict(zip(names, rows[0]))) if rows else None


def state_statements(client: Any, state: ReplicationState, *, placeholder: str = "%s") -> list[tuple]:
    """The statements that upsert ``state``'s row, for a caller's own transaction: [(sql, params)]."""
    row = state.as_row()
    table = client.make_qualified_table_name(STATE_TABLE)
    names = ", ".join(map(client.escape_column_name, row))
    return [
        (compose("DELETE FROM", table, "WHERE", client.escape_column_name("table_name"), "=", placeholder),
         [state.table_name]),
        (compose("INSERT INTO", table, "(", names, ") VALUES (", ", ".join([placeholder] * len(row)), ")"),
         list(row.values())),
    ]


def write_state(sql_client: Callable[[], ContextManager[Any]], state: ReplicationState, *,
                run: Callable[[Any], None]) -> None:
    """Upsert the table's state row in one destination transaction.

    The state table is created through dlt (``run``) on first use; later writes are one small SQL
    transaction. Callers write it only after the data it describes has committed.
    """
    from dlt.destinations.exceptions import DatabaseUndefinedRelation

    try:
        with sql_client() as client:
            with client.begin_transaction():
                for stmt, params in state_statements(client, state):
                    client.execute_sql(stmt, *params)
        return
    except DatabaseUndefinedRelation:
        pass  # first state write in this dataset: let dlt create the table
    run(state_resource(state))


def state_resource(state: ReplicationState) -> Any:
    """A dlt resource that creates the state table (when missing) and upserts ``state``'s row."""
    import dlt
    import pyarrow as pa

    # an Arrow row, so dlt adds none of its _dlt_* columns and plain SQL can write the table later
    table = pa.Table.from_pylist([state.as_row()], schema=_state_schema())
    return dlt.resource([table], name=STATE_TABLE, columns=_STATE_COLUMNS, primary_key="table_name",
                        write_disposition={"disposition": "merge", "strategy": "delete-insert"})
