"""The CDC benchmark's diagnostics: decode and fold of a whole slot alone, and an apply loop's cProfile cost centres."""

from __future__ import annotations

import time
from typing import Any

from profiling import cum, print_centres, print_top

KEY = "customer_id"


def decode_fold_ladder(rows: list) -> list[tuple[str, float]]:
    """Decode and fold of the whole slot content in one go: per message, then column-wise."""
    from airflow_pg_replication.changes.columnar_fold import fold_columnar
    from airflow_pg_replication.changes.reference_fold import ChangeFolder
    from airflow_pg_replication.source.pgoutput import decode

    names = {("public", "customers")}
    t0 = time.monotonic()
    msgs = [decode(data) for _lsn, data in rows]
    dec = time.monotonic() - t0
    folder = ChangeFolder([KEY], relation_names=names)
    t0 = time.monotonic()
    for m in msgs:
        folder.feed(m)
    fold = time.monotonic() - t0
    b = folder.batch
    data = [d for _lsn, d in rows]
    t0 = time.monotonic()
    cb = fold_columnar(data, [KEY], applied_lsn=None, relation_names=names)
    col = time.monotonic() - t0
    what = "not eligible, fell back" if cb is None else f"{len(cb):,} keys"
    return [
        (f"pgoutput.decode of all {len(msgs):,} messages (per-message path)", dec),
        (f"ChangeFolder.feed of all ({b.changes:,} changes -> {len(b.rows):,} keys)", fold),
        (f"columnar_fold.fold_columnar of all (decode + fold column-wise; {what})", col),
    ]


def print_profile(calls: list[dict], s: Any, wall: float) -> None:
    """The top of the profile, then chosen cost centres, as shares of the profiled loop."""
    print(
        f"\ncProfile of the in-process apply loop ({sum(c['changes'] for c in calls):,} changes, {len(calls)} calls;"
        f" {wall:.2f} s under the profiler, main thread only):"
    )
    print("Top 30 by cumulative time:")
    print_top(s, 30, total=wall)
    pkg = "airflow_pg_replication/"
    rows = [
        ("SourceDatabase.peek_change_chunks (ADBC read)", cum(s, pkg + "source/database.py", "peek_change_chunks")),
        ("columnar_fold.fold_columnar (decode + fold)", cum(s, pkg + "changes/columnar_fold.py", "fold_columnar")),
        ("pgoutput.decode (per-message path)", cum(s, pkg + "source/pgoutput.py", "decode")),
        ("ChangeFolder.feed (per-message fold)", cum(s, pkg + "changes/reference_fold.py", "feed")),
        ("typed_batch.type_columnar_batch (typing)", cum(s, pkg + "changes/typed_batch.py", "type_columnar_batch")),
        (
            "batch_write.write_typed_batch (kept values, write)",
            cum(s, pkg + "sync/batch_write.py", "write_typed_batch"),
        ),
        (
            "batch_write.write_change_batch (per-message path)",
            cum(s, pkg + "sync/batch_write.py", "write_change_batch"),
        ),
        ("  type_map.text_to_arrow (type conversion)", cum(s, pkg + "source/type_map.py", "text_to_arrow")),
        ("  DuckDbTableDestination.apply_batch", cum(s, pkg + "destination/duckdb/table.py", "apply_batch")),
        ("    NativeDuckDb.merge (one DuckDB transaction)", cum(s, pkg + "destination/duckdb/native.py", "merge")),
        ("  DltTableDestination.run (a dlt pipeline run)", cum(s, pkg + "destination/dlt_table.py", "run")),
        ("dlt config resolution", cum(s, "dlt/common/configuration/resolve.py", "resolve_configuration")),
        ("waiting on threads (lock.acquire)", cum(s, "~", "<method 'acquire' of '_thread.lock' objects>")),
    ]
    print("\nSelected cost centres from the profile (cumulative, % of profiled loop):")
    print_centres(rows, wall)
