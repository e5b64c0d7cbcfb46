"""The filesystem destination on object storage: a lake at ``s3://bucket/lake`` on a real S3-compatible server (moto,
started here), Delta and Parquet, end to end against a real PostgreSQL through the operators: snapshot, CDC of
inserts, updates, deletes, a key change and a truncate, a crash between data and state, and verify.

The bucket's keys come from an Airflow ``aws`` connection (``AIRFLOW_CONN_MY_S3``, JSON form for one format and
URI form for the other) named by ``conn_id``, or from the worker's environment; never from the registry. What
landed is read back without the package (``deltalake``; DuckDB over s3fs with the documented current-state
query) and compared with the source on every column. Every log line and stream is checked for the keys.
"""

from __future__ import annotations

import json
import logging
import urllib.parse
import uuid
from collections.abc import Iterator
from typing import Any

import duckdb
import pytest

from airflow_pg_replication import PgCdcApplyOperator, PgFullRefreshOperator, PgReconcileOperator
from airflow_pg_replication.destination.filesystem.table import FilesystemTableDestination
from airflow_pg_replication.errors import NeedsAttentionError
from airflow_pg_replication.testing.s3_server import REGION, ThrowawayS3Server
from tests.integration.conftest import source_rows
from tests.integration.test_filesystem_destination import COLS, DDL, insert, normal

CONN_ID = "my_s3"
AWS_ENV = [
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
]


@pytest.fixture(scope="module")
def s3_server() -> Iterator[ThrowawayS3Server]:
    # its own process: deltalake (Rust) may wait on a request holding the GIL, which a server thread here needs
    with ThrowawayS3Server(own_process=True) as server:
        yield server


@pytest.fixture
def keys() -> tuple[str, str]:
    """Keys no log would hold by chance (moto takes any)."""
    return f"AKIA{uuid.uuid4().hex[:16].upper()}", f"secret-{uuid.uuid4().hex}"


@pytest.fixture
def bucket(s3_server: ThrowawayS3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    for name in AWS_ENV:
        monkeypatch.delenv(name, raising=False)  # only the connection (or a test's own env) may configure clients
    return s3_server.create_bucket(f"lake-{uuid.uuid4().hex[:12]}")


def connection_json(server: ThrowawayS3Server, keys: tuple[str, str]) -> str:
    extra = {"endpoint_url": server.endpoint_url, "region_name": REGION}
    return json.dumps({"conn_type": "aws", "login": keys[0], "password": keys[1], "extra": extra})


def connection_uri(server: ThrowawayS3Server, keys: tuple[str, str]) -> str:
    query = urllib.parse.urlencode({"endpoint_url": server.endpoint_url, "region_name": REGION})
    return f"aws://{urllib.parse.quote(keys[0], safe='')}:{urllib.parse.quote(keys[1], safe='')}@/?{query}"


@pytest.fixture(params=["delta", "parquet"])
def lake(
    request: pytest.FixtureRequest,
    s3_server: ThrowawayS3Server,
    bucket: str,
    keys: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> dict:
    """A lake in a fresh bucket, its keys in the Airflow connection ``my_s3`` (JSON for Delta, URI for Parquet)."""
    form = connection_json if request.param == "delta" else connection_uri
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", form(s3_server, keys))
    return {
        "type": "filesystem",
        "table_format": request.param,
        "conn_id": CONN_ID,
        "credentials": f"s3://{bucket}/lake",
        "dataset": "replica",
    }


def ops(lake: dict, table: str, **kw: Any) -> tuple[Any, Any, Any]:
    common = dict(table=table, source_conn_id="pg_source", destination=lake, **kw)
    return (
        PgFullRefreshOperator(task_id="full_refresh", **common),
        PgCdcApplyOperator(task_id="apply_changes", **common),
        PgReconcileOperator(task_id="verify", when_behind="fail", ranges=3, **common),
    )


# -- reading what landed, without the package -----------------------------------------------------------


def reader_options(server: ThrowawayS3Server) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": "reader",
        "AWS_SECRET_ACCESS_KEY": "reader",
        "AWS_ENDPOINT_URL": server.endpoint_url,
        "AWS_REGION": REGION,
        "AWS_ALLOW_HTTP": "true",
    }


def objects(server: ThrowawayS3Server, lake: dict, folder: str = "") -> list[str]:
    """The object keys under ``<lake>/<dataset>/<folder>``, relative to that folder."""
    bucket, prefix = lake["credentials"].removeprefix("s3://").split("/", 1)
    base = "/".join(p for p in [prefix, lake["dataset"], folder] if p) + "/"
    pages = server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=base)
    return sorted(o["Key"].removeprefix(base) for page in pages for o in page.get("Contents", []))


