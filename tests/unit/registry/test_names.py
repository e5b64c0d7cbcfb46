"""Unit tests for airflow_pg_replication.registry.names: identifier rules and derived names."""

from __future__ import annotations

import hashlib
import re

import pytest

from airflow_pg_replication.registry import names as naming


@pytest.mark.parametrize("name", ["customers", "Customers", "_x", "a1", "a$b", "T_2$", "x" * 100])
def test_valid_names(name):
    assert naming.is_valid_name(name)
    assert naming.check_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "1abc", "a b", "a;b", "a;drop table x", 'a"b', "a'b", "a.b", "a-b", "é", "abc\n", " abc", "$a", None, 12],
)
def test_invalid_names(name):
    assert not naming.is_valid_name(name)
    with pytest.raises(ValueError, match=re.escape("[A-Za-z_][A-Za-z0-9_$]*")):
        naming.check_name(name, "column name")


def test_check_name_error_names_the_bad_name_and_what_it_is():
    with pytest.raises(ValueError, match=r"invalid column name 'a b': it must match \[A-Za-z_\]"):
        naming.check_name("a b", "column name")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("customers", ("public", "customers")),
        ("public.customers", ("public", "customers")),
        ("sales.events", ("sales", "events")),
        ("Sales.Events", ("Sales", "Events")),  # case kept
        ("s$1.t$2", ("s$1", "t$2")),
    ],
)
def test_parse_table_name(text, expected):
    assert naming.parse_table_name(text) == expected


@pytest.mark.parametrize(
    ("text", "bad"),
    [
        ("my table", "table name 'my table'"),
        ("sales.my table", "table name 'my table'"),
        ("bad schema.t", "schema name 'bad schema'"),
        ("t;drop", "table name 't;drop'"),
        ('"quoted"', "table name '\"quoted\"'"),
        ("public.'x'", "table name \"'x'\""),
        (".t", "schema name ''"),
        ("s.", "table name ''"),
        ("", "table name ''"),
    ],
)
def test_parse_table_name_rejects_bad_names(text, bad):
    with pytest.raises(ValueError) as excinfo:
        naming.parse_table_name(text)
    assert f"invalid {bad}" in str(excinfo.value)
    assert "[A-Za-z_][A-Za-z0-9_$]*" in str(excinfo.value)


@pytest.mark.parametrize("text", ["a.b.c", "db.sales.events"])
def test_parse_table_name_rejects_more_than_one_dot(text):
    with pytest.raises(ValueError, match="at most one dot"):
        naming.parse_table_name(text)


def test_parse_table_name_rejects_non_text():
    with pytest.raises(ValueError, match="expected text"):
        naming.parse_table_name(None)  # type: ignore[arg-type]


def test_slot_and_publication_names():
    assert naming.slot_name("public", "customers") == "pgrepl_public_customers"
    assert naming.publication_name("public", "customers") == "pgrepl_public_customers"
    assert naming.slot_name("Sales", "My$Events") == "pgrepl_sales_my_events"


def _expected_hash(schema: str, table: str) -> str:
    return hashlib.sha1(f"{schema}.{table}".encode()).hexdigest()[:8]


def test_slot_name_at_63_bytes_is_not_truncated():
    table = "t" * (63 - len("pgrepl_public_"))
    name = naming.slot_name("public", table)
    assert name == f"pgrepl_public_{table}"
    assert len(name) == 63


def test_long_slot_name_is_truncated_with_hash():
    table = "t" * (64 - len("pgrepl_public_"))
    name = naming.slot_name("public", table)
    assert len(name.encode()) == 63
    assert name.endswith("_" + _expected_hash("public", table))
    assert name.startswith("pgrepl_public_ttt")
    assert re.fullmatch(r"[a-z0-9_]{1,63}", name)


def test_long_names_with_the_same_prefix_stay_distinct():
    schema = "analytics_" + "x" * 40
    first = naming.slot_name(schema, "events_" + "y" * 30 + "_a")
    second = naming.slot_name(schema, "events_" + "y" * 30 + "_b")
    assert first != second
    assert len(first) <= 63 and len(second) <= 63
    assert first[:54] == second[:54]
    assert naming.publication_name(schema, "events_" + "y" * 30 + "_a") == first


def test_long_names_differing_only_in_case_stay_distinct():
    table = "Events_" + "z" * 60
    assert naming.slot_name("public", table) != naming.slot_name("public", table.lower())


def test_default_destination_table():
    assert naming.default_destination_table("public", "customers") == "customers"
    assert naming.default_destination_table("sales", "events") == "sales__events"
    assert naming.default_destination_table("Sales", "Events") == "Sales__Events"


def test_dag_id():
    assert naming.dag_id("public", "customers") == "pg_replication__public__customers"
    assert naming.dag_id("sales", "Events") == "pg_replication__sales__Events"
    # Airflow does not allow '$' in a DAG id.
    assert naming.dag_id("s$1", "t$2") == "pg_replication__s_1__t_2"
    assert re.fullmatch(r"[\w.-]+", naming.dag_id("s$1", "t$2"))
