"""Change logs to test on: a local directory, and a bucket on a real S3-compatible server (moto) with s3fs."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from airflow_pg_replication.changelog.store import ChangeLog
from airflow_pg_replication.testing.s3_server import ThrowawayS3Server


@pytest.fixture(scope="session")
def s3_server() -> Iterator[ThrowawayS3Server]:
    """One moto S3 server on a free loopback port for the session (in a thread)."""
    with ThrowawayS3Server() as server:
        yield server


@pytest.fixture
def s3_bucket(s3_server: ThrowawayS3Server) -> str:
    """A fresh bucket for one test."""
    return s3_server.create_bucket(f"changelog-{uuid.uuid4().hex[:12]}")


@pytest.fixture(params=["local", "s3"])
def change_log(request: pytest.FixtureRequest, tmp_path: Path) -> ChangeLog:
    """The same ChangeLog API on a local directory and on S3 (s3fs against moto)."""
    if request.param == "local":
        return ChangeLog(str(tmp_path / "changes"), "default")
    server: ThrowawayS3Server = request.getfixturevalue("s3_server")
    bucket = request.getfixturevalue("s3_bucket")
    return ChangeLog(f"s3://{bucket}/pg_replication/changes", "default", filesystem=server.filesystem())
