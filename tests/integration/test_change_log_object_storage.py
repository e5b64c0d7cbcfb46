"""The change log on object storage built the way Airflow builds it: an ``aws`` connection from the environment,
``ObjectStoragePath(url, conn_id=...).fs``, against a real S3-compatible server (moto) started here.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from airflow_pg_replication.changelog.store import ChangeLog
from airflow_pg_replication.errors import NeedsAttentionError
from airflow_pg_replication.operators.change_log_storage import change_log_filesystem, open_change_log
from airflow_pg_replication.testing.s3_server import ThrowawayS3Server
from tests.unit.changelog.transactions import commit_lsns_of, transactions, tx_lsn

T = "public.customers"


@pytest.fixture(scope="module")
def s3_server() -> Iterator[ThrowawayS3Server]:
    with ThrowawayS3Server() as server:
        yield server


@pytest.fixture
def bucket(s3_server: ThrowawayS3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket, and the Airflow connection ``aws_test`` to the server, given as an env var."""
    for name in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL"]:
        monkeypatch.delenv(name, raising=False)  # only the connection may configure the client
    monkeypatch.setenv("AIRFLOW_CONN_AWS_TEST", s3_server.airflow_connection_json())
    return s3_server.create_bucket(f"pgrepl-{uuid.uuid4().hex[:12]}")


def test_object_storage_path_fs_from_an_airflow_connection_runs_the_change_log(
    s3_server: ThrowawayS3Server, bucket: str
) -> None:
    from airflow.sdk import ObjectStoragePath

    url = f"s3://{bucket}/pg_replication/changes"
    fs = ObjectStoragePath(url, conn_id="aws_test").fs
    log = ChangeLog(url, "default", filesystem=fs)
    info = log.write_segment(T, **transactions(0, 3).kwargs())
    log.write_segment(T, **transactions(2, 3).kwargs())  # a capture's rewrite after a crash

    got = log.read(T, after_lsn=None, max_messages=10**6)
    assert commit_lsns_of(got.commit_lsn, got.messages) == [tx_lsn(n) for n in range(5)]
    keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert f"pg_replication/changes/default/{T}/{info.name}" in keys
    assert log.delete_applied(T, tx_lsn(4)) == 2 and log.segments(T) == []


def test_open_change_log_with_a_conn_id_uses_the_connection(s3_server: ThrowawayS3Server, bucket: str) -> None:
    log = open_change_log(f"s3://{bucket}/changes", "orders", conn_id="aws_test")
    assert not log.is_local and log.compression == "zstd"
    assert log.describe().startswith(f"change log of slot group 'orders' at s3://{bucket}/changes")
    assert "testing" not in log.describe()  # the connection's login and password stay out of logs
    log.write_segment(T, **transactions(0, 2).kwargs())
    assert log.tables() == [T]
    # another worker, its own filesystem from the same connection, sees the segment
    assert open_change_log(f"s3://{bucket}/changes", "orders", conn_id="aws_test").segments(T) == log.segments(T)


def test_local_change_logs_need_no_filesystem(tmp_path: Path) -> None:
    assert change_log_filesystem(str(tmp_path)) is None
    assert change_log_filesystem(f"file://{tmp_path}", conn_id="ignored") is None
    log = open_change_log(f"file://{tmp_path}/changes", "default")
    assert log.is_local and log.compression is None
    log.write_segment(T, **transactions(0, 1).kwargs())
    assert (tmp_path / "changes" / "default" / T).is_dir()


def test_a_scheme_without_its_packages_says_what_to_install() -> None:
    with pytest.raises(NeedsAttentionError, match=r"gs:// needs `pip install gcsfs apache-airflow-providers-google`"):
        change_log_filesystem("gs://bucket/changes", conn_id="google_cloud_default")
    with pytest.raises(NeedsAttentionError, match="no filesystem for nosuch://"):
        change_log_filesystem("nosuch://bucket/changes")


def test_s3_names_the_extra_when_its_packages_are_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow_pg_replication.operators import change_log_storage

    monkeypatch.setattr(change_log_storage, "_importable", lambda module: module != "s3fs")
    with pytest.raises(NeedsAttentionError) as e:
        change_log_filesystem("s3://bucket/changes", conn_id="aws_test")
    assert "`pip install 'airflow-pg-replication[s3]'` (s3fs, apache-airflow-providers-amazon)" in str(e.value)
    assert "missing here: s3fs" in str(e.value)
