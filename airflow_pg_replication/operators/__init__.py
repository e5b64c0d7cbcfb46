"""Operators of airflow_pg_replication."""
