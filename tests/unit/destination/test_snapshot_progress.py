"""A copy's positions, written and read back in DuckDB as the copy's commits do."""

from __future__ import annotations

import duckdb

from airflow_pg_replication.destination import snapshot_progress as sp


class _Client:
    """The two naming calls of dlt's sql client the module uses."""

    @staticmethod
    def make_qualified_table_name(name: str) -> str:
        return f'"replica"."{name}"'


def test_positions_are_replaced_at_each_commit_and_read_back():
    con = duckdb.connect()
    con.execute("CREATE SCHEMA replica")
    client = _Client()
    con.execute(sp.create_statement(client))
    positions = [(0, 0, 8, 500, True), (1, 8, None, 120, False)]
    progress = sp.SnapshotProgress("public.t", "00000003-1", 42, lambda: positions)
    for stmt in sp.record_statements(client, progress, sp.IN_PLACE):
        con.execute(*stmt)
    positions = [(0, 0, 8, 500, True), (1, 8, None, 300, True)]
    for stmt in sp.record_statements(client, progress, sp.IN_PLACE):  # the next commit replaces them
        con.execute(*stmt)
    stored = sp.read_progress(con, client, "public.t")
    assert stored is not None
    assert (stored.snapshot, stored.snapshot_lsn, stored.target) == ("00000003-1", 42, sp.IN_PLACE)
    assert stored.ranges == {0: (500, True), 1: (300, True)}
    assert stored.pages == {0: (0, 8), 1: (8, None)}
    assert stored.rows == 800
    con.execute(*sp.clear_statement(client, "public.t"))
    assert sp.read_progress(con, client, "public.t") is None


def test_no_progress_table_means_no_interrupted_copy():
    assert sp.read_progress(duckdb.connect(), _Client(), "public.t") is None
