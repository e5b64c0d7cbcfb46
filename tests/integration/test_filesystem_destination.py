"""dlt's filesystem destination on local files, as Delta tables and as plain Parquet files, end to end against a
real PostgreSQL: snapshot and CDC of every kind of change (inserts, updates, deletes, key changes, unchanged
TOAST values, an added column, truncates), hard and soft deletes, a crash between the data and the state row,
and reconciliation. What landed is read back without the package (``deltalake``; DuckDB's ``read_parquet``
with the documented current-state query) and compared with the source on every column."""

from __future__ import annotations

import datetime
import json
import uuid
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest

from airflow_pg_replication import (
    PgCdcApplyOperator,
    PgFullRefreshOperator,
    PgIncrementalOperator,
    PgReconcileOperator,
)
from airflow_pg_replication.destination.filesystem.table import FilesystemTableDestination
from airflow_pg_replication.errors import NeedsAttentionError
from tests.integration.conftest import source_rows

DDL = """
CREATE TABLE things (
  id int PRIMARY KEY, amount numeric(12,2), ratio float8, big bigint, at timestamptz, naive timestamp, day date,
  tod time, tags text[], nums int[], doc jsonb, blob bytea, uid uuid, flag bool, code varchar(10), body text
)
"""
COLS = ["id", "amount", "ratio", "big", "at", "naive", "day", "tod", "tags", "nums", "doc", "blob", "uid", "flag"]
COLS += ["code", "body"]
ROW = (
    "{id} * 1.25, 0.1, 9223372036854775807, '2024-06-01 10:00:00.5+02', '2024-01-01 12:34:56.789', '2024-02-29', "
    '\'23:59:59.999999\', \'{{a,"b c",NULL}}\', \'{{1,2,3}}\', \'{{"nested": {{"k": "v"}}, "n": 1.5}}\', '
    "'\\x00ff10', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', true, 'code {id}', {body}"
)
BIG = "repeat(md5({id}::text), 400)"  # ~12.8 kB, stored out of line (TOAST)


@pytest.fixture(params=["delta", "parquet"])
def lake(request, tmp_path: Path) -> dict:
    """The destination mapping of a lake folder in ``tmp_path``, in each table format."""
    root = tmp_path / "lake"
    url = root.as_uri() if request.param == "delta" else str(root)  # file:// URLs and plain paths both work
    return {"type": "filesystem", "credentials": url, "dataset": "replica", "table_format": request.param}


def lake_dir(lake: dict, *parts: str) -> Path:
    url = lake["credentials"]
    return Path(url.removeprefix("file://")).joinpath(lake["dataset"], *parts)


def insert(pg_db, id_: int, *, big: bool = True) -> None:
    body = BIG.format(id=id_) if big else "'short'"
    pg_db.execute(f"INSERT INTO things VALUES ({id_}, {ROW.format(id=id_, body=body)})")


def ops(lake: dict, table: str, **kw):
    common = dict(table=table, source_conn_id="pg_source", destination=lake, **kw)
    return (
        PgFullRefreshOperator(task_id="full_refresh", **common),
        PgCdcApplyOperator(task_id="apply_changes", **common),
        PgReconcileOperator(task_id="verify", when_behind="fail", ranges=3, **common),
    )


# -- reading what landed, without the package -----------------------------------------------------------


def current_rows(lake: dict, table: str, key: str = "id") -> list[dict]:
    """The table's current rows, ordered by ``key``: the Delta table as it is; for Parquet, per key the row of
    the last file (files sort in write order) unless it is a tombstone (docs/destinations-filesystem.md)."""
    folder = lake_dir(lake, table)
    if lake["table_format"] == "delta":
        from deltalake import DeltaTable

        rows = DeltaTable(str(folder)).to_pyarrow_table().to_pylist()
        return sorted(rows, key=lambda r: r[key])
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    raw = con.sql(
        "SELECT * FROM read_parquet(?, union_by_name = true, filename = '_pg_file')", params=[f"{folder}/*.parquet"]
    ).to_arrow_table()
    tomb = "_pg_tombstone" in raw.column_names
    con.register("raw", raw)
    rows = con.sql(
        "SELECT * EXCLUDE (_pg_file, _pg_rank" + (", _pg_tombstone" if tomb else "") + ") FROM ("
        f'  SELECT *, row_number() OVER (PARTITION BY "{key}" ORDER BY _pg_file DESC) AS _pg_rank FROM raw)'
        " WHERE _pg_rank = 1" + (" AND _pg_tombstone IS NOT TRUE" if tomb else "") + f' ORDER BY "{key}"'
    ).to_arrow_table()
    return rows.to_pylist()


