"""Test bed: throwaway PostgreSQL clusters and Airflow deployments for tests, the demo and benchmarks.

Not runtime code.
"""
