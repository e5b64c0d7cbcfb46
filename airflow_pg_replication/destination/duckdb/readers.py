"""Reading the DuckDB warehouse while replication runs: read_warehouse and query_warehouse.

DuckDB lets one process write a file or any number read it, never both at once; a plain
``duckdb.connect(path, read_only=True)`` held open makes the replication tasks wait for it (and
fail past a bound). These helpers take the package's lock shared first (see
:mod:`.duckdb_file`): they wait for a task that writes, while a waiting task goes before the
readers that come after it. Keep each read short: a task waits for it.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from airflow_pg_replication.destination.duckdb import file_lock as duckdb_file

if TYPE_CHECKING:
    import duckdb

_ADVICE = "try again, or pass a longer timeout"


@contextlib.contextmanager
def read_warehouse(
    path: str | os.PathLike | None = None, *, timeout: float = duckdb_file.READER_TIMEOUT_SECONDS
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-only DuckDB connection to the warehouse, for the block; safe while tasks write it.

    ``path``: the DuckDB file (a registry's ``destination.credentials``); by default the
    registry's default, ``$AIRFLOW_HOME/pg_replication.duckdb``. Waits up to ``timeout``
    seconds for a task that writes the file (a CDC batch holds it about a second, a snapshot for
    its whole copy), then raises :class:`.TransientError` naming who holds it. The connection
    sees every commit made before it opened; open a new one to see later commits.

    ``with read_warehouse() as con: con.sql("SELECT count(*) FROM replica.customers").fetchall()``
    """
    from airflow_pg_replication.destination.duckdb.default_file import default_duckdb_path

    where = os.path.abspath(os.fspath(path)) if path else default_duckdb_path()
    if not os.path.exists(where):
        raise FileNotFoundError(
            f"no DuckDB warehouse at {where}: nothing was replicated there yet (run the "
            "table's full_refresh), or pass the path of the registry's destination.credentials"
        )
    deadline = time.monotonic() + timeout
    with duckdb_file.locked(where, duckdb_file.SHARED, timeout=timeout, what="read the warehouse", advice=_ADVICE):
        con = duckdb_file.connect(
            where,
            read_only=True,
            what="read the warehouse",
            wait=max(0.0, deadline - time.monotonic()),
            advice=_ADVICE.capitalize() + ".",
        )
        try:
            yield con
        finally:
            con.close()


def query_warehouse(
    sql: str,
    parameters: Sequence[Any] | None = None,
    *,
    path: str | os.PathLike | None = None,
    timeout: float = duckdb_file.READER_TIMEOUT_SECONDS,
) -> list[tuple]:
    """Run one query on the warehouse (see :func:`read_warehouse`) and return its rows; the file is let go at once."""
    with read_warehouse(path, timeout=timeout) as con:
        return con.execute(sql, list(parameters) if parameters is not None else None).fetchall()