def raw_rows(lake: dict, table: str) -> list[str]:
    """Every row version in the table's files (Parquet) or the table's rows (Delta), each as its repr, sorted."""
    folder = lake_dir(lake, table)
    if lake["table_format"] == "delta":
        from deltalake import DeltaTable

        rows = DeltaTable(str(folder)).to_pyarrow_table().to_pylist()
    else:
        con = duckdb.connect()
        con.execute("SET TimeZone = 'UTC'")
        rows = con.sql("SELECT * FROM read_parquet(?, union_by_name = true)", params=[f"{folder}/*.parquet"])
        rows = rows.to_arrow_table().to_pylist()
    return sorted(repr(sorted(r.items())) for r in rows)


def state_row(lake: dict, table: str) -> dict:
    """The table's state row, read from the dataset's state files."""
    rows = duckdb.execute(
        "SELECT table_name, status, slot, snapshot_lsn, applied_lsn FROM read_parquet(?) WHERE table_name = ?",
        [str(lake_dir(lake, "_pg_replication_state", "*.parquet")), f"public.{table}"],
    ).fetchall()
    assert len(rows) == 1
    return dict(zip(["table_name", "status", "slot", "snapshot_lsn", "applied_lsn"], rows[0]))


def normal(value, col: str):
    """A value of either side in one form: Delta keeps time as ISO text, JSON lands as text, uuid as text."""
    if value is None:
        return None
    if col == "doc" and isinstance(value, str):
        return json.loads(value, parse_float=Decimal)
    if col == "doc":
        return json.loads(json.dumps(value, default=str), parse_float=Decimal)
    if col == "tod" and isinstance(value, str):
        return datetime.time.fromisoformat(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, memoryview):
        return bytes(value)
    if isinstance(value, (float, Decimal)):
        return Decimal(str(value))
    return value


def assert_same(pg_db, lake: dict, table: str, cols, *, live_only: bool = False) -> list[dict]:
    """Every value of every current row equal to the source's, column by column."""
    dest = current_rows(lake, table)
    if live_only:
        dest = [r for r in dest if r["_pg_deleted_at"] is None]
    got = [tuple(normal(r.get(c), c) for c in cols) for r in dest]
    want = [
        tuple(normal(v, c) for v, c in zip(row, cols)) for row in source_rows(pg_db, f"public.{table}", cols, ["id"])
    ]
    assert got == want
    return dest


# -- the tests ---------------------------------------------------------------------------------------------


def test_snapshot_and_cdc_keep_every_value(pg_db, lake):
    """Snapshot, then every kind of change, batch after batch; every column compared; verify at the end."""
    pg_db.execute(DDL)
    for i in range(1, 7):
        insert(pg_db, i, big=i != 6)
    full, apply, verify = ops(lake, "things", slot="pgrepl_things")

    assert full.execute({})["rows"] == 6
    dest = assert_same(pg_db, lake, "things", COLS)
    state = state_row(lake, "things")
    assert state["status"] == "ready" and state["slot"] == "pgrepl_things"
    assert {r["_pg_lsn"] for r in dest} == {state["snapshot_lsn"]}
    if lake["table_format"] == "delta":
        assert (lake_dir(lake, "things", "_delta_log")).is_dir()

    # inserts, updates, a delete, a key change and updates leaving TOAST values unchanged, an added column
    insert(pg_db, 7)
    pg_db.execute(
        "UPDATE things SET amount = -1.25, tags = '{x}', at = '2020-01-01 00:00:00+00', doc = NULL WHERE id = 1"
    )
    pg_db.execute("UPDATE things SET flag = NOT flag WHERE id IN (2, 6)")  # body: unchanged TOAST
    pg_db.execute("DELETE FROM things WHERE id = 3")
    pg_db.execute("UPDATE things SET id = 50 WHERE id = 5")  # key change, body unchanged TOAST
    pg_db.execute("ALTER TABLE things ADD COLUMN note text")
    pg_db.execute("UPDATE things SET note = 'noted' WHERE id = 4")
    res = apply.execute({})
    assert res["changes"] == 7
    cols = [*COLS, "note"]
    dest = assert_same(pg_db, lake, "things", cols)
    assert len(next(r for r in dest if r["id"] == 50)["body"]) == 12800
    state = state_row(lake, "things")
    assert state["snapshot_lsn"] < state["applied_lsn"]
    lsns = {r["id"]: r["_pg_lsn"] for r in dest}
    assert state["snapshot_lsn"] < lsns[7] < lsns[1] < lsns[2] == lsns[6] < lsns[50] < lsns[4] == state["applied_lsn"]

    # plain updates leaving TOAST values unchanged (the column-wise fold's kept values), and a second delete
    pg_db.execute("UPDATE things SET code = 'again', tod = '00:00:01' WHERE id IN (2, 4, 50)")
    pg_db.execute("DELETE FROM things WHERE id = 7")
    assert apply.execute({})["changes"] == 4
    assert_same(pg_db, lake, "things", cols)
    assert verify.execute({})["ok"]

    # a truncate and rows after it, in one batch; then nothing to apply
    pg_db.execute("TRUNCATE things")
    insert(pg_db, 2)
    insert(pg_db, 10, big=False)
    apply.execute({})
    assert_same(pg_db, lake, "things", cols)
    assert apply.execute({})["changes"] == 0
    assert verify.execute({})["ok"]

    # verify finds a row changed behind its back
    if lake["table_format"] == "delta":
        from deltalake import DeltaTable

        DeltaTable(str(lake_dir(lake, "things"))).update(new_values={"code": "tampered"}, predicate='"id" = 10')
        with pytest.raises(NeedsAttentionError, match="changed: id=10"):
            verify.execute({})


