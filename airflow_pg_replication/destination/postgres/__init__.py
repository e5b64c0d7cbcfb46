"""PostgreSQL destination: psycopg straight in, the source's own column types, the data and its state row in one
transaction (no dlt)."""
