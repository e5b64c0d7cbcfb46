"""The columns a replica table carries besides the source's (design.md, Contract 4)."""

#: Commit LSN of the change that last wrote the row (the snapshot's LSN for snapshot rows).
LSN_COLUMN = "_pg_lsn"
#: With ``deletes: soft``: when the source deleted the row (NULL while it lives).
DELETED_AT_COLUMN = "_pg_deleted_at"
