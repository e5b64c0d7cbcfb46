"""sync.reconcile.Reconciliation on its own: copies that match say so, a tampered destination is found."""

from __future__ import annotations

import duckdb
import pytest

from airflow_pg_replication.errors import NeedsAttentionError, ReplicationError
from airflow_pg_replication.sync.cdc_run import apply_changes
from airflow_pg_replication.sync.reconcile import DestinationBehind, Reconciliation
from airflow_pg_replication.sync.snapshot import snapshot_table
from tests.unit.sync.conftest import items_table, make_items


def tamper(duck, sql: str) -> None:
    with duckdb.connect(str(duck.path)) as con:
        con.execute(sql)


def test_a_loaded_copy_matches_and_tampering_is_found(source, duck):
    make_items(source, rows=40)
    table = items_table(duck)
    snapshot_table(source.database, table, with_slot=False)
    out = Reconciliation(source.database, table, ranges=4).run()
    assert out["ok"] and out["mode"] == "loaded" and out["rows"] == out["destination_rows"] == 40
    assert out["ranges"] == 4 and out["mismatched_ranges"] == [] and out["applied_lsn"] is None

    # 40 rows in 4 ranges: bounds at ids 11, 21 and 31
    tamper(duck, "UPDATE replica.items SET amount = amount + 0.01 WHERE id = 17")
    tamper(duck, "DELETE FROM replica.items WHERE id = 33")
    with pytest.raises(NeedsAttentionError) as err:
        Reconciliation(source.database, table, ranges=4).run()
    msg = str(err.value)
    assert "2 of 4 range(s) differ" in msg
    assert "changed: id=17" in msg and "missing in destination: id=33" in msg

    found = Reconciliation(source.database, table, ranges=4, fail_on_mismatch=False).run()
    assert not found["ok"] and found["destination_rows"] == 39
    bad = {
        r["range"]: (r["lower"], r["upper"], r["missing"], r["extra"], r["changed"]) for r in found["mismatched_ranges"]
    }
    assert bad == {2: (11, 21, [], [], [17]), 4: (31, None, [33], [], [])}


def test_a_cdc_copy_is_compared_only_when_it_applied_what_the_source_shows(source, duck):
    make_items(source, rows=30)
    table = items_table(duck)
    snapshot_table(source.database, table, with_slot=True)
    out = Reconciliation(source.database, table, ranges=3).run()
    assert out["ok"] and out["mode"] == "cdc" and out["rows"] == 30

    source.execute("UPDATE items SET name = 'pending' WHERE id = 2")
    with pytest.raises(DestinationBehind, match="1 changes pending; run apply_changes first"):
        Reconciliation(source.database, table).run()
    apply_changes(source.database, table)
    out = Reconciliation(source.database, table, ranges=3).run()
    assert out["ok"] and out["applied_lsn"] is not None

    tamper(duck, "INSERT INTO replica.items VALUES (999, 'extra', 1, now(), 0)")
    with pytest.raises(NeedsAttentionError, match="extra in destination: id=999"):
        Reconciliation(source.database, table, ranges=3).run()


def test_nothing_loaded_is_an_error_not_a_match(source, duck):
    make_items(source, rows=3)
    with pytest.raises(ReplicationError, match="nothing was loaded"):
        Reconciliation(source.database, items_table(duck)).run()
