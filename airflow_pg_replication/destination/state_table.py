"""The replication state kept with the data: one row per table in ``_pg_replication_state``."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from airflow_pg_replication.destination.sql import compose
from airflow_pg_replication.table_state import STATE_COLUMNS, ReplicationState

__all__ = ["STATE_TABLE", "ReplicationState", "read_state", "state_resource", "state_statements", "write_state"]

if TYPE_CHECKING:
    import pyarrow as pa

STATE_TABLE = "_pg_replication_state"


_ARROW_TYPES = {"text": "string", "bigint": "int64"}


def _dlt_columns() -> list[dict]:
    """dlt's column hints of the state table, from :data:`STATE_COLUMNS`."""
    out = []
    for c in STATE_COLUMNS:
        hint: dict[str, Any] = {"name": c.name, "data_type": c.dlt_type}
        if not c.nullable:
            hint["nullable"] = False
        if c.primary_key:
            hint["primary_key"] = True
        if c.dlt_type == "timestamp":
            hint["timezone"] = True
        out.append(hint)
    return out


def _state_schema() -> pa.Schema:
    """The Arrow schema of a state row, from :data:`STATE_COLUMNS` (timestamps in UTC)."""
    import pyarrow as pa

    return pa.schema(
        [
            (
                c.name,
                pa.timestamp("us", tz="UTC") if c.dlt_type == "timestamp" else getattr(pa, _ARROW_TYPES[c.dlt_type])(),
            )
            for c in STATE_COLUMNS
        ]
    )


def read_state(sql_client: Callable[[], AbstractContextManager[Any]], table_name: str) -> ReplicationState | None:
    """The table's state row, or None when nothing was ever loaded for it."""
    from dlt.destinations.exceptions import DatabaseUndefinedRelation

    names = [c.name for c in STATE_COLUMNS]
    try:
        with sql_client() as client:
            rows = client.execute_sql(
                compose(
                    "SELECT",
                    ", ".join(map(client.escape_column_name, names)),
                    "FROM",
                    client.make_qualified_table_name(STATE_TABLE),
                    "WHERE",
                    client.escape_column_name("table_name"),
                    "= %s",
                ),
                table_name,
            )
    except DatabaseUndefinedRelation:
        return None
    return ReplicationState.from_row(dict(zip(names, rows[0]))) if rows else None


def state_statements(client: Any, state: ReplicationState, *, placeholder: str = "%s") -> list[tuple]:
    """The statements that upsert ``state``'s row, for a caller's own transaction: [(sql, params)]."""
    row = state.as_row()
    table = client.make_qualified_table_name(STATE_TABLE)
    names = ", ".join(map(client.escape_column_name, row))
    return [
        (
            compose("DELETE FROM", table, "WHERE", client.escape_column_name("table_name"), "=", placeholder),
            [state.table_name],
        ),
        (
            compose("INSERT INTO", table, "(", names, ") VALUES (", ", ".join([placeholder] * len(row)), ")"),
            list(row.values()),
        ),
    ]


def write_state(
    sql_client: Callable[[], AbstractContextManager[Any]], state: ReplicationState, *, run: Callable[[Any], None]
) -> None:
    """Upsert the table's state row in one destination transaction.

    The state table is created through dlt (``run``) on first use; later writes are one small SQL
    transaction. Callers write it only after the data it describes has committed.
    """
    from dlt.destinations.exceptions import DatabaseUndefinedRelation

    try:
        with sql_client() as client, client.begin_transaction():
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
    # dlt's overloads ask for TypedDict column hints; plain dicts are what it reads at run time.
    return dlt.resource(  # type: ignore[call-overload]
        [table],
        name=STATE_TABLE,
        columns=_dlt_columns(),
        primary_key="table_name",
        write_disposition={"disposition": "merge", "strategy": "delete-insert"},
    )
