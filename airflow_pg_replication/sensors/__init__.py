"""Sensors of airflow_pg_replication."""