def duck(server: ThrowawayS3Server) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.register_filesystem(server.filesystem())
    return con


def current_rows(server: ThrowawayS3Server, lake: dict, table: str, key: str = "id") -> list[dict]:
    """The Delta table as it is; for Parquet, per key the row of the last file unless it is a tombstone."""
    url = f"{lake['credentials']}/{lake['dataset']}/{table}"
    if lake["table_format"] == "delta":
        from deltalake import DeltaTable

        rows = DeltaTable(url, storage_options=reader_options(server)).to_pyarrow_table().to_pylist()
        return sorted(rows, key=lambda r: r[key])
    con = duck(server)
    raw = con.sql(
        "SELECT * FROM read_parquet(?, union_by_name = true, filename = '_pg_file')", params=[f"{url}/*.parquet"]
    ).to_arrow_table()
    tomb = "_pg_tombstone" in raw.column_names
    con.register("raw", raw)
    return (
        con.sql(
            "SELECT * EXCLUDE (_pg_file, _pg_rank" + (", _pg_tombstone" if tomb else "") + ") FROM ("
            f'  SELECT *, row_number() OVER (PARTITION BY "{key}" ORDER BY _pg_file DESC) AS _pg_rank FROM raw)'
            " WHERE _pg_rank = 1" + (" AND _pg_tombstone IS NOT TRUE" if tomb else "") + f' ORDER BY "{key}"'
        )
        .to_arrow_table()
        .to_pylist()
    )


def state_row(server: ThrowawayS3Server, lake: dict, table: str) -> dict:
    url = f"{lake['credentials']}/{lake['dataset']}/_pg_replication_state/*.parquet"
    rows = (
        duck(server)
        .sql(
            "SELECT table_name, status, slot, snapshot_lsn, applied_lsn, _generation FROM read_parquet(?) "
            "WHERE table_name = ?",
            params=[url, f"public.{table}"],
        )
        .fetchall()
    )
    assert len(rows) == 1
    return dict(zip(["table_name", "status", "slot", "snapshot_lsn", "applied_lsn", "generation"], rows[0]))


def assert_same(pg_db: Any, server: ThrowawayS3Server, lake: dict, table: str, cols: list[str]) -> list[dict]:
    dest = current_rows(server, lake, table)
    got = [tuple(normal(r.get(c), c) for c in cols) for r in dest]
    want = [
        tuple(normal(v, c) for v, c in zip(row, cols)) for row in source_rows(pg_db, f"public.{table}", cols, ["id"])
    ]
    assert got == want
    return dest


def assert_no_secret(keys: tuple[str, str], *texts: str) -> None:
    for text in texts:
        for secret in keys:
            assert secret not in text
            assert urllib.parse.quote(secret, safe="") not in text


# -- the tests ---------------------------------------------------------------------------------------------


