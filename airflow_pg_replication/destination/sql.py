"""Plain SQL on the destination through dlt's sql_client: key deletes, truncates, reads of kept values.

Names are quoted by the destination's own rules (``escape_column_name``, ``make_qualified_table_name``)
and values always travel as parameters; statements are composed from those parts only.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

CHUNK = 1000  # keys per statement


def compose(*parts: str) -> str:
    """One statement from already-quoted names, keywords and ``%s`` placeholders."""
    return " ".join(parts)


def key_predicate(client: Any, key_columns: Sequence[str], keys: Sequence[tuple]) -> tuple[str, list]:
    """``k IN (...)`` for one key column, an OR of ANDs for a composite key; with its parameters."""
    names = [client.escape_column_name(c) for c in key_columns]
    if len(names) == 1:
        return compose(names[0], "IN (", ", ".join(["%s"] * len(keys)), ")"), [k[0] for k in keys]
    one = "(" + " AND ".join(compose(n, "= %s") for n in names) + ")"
    return " OR ".join([one] * len(keys)), [v for k in keys for v in k]


def has_rows(client: Any, table_name: str) -> bool:
    """True when the table exists and holds at least one row."""
    from dlt.destinations.exceptions import DatabaseUndefinedRelation

    try:
        return bool(
            client.execute_sql(compose("SELECT 1 FROM", client.make_qualified_table_name(table_name), "LIMIT 1"))
        )
    except DatabaseUndefinedRelation:
        return False


def delete_keys(client: Any, table_name: str, key_columns: Sequence[str], keys: Sequence[tuple]) -> None:
    """Delete the rows with these keys (typed values), ``CHUNK`` keys a statement."""
    table = client.make_qualified_table_name(table_name)
    for start in range(0, len(keys), CHUNK):
        where, params = key_predicate(client, key_columns, keys[start : start + CHUNK])
        client.execute_sql(compose("DELETE FROM", table, "WHERE", where), *params)


def truncate(
    client: Any, table_name: str, *, soft_at: datetime | None, lsn: int | None, deleted_column: str, lsn_column: str
) -> None:
    """Empty the table; with ``soft_at``, mark every live row deleted at that time instead."""
    table = client.make_qualified_table_name(table_name)
    if soft_at is None:
        client.execute_sql(compose("DELETE FROM", table))
        return
    deleted = client.escape_column_name(deleted_column)
    client.execute_sql(
        compose(
            "UPDATE",
            table,
            "SET",
            deleted,
            "= %s,",
            client.escape_column_name(lsn_column),
            "= %s WHERE",
            deleted,
            "IS NULL",
        ),
        soft_at,
        lsn,
    )


def fetch_rows(
    client: Any, table_name: str, key_columns: Sequence[str], keys: Sequence[tuple], columns: Sequence[str]
) -> dict[tuple, dict]:
    """Current values of ``columns`` for these keys: key -> {column: value}."""
    out: dict[tuple, dict] = {}
    nkey = len(key_columns)
    table = client.make_qualified_table_name(table_name)
    select = ", ".join(client.escape_column_name(c) for c in [*key_columns, *columns])
    for start in range(0, len(keys), CHUNK):
        where, params = key_predicate(client, key_columns, keys[start : start + CHUNK])
        for row in client.execute_sql(compose("SELECT", select, "FROM", table, "WHERE", where), *params) or []:
            out[tuple(row[:nkey])] = dict(zip(columns, row[nkey:]))
    return out
