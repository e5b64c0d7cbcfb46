"""A lake's object-storage credentials without a server: an Airflow ``aws`` connection's fields into each library's
options, the environment's endpoint and region, keys never shown, and the specs that are refused."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from airflow_pg_replication.destination.factory import table_destination
from airflow_pg_replication.destination.filesystem.object_storage import (
    STORAGE_CREDENTIALS,
    StorageCredentials,
    storage_credentials,
    with_connection,
)
from airflow_pg_replication.destination.filesystem.table import FilesystemTableDestination, bucket_url
from airflow_pg_replication.errors import NeedsAttentionError

KEY, SECRET = "AKIAUNITTESTKEY0001", "unit-secret-value"


def aws(**extra: object) -> SimpleNamespace:
    """What ``BaseHook.get_connection`` gives for an ``aws`` connection (the fields read here)."""
    return SimpleNamespace(conn_id="my_s3", conn_type="aws", login=KEY, password=SECRET, extra_dejson=extra)


def test_an_aws_connection_becomes_each_librarys_options() -> None:
    creds = StorageCredentials.from_connection(aws(endpoint_url="http://127.0.0.1:9000", region_name="eu-west-1"))
    assert creds.fsspec_options() == {
        "skip_instance_cache": True,
        "use_listings_cache": False,
        "key": KEY,
        "secret": SECRET,
        "endpoint_url": "http://127.0.0.1:9000",
        "config_kwargs": {
            "request_checksum_calculation": "when_required",
            "response_checksum_validation": "when_required",
        },
        "client_kwargs": {"region_name": "eu-west-1"},
    }
    assert creds.delta_options() == {
        "AWS_ACCESS_KEY_ID": KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
        "AWS_ALLOW_HTTP": "true",
        "AWS_REGION": "eu-west-1",
    }
    dlt_creds = creds.dlt_credentials()
    assert (dlt_creds.aws_access_key_id, dlt_creds.aws_secret_access_key) == (KEY, SECRET)
    assert (dlt_creds.endpoint_url, dlt_creds.region_name) == ("http://127.0.0.1:9000", "eu-west-1")
    assert dlt_creds.is_resolved()


def test_keys_in_extras_a_session_token_and_the_s3_service_endpoint() -> None:
    conn = SimpleNamespace(
        conn_type="aws",
        login=None,
        password=None,
        extra_dejson={
            "aws_access_key_id": KEY,
            "aws_secret_access_key": SECRET,
            "aws_session_token": "tok",
            "endpoint_url": "https://generic.example",
            "service_config": {"s3": {"endpoint_url": "https://s3.example"}},
        },
    )
    creds = StorageCredentials.from_connection(conn, "lake")
    assert (creds.access_key_id, creds.session_token, creds.endpoint_url) == (KEY, "tok", "https://s3.example")
    assert creds.fsspec_options()["token"] == "tok" and creds.delta_options()["AWS_SESSION_TOKEN"] == "tok"
    assert "AWS_ALLOW_HTTP" not in creds.delta_options()


def test_keys_never_show() -> None:
    creds = StorageCredentials.from_connection(aws(region_name="us-east-1"))
    for text in (repr(creds), str(creds), repr({STORAGE_CREDENTIALS: creds}), f"{creds}"):
        assert KEY not in text and SECRET not in text
    assert "connection 'my_s3'" in repr(creds) and "keys=***" in repr(creds)
    assert creds.secrets() == [KEY, SECRET]


def test_other_connection_types_and_key_sources_are_refused_without_repeating_keys() -> None:
    with pytest.raises(NeedsAttentionError, match="must be an Airflow 'aws' connection") as e:
        StorageCredentials.from_connection(SimpleNamespace(conn_type="postgres", login=KEY, password=SECRET))
    assert SECRET not in str(e.value)
    with pytest.raises(NeedsAttentionError, match="sets role_arn in its extra"):
        StorageCredentials.from_connection(aws(role_arn="arn:aws:iam::1:role/r"))


def test_without_a_connection_the_environment_gives_endpoint_and_region() -> None:
    creds = StorageCredentials.from_environment(
        {"AWS_ENDPOINT_URL": "http://x:1", "AWS_ENDPOINT_URL_S3": "http://s3:2", "AWS_DEFAULT_REGION": "r1"}
    )
    assert (creds.endpoint_url, creds.region_name, creds.has_keys) == ("http://s3:2", "r1", False)
    assert "AWS_ACCESS_KEY_ID" not in creds.delta_options() and "key" not in creds.fsspec_options()
    assert not creds.dlt_credentials().is_resolved()  # dlt resolves the keys from botocore's default chain


def test_which_specs_get_credentials(tmp_path: Path) -> None:
    given = StorageCredentials.from_connection(aws())
    assert storage_credentials({STORAGE_CREDENTIALS: given}, "s3://b/lake") is given
    assert storage_credentials({}, "s3://b/lake") == StorageCredentials.from_environment()
    assert storage_credentials({}, str(tmp_path)) is None
    assert storage_credentials({STORAGE_CREDENTIALS: given}, tmp_path.as_uri()) is None
    with pytest.raises(NeedsAttentionError, match="conn_id 'my_s3' was not resolved"):
        storage_credentials({"conn_id": "my_s3"}, "s3://b/lake")
    with pytest.raises(NeedsAttentionError, match="set by the Airflow operators"):
        storage_credentials({STORAGE_CREDENTIALS: {"key": KEY}}, "s3://b/lake")
    with pytest.raises(NeedsAttentionError, match="keys for s3:// lakes only, not gs://"):
        storage_credentials({STORAGE_CREDENTIALS: given}, "gs://b/lake")


def test_with_connection_keeps_the_lake_url_and_drops_conn_id() -> None:
    spec = {"type": "filesystem", "credentials": "s3://b/lake", "conn_id": "my_s3", "table_format": "delta"}
    out = with_connection(spec, "my_s3", lambda conn_id: aws())
    assert out["credentials"] == "s3://b/lake" and "conn_id" not in out
    assert isinstance(out[STORAGE_CREDENTIALS], StorageCredentials) and out[STORAGE_CREDENTIALS].has_keys
    dest = table_destination(
        {**out, "dataset": "replica"}, table_name="public.t", destination_table="t", pipeline_name="p"
    )
    assert isinstance(dest, FilesystemTableDestination) and dest.storage is out[STORAGE_CREDENTIALS]
    assert dest.lake.delta_options == out[STORAGE_CREDENTIALS].delta_options()
    assert dest.describe() == "replica.t (delta) in filesystem s3://b/lake"


def test_a_url_with_keys_in_credentials_is_refused_unrepeated() -> None:
    for url in (f"aws://{KEY}:{SECRET}@/?region_name=x", f"s3://{KEY}:{SECRET}@bucket/lake"):
        with pytest.raises(NeedsAttentionError, match="credentials must be the lake's URL") as e:
            bucket_url({"credentials": url})
        assert KEY not in str(e.value) and SECRET not in str(e.value)
    assert bucket_url({"credentials": "s3://bucket/lake"}) == "s3://bucket/lake"
