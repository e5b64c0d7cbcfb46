"""A lake on object storage: the keys that reach its bucket, in the form each reader and writer of the lake takes.

The registry names the lake's URL in ``credentials`` and the bucket's keys by ``conn_id`` (an Airflow
``aws`` connection); keys never stand in the YAML. The Airflow shells look the connection up and put
its fields here (:func:`with_connection`), so nothing below them imports Airflow::

    {type: filesystem, credentials: s3://bucket/lake, conn_id: my_s3}
        ─▶ shells: BaseHook.get_connection("my_s3") ─▶ with_connection(spec, conn)
        ─▶ {type: filesystem, credentials: s3://bucket/lake, storage_credentials: StorageCredentials(…)}
            ├─▶ dlt's filesystem destination   credentials=AwsCredentials(…)   (snapshots, dlt's bookkeeping)
            ├─▶ fsspec (s3fs)                  Lake: listings, state files, Parquet change files, DuckDB reads
            └─▶ deltalake (object_store)       storage_options: merges, deletes, truncates, Delta reads

Without ``conn_id`` the libraries use the worker's own credentials (``AWS_ACCESS_KEY_ID``/…, an instance
role, ``~/.aws``); the region and endpoint are then read from ``AWS_REGION``/``AWS_DEFAULT_REGION`` and
``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL`` (:meth:`StorageCredentials.from_environment`).

A :class:`StorageCredentials` never shows its keys: its ``repr`` masks them, so a spec or a table printed
in a log or an error keeps them out.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from airflow_pg_replication.errors import NeedsAttentionError

__all__ = [
    "STORAGE_CREDENTIALS",
    "StorageCredentials",
    "is_s3_url",
    "storage_credentials",
    "with_connection",
]

#: The key of a filesystem ``destination`` mapping that holds its resolved :class:`StorageCredentials`
#: (put there by the Airflow shells from ``conn_id``; never written in a registry).
STORAGE_CREDENTIALS = "storage_credentials"

S3_SCHEMES = ("s3", "s3a")
#: An Airflow ``aws`` connection's extras read here; any other extra that changes how keys are obtained is refused
#: (the keys would silently come from somewhere else).
_KNOWN_EXTRAS = frozenset(
    {
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_session_token",
        "endpoint_url",
        "region_name",
        "service_config",
        "verify",
        "botocore_config",
        "config_kwargs",
    }
)
_KEY_SOURCES = ("role_arn", "profile_name", "assume_role_method", "assume_role_kwargs", "session_kwargs")
_MASK = "***"


def is_s3_url(url: str) -> bool:
    return urlsplit(url).scheme.lower() in S3_SCHEMES


@dataclass(frozen=True)
class StorageCredentials:
    """An S3 bucket's keys, endpoint and region; any of them may be None (the library's default chain decides)."""

    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    endpoint_url: str | None = None
    region_name: str | None = None
    #: where they come from, for messages: ``connection 'my_s3'`` or ``environment``
    source: str = "environment"

    def __repr__(self) -> str:
        keys = _MASK if self.access_key_id or self.secret_access_key else "default chain"
        return (
            f"StorageCredentials({self.source}, keys={keys}, endpoint_url={self.endpoint_url!r}, "
            f"region_name={self.region_name!r})"
        )

    __str__ = __repr__

    @property
    def has_keys(self) -> bool:
        return bool(self.access_key_id and self.secret_access_key)

    @classmethod
    def from_connection(cls, conn: Any, conn_id: str | None = None) -> StorageCredentials:
        """From an Airflow ``aws`` connection (anything with ``conn_type``, ``login``, ``password``, ``extra_dejson``,
        as ``BaseHook.get_connection`` returns): login and password are the access key id and the secret; the extras
        ``endpoint_url`` (or ``service_config.s3.endpoint_url``), ``region_name`` and ``aws_session_token`` are read."""
        name = conn_id or getattr(conn, "conn_id", None) or "?"
        conn_type = (getattr(conn, "conn_type", None) or "").lower()
        if conn_type not in ("aws", "s3"):
            raise NeedsAttentionError(
                f"destination type filesystem: conn_id {name!r} is a {conn_type or 'untyped'!r} connection; it must "
                "be an Airflow 'aws' connection (login: access key id, password: secret access key, extra: "
                "endpoint_url, region_name). For gs:// or az:// leave conn_id out and give the workers their "
                "credentials through the environment"
            )
        extra = _extra(conn)
        refused = sorted(k for k in extra if k in _KEY_SOURCES)
        if refused:
            raise NeedsAttentionError(
                f"destination type filesystem: connection {name!r} sets {', '.join(refused)} in its extra; a lake "
                "connection takes static keys only (login, password, aws_session_token). Leave conn_id out to use "
                "the worker's own credentials (instance role, AWS_* environment, ~/.aws)"
            )
        service = extra.get("service_config") or {}
        s3_service = service.get("s3") if isinstance(service, Mapping) else None
        endpoint = (s3_service or {}).get("endpoint_url") if isinstance(s3_service, Mapping) else None
        return cls(
            access_key_id=_text(getattr(conn, "login", None)) or _text(extra.get("aws_access_key_id")),
            secret_access_key=_text(getattr(conn, "password", None)) or _text(extra.get("aws_secret_access_key")),
            session_token=_text(extra.get("aws_session_token")),
            endpoint_url=_text(endpoint) or _text(extra.get("endpoint_url")),
            region_name=_text(extra.get("region_name")),
            source=f"connection {name!r}",
        )

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> StorageCredentials:
        """Endpoint and region from the worker's environment; the keys are left to each library's default chain."""
        env = os.environ if environ is None else environ
        return cls(
            endpoint_url=env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None,
            region_name=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
        )

    # -- each library's form ---------------------------------------------------------------------------

    def fsspec_options(self) -> dict[str, Any]:
        """``s3fs.S3FileSystem`` keyword arguments. Its own instance without a listings cache: dlt and deltalake
        write the same folders through other clients, so a cached listing would miss their files."""
        options: dict[str, Any] = {"skip_instance_cache": True, "use_listings_cache": False}
        if self.has_keys:
            options.update(key=self.access_key_id, secret=self.secret_access_key)
            if self.session_token:
                options["token"] = self.session_token
        if self.endpoint_url:
            options["endpoint_url"] = self.endpoint_url
            # S3-compatible servers (MinIO, moto, R2, …) do not all answer botocore's new default checksums
            options["config_kwargs"] = {
                "request_checksum_calculation": "when_required",
                "response_checksum_validation": "when_required",
            }
        if self.region_name:
            options["client_kwargs"] = {"region_name": self.region_name}
        return options

    def delta_options(self) -> dict[str, str]:
        """``deltalake`` ``storage_options`` (the ``object_store`` crate's keys). deltalake ≥ 1.0 commits with S3's
        conditional put (``If-None-Match``), so no locking provider and no ``AWS_S3_ALLOW_UNSAFE_RENAME``."""
        options: dict[str, str] = {}
        if self.has_keys:
            options["AWS_ACCESS_KEY_ID"] = str(self.access_key_id)
            options["AWS_SECRET_ACCESS_KEY"] = str(self.secret_access_key)
            if self.session_token:
                options["AWS_SESSION_TOKEN"] = self.session_token
        if self.endpoint_url:
            options["AWS_ENDPOINT_URL"] = self.endpoint_url
            if self.endpoint_url.lower().startswith("http://"):
                options["AWS_ALLOW_HTTP"] = "true"
        if self.region_name:
            options["AWS_REGION"] = self.region_name
        return options

    def dlt_credentials(self) -> Any:
        """dlt's ``AwsCredentials`` for its filesystem destination (the keys left out resolve from botocore's default
        chain)."""
        from dlt.common.configuration.specs import AwsCredentials

        creds = AwsCredentials()
        creds.endpoint_url = self.endpoint_url
        creds.region_name = self.region_name
        if self.has_keys:
            creds.aws_access_key_id = str(self.access_key_id)
            creds.aws_secret_access_key = str(self.secret_access_key)
            creds.aws_session_token = self.session_token
            creds.resolve()
        return creds

    def secrets(self) -> list[str]:
        """The values that must never appear in a log (for tests and redaction)."""
        return [s for s in (self.access_key_id, self.secret_access_key, self.session_token) if s]


def storage_credentials(spec: Mapping[str, Any], bucket_url: str) -> StorageCredentials | None:
    """The spec's resolved credentials, the environment's for an ``s3://`` lake without them, None for a local one.

    Raises :class:`NeedsAttentionError` when a ``conn_id`` was not resolved (a caller below the Airflow shells
    cannot look up a connection) or when keys are given for a lake that is not on S3.
    """
    given = spec.get(STORAGE_CREDENTIALS)
    if given is not None and not isinstance(given, StorageCredentials):
        raise NeedsAttentionError(
            f"destination type filesystem: {STORAGE_CREDENTIALS} is set by the Airflow operators from conn_id; "
            "name an Airflow connection with conn_id instead"
        )
    if spec.get("conn_id"):
        raise NeedsAttentionError(
            f"destination type filesystem: conn_id {spec['conn_id']!r} was not resolved into the lake's "
            "credentials; use the package's operators (they look the Airflow connection up), or pass "
            f"{STORAGE_CREDENTIALS}=StorageCredentials.from_connection(conn)"
        )
    if not is_s3_url(bucket_url):
        if given is not None and "://" in bucket_url and not bucket_url.startswith("file://"):
            raise NeedsAttentionError(
                f"destination type filesystem: a conn_id gives keys for s3:// lakes only, not "
                f"{urlsplit(bucket_url).scheme}://; leave conn_id out and give the workers their credentials "
                "through the environment"
            )
        return None  # local folders need none; gs://, az://, …: fsspec's and deltalake's own environment lookup
    return given if given is not None else StorageCredentials.from_environment()


def with_connection(spec: Mapping[str, Any], conn_id: str, get_connection: Callable[[str], Any]) -> dict[str, Any]:
    """A filesystem ``destination`` mapping with ``conn_id`` resolved (for the Airflow shells): ``credentials``
    stays the lake's URL, the connection's keys go to :data:`STORAGE_CREDENTIALS`. ``get_connection`` is
    Airflow's ``BaseHook.get_connection``."""
    out = {k: v for k, v in spec.items() if k != "conn_id"}
    out[STORAGE_CREDENTIALS] = StorageCredentials.from_connection(get_connection(conn_id), conn_id)
    return out


def _extra(conn: Any) -> dict[str, Any]:
    extra = getattr(conn, "extra_dejson", None)
    return dict(extra) if isinstance(extra, Mapping) else {}


def _text(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None