def test_snapshot_cdc_and_verify_on_s3_with_keys_from_an_airflow_connection(
    pg_db: Any,
    s3_server: ThrowawayS3Server,
    lake: dict,
    keys: tuple[str, str],
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.INFO)  # what Airflow logs at; botocore at DEBUG prints request headers
    caplog.set_level(logging.DEBUG, logger="airflow_pg_replication")
    pg_db.execute(DDL)
    for i in range(1, 7):
        insert(pg_db, i, big=i != 6)
    full, apply, verify = ops(lake, "things", slot="pgrepl_things")

    assert full.execute({})["rows"] == 6
    dest = assert_same(pg_db, s3_server, lake, "things", COLS)
    state = state_row(s3_server, lake, "things")
    assert state["status"] == "ready" and state["slot"] == "pgrepl_things"
    assert {r["_pg_lsn"] for r in dest} == {state["snapshot_lsn"]}
    landed = objects(s3_server, lake)
    assert "_pg_replication_state/public.things.parquet" in landed and "init" in landed
    if lake["table_format"] == "delta":
        assert any(k.startswith("things/_delta_log/") for k in landed)

    # inserts, updates, a delete, a key change, updates leaving TOAST values unchanged, an added column
    insert(pg_db, 7)
    pg_db.execute("UPDATE things SET amount = -1.25, tags = '{x}', doc = NULL WHERE id = 1")
    pg_db.execute("UPDATE things SET flag = NOT flag WHERE id IN (2, 6)")  # body: unchanged TOAST
    pg_db.execute("DELETE FROM things WHERE id = 3")
    pg_db.execute("UPDATE things SET id = 50 WHERE id = 5")
    pg_db.execute("ALTER TABLE things ADD COLUMN note text")
    pg_db.execute("UPDATE things SET note = 'noted' WHERE id = 4")
    assert apply.execute({})["changes"] == 7
    cols = [*COLS, "note"]
    dest = assert_same(pg_db, s3_server, lake, "things", cols)
    assert len(next(r for r in dest if r["id"] == 50)["body"]) == 12800
    after = state_row(s3_server, lake, "things")
    assert after["snapshot_lsn"] < after["applied_lsn"] == max(r["_pg_lsn"] for r in dest)
    assert verify.execute({})["ok"]

    # more deletes and updates, then a truncate and rows after it in one batch
    pg_db.execute("UPDATE things SET code = 'again', tod = '00:00:01' WHERE id IN (2, 4, 50)")
    pg_db.execute("DELETE FROM things WHERE id IN (6, 7)")
    assert apply.execute({})["changes"] == 5
    assert_same(pg_db, s3_server, lake, "things", cols)
    pg_db.execute("TRUNCATE things")
    insert(pg_db, 2)
    insert(pg_db, 10, big=False)
    apply.execute({})
    assert [r["id"] for r in assert_same(pg_db, s3_server, lake, "things", cols)] == [2, 10]
    assert apply.execute({})["changes"] == 0
    assert verify.execute({})["ok"]

    # verify reads the bucket, not a cache: a row changed behind its back is found
    if lake["table_format"] == "delta":
        from deltalake import DeltaTable

        url = f"{lake['credentials']}/replica/things"
        DeltaTable(url, storage_options=reader_options(s3_server)).update(
            new_values={"code": "tampered"}, predicate='"id" = 10'
        )
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        from airflow_pg_replication.destination.filesystem.parquet_changes import change_file_name

        row = current_rows(s3_server, lake, "things")[-1]  # a later row version of id 10, in a committed generation
        name = change_file_name(state_row(s3_server, lake, "things")["generation"], 999)
        path = f"{lake['credentials'].removeprefix('s3://')}/replica/things/{name}"
        with s3_server.filesystem().open(path, "wb") as f:
            pq.write_table(pa.Table.from_pylist([{**row, "code": "tampered"}]), f)
    with pytest.raises(NeedsAttentionError, match="changed: id=10"):
        verify.execute({})

    out, err = capfd.readouterr()
    assert_no_secret(keys, caplog.text, out, err, json.dumps(lake))


def test_crash_between_data_and_state_on_s3_reruns_to_the_same_table(
    pg_db: Any, s3_server: ThrowawayS3Server, lake: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed state write leaves the batch's data in the bucket; the re-run lists the bucket afresh (no stale
    listing), deletes a crashed Parquet attempt's file, and gives the same table with nothing doubled."""
    pg_db.execute("CREATE TABLE orders (id int PRIMARY KEY, total numeric(10,2), items text[])")
    pg_db.execute("INSERT INTO orders SELECT g, g * 2.5, ARRAY['i' || g] FROM generate_series(1, 20) g")
    full, apply, verify = ops(lake, "orders", slot="pgrepl_orders")
    cols = ["id", "total", "items"]
    full.execute({})
    before = state_row(s3_server, lake, "orders")

    real = FilesystemTableDestination.write_state
    crashes: list[Any] = []

    def write_state(self: FilesystemTableDestination, state: Any) -> None:
        if not crashes:
            crashes.append(state)
            raise RuntimeError("crash between the data and the state row")
        real(self, state)

    monkeypatch.setattr(FilesystemTableDestination, "write_state", write_state)
    pg_db.execute("UPDATE orders SET total = total + 1 WHERE id <= 5")
    pg_db.execute("DELETE FROM orders WHERE id BETWEEN 10 AND 12")
    pg_db.execute("INSERT INTO orders VALUES (100, 1, '{new}')")
    with pytest.raises(RuntimeError, match="crash between"):
        apply.execute({})
    assert state_row(s3_server, lake, "orders") == before
    assert_same(pg_db, s3_server, lake, "orders", cols)  # the data is written
    changes = [k for k in objects(s3_server, lake, "orders") if k.startswith("c-")]
    apply.execute({})
    assert_same(pg_db, s3_server, lake, "orders", cols)
    if lake["table_format"] == "parquet":  # the crashed attempt's file was replaced by the re-run's, not doubled
        assert len(changes) == 1 and [k for k in objects(s3_server, lake, "orders") if k.startswith("c-")] == changes
    assert state_row(s3_server, lake, "orders")["applied_lsn"] > before["snapshot_lsn"]
    assert verify.execute({})["ok"]


