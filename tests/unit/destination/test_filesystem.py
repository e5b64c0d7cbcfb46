"""The filesystem destination's pieces without a database: the registry's ``table_format``, the state file and
its generation, and the Parquet change layout's current-state query on hand-written files."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from airflow_pg_replication.destination.factory import table_destination
from airflow_pg_replication.destination.filesystem import parquet_changes as pc
from airflow_pg_replication.destination.filesystem.lake import Lake, StateFile
from airflow_pg_replication.destination.filesystem.table import FilesystemTableDestination
from airflow_pg_replication.errors import NeedsAttentionError
from airflow_pg_replication.registry.models import RegistryError, parse_registry
from airflow_pg_replication.table_state import ReplicationState, TablePhase


def test_registry_takes_table_format_for_filesystem_only():
    text = "destination:\n  type: filesystem\n  credentials: /data/lake\n{extra}tables: []\n"
    registry = parse_registry(text.format(extra="  table_format: delta\n"))
    assert registry.destination.as_dict() == {
        "type": "filesystem",
        "credentials": "/data/lake",
        "dataset": "replica",
        "table_format": "delta",
    }
    with pytest.raises(RegistryError, match=r"destination.table_format: destination type filesystem needs"):
        parse_registry(text.format(extra=""))
    with pytest.raises(RegistryError, match=r"table_format: Input should be 'delta' or 'parquet'"):
        parse_registry(text.format(extra="  table_format: iceberg\n"))
    with pytest.raises(RegistryError, match=r"did you mean 'table_format'"):
        parse_registry(text.format(extra="  table_fromat: delta\n"))
    with pytest.raises(RegistryError, match=r"table_format is for destination type filesystem only"):
        parse_registry("destination:\n  type: duckdb\n  table_format: parquet\ntables: []\n")


def test_the_factory_picks_the_filesystem_destination_and_checks_its_spec(tmp_path: Path):
    spec = {"type": "filesystem", "credentials": str(tmp_path), "table_format": "parquet"}
    dest = table_destination(spec, table_name="public.t", destination_table="t", pipeline_name="p")
    assert isinstance(dest, FilesystemTableDestination) and not dest.delta
    assert dest.describe() == f"replica.t (parquet) in filesystem {tmp_path}"
    with pytest.raises(NeedsAttentionError, match="needs table_format"):
        table_destination(
            {**spec, "table_format": None}, table_name="public.t", destination_table="t", pipeline_name="p"
        )
    with pytest.raises(NeedsAttentionError, match="needs credentials"):
        table_destination(
            {**spec, "credentials": None}, table_name="public.t", destination_table="t", pipeline_name="p"
        )


def test_state_file_round_trip(tmp_path: Path):
    lake = Lake(tmp_path.as_uri(), "replica")
    assert lake.read_state("public.t") == StateFile()
    state = ReplicationState("public.t", TablePhase.READY, slot="s", snapshot_lsn=5, applied_lsn=9)
    lake.write_state(StateFile(state, 3, ["id"]))
    back = lake.read_state("public.t")
    assert (back.generation, back.primary_key) == (3, ["id"])
    assert back.state is not None and (back.state.status, back.state.applied_lsn) == (TablePhase.READY, 9)
    assert [p.name for p in (tmp_path / "replica" / "_pg_replication_state").iterdir()] == ["public.t.parquet"]


def test_change_files_sort_in_write_order_and_the_uncommitted_ones_are_found():
    names = [pc.change_file_name(g, s) for g, s in [(2, 0), (2, 1), (10, 0)]]
    assert names == sorted(names) and names[0] > "1796535290.9067748.f2f928c706.parquet"  # dlt's snapshot files first
    assert [pc.generation_of(n) for n in [*names, "1796535290.9067748.f2f928c706.parquet"]] == [2, 2, 10, None]
    assert pc.uncommitted([f"/x/{n}" for n in names], 2) == [f"/x/{names[2]}"]


def test_current_state_is_the_last_version_of_each_key_without_tombstones(tmp_path: Path):
    folder = tmp_path / "replica" / "t"
    folder.mkdir(parents=True)
    snapshot = pa.table({"id": pa.array([1, 2, 3], pa.int32()), "v": ["a", "b", "c"], "_pg_lsn": [5, 5, 5]})
    pq.write_table(snapshot, folder / "1796535290.9067748.f2f928c706.parquet")
    first = pa.table(
        {"id": pa.array([1, 2], pa.int32()), "v": ["a2", None], "_pg_lsn": [7, None], "_pg_tombstone": [None, True]}
    )
    pq.write_table(first, folder / pc.change_file_name(1, 0))
    # a later file of the same transaction (same LSN): the file order decides; a new column appears
    second = pa.table({"id": pa.array([1, 4], pa.int32()), "v": ["a3", "d"], "_pg_lsn": [7, 8], "w": [1.5, None]})
    pq.write_table(second, folder / pc.change_file_name(1, 1))
    lake = Lake(str(tmp_path), "replica")
    con = duckdb.connect()
    assert pc.define_current_view(con, lake, "t", "t_now", ["id"])
    rows = con.execute('SELECT * FROM "t_now" ORDER BY id').fetchall()
    assert rows == [(1, "a3", 7, 1.5), (3, "c", 5, None), (4, "d", 8, None)]
    assert not pc.define_current_view(con, lake, "missing", "m", ["id"])
    assert pc.read_current_state(str(tmp_path), "replica", "t", ["id"]).num_rows == 3


def test_tombstones_leave_out_keys_the_same_write_upserts():
    keys = pa.table({"id": pa.array([1, 2, 3], pa.int32())})
    upserts = pa.table({"id": pa.array([2], pa.int32()), "v": [["x"]]})
    marks = pc.tombstones(keys, upserts)
    assert marks is not None and marks.to_pylist() == [
        {"id": 1, "_pg_tombstone": True},
        {"id": 3, "_pg_tombstone": True},
    ]
    assert pc.tombstones(pa.table({"id": pa.array([2], pa.int32())}), upserts) is None


def test_anti_join_keeps_order_other_columns_and_null_keys() -> None:
    import pyarrow as pa

    from airflow_pg_replication.destination.filesystem import parquet_changes as pc

    rows = pa.table(
        {"id": pa.array([5, 1, 4, 2, 3], pa.int64()), "tags": pa.array([["a"], None, ["b", "c"], [], ["d"]])}
    )
    skip = pa.table({"id": pa.array([4, 1, 4, 9], pa.int64())})
    out = pc.anti_join(rows, skip, ["id"])
    assert out.column("id").to_pylist() == [5, 2, 3]
    assert out.column("tags").to_pylist() == [["a"], [], ["d"]]
    # whole-row keys with NULLs (a table without a key): NULL matches NULL
    whole = pa.table({"a": [1, None, 2], "b": ["x", "y", None]})
    gone = pa.table({"a": [None, 2], "b": ["y", None]})
    assert pc.anti_join(whole, gone).to_pylist() == [{"a": 1, "b": "x"}]
