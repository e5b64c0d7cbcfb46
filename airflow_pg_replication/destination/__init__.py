"""Where copies land: one small interface, the native DuckDB path and dlt for every other destination."""