def test_soft_deletes_and_truncate(pg_db, lake):
    """deletes: soft keeps deleted rows with their values and ``_pg_deleted_at``; a truncate marks every live row."""
    pg_db.execute("CREATE TABLE accounts (id int PRIMARY KEY, owner text, balance numeric(10,2), tags text[])")
    pg_db.execute("INSERT INTO accounts SELECT g, 'o' || g, g * 1.5, ARRAY['t' || g] FROM generate_series(1, 10) g")
    full, apply, verify = ops(lake, "accounts", deletes="soft")
    cols = ["id", "owner", "balance", "tags"]
    full.execute({})
    assert_same(pg_db, lake, "accounts", cols, live_only=True)

    pg_db.execute("DELETE FROM accounts WHERE id IN (1, 2)")
    pg_db.execute("INSERT INTO accounts VALUES (20, 'brief', 1, '{}')")
    pg_db.execute("DELETE FROM accounts WHERE id = 20")
    pg_db.execute("UPDATE accounts SET balance = 99 WHERE id = 3")
    apply.execute({})
    rows = {r["id"]: r for r in current_rows(lake, "accounts")}
    assert {i for i, r in rows.items() if r["_pg_deleted_at"] is not None} == {1, 2, 20}
    assert (rows[1]["owner"], rows[1]["tags"]) == ("o1", ["t1"])  # a soft-deleted row keeps its values
    assert (rows[20]["owner"], rows[20]["tags"]) == ("brief", [])
    assert_same(pg_db, lake, "accounts", cols, live_only=True)
    assert verify.execute({})["ok"]  # soft-deleted rows are left out

    pg_db.execute("TRUNCATE accounts")
    pg_db.execute("INSERT INTO accounts VALUES (1, 'back again', 2, '{a}')")
    apply.execute({})
    rows = {r["id"]: r for r in current_rows(lake, "accounts")}
    if lake["table_format"] == "parquet":  # the package's reader gives the same current state
        from airflow_pg_replication.destination.filesystem.parquet_changes import read_current_state

        mine = read_current_state(str(lake_dir(lake).parent), "replica", "accounts", ["id"]).to_pylist()
        assert sorted(mine, key=lambda r: r["id"]) == list(rows.values())
    assert len(rows) == 11  # 1..10 and 20, each once
    assert [i for i, r in rows.items() if r["_pg_deleted_at"] is None] == [1]
    assert rows[1]["owner"] == "back again" and rows[5]["owner"] == "o5"
    assert_same(pg_db, lake, "accounts", cols, live_only=True)
    assert verify.execute({})["ok"]


