"""A slot group's ``change_log`` setting (+ ``change_log_conn_id``) -> the filesystem its ChangeLog runs on.

"/data/pg_replication/changes", "file:///…"  ─▶ None (local: plain os calls, fsync)
"s3://bucket/prefix", conn_id="aws_default"  ─▶ ObjectStoragePath(url, conn_id=…).fs  (s3fs, configured
                                                from the Airflow connection)
"s3://bucket/prefix", no conn_id             ─▶ fsspec.url_to_fs(url)  (the worker's own credentials)
"""

from __future__ import annotations

import importlib.util
from typing import Any

from airflow_pg_replication.changelog.store import ChangeLog
from airflow_pg_replication.errors import NeedsAttentionError

__all__ = ["change_log_filesystem", "is_local_change_log", "open_change_log"]

# scheme -> (Python modules it needs, how to install them)
_NEEDS: dict[str, tuple[tuple[str, ...], str]] = {
    "s3": (
        ("s3fs", "airflow.providers.amazon"),
        "`pip install 'airflow-pg-replication[s3]'` (s3fs, apache-airflow-providers-amazon)",
    ),
    "gs": (("gcsfs", "airflow.providers.google"), "`pip install gcsfs apache-airflow-providers-google`"),
    "abfs": (
        ("adlfs", "airflow.providers.microsoft.azure"),
        "`pip install adlfs apache-airflow-providers-microsoft-azure`",
    ),
}
_SCHEME_ALIASES = {"s3a": "s3", "gcs": "gs", "az": "abfs", "abfss": "abfs"}
# How Airflow's ObjectStoragePath and fsspec say that they know no filesystem for a scheme.
_NO_FILESYSTEM = ("No filesystem registered", "Unsupported filesystem", "Protocol not known")
_PROVIDER_MODULE = {"airflow.providers.amazon", "airflow.providers.google", "airflow.providers.microsoft.azure"}


def is_local_change_log(change_log: str) -> bool:
    """A path (or ``file://`` URL) on this worker's disk, not an object-storage URL."""
    return "://" not in change_log or change_log.startswith("file://")


def change_log_filesystem(change_log: str, conn_id: str | None = None) -> Any:
    """The fsspec filesystem for ``change_log``, or None for a local path.

    With ``conn_id`` the filesystem is configured from that Airflow connection (as
    ``ObjectStoragePath`` does); without one, fsspec uses the worker's environment (instance
    role, ``~/.aws``, …). Raises NeedsAttentionError naming the packages a scheme needs.
    """
    if is_local_change_log(change_log):
        return None
    scheme = change_log.split("://", 1)[0].lower()
    _require_packages(change_log, scheme, with_connection=bool(conn_id))
    try:
        if conn_id:
            from airflow.sdk import ObjectStoragePath

            return ObjectStoragePath(change_log, conn_id=conn_id).fs
        import fsspec

        return fsspec.url_to_fs(change_log)[0]
    except ImportError as e:
        raise NeedsAttentionError(f"change_log {change_log!r}: {e}; install it on every worker") from e
    except ValueError as e:
        if any(phrase in str(e) for phrase in _NO_FILESYSTEM):
            raise NeedsAttentionError(
                f"change_log {change_log!r}: no filesystem for {scheme}:// ({e}); use a local path, "
                "s3://, gs:// or abfs://, with its packages installed on every worker"
            ) from e
        raise


def open_change_log(
    change_log: str, group: str, conn_id: str | None = None, *, compression: str | None = "auto"
) -> ChangeLog:
    """The ChangeLog of slot group ``group`` at ``change_log`` (a local path or an object-storage URL)."""
    filesystem = change_log_filesystem(change_log, conn_id)
    return ChangeLog(change_log, group, filesystem=filesystem, compression=compression)


def _require_packages(change_log: str, scheme: str, *, with_connection: bool) -> None:
    needs = _NEEDS.get(_SCHEME_ALIASES.get(scheme, scheme))
    if needs is None:
        return  # another fsspec filesystem: fsspec says what it lacks
    modules, install = needs
    wanted = [m for m in modules if with_connection or m not in _PROVIDER_MODULE]
    missing = [m for m in wanted if not _importable(m)]
    if missing:
        raise NeedsAttentionError(
            f"change_log {change_log!r}: {scheme}:// needs {install} on every worker; "
            f"missing here: {', '.join(missing)}"
        )


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False
