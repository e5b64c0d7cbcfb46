"""Test bed: throwaway PostgreSQL clusters and Airflow deployments for tests, the demo and benchmarks; not runtime code."""
