"""The replication protocols, no Airflow: snapshot and cutover, CDC batches, incremental refresh, reconcile."""
