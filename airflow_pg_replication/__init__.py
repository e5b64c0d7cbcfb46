"""Replicate PostgreSQL tables into any dlt destination from Apache Airflow."""
