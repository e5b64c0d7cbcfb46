"""Plain Parquet files: an append-only change layout and the query that reads its current state.

Plain Parquet has no way to change a row in place, so a table's folder holds its snapshot (dlt's
files, named ``<load_id>.<file_id>.parquet``) and, after it, one file per write of changes, named
``c-<generation>-<seq>.parquet``:

* an upsert is the row's new version (with ``_pg_lsn``, and ``_pg_deleted_at`` for soft deletes);
* a hard delete is a tombstone: the key, ``_pg_tombstone = true``;
* a soft truncate writes every live row again, marked deleted; a hard truncate removes the files
  (and leaves an empty file that keeps the columns).

Names sort in write order (dlt's load ids are digits, ours start with ``c-``; generations and
sequence numbers are zero-padded), and one file never holds a key twice, so **a key's current row is
the one in the last file that holds it**, and the table is the current rows that are not tombstones:
:func:`current_state_sql`.

Idempotence without transactions: the state file counts its writes (its *generation*, see
:mod:`.lake`). A unit writes its change files under the generation after the committed one, and the
state write that follows commits them. A crash between the two leaves files of a generation the
state does not have: the next unit deletes those first (all but empty ones, which hold no row and
keep a truncated table's columns), then writes the batch again. So the re-run gives the same
rows, nothing doubled.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from airflow_pg_replication.destination.filesystem.lake import Lake, quote_identifier, quote_literal
from airflow_pg_replication.destination.sql import compose

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

    from airflow_pg_replication.destination.filesystem.object_storage import StorageCredentials

#: A hard-delete marker (change files only; never a column of the current state).
TOMBSTONE_COLUMN = "_pg_tombstone"
#: The column a read adds: the file each row comes from (the order of writes).
FILE_COLUMN = "_pg_file"
RANK_COLUMN = "_pg_rank"
_CHANGE_FILE = re.compile(r"c-(\d+)-(\d+)\.parquet$")


def change_file_name(generation: int, seq: int) -> str:
    return f"c-{generation:012d}-{seq:06d}.parquet"


def generation_of(path: str) -> int | None:
    """The generation of a change file, None for any other file (dlt's snapshot files)."""
    m = _CHANGE_FILE.search(path.rsplit("/", 1)[-1])
    return int(m[1]) if m else None


def uncommitted(files: Sequence[str], committed: int) -> list[str]:
    """The change files written after the committed generation: what a crashed unit left behind."""
    return [p for p in files if (g := generation_of(p)) is not None and g > committed]


def write_change_file(lake: Lake, table_name: str, generation: int, seq: int, table: pa.Table) -> None:
    import pyarrow.parquet as pq

    lake.write_atomically(lake.path(table_name, change_file_name(generation, seq)), lambda f: pq.write_table(table, f))


def raw_select(lake: Lake, files: Sequence[str]) -> str:
    """Every row of ``files`` with the file it comes from (:data:`FILE_COLUMN`), columns unified by name."""
    paths = ", ".join(quote_literal(lake.url(p)) for p in files)
    return compose(
        "SELECT * FROM read_parquet([",
        paths,
        "], union_by_name = true, filename =",
        quote_literal(FILE_COLUMN) + ")",
    )


def current_state_sql(raw: str, columns: Sequence[str], key_columns: Sequence[str]) -> str:
    """The table's current rows from ``raw`` (a relation of every row version with :data:`FILE_COLUMN`):
    per key the row of the last file, unless it is a tombstone. ``columns`` are the raw relation's columns."""
    visible = [c for c in columns if c not in (TOMBSTONE_COLUMN, FILE_COLUMN)]
    keys = list(key_columns) or visible
    ranked = compose(
        "SELECT *, row_number() OVER (PARTITION BY",
        ", ".join(map(quote_identifier, keys)),
        "ORDER BY",
        quote_identifier(FILE_COLUMN),
        "DESC) AS",
        quote_identifier(RANK_COLUMN),
        "FROM",
        raw,
    )
    where = [compose(quote_identifier(RANK_COLUMN), "= 1")]
    if TOMBSTONE_COLUMN in columns:
        where.append(compose(quote_identifier(TOMBSTONE_COLUMN), "IS NOT TRUE"))
    return compose(
        "SELECT",
        ", ".join(map(quote_identifier, visible)),
        "FROM (",
        ranked,
        ")",
        "WHERE",
        " AND ".join(where),
    )


def define_current_view(
    con: duckdb.DuckDBPyConnection, lake: Lake, table_name: str, view: str, key_columns: Sequence[str]
) -> bool:
    """Create the temporary view ``view``: table ``table_name``'s current state. False when it has no files."""
    files = lake.files(table_name)
    if not files:
        return False
    if not lake.local:
        con.register_filesystem(lake.fs)
    raw = quote_identifier("_pg_raw_" + view)
    con.execute(compose("CREATE OR REPLACE TEMP VIEW", raw, "AS", raw_select(lake, files)))
    columns = [row[0] for row in con.execute(compose("DESCRIBE", raw)).fetchall()]
    con.execute(
        compose(
            "CREATE OR REPLACE TEMP VIEW", quote_identifier(view), "AS", current_state_sql(raw, columns, key_columns)
        )
    )
    return True


def tombstones(delete_keys: pa.Table, skip: pa.Table | None) -> pa.Table | None:
    """Tombstones of ``delete_keys``, leaving out keys in ``skip`` (rows the same write holds anyway)."""
    import pyarrow as pa

    keys = anti_join(delete_keys, skip)
    if not keys.num_rows:
        return None
    return keys.append_column(TOMBSTONE_COLUMN, pa.array([True] * keys.num_rows, pa.bool_()))


def anti_join(rows: pa.Table, skip: pa.Table | None, key_columns: Sequence[str] | None = None) -> pa.Table:
    """``rows`` whose key (``key_columns``, default: ``rows``' columns) is not among ``skip``'s keys."""
    if skip is None or not skip.num_rows or not rows.num_rows:
        return rows
    import pyarrow as pa
    import pyarrow.compute as pc

    keys = list(key_columns or rows.column_names)
    if any(rows.column(k).null_count or skip.column(k).null_count for k in keys):
        # NULL keys (a table without a key matches rows whole) are equal here; a join never matches them
        seen = set(zip(*[skip.column(k).to_pylist() for k in keys]))
        return rows.filter([key not in seen for key in zip(*[rows.column(k).to_pylist() for k in keys])])
    # only the key columns go into the join: the rows' other columns may be lists, which joins cannot carry
    position = "__pg_replication_row"
    left = rows.select(keys).append_column(position, pa.array(range(rows.num_rows), pa.int64()))
    right = skip.select(keys).group_by(keys).aggregate([])
    kept = left.join(right, keys=keys, join_type="left anti").column(position)
    return rows.take(pc.take(kept, pc.sort_indices(kept)))  # in the rows' own order


def read_current_state(
    bucket_url: str,
    dataset: str,
    table: str,
    key_columns: Sequence[str],
    storage: StorageCredentials | None = None,
) -> pa.Table:
    """The current rows of a Parquet change-layout table, as Arrow (for people and scripts), e.g.
    ``read_current_state("/data/lake", "replica", "customers", ["customer_id"])``. On S3, ``storage`` gives the
    bucket's keys (default: the worker's environment, see :mod:`.object_storage`)."""
    import duckdb

    lake = Lake(bucket_url, dataset, storage)
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        if not define_current_view(con, lake, table, table, key_columns):
            raise FileNotFoundError(f"no Parquet files of table {table!r} under {lake.url(lake.path(table))}")
        return con.sql(compose("SELECT * FROM", quote_identifier(table))).to_arrow_table()
