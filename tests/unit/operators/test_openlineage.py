"""Operators report OpenLineage input (source table) and output (destination table) datasets."""

from __future__ import annotations

import pytest

from airflow_pg_replication import PgCdcApplyOperator, PgFullRefreshOperator

pytest.importorskip("airflow.providers.openlineage", reason="OpenLineage provider is an optional extra")


@pytest.mark.parametrize("operator", [PgFullRefreshOperator, PgCdcApplyOperator])
def test_lineage_names_source_and_destination(operator, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_PG_SOURCE", "postgresql://replicator@db.example.com:5433/shop")
    op = operator(
        task_id="t",
        table="sales.events",
        destination={"type": "duckdb", "credentials": "/data/w.duckdb", "dataset": "replica"},
    )
    lineage = op.get_openlineage_facets_on_complete(None)
    assert [(d.namespace, d.name) for d in lineage.inputs] == [("postgres://db.example.com:5433", "shop.sales.events")]
    assert [(d.namespace, d.name) for d in lineage.outputs] == [("duckdb:///data/w.duckdb", "replica.sales__events")]
