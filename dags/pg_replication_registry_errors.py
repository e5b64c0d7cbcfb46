"""Airflow DAG file that builds no DAG: it fails to import while a registry table entry is broken.

Airflow shows that failure, with file, line and key of each broken entry, among its import
errors; ``pg_replication.py`` still loads every good table's DAG. (Airflow's DAG discovery only
reads files that mention "airflow" and "dag", as this docstring does.)
"""

from __future__ import annotations

from pathlib import Path

from airflow_pg_replication.dag_factory import raise_registry_errors, registry_path

raise_registry_errors(registry_path(Path(__file__).parent))
