"""dlt's ``filesystem`` destination: a table as a Delta table (merged in place) or as plain Parquet files
(an append-only change layout read through its current-state query). See ``docs/destinations-filesystem.md``."""
