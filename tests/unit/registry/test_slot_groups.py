"""Slot groups in the registry: slot_group, the slot_groups block, dedicated slots, and their errors."""

from __future__ import annotations

import pytest

from airflow_pg_replication.registry import RegistryError, parse_registry
from tests.unit.registry.test_models import line_of, yaml_text


def only_error(text: str) -> str:
    with pytest.raises(RegistryError) as raised:
        parse_registry(text, "tables.yaml")
    assert len(raised.value.errors) == 1, str(raised.value)
    return str(raised.value.errors[0])


def test_cdc_tables_without_slot_share_their_groups_slot():
    registry = parse_registry(
        yaml_text("""
        defaults: {slot_group: shop}
        slot_groups:
          shop: {schedule: "*/2 * * * *", change_log: "s3://bucket/changes", change_log_conn_id: aws_default}
        tables:
          - table: customers
          - table: orders
          - table: archive
            slot_group: cold
          - table: audit_log
            slot: audit_slot
          - table: countries
            mode: full_refresh
    """)
    )
    in_use = registry.groups_in_use()
    assert list(in_use) == ["shop", "cold"]
    shop, tables = in_use["shop"]
    assert [t.qualified_name for t in tables] == ["public.customers", "public.orders"]
    assert (shop.slot, shop.schedule, shop.change_log, shop.change_log_conn_id) == (
        "pgrepl_shop",
        "*/2 * * * *",
        "s3://bucket/changes",
        "aws_default",
    )
    assert in_use["cold"][0].slot == "pgrepl_cold" and in_use["cold"][0].schedule == "* * * * *"
    assert registry.names_of(registry.table("audit_log")).slot == "audit_slot"
    assert registry.table("audit_log").group is None and registry.table("countries").group is None


def test_a_tables_own_slot_overrides_slot_group_from_defaults():
    registry = parse_registry("defaults: {slot_group: shop}\ntables:\n  - table: a\n    slot: a_slot\n")
    assert registry.table("a").group is None and registry.names_of(registry.table("a")).slot == "a_slot"


def test_slot_and_slot_group_on_one_entry_is_an_error():
    text = "tables:\n  - table: a\n    slot: a_slot\n    slot_group: shop\n"
    message = only_error(text)
    assert message.startswith(f"tables.yaml:{line_of(text, 'slot_group')}: tables[0].slot_group: a table with its own")


def test_a_listed_group_slot_names_its_slot_and_publication():
    registry = parse_registry("slot_groups:\n  default:\n    slot: shop_slot\ntables:\n  - table: a\n")
    assert (
        registry.names_of(registry.table("a")).slot == registry.names_of(registry.table("a")).publication == "shop_slot"
    )


def test_two_groups_may_not_share_a_slot():
    text = yaml_text("""
        slot_groups:
          one: {slot: shared}
          two: {slot: shared}
        tables:
          - {table: a, slot_group: one}
          - {table: b, slot_group: two}
    """)
    message = only_error(text)
    assert "replication slot 'shared' of slot group 'two' is already slot group 'one''s" in message


def test_a_table_dag_may_not_take_a_capture_dags_id():
    text = "tables:\n  - table: a\n  - table: capture.default\n"
    assert "DAG id 'pg_replication__capture__default' is slot group 'default''s" in only_error(text)


@pytest.mark.parametrize(
    ("block", "key", "expected"),
    [
        ("  shop:\n    slots: x\n", "slot_groups.shop.slots", "did you mean 'slot'?"),
        ("  Shop Group: {}\n", "slot_groups.Shop Group", "slot group name"),
        ("  shop:\n    change_log: s3://key:secret@bucket/x\n", "slot_groups.shop.change_log", "password or token"),
        ("  shop:\n    schedule: every minute\n", "slot_groups.shop.schedule", "invalid schedule"),
    ],
)
def test_slot_groups_block_errors_name_the_key(block, key, expected):
    text = "slot_groups:\n" + block + "tables:\n  - table: a\n    slot_group: shop\n"
    with pytest.raises(RegistryError) as raised:
        parse_registry(text, "tables.yaml")
    found = [e for e in raised.value.errors if e.key.startswith(key)]
    assert found and expected in found[0].message, str(raised.value)


def test_a_group_without_cdc_tables_gets_no_capture():
    registry = parse_registry("slot_groups:\n  idle: {}\ntables:\n  - table: a\n    mode: full_refresh\n")
    assert registry.groups_in_use() == {}
