"""Hooks of airflow_pg_replication."""
