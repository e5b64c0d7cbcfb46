"""Triggers of airflow_pg_replication."""