def test_crash_between_data_and_state_reruns_to_the_same_table(pg_db, lake, monkeypatch):
    """No transactions on a lake: a failure at the state write leaves the data written and the state as it was;
    the re-run gives the same table, nothing doubled (snapshot and CDC batch)."""
    pg_db.execute("CREATE TABLE orders (id int PRIMARY KEY, total numeric(10,2), items text[], placed timestamptz)")
    pg_db.execute(
        "INSERT INTO orders SELECT g, g * 2.5, ARRAY['i' || g, NULL], timestamptz '2024-01-01' + g * interval '1 day' "
        "FROM generate_series(1, 30) g"
    )
    full, apply, verify = ops(lake, "orders", slot="pgrepl_orders")
    cols = ["id", "total", "items", "placed"]
    real = FilesystemTableDestination.write_state
    crashes: list = []

    def write_state(self, state):
        if str(state.status) == "ready" and not crashes:
            crashes.append(state)
            raise RuntimeError("crash between the data and the state row")
        return real(self, state)

    monkeypatch.setattr(FilesystemTableDestination, "write_state", write_state)
    with pytest.raises(RuntimeError, match="crash between"):
        full.execute({})
    assert state_row(lake, "orders")["status"] == "snapshotting"  # recorded before the copy: not usable
    full.execute({})
    assert_same(pg_db, lake, "orders", cols)
    before = state_row(lake, "orders")
    assert len(raw_rows(lake, "orders")) == 30

    pg_db.execute("INSERT INTO orders VALUES (100, 1, '{new}', now())")
    pg_db.execute("UPDATE orders SET total = total + 1, items = '{changed}' WHERE id <= 10")
    pg_db.execute("DELETE FROM orders WHERE id BETWEEN 20 AND 25")
    pg_db.execute("UPDATE orders SET id = 200 WHERE id = 30")
    crashes.clear()
    with pytest.raises(RuntimeError, match="crash between"):
        apply.execute({})
    assert state_row(lake, "orders") == before  # the state is as it was: the batch is read again
    if lake["table_format"] == "parquet":  # the batch's change file, of a generation the state does not have
        assert len(list(lake_dir(lake, "orders").glob("c-*.parquet"))) == 1
    assert_same(pg_db, lake, "orders", cols)  # its data is written (no transaction to take it back)
    written = raw_rows(lake, "orders")
    apply.execute({})
    assert_same(pg_db, lake, "orders", cols)
    assert raw_rows(lake, "orders") == written  # the same rows again, nothing doubled
    if lake["table_format"] == "parquet":  # the crashed attempt's file went before the batch was written again
        assert len(list(lake_dir(lake, "orders").glob("c-*.parquet"))) == 1
    # Delta: the 25 current rows; Parquet: 30 snapshot rows, then 10 updated, 1 inserted, 6 deleted and one key
    # change (a tombstone and the row under its new key) as row versions
    assert len(written) == len(set(written)) == (25 if lake["table_format"] == "delta" else 49)
    after = state_row(lake, "orders")
    assert after["applied_lsn"] > before["snapshot_lsn"]
    assert verify.execute({})["ok"]
    assert apply.execute({})["changes"] == 0


def test_full_refresh_and_incremental_modes(pg_db, lake):
    """Tables without CDC: a full refresh replaces the rows, an incremental run merges them by key."""
    pg_db.execute(
        "CREATE TABLE events (id int PRIMARY KEY, updated_at timestamptz NOT NULL, v numeric(8,3), tags int[])"
    )
    pg_db.execute(
        "INSERT INTO events SELECT g, timestamptz '2024-01-01' + g * interval '1 minute', g / 3.0, ARRAY[g, -g] "
        "FROM generate_series(1, 20) g"
    )
    cols = ["id", "updated_at", "v", "tags"]
    snap = PgFullRefreshOperator(
        task_id="full_refresh", table="public.events", mode="full_refresh", source_conn_id="pg_source", destination=lake
    )
    assert snap.execute({})["rows"] == 20
    pg_db.execute("DELETE FROM events WHERE id = 20")
    assert snap.execute({})["rows"] == 19  # a second full refresh replaces every row
    assert_same(pg_db, lake, "events", cols)
    assert state_row(lake, "events")["status"] == "loaded"

    inc_lake = {**lake, "dataset": "incremental"}
    inc = PgIncrementalOperator(
        task_id="incremental_refresh",
        table="public.events",
        cursor_column="updated_at",
        source_conn_id="pg_source",
        destination=inc_lake,
    )
    inc.execute({})
    pg_db.execute("UPDATE events SET v = -1, tags = '{}', updated_at = '2025-01-01' WHERE id IN (2, 3)")
    pg_db.execute("INSERT INTO events VALUES (21, '2025-01-02', 7, NULL)")
    inc.execute({})
    assert_same(pg_db, inc_lake, "events", cols)
    assert len(current_rows(inc_lake, "events")) == 20
