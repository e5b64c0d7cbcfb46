"""DuckDB: Arrow straight into the file, its reader/writer lock, and readers for people."""
