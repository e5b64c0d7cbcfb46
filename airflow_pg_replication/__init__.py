"""Replicate PostgreSQL tables into any dlt destination from Apache Airflow: snapshot, CDC, incremental."""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

# Public names, imported on first use so that `import airflow_pg_replication` stays light at DAG parse time.
_EXPORTS = {
    "load_registry": "airflow_pg_replication.registry.models",
    "build_dags": "airflow_pg_replication.dag_factory",
    "PgFullRefreshOperator": "airflow_pg_replication.operators.full_refresh",
    "PgIncrementalOperator": "airflow_pg_replication.operators.incremental",
    "PgCdcApplyOperator": "airflow_pg_replication.operators.cdc_apply",
    "PgCaptureOperator": "airflow_pg_replication.operators.capture",
    "PgSlotLagSensor": "airflow_pg_replication.sensors.slot_lag",
    "PgReconcileOperator": "airflow_pg_replication.operators.reconcile",
    "PgReplicationHook": "airflow_pg_replication.hooks.replication",
    "read_warehouse": "airflow_pg_replication.destination.duckdb.readers",
    "query_warehouse": "airflow_pg_replication.destination.duckdb.readers",
}

__all__ = [*_EXPORTS, "get_provider_info"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'airflow_pg_replication' has no attribute {name!r}")


def get_provider_info() -> dict[str, Any]:
    """Provider metadata for Airflow's `apache_airflow_provider` entry point."""
    return {
        "package-name": "airflow-pg-replication",
        "name": "PostgreSQL Replication",
        "description": "Replicate PostgreSQL tables (snapshot + logical-replication CDC, or incremental) "
        "into DuckDB or any dlt destination.",
        "versions": [__version__],
        "hooks": [
            {
                "integration-name": "PostgreSQL Replication",
                "python-modules": ["airflow_pg_replication.hooks.replication"],
            }
        ],
        "operators": [
            {
                "integration-name": "PostgreSQL Replication",
                "python-modules": [
                    "airflow_pg_replication.operators.full_refresh",
                    "airflow_pg_replication.operators.cdc_apply",
                    "airflow_pg_replication.operators.capture",
                    "airflow_pg_replication.operators.incremental",
                    "airflow_pg_replication.operators.reconcile",
                ],
            }
        ],
        "sensors": [
            {
                "integration-name": "PostgreSQL Replication",
                "python-modules": ["airflow_pg_replication.sensors.slot_lag"],
            }
        ],
        "triggers": [
            {
                "integration-name": "PostgreSQL Replication",
                "python-modules": ["airflow_pg_replication.triggers.slot_lag"],
            }
        ],
    }