def test_keys_from_the_worker_environment_without_conn_id(
    pg_db: Any, s3_server: ThrowawayS3Server, bucket: str, keys: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No ``conn_id``: dlt, s3fs, DuckDB and deltalake all take the keys, endpoint and region from ``AWS_*``."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", keys[0])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", keys[1])
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("AWS_ALLOW_HTTP", "true")  # deltalake's own reading of the environment
    lake = {"type": "filesystem", "table_format": "delta", "credentials": f"s3://{bucket}/lake", "dataset": "replica"}
    pg_db.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    pg_db.execute("INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 5) g")
    full, apply, verify = ops(lake, "t")
    assert full.execute({})["rows"] == 5
    pg_db.execute("UPDATE t SET v = 'x' WHERE id = 1")
    pg_db.execute("DELETE FROM t WHERE id = 2")
    assert apply.execute({})["changes"] == 2
    assert [(r["id"], r["v"]) for r in current_rows(s3_server, lake, "t")] == [
        (1, "x"),
        (3, "v3"),
        (4, "v4"),
        (5, "v5"),
    ]
    assert verify.execute({})["ok"]


def test_a_lake_connection_of_another_type_or_a_uri_in_credentials_fails_without_repeating_keys(
    s3_server: ThrowawayS3Server,
    bucket: str,
    keys: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_NOT_AWS", json.dumps({"conn_type": "postgres", "login": keys[0], "password": keys[1]})
    )
    spec = {"type": "filesystem", "table_format": "parquet", "credentials": f"s3://{bucket}/lake", "conn_id": "not_aws"}
    op = PgFullRefreshOperator(task_id="full_refresh", table="public.t", source_conn_id="pg_source", destination=spec)
    with pytest.raises(NeedsAttentionError, match="must be an Airflow 'aws' connection") as e:
        op.execute({})
    assert_no_secret(keys, str(e.value))
    # a connection URI where the lake's URL belongs (what conn_id alone resolves to today) is refused, unrepeated
    uri = connection_uri(s3_server, keys)
    with pytest.raises(NeedsAttentionError, match="credentials must be the lake's URL") as e:
        FilesystemTableDestination(
            {"type": "filesystem", "table_format": "delta", "credentials": uri, "dataset": "replica"},
            table_name="public.t",
            destination_table="t",
            pipeline_name="p",
        )
    assert_no_secret(keys, str(e.value))


def test_the_registry_names_the_connection_and_the_lake_never_the_keys(bucket: str, keys: tuple[str, str]) -> None:
    """``credentials`` is the lake's URL, ``conn_id`` the connection holding its keys: the YAML holds no secret, and
    the mapping the DAGs pass to the operators is the one the tests above run with."""
    from airflow_pg_replication.registry.models import parse_registry

    text = (
        "destination:\n  type: filesystem\n  table_format: delta\n  conn_id: my_s3\n"
        f"  credentials: s3://{bucket}/lake\n  dataset: replica\ntables:\n  - table: public.t\n"
    )
    assert_no_secret(keys, text)
    registry = parse_registry(text)
    assert registry.destination.as_dict() == {
        "type": "filesystem",
        "credentials": f"s3://{bucket}/lake",
        "conn_id": "my_s3",
        "dataset": "replica",
        "table_format": "delta",
    }
